using System.Text.Json;
using System.Text.Json.Nodes;

namespace PromptToPrompt.Loading;

/// <summary>Reads the fields the code uses from a diffusers / transformers config.json; ignores the rest.</summary>
public sealed class ConfigJson
{
    readonly JsonObject _root;
    public string Path { get; }

    ConfigJson(string path, JsonObject root) { Path = path; _root = root; }

    public static ConfigJson Load(string path)
    {
        if (!File.Exists(path)) throw new UserError($"Config not found: {path}. The model folder is incomplete: copy the whole folder again.");
        try
        {
            return new ConfigJson(path, JsonNode.Parse(File.ReadAllText(path)) as JsonObject
                                        ?? throw new UserError($"{path} is not a JSON object. The file is corrupt: replace it."));
        }
        catch (JsonException e) { throw new UserError($"{path} is not valid JSON ({e.Message}). The file is corrupt: replace it."); }
    }

    public static ConfigJson FromJson(string json, string name = "<inline>") => new(name, (JsonObject)JsonNode.Parse(json)!);

    public bool Has(string key) => _root[key] is not null;

    public T Get<T>(string key, T fallback)
    {
        var node = _root[key];
        if (node is null) return fallback;
        try { return node.Deserialize<T>()!; }
        catch (Exception e) when (e is JsonException or InvalidOperationException or FormatException)
        {
            throw new UserError($"{Path}: field '{key}' has the value {node.ToJsonString()}, which is not a valid {typeof(T).Name}. Fix the config.");
        }
    }

    public T Require<T>(string key) =>
        Has(key) ? Get<T>(key, default!) : throw new UserError($"{Path}: required field '{key}' is missing. The config is incomplete or not for this kind of model.");

    /// <summary>An int or a per-block list of ints, expanded to <paramref name="count"/> entries.</summary>
    public int[] IntOrList(string key, int count, int? fallback = null)
    {
        var node = _root[key];
        if (node is null)
            return fallback is int f ? Enumerable.Repeat(f, count).ToArray() : Require<int[]>(key);
        if (node is JsonArray arr)
        {
            var values = arr.Select(x => x!.GetValue<int>()).ToArray();
            if (values.Length != count)
                throw new UserError($"{Path}: '{key}' has {values.Length} entries but the model has {count} blocks. Fix the config.");
            return values;
        }
        return Enumerable.Repeat(node.GetValue<int>(), count).ToArray();
    }

    /// <summary>Refuses a field whose presence (with a non-null, non-default value) means an architecture we do not implement.</summary>
    public void RefuseIfSet(string key, string what, params string[] allowed)
    {
        var node = _root[key];
        if (node is null) return;
        var text = node is JsonValue v && v.TryGetValue<string>(out var s) ? s : node.ToJsonString();
        if (allowed.Contains(text)) return;
        throw new UserError($"{Path}: {key} = {text} ({what}) is not supported; this runtime implements Stable Diffusion 1.x/2.x models.");
    }
}

/// <summary>CLIP text encoder (transformers CLIPTextConfig).</summary>
public sealed record ClipTextConfig(
    int VocabSize, int HiddenSize, int IntermediateSize, int NumLayers, int NumHeads,
    int MaxPositions, double LayerNormEps, string HiddenAct, int ProjectionDim = 0)
{
    public static ClipTextConfig From(ConfigJson c)
    {
        var act = c.Get("hidden_act", "quick_gelu");
        if (act is not ("quick_gelu" or "gelu"))
            throw new UserError($"{c.Path}: hidden_act '{act}' is not supported (quick_gelu for SD 1.x, gelu for SD 2.x).");
        return new ClipTextConfig(c.Require<int>("vocab_size"), c.Require<int>("hidden_size"), c.Require<int>("intermediate_size"),
            c.Require<int>("num_hidden_layers"), c.Require<int>("num_attention_heads"), c.Get("max_position_embeddings", 77),
            c.Get("layer_norm_eps", 1e-5), act,
            // CLIPTextModelWithProjection (SDXL's second encoder) has text_projection; a plain CLIPTextModel's projection_dim is unused.
            c.Get("architectures", Array.Empty<string>()).Contains("CLIPTextModelWithProjection") ? c.Require<int>("projection_dim") : 0);
    }
}

/// <summary>UNet2DConditionModel (diffusers), the fields SD 1.x / 2.x and SDXL use.</summary>
public sealed record UNetConfig(
    int InChannels, int OutChannels, int[] BlockOutChannels, string[] DownBlockTypes, string[] UpBlockTypes,
    int LayersPerBlock, int[] HeadsPerBlock, int CrossAttentionDim, int NormNumGroups, double NormEps,
    bool FlipSinToCos, int FreqShift, int DownsamplePadding, double MidBlockScaleFactor,
    bool UseLinearProjection, bool UpcastAttention, int SampleSize, bool CenterInputSample,
    int[]? TransformerLayersPerBlock = null, int AdditionTimeEmbedDim = 0, int ProjectionClassEmbeddingsInputDim = 0)
{
    public int TimeEmbedDim => BlockOutChannels[0] * 4;

    /// <summary>Transformer blocks inside each Transformer2DModel of down block <paramref name="block"/> (the mid block uses the last entry, up block i entry n-1-i).</summary>
    public int TransformerDepth(int block) => TransformerLayersPerBlock?[block] ?? 1;

    /// <summary>
    /// SDXL's <c>addition_embed_type: text_time</c>: the pooled text embedding and the six size/crop numbers, each as
    /// <see cref="AdditionTimeEmbedDim"/> sinusoidal features, go through <c>add_embedding</c> and join the time embedding.
    /// </summary>
    public bool TextTimeConditioning => AdditionTimeEmbedDim > 0;

    public static UNetConfig From(ConfigJson c)
    {
        var channels = c.Require<int[]>("block_out_channels");
        var down = c.Require<string[]>("down_block_types");
        var up = c.Require<string[]>("up_block_types");
        if (down.Length != channels.Length || up.Length != channels.Length)
            throw new UserError($"{c.Path}: block_out_channels, down_block_types and up_block_types must have the same length.");
        foreach (var t in down)
            if (t is not ("CrossAttnDownBlock2D" or "DownBlock2D"))
                throw new UserError($"{c.Path}: down block type '{t}' is not supported (CrossAttnDownBlock2D, DownBlock2D).");
        foreach (var t in up)
            if (t is not ("CrossAttnUpBlock2D" or "UpBlock2D"))
                throw new UserError($"{c.Path}: up block type '{t}' is not supported (CrossAttnUpBlock2D, UpBlock2D).");
        c.RefuseIfSet("mid_block_type", "mid block", "UNetMidBlock2DCrossAttn");
        c.RefuseIfSet("act_fn", "activation", "silu");
        c.RefuseIfSet("class_embed_type", "class embedding", "null");
        var addition = c.Get<string?>("addition_embed_type", null);
        if (addition is not (null or "text_time"))
            throw new UserError($"{c.Path}: addition_embed_type '{addition}' is not supported (null, or text_time as SDXL).");
        c.RefuseIfSet("time_cond_proj_dim", "time conditioning projection", "null");
        c.RefuseIfSet("resnet_time_scale_shift", "resnet time scale shift", "default");
        c.RefuseIfSet("only_cross_attention", "cross-attention-only blocks", "false");
        c.RefuseIfSet("dual_cross_attention", "dual cross attention", "false");
        c.RefuseIfSet("encoder_hid_dim", "encoder hidden projection", "null");
        // diffusers' historical naming: for SD 1.x/2.x UNets 'attention_head_dim' holds the number of heads
        // (num_attention_heads, when present, takes precedence).
        var heads = c.Has("num_attention_heads")
            ? c.IntOrList("num_attention_heads", channels.Length)
            : c.IntOrList("attention_head_dim", channels.Length, 8);
        for (int i = 0; i < channels.Length; i++)
            if (heads[i] <= 0 || channels[i] % heads[i] != 0)
                throw new UserError($"{c.Path}: block {i} has {channels[i]} channels, which {heads[i]} attention heads do not divide.");
        return new UNetConfig(c.Get("in_channels", 4), c.Get("out_channels", 4), channels, down, up,
            c.Get("layers_per_block", 2), heads, c.Require<int>("cross_attention_dim"), c.Get("norm_num_groups", 32),
            c.Get("norm_eps", 1e-5), c.Get("flip_sin_to_cos", true), c.Get("freq_shift", 0), c.Get("downsample_padding", 1),
            c.Get("mid_block_scale_factor", 1.0), c.Get("use_linear_projection", false), c.Get("upcast_attention", false),
            c.Get("sample_size", 64), c.Get("center_input_sample", false),
            c.IntOrList("transformer_layers_per_block", channels.Length, 1),
            addition is null ? 0 : c.Require<int>("addition_time_embed_dim"),
            addition is null ? 0 : c.Require<int>("projection_class_embeddings_input_dim"));
    }
}

/// <summary>AutoencoderKL (diffusers).</summary>
public sealed record VaeConfig(
    int InChannels, int OutChannels, int LatentChannels, int[] BlockOutChannels, int LayersPerBlock,
    int NormNumGroups, double ScalingFactor, int SampleSize, bool ForceUpcast = true)
{
    /// <summary>Pixels per latent pixel: 2^(number of downsampling levels).</summary>
    public int DownscaleFactor => 1 << (BlockOutChannels.Length - 1);

    public static VaeConfig From(ConfigJson c)
    {
        var channels = c.Require<int[]>("block_out_channels");
        foreach (var t in c.Get("down_block_types", Array.Empty<string>()))
            if (t != "DownEncoderBlock2D") throw new UserError($"{c.Path}: VAE down block '{t}' is not supported (DownEncoderBlock2D).");
        foreach (var t in c.Get("up_block_types", Array.Empty<string>()))
            if (t != "UpDecoderBlock2D") throw new UserError($"{c.Path}: VAE up block '{t}' is not supported (UpDecoderBlock2D).");
        c.RefuseIfSet("act_fn", "activation", "silu");
        c.RefuseIfSet("shift_factor", "latent shift (SD 3 / Flux VAE)", "null", "0", "0.0");
        return new VaeConfig(c.Get("in_channels", 3), c.Get("out_channels", 3), c.Get("latent_channels", 4), channels,
            c.Get("layers_per_block", 2), c.Get("norm_num_groups", 32), c.Get("scaling_factor", 0.18215), c.Get("sample_size", 512),
            c.Get("force_upcast", true));
    }
}

/// <summary>Scheduler settings shared by every diffusers noise scheduler of SD 1.x/2.x.</summary>
public sealed record SchedulerConfig(
    int NumTrainTimesteps = 1000, double BetaStart = 0.00085, double BetaEnd = 0.012, string BetaSchedule = "scaled_linear",
    double[]? TrainedBetas = null, bool SkipPrkSteps = true, int StepsOffset = 1, bool SetAlphaToOne = false,
    bool ClipSample = false, string PredictionType = "epsilon", string? TimestepSpacing = null, string ClassName = "PNDMScheduler")
{
    public static SchedulerConfig From(ConfigJson c)
    {
        var beta = c.Get("beta_schedule", "linear");
        if (beta is not ("linear" or "scaled_linear" or "squaredcos_cap_v2"))
            throw new UserError($"{c.Path}: beta_schedule '{beta}' is not supported (linear, scaled_linear, squaredcos_cap_v2).");
        var prediction = c.Get("prediction_type", "epsilon");
        if (prediction is not ("epsilon" or "v_prediction"))
            throw new UserError($"{c.Path}: prediction_type '{prediction}' is not supported (epsilon, v_prediction).");
        var spacing = c.Get<string?>("timestep_spacing", null);
        if (spacing is not (null or "leading" or "linspace" or "trailing"))
            throw new UserError($"{c.Path}: timestep_spacing '{spacing}' is not supported (leading, linspace, trailing).");
        return new SchedulerConfig(c.Get("num_train_timesteps", 1000), c.Get("beta_start", 0.0001), c.Get("beta_end", 0.02), beta,
            c.Get<double[]?>("trained_betas", null), c.Get("skip_prk_steps", false), c.Get("steps_offset", 0),
            c.Get("set_alpha_to_one", true), c.Get("clip_sample", true), prediction, spacing, c.Get("_class_name", "PNDMScheduler"));
    }
}
