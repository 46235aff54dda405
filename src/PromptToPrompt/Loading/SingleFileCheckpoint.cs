using System.Text.RegularExpressions;
using PromptToPrompt.Models;
using PromptToPrompt.Text;
using TorchSharp;
using static TorchSharp.torch;

namespace PromptToPrompt.Loading;

/// <summary>
/// Settings a single-file checkpoint cannot carry. <see cref="ConfigFolder"/>: a diffusers folder whose configs and
/// tokenizer describe the checkpoint (otherwise configs are inferred from the weights' shapes).
/// <see cref="TokenizerFolder"/>: where vocab.json / merges.txt are (default: ConfigFolder/tokenizer, or a
/// <c>tokenizer</c> folder beside the checkpoint). <see cref="PredictionType"/>: epsilon or v_prediction (SD 2.x 768-v).
/// </summary>
public sealed record SingleFileOptions(string? TokenizerFolder = null, string? PredictionType = null, string? ConfigFolder = null);

/// <summary>
/// Loads a Stable Diffusion checkpoint in the original single-file layout (one .safetensors with
/// <c>model.diffusion_model.*</c> and <c>first_stage_model.*</c>; the text encoder under <c>cond_stage_model.*</c> for
/// SD 1.x / 2.x, the two of SDXL under <c>conditioner.embedders.0.transformer.*</c> (CLIP-L) and
/// <c>conditioner.embedders.1.model.*</c> (OpenCLIP bigG)) by one explicit mapping of its keys to the diffusers names
/// our modules use.
/// </summary>
public static class SingleFileCheckpoint
{
    const string UNetPrefix = "model.diffusion_model.";
    const string VaePrefix = "first_stage_model.";
    const string Sd1TextPrefix = "cond_stage_model.transformer.";
    const string Sd2TextPrefix = "cond_stage_model.model.";
    const string XlTextPrefix = "conditioner.embedders.0.transformer.";
    const string XlText2Prefix = "conditioner.embedders.1.model.";
    /// <summary>A refiner's only text encoder (OpenCLIP bigG) sits first.</summary>
    const string RefinerTextPrefix = "conditioner.embedders.0.model.";

    public static StableDiffusionModel Load(string path, ModelPlacement placement, SingleFileOptions options, Action<string>? log)
    {
        using var raw = TensorSource.Open(Path.GetFileName(path), path);
        var keys = raw.Keys.ToList();
        if (!keys.Any(k => k.StartsWith(UNetPrefix)))
            throw new UserError($"{path} has no '{UNetPrefix}*' weights: it is not a Stable Diffusion checkpoint in the original layout " +
                                "(a LoRA, an embedding, or a lone component?). Pass a full SD 1.x/2.x checkpoint or a diffusers folder.");
        if (keys.Any(k => k.StartsWith(RefinerTextPrefix)))
            throw new UserError($"{path} is an SDXL refiner (its only text encoder is OpenCLIP bigG, and it refines images); text-to-image and editing need an SDXL base model.");
        bool xl = keys.Any(k => k.StartsWith(XlText2Prefix));
        bool sd2 = keys.Any(k => k.StartsWith(Sd2TextPrefix));
        if (xl && !keys.Any(k => k.StartsWith(XlTextPrefix)))
            throw new UserError($"{path} has SDXL's second text encoder but not its first ({XlTextPrefix}*). Pass a full SDXL base checkpoint.");
        if (!xl && !sd2 && !keys.Any(k => k.StartsWith(Sd1TextPrefix)))
            throw new UserError($"{path} has no text encoder weights (cond_stage_model.*). Pass a full SD 1.x/2.x or SDXL checkpoint.");

        var configs = options.ConfigFolder is { } cf ? FromFolder(cf) : Infer(raw.Shape, keys, sd2);
        if (configs.UNet.TextTimeConditioning != xl)
            throw new UserError(xl ? $"{path} is an SDXL checkpoint but --config {options.ConfigFolder} describes a model without SDXL's added conditioning. Pass the configs of an SDXL model."
                                   : $"--config {options.ConfigFolder} describes an SDXL model but {path} has no SDXL text encoders. Pass the configs of this checkpoint's model.");
        var scheduler = configs.Scheduler;
        if (options.PredictionType is { } prediction)
        {
            if (prediction is not ("epsilon" or "v_prediction"))
                throw new UserError($"Unknown prediction type '{prediction}'. Use epsilon or v_prediction.");
            scheduler = scheduler with { PredictionType = prediction };
            // SD 2.x v-prediction models are the 768x768 ones.
            if (options.ConfigFolder is null && prediction == "v_prediction")
                configs = configs with { UNet = configs.UNet with { SampleSize = 96 } };
        }
        var tokenizerFolder = FindTokenizer(path, options);
        var tokenizer = ClipTokenizer.Load(tokenizerFolder, configs.Text.MaxPositions);

        var unet = new UNet2DConditionModel(configs.UNet);
        LoadPart(unet, raw.Map("unet", k => MapUNetKey(k, configs.UNet.LayersPerBlock)), "unet", placement, log);
        var vae = new AutoencoderKL(configs.Vae);
        LoadPart(vae, raw.Map("vae", k => MapVaeKey(k, configs.Vae.BlockOutChannels.Length)), "vae", StableDiffusionModel.VaePlacement(placement, configs.Vae, xl), log);
        var text = new ClipTextModel(configs.Text);
        LoadPart(text, raw.Map("text_encoder", k => xl ? MapClipKey(k, XlTextPrefix) : sd2 ? MapOpenClipKey(k, configs.Text, Sd2TextPrefix) : MapClipKey(k, Sd1TextPrefix)),
                 "text_encoder", placement, log);
        ClipTextModel? text2 = null;
        if (xl)
        {
            text2 = new ClipTextModel(configs.Text2!);
            LoadPart(text2, raw.Map("text_encoder_2", k => MapOpenClipKey(k, configs.Text2!, XlText2Prefix)), "text_encoder_2", placement, log);
        }
        var ignored = keys.Count(k => !k.StartsWith(UNetPrefix) && !k.StartsWith(VaePrefix) && !k.StartsWith("cond_stage_model.") && !k.StartsWith("conditioner."));
        if (ignored > 0) log?.Invoke($"note: {ignored} tensor(s) outside the UNet, VAE and text encoder (e.g. EMA copies) were ignored.");
        return new StableDiffusionModel
        {
            Name = Path.GetFileNameWithoutExtension(path), Location = Path.GetFullPath(path), Tokenizer = tokenizer, TextEncoder = text, UNet = unet, Vae = vae,
            Scheduler = scheduler, Placement = placement,
            // SDXL's second tokenizer is the first one padding with "!" (id 0), unless the config folder has its own.
            Tokenizer2 = !xl ? null : options.ConfigFolder is { } f && File.Exists(Path.Combine(f, "tokenizer_2", "vocab.json"))
                ? ClipTokenizer.Load(Path.Combine(f, "tokenizer_2"), configs.Text2!.MaxPositions)
                : ClipTokenizer.Load(tokenizerFolder, configs.Text2!.MaxPositions, padOverride: "!"),
            TextEncoder2 = text2, ForceZerosForEmptyPrompt = xl,
        };
    }

    static void LoadPart(nn.Module module, TensorSource source, string name, ModelPlacement placement, Action<string>? log)
    {
        using (source)
        {
            var unexpected = WeightLoader.Load(module, source, placement.Device, placement.DType);
            if (unexpected.Count > 0)
                log?.Invoke($"warning: {name}: {unexpected.Count} weight(s) not used, e.g. {string.Join(", ", unexpected.Take(5))}");
        }
        module.eval();
    }

    static string FindTokenizer(string checkpoint, SingleFileOptions options)
    {
        var candidates = new[]
        {
            options.TokenizerFolder,
            options.ConfigFolder is { } cf ? Path.Combine(cf, "tokenizer") : null,
            Path.Combine(Path.GetDirectoryName(Path.GetFullPath(checkpoint))!, "tokenizer"),
        };
        foreach (var c in candidates.OfType<string>())
            if (File.Exists(Path.Combine(c, "vocab.json"))) return c;
        if (options.TokenizerFolder is { } given)
            throw new UserError($"--tokenizer {given} has no vocab.json. Pass a folder with the CLIP tokenizer's vocab.json and merges.txt.");
        throw new UserError("A single-file checkpoint does not contain the CLIP tokenizer. Pass --tokenizer DIR (a folder with vocab.json and merges.txt, " +
                            "e.g. the 'tokenizer' folder of any Stable Diffusion model in diffusers format) or put that folder beside the checkpoint as 'tokenizer'.");
    }

    /// <summary>The configs of a checkpoint; <see cref="Text2"/> is SDXL's second text encoder (null otherwise).</summary>
    public sealed record Configs(UNetConfig UNet, VaeConfig Vae, ClipTextConfig Text, SchedulerConfig Scheduler, ClipTextConfig? Text2 = null);

    static Configs FromFolder(string folder)
    {
        string C(string sub, string file = "config.json") => Path.Combine(folder, sub, file);
        var unet = UNetConfig.From(ConfigJson.Load(C("unet")));
        return new Configs(unet, VaeConfig.From(ConfigJson.Load(C("vae"))),
            ClipTextConfig.From(ConfigJson.Load(C("text_encoder"))), SchedulerConfig.From(ConfigJson.Load(C("scheduler", "scheduler_config.json"))),
            unet.TextTimeConditioning ? ClipTextConfig.From(ConfigJson.Load(C("text_encoder_2"))) : null);
    }

    /// <summary>
    /// Infers the configs of an SD 1.x / 2.x or SDXL checkpoint from the shapes of a few of its tensors. Head counts
    /// cannot be read from weights: SD 1.x uses 8 heads everywhere, SD 2.x and SDXL heads of dimension 64 (as their
    /// published configs do). SDXL (recognised by its added-conditioning MLP, <c>label_emb</c>) also gets the number
    /// of transformer blocks per level, the time-id embedding width, its VAE scaling factor 0.13025 and its Euler scheduler.
    /// </summary>
    public static Configs Infer(Func<string, long[]> shapeOf, IReadOnlyCollection<string> keys, bool sd2)
    {
        var keySet = keys.ToHashSet();
        long[] Shape(string key) => keySet.Contains(key) ? shapeOf(key)
            : throw new UserError($"The checkpoint lacks '{key}', which every SD 1.x/2.x and SDXL checkpoint has. It is not a supported model.");
        bool xl = keySet.Contains(UNetPrefix + "label_emb.0.0.weight");

        var inputBlocks = keys.Where(k => k.StartsWith(UNetPrefix + "input_blocks."))
            .Select(k => int.Parse(k.Split('.')[3])).Distinct().OrderBy(i => i).ToList();
        int inChannels = (int)Shape(UNetPrefix + "input_blocks.0.0.weight")[1];
        // input_blocks: conv_in, then per level `layers_per_block` resnets and a downsampler (none after the last level).
        int channel0 = (int)Shape(UNetPrefix + "input_blocks.0.0.weight")[0];
        int levels = inputBlocks.Count(i => keySet.Contains($"{UNetPrefix}input_blocks.{i}.0.op.weight")) + 1;
        int layersPerBlock = inputBlocks.Count / levels - 1;
        if (layersPerBlock < 1 || inputBlocks.Count != levels * (layersPerBlock + 1))
            throw new UserError("The checkpoint's UNet layout is not that of SD 1.x/2.x. Pass --config with a diffusers folder describing the model.");
        var firstResnet = Enumerable.Range(0, levels).Select(b => 1 + b * (layersPerBlock + 1)).ToArray();
        var levelChannels = firstResnet.Select(i => (int)Shape($"{UNetPrefix}input_blocks.{i}.0.out_layers.3.weight")[0]).ToList();
        var crossLevels = firstResnet.Select(i => keySet.Contains($"{UNetPrefix}input_blocks.{i}.1.proj_in.weight")).ToList();
        var crossKey = keys.First(k => k.StartsWith(UNetPrefix) && k.EndsWith("attn2.to_k.weight"));
        int contextDim = (int)Shape(crossKey)[1];
        bool linear = Shape(keys.First(k => k.StartsWith(UNetPrefix) && k.EndsWith("proj_in.weight"))).Length == 2;
        int[] heads = levelChannels.Select(c => sd2 || xl ? c / 64 : 8).ToArray();
        // Transformer blocks per level, counted in the level's first attention (1 where a level has none).
        var depths = firstResnet.Select(i => Math.Max(1, keys.Where(k => k.StartsWith($"{UNetPrefix}input_blocks.{i}.1.transformer_blocks."))
            .Select(k => k.Split('.')[6]).Distinct().Count())).ToArray();
        var unet = new UNetConfig(inChannels, (int)Shape(UNetPrefix + "out.2.weight")[0], levelChannels.ToArray(),
            crossLevels.Select(c => c ? "CrossAttnDownBlock2D" : "DownBlock2D").ToArray(),
            crossLevels.AsEnumerable().Reverse().Select(c => c ? "CrossAttnUpBlock2D" : "UpBlock2D").ToArray(),
            layersPerBlock, heads, contextDim, 32, 1e-5, true, 0, 1, 1.0, linear, sd2, xl ? 128 : 64, false,
            depths.Any(d => d != 1) ? depths : null);
        if (channel0 != levelChannels[0])
            throw new UserError($"Unexpected UNet layout (conv_in has {channel0} channels, the first level {levelChannels[0]}). Pass --config with a diffusers folder describing the model.");

        var vaeLevels = keys.Where(k => k.StartsWith(VaePrefix + "encoder.down.") && k.EndsWith(".block.0.conv1.weight"))
            .Select(k => int.Parse(k.Split('.')[3])).Distinct().OrderBy(i => i)
            .Select(i => (int)Shape($"{VaePrefix}encoder.down.{i}.block.0.conv1.weight")[0]).ToArray();
        int vaeLayers = keys.Where(k => k.StartsWith(VaePrefix + "encoder.down.0.block.")).Select(k => k.Split('.')[5]).Distinct().Count();
        var vae = new VaeConfig(3, 3, (int)Shape(VaePrefix + "post_quant_conv.weight")[0], vaeLevels, vaeLayers, 32, xl ? 0.13025 : 0.18215, xl ? 1024 : 512);

        // transformers' CLIP text model (SD 1.x, SDXL's first encoder), with or without the text_model. level.
        ClipTextConfig Clip(string prefix)
        {
            string p = keySet.Contains(prefix + "text_model.embeddings.token_embedding.weight") ? prefix + "text_model." : prefix;
            var emb = Shape(p + "embeddings.token_embedding.weight");
            int layers = keys.Where(k => k.StartsWith(p + "encoder.layers.")).Select(k => k[(p.Length + 15)..].Split('.')[0]).Distinct().Count();
            int hidden = (int)emb[1];
            return new ClipTextConfig((int)emb[0], hidden, (int)Shape(p + "encoder.layers.0.mlp.fc1.weight")[0], layers, hidden / 64,
                (int)Shape(p + "embeddings.position_embedding.weight")[0], 1e-5, "quick_gelu");
        }
        // OpenCLIP's text tower (SD 2.x, SDXL's second encoder).
        ClipTextConfig OpenClip(string prefix, bool dropLast, int projection)
        {
            var emb = Shape(prefix + "token_embedding.weight");
            int layers = keys.Where(k => k.StartsWith(prefix + "transformer.resblocks.")).Select(k => k[prefix.Length..].Split('.')[2]).Distinct().Count();
            int hidden = (int)emb[1];
            return new ClipTextConfig((int)emb[0], hidden, (int)Shape(prefix + "transformer.resblocks.0.mlp.c_fc.weight")[0],
                dropLast ? layers - 1 : layers, hidden / 64, (int)Shape(prefix + "positional_embedding")[0], 1e-5, "gelu", projection);
        }
        // SD 2.x conditions on the penultimate layer: diffusers configs keep layers - 1 layers. SDXL keeps all of them
        // (it reads hidden_states[-2] itself, and the pooled embedding comes from the last layer).
        var text = xl ? Clip(XlTextPrefix) : sd2 ? OpenClip(Sd2TextPrefix, dropLast: true, 0) : Clip(Sd1TextPrefix);
        ClipTextConfig? text2 = null;
        if (xl)
        {
            text2 = OpenClip(XlText2Prefix, dropLast: false, (int)Shape(XlText2Prefix + "text_projection")[1]);
            int added = (int)Shape(UNetPrefix + "label_emb.0.0.weight")[1], timeIds = added - text2.ProjectionDim;
            if (timeIds <= 0 || timeIds % TextTimeConditioning.TimeIdCount != 0)
                throw new UserError($"The checkpoint's added conditioning takes {added} features, which is not {TextTimeConditioning.TimeIdCount} time ids and the " +
                                    $"{text2.ProjectionDim}-wide pooled text embedding of SDXL base. It is not a supported model.");
            unet = unet with { AdditionTimeEmbedDim = timeIds / TextTimeConditioning.TimeIdCount, ProjectionClassEmbeddingsInputDim = added };
        }
        StableDiffusionModel.CheckUNetInputs(unet, vae, "The checkpoint");
        // The published configs: PNDM for text-to-image, Euler ancestral for InstructPix2Pix (timbrooks/instruct-pix2pix),
        // Euler with "leading" timesteps for SDXL base.
        var scheduler = new SchedulerConfig(BetaStart: 0.00085, BetaEnd: 0.012, BetaSchedule: "scaled_linear", SkipPrkSteps: true,
            StepsOffset: 1, SetAlphaToOne: false, ClipSample: false, TimestepSpacing: xl ? "leading" : null,
            ClassName: xl ? "EulerDiscreteScheduler" : inChannels == 2 * vae.LatentChannels ? "EulerAncestralDiscreteScheduler" : "PNDMScheduler");
        return new Configs(unet, vae, text, scheduler, text2);
    }

    static IEnumerable<(string, Func<Tensor, Tensor>?)> One(string key) => [(key, null)];
    static readonly (string, Func<Tensor, Tensor>?)[] None = [];

    static readonly (string From, string To)[] ResnetNames =
    [
        ("in_layers.0.", "norm1."), ("in_layers.2.", "conv1."), ("out_layers.0.", "norm2."), ("out_layers.3.", "conv2."),
        ("emb_layers.1.", "time_emb_proj."), ("skip_connection.", "conv_shortcut."),
    ];

    static string RenameResnet(string rest)
    {
        foreach (var (from, to) in ResnetNames)
            if (rest.StartsWith(from)) return to + rest[from.Length..];
        return rest;
    }

    static readonly Regex InputBlock = new(@"^input_blocks\.(\d+)\.(\d+)\.(.*)$", RegexOptions.Compiled);
    static readonly Regex OutputBlock = new(@"^output_blocks\.(\d+)\.(\d+)\.(.*)$", RegexOptions.Compiled);
    static readonly Regex MiddleBlock = new(@"^middle_block\.(\d+)\.(.*)$", RegexOptions.Compiled);

    /// <summary>Original UNet key → diffusers key (the transformer blocks inside keep their names).</summary>
    public static IEnumerable<(string, Func<Tensor, Tensor>?)> MapUNetKey(string key, int layersPerBlock)
    {
        if (!key.StartsWith(UNetPrefix)) return None;
        var k = key[UNetPrefix.Length..];
        foreach (var (from, to) in new[] { ("time_embed.0.", "time_embedding.linear_1."), ("time_embed.2.", "time_embedding.linear_2."),
                                           ("label_emb.0.0.", "add_embedding.linear_1."), ("label_emb.0.2.", "add_embedding.linear_2."),
                                           ("input_blocks.0.0.", "conv_in."), ("out.0.", "conv_norm_out."), ("out.2.", "conv_out.") })
            if (k.StartsWith(from)) return One(to + k[from.Length..]);
        int per = layersPerBlock + 1;
        if (InputBlock.Match(k) is { Success: true } m)
        {
            int i = int.Parse(m.Groups[1].Value), part = int.Parse(m.Groups[2].Value);
            int block = (i - 1) / per, layer = (i - 1) % per;
            var rest = m.Groups[3].Value;
            if (layer == layersPerBlock) return One($"down_blocks.{block}.downsamplers.0.conv.{rest.Replace("op.", "")}");
            return One(part == 0 ? $"down_blocks.{block}.resnets.{layer}.{RenameResnet(rest)}" : $"down_blocks.{block}.attentions.{layer}.{rest}");
        }
        if (MiddleBlock.Match(k) is { Success: true } mid)
        {
            int part = int.Parse(mid.Groups[1].Value);
            var rest = mid.Groups[2].Value;
            return One(part == 1 ? $"mid_block.attentions.0.{rest}" : $"mid_block.resnets.{part / 2}.{RenameResnet(rest)}");
        }
        if (OutputBlock.Match(k) is { Success: true } o)
        {
            int i = int.Parse(o.Groups[1].Value), part = int.Parse(o.Groups[2].Value);
            int block = i / per, layer = i % per;
            var rest = o.Groups[3].Value;
            if (part == 0) return One($"up_blocks.{block}.resnets.{layer}.{RenameResnet(rest)}");
            if (rest.StartsWith("conv.")) return One($"up_blocks.{block}.upsamplers.0.{rest}");
            return One($"up_blocks.{block}.attentions.{layer}.{rest}");
        }
        return One(k);
    }

    static readonly Regex VaeDown = new(@"^encoder\.down\.(\d+)\.(block\.(\d+)|downsample)\.(.*)$", RegexOptions.Compiled);
    static readonly Regex VaeUp = new(@"^decoder\.up\.(\d+)\.(block\.(\d+)|upsample)\.(.*)$", RegexOptions.Compiled);
    static readonly Regex VaeMid = new(@"^(encoder|decoder)\.mid\.(block_1|block_2|attn_1)\.(.*)$", RegexOptions.Compiled);

    /// <summary>Original VAE key → diffusers key. The decoder's levels are numbered in reverse; attention 1x1 convs become linear layers.</summary>
    public static IEnumerable<(string, Func<Tensor, Tensor>?)> MapVaeKey(string key, int levels)
    {
        if (!key.StartsWith(VaePrefix)) return None;
        var k = key[VaePrefix.Length..].Replace("nin_shortcut.", "conv_shortcut.");
        if (VaeDown.Match(k) is { Success: true } d)
            return One(d.Groups[3].Success
                ? $"encoder.down_blocks.{d.Groups[1].Value}.resnets.{d.Groups[3].Value}.{d.Groups[4].Value}"
                : $"encoder.down_blocks.{d.Groups[1].Value}.downsamplers.0.{d.Groups[4].Value}");
        if (VaeUp.Match(k) is { Success: true } u)
        {
            int block = levels - 1 - int.Parse(u.Groups[1].Value);
            return One(u.Groups[3].Success
                ? $"decoder.up_blocks.{block}.resnets.{u.Groups[3].Value}.{u.Groups[4].Value}"
                : $"decoder.up_blocks.{block}.upsamplers.0.{u.Groups[4].Value}");
        }
        if (VaeMid.Match(k) is { Success: true } m)
        {
            var side = m.Groups[1].Value;
            var rest = m.Groups[3].Value;
            switch (m.Groups[2].Value)
            {
                case "block_1": return One($"{side}.mid_block.resnets.0.{rest}");
                case "block_2": return One($"{side}.mid_block.resnets.1.{rest}");
                default:
                    foreach (var (from, to) in new[] { ("norm.", "group_norm."), ("q.", "query."), ("k.", "key."), ("v.", "value."), ("proj_out.", "proj_attn.") })
                        if (rest.StartsWith(from)) return One($"{side}.mid_block.attentions.0.{to}{rest[from.Length..]}");
                    return One($"{side}.mid_block.attentions.0.{rest}");
            }
        }
        foreach (var side in new[] { "encoder.", "decoder." })
            if (k.StartsWith(side + "norm_out.")) return One(side + "conv_norm_out." + k[(side.Length + 9)..]);
        return One(k);
    }

    /// <summary>
    /// A transformers CLIP text model under <paramref name="prefix"/> (SD 1.x: <c>cond_stage_model.transformer.</c>;
    /// SDXL: <c>conditioner.embedders.0.transformer.</c>), with or without <c>text_model.</c>.
    /// </summary>
    public static IEnumerable<(string, Func<Tensor, Tensor>?)> MapClipKey(string key, string prefix = Sd1TextPrefix)
    {
        if (!key.StartsWith(prefix)) return None;
        var k = key[prefix.Length..];
        return One(k.StartsWith("text_model.") ? k : "text_model." + k);
    }

    static readonly Regex ResBlock = new(@"^transformer\.resblocks\.(\d+)\.(.*)$", RegexOptions.Compiled);

    /// <summary>
    /// An OpenCLIP text tower under <paramref name="prefix"/> (SD 2.x: ViT-H at <c>cond_stage_model.model.</c>; SDXL:
    /// bigG at <c>conditioner.embedders.1.model.</c>); the fused q/k/v projection is split; layers past the config's count
    /// are dropped. OpenCLIP multiplies by <c>text_projection</c> from the right, so a config with a projection gets its
    /// transpose as the Linear weight; without one it is dropped.
    /// </summary>
    public static IEnumerable<(string, Func<Tensor, Tensor>?)> MapOpenClipKey(string key, ClipTextConfig config, string prefix = Sd2TextPrefix)
    {
        if (!key.StartsWith(prefix)) return None;
        var k = key[prefix.Length..];
        switch (k)
        {
            case "token_embedding.weight": return One("text_model.embeddings.token_embedding.weight");
            case "positional_embedding": return One("text_model.embeddings.position_embedding.weight");
            case "ln_final.weight": return One("text_model.final_layer_norm.weight");
            case "ln_final.bias": return One("text_model.final_layer_norm.bias");
            case "text_projection" when config.ProjectionDim > 0: return [("text_projection.weight", t => t.t().contiguous())];
        }
        if (ResBlock.Match(k) is not { Success: true } m) return None; // text_projection without a projection, logit_scale
        int layer = int.Parse(m.Groups[1].Value);
        if (layer >= config.NumLayers) return None;
        var target = $"text_model.encoder.layers.{layer}.";
        var rest = m.Groups[2].Value;
        int d = config.HiddenSize;
        if (rest is "attn.in_proj_weight" or "attn.in_proj_bias")
        {
            var kind = rest.EndsWith("weight") ? "weight" : "bias";
            var split = new List<(string, Func<Tensor, Tensor>?)>();
            foreach (var (name, i) in new[] { "q_proj", "k_proj", "v_proj" }.Select((n, i) => (n, i)))
                split.Add(($"{target}self_attn.{name}.{kind}", t => t.narrow(0, i * d, d).clone()));
            return split;
        }
        foreach (var (from, to) in new[] { ("ln_1.", "layer_norm1."), ("ln_2.", "layer_norm2."), ("mlp.c_fc.", "mlp.fc1."),
                                           ("mlp.c_proj.", "mlp.fc2."), ("attn.out_proj.", "self_attn.out_proj.") })
            if (rest.StartsWith(from)) return One(target + to + rest[from.Length..]);
        return None;
    }
}
