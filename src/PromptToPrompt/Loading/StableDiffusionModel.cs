using System.Text.Json;
using PromptToPrompt.Models;
using PromptToPrompt.Text;
using TorchSharp;
using static TorchSharp.torch;

namespace PromptToPrompt.Loading;

/// <summary>Where and in which precision to run a model.</summary>
public sealed record ModelPlacement(Device Device, ScalarType DType)
{
    public static ModelPlacement Cpu => new(CPU, ScalarType.Float32);

    /// <summary>Parses user options (<c>cpu</c>, <c>cuda</c>, <c>cuda:1</c>; <c>float32</c>, <c>float16</c>, <c>bfloat16</c>).</summary>
    public static ModelPlacement Parse(string device, string dtype)
    {
        ScalarType type = dtype.ToLowerInvariant() switch
        {
            "float32" or "fp32" or "f32" => ScalarType.Float32,
            "float16" or "fp16" or "f16" or "half" => ScalarType.Float16,
            "bfloat16" or "bf16" => ScalarType.BFloat16,
            _ => throw new UserError($"Unknown dtype '{dtype}'. Use float32, float16 or bfloat16."),
        };
        var match = System.Text.RegularExpressions.Regex.Match(device.Trim().ToLowerInvariant(), @"^(cpu|cuda)(?::(\d+))?$");
        if (!match.Success || (match.Groups[1].Value == "cpu" && match.Groups[2].Success))
            throw new UserError($"Unknown device '{device}'. Use cpu, cuda or cuda:N.");
        if (match.Groups[1].Value == "cpu") return new ModelPlacement(CPU, type);
        // Checked before torch.device("cuda"), which throws an unhelpful error when libtorch has no CUDA backend.
        if (!cuda.is_available())
            throw new UserError($"Device '{device}' was requested but CUDA is not available here: build with -p:TorchBackend=cuda (TorchSharp's CUDA " +
                                "packages instead of TorchSharp-cpu; see Set-up in the README) on a machine with an NVIDIA driver, or use --device cpu.");
        int index = 0;
        if (match.Groups[2].Success && !int.TryParse(match.Groups[2].Value, out index)) index = int.MaxValue;
        if (index >= cuda.device_count())
            throw new UserError($"Device '{device}' does not exist: this machine has {cuda.device_count()} CUDA device(s), cuda:0 to cuda:{cuda.device_count() - 1}.");
        return new ModelPlacement(torch.device(DeviceType.CUDA, index), type);
    }
}

/// <summary>
/// A loaded Stable Diffusion model (1.x / 2.x, or XL): tokenizer, text encoder, UNet, VAE and scheduler settings; SDXL
/// adds its second tokenizer and text encoder.
/// </summary>
public sealed class StableDiffusionModel : IDisposable
{
    public required string Name { get; init; }
    /// <summary>The folder or file it was loaded from (null for models built in memory).</summary>
    public string? Location { get; init; }
    public required ClipTokenizer Tokenizer { get; init; }
    public required ClipTextModel TextEncoder { get; init; }
    public required UNet2DConditionModel UNet { get; init; }
    public required AutoencoderKL Vae { get; init; }
    public required SchedulerConfig Scheduler { get; init; }
    public required ModelPlacement Placement { get; init; }
    /// <summary>SDXL: the second tokenizer (pad id may differ) and text encoder (with <c>text_projection</c>); null otherwise.</summary>
    public ClipTokenizer? Tokenizer2 { get; init; }
    public ClipTextModel? TextEncoder2 { get; init; }
    /// <summary>SDXL's <c>force_zeros_for_empty_prompt</c> (model_index.json): without a negative prompt the negative embeddings are zeros.</summary>
    public bool ForceZerosForEmptyPrompt { get; init; }

    /// <summary>A Stable Diffusion XL model: two text encoders and the UNet's added text_time conditioning.</summary>
    public bool IsXL => UNet.Config.TextTimeConditioning;

    /// <summary>Latent pixels per image pixel along one side (8 for SD).</summary>
    public int VaeScale => Vae.Config.DownscaleFactor;
    /// <summary>The image size the model was trained at (UNet sample_size times the VAE factor).</summary>
    public int DefaultImageSize => UNet.Config.SampleSize * VaeScale;
    /// <summary>Channels of a diffusion latent (the VAE's latent_channels, 4 for SD).</summary>
    public int LatentChannels => Vae.Config.LatentChannels;
    /// <summary>
    /// An InstructPix2Pix model: its UNet takes the noisy latent and the input image's latent, concatenated on the
    /// channel axis (in_channels = 2 x latent channels).
    /// </summary>
    public bool IsInstructPix2Pix => UNet.Config.InChannels == 2 * LatentChannels;

    /// <summary>Refuses an InstructPix2Pix model where a text-to-image model is needed (generation, edits, inversion).</summary>
    public void RequireTextToImage()
    {
        if (IsInstructPix2Pix)
            throw new UserError($"{Name} is an InstructPix2Pix model (its UNet also takes the input image's latent); it edits by instruction: " +
                                "use p2p instruct with it, or give a text-to-image model.");
    }

    /// <summary>Refuses a model without the InstructPix2Pix image input.</summary>
    public void RequireInstructPix2Pix()
    {
        if (!IsInstructPix2Pix)
            throw new UserError($"{Name} is not an InstructPix2Pix model (its UNet takes {UNet.Config.InChannels} input channels, not the latent and the image's " +
                                $"latent, {2 * LatentChannels}); give an instruction model such as timbrooks/instruct-pix2pix to p2p instruct.");
    }

    /// <summary>Refuses UNets whose inputs are neither a latent nor a latent and an image latent (inpainting, depth).</summary>
    internal static void CheckUNetInputs(UNetConfig unet, VaeConfig vae, string where)
    {
        if (unet.InChannels != vae.LatentChannels && unet.InChannels != 2 * vae.LatentChannels)
            throw new UserError($"{where}: the UNet takes {unet.InChannels} input channels (an inpainting or depth model?); supported are text-to-image models " +
                                $"({vae.LatentChannels}) and InstructPix2Pix models ({2 * vae.LatentChannels}).");
    }

    /// <summary>
    /// Loads a diffusers folder (model_index.json) or a single-file checkpoint (.safetensors in the original
    /// CompVis / A1111 layout). <paramref name="log"/> receives warnings such as ignored weights.
    /// </summary>
    public static StableDiffusionModel Load(string path, ModelPlacement placement, Action<string>? log = null, SingleFileOptions? singleFile = null)
    {
        if (Directory.Exists(path)) return LoadDiffusersFolder(path, placement, log);
        if (File.Exists(path))
        {
            if (path.EndsWith(".ckpt", StringComparison.OrdinalIgnoreCase) || path.EndsWith(".pt", StringComparison.OrdinalIgnoreCase))
                throw new UserError($"{path} is a PyTorch pickle checkpoint, which is not loaded for safety. Convert it to .safetensors and try again.");
            return SingleFileCheckpoint.Load(path, placement, singleFile ?? new SingleFileOptions(), log);
        }
        throw new UserError($"Model not found: {path}. Pass a diffusers model folder (with model_index.json) or a .safetensors checkpoint.");
    }

    static StableDiffusionModel LoadDiffusersFolder(string folder, ModelPlacement placement, Action<string>? log)
    {
        var index = Path.Combine(folder, "model_index.json");
        if (!File.Exists(index))
            throw new UserError($"{folder} is not a diffusers model folder (no model_index.json). Pass the folder that contains model_index.json, or a .safetensors checkpoint.");
        JsonElement components;
        try { components = JsonDocument.Parse(File.ReadAllText(index)).RootElement.Clone(); }
        catch (JsonException e) { throw new UserError($"{index} is not valid JSON ({e.Message}). Replace the file."); }
        // A component the pipeline lacks is absent or [null, null] (as an SDXL refiner's text_encoder).
        bool Listed(string name) => components.ValueKind == JsonValueKind.Object && components.TryGetProperty(name, out var v) &&
                                    v.ValueKind == JsonValueKind.Array && v.GetArrayLength() > 0 && v[0].ValueKind == JsonValueKind.String;

        string Sub(string name) => Path.Combine(folder, name);
        var unetConfig = UNetConfig.From(ConfigOf(Sub("unet")));
        if (unetConfig.TextTimeConditioning && !Listed("text_encoder"))
            throw new UserError($"{folder} is an SDXL refiner (it has only the second text encoder and refines images); text-to-image and editing need an SDXL base model.");
        var textConfig = ClipTextConfig.From(ConfigOf(Sub("text_encoder")));
        var vaeConfig = VaeConfig.From(ConfigOf(Sub("vae")));
        var schedulerConfig = SchedulerConfig.From(ConfigJson.Load(Path.Combine(Sub("scheduler"), "scheduler_config.json")));
        CheckUNetInputs(unetConfig, vaeConfig, Path.Combine(Sub("unet"), "config.json"));
        var tokenizer = ClipTokenizer.Load(Sub("tokenizer"));

        var textEncoder = Component(new ClipTextModel(textConfig), Sub("text_encoder"), "model", placement, log);
        var unet = Component(new UNet2DConditionModel(unetConfig), Sub("unet"), "diffusion_pytorch_model", placement, log);
        bool xl = unetConfig.TextTimeConditioning;
        var vae = Component(new AutoencoderKL(vaeConfig), Sub("vae"), "diffusion_pytorch_model", VaePlacement(placement, vaeConfig, xl), log, VaeAttentionNames);
        return new StableDiffusionModel
        {
            Name = Path.GetFileName(Path.GetFullPath(folder).TrimEnd(Path.DirectorySeparatorChar)), Location = Path.GetFullPath(folder),
            Tokenizer = tokenizer, TextEncoder = textEncoder, UNet = unet, Vae = vae,
            Scheduler = schedulerConfig, Placement = placement,
            Tokenizer2 = xl ? ClipTokenizer.Load(Sub("tokenizer_2")) : null,
            TextEncoder2 = xl ? LoadTextEncoder(Sub("text_encoder_2"), placement, log) : null,
            ForceZerosForEmptyPrompt = xl && components.TryGetProperty("force_zeros_for_empty_prompt", out var zeros) && zeros.ValueKind == JsonValueKind.True,
        }.CheckXL(Path.Combine(Sub("unet"), "config.json"));
    }

    /// <summary>
    /// Checks what SDXL's UNet expects of the rest: the context width is both encoders' widths together, and the added
    /// embedding takes six time ids and the second encoder's projection (diffusers' <c>_get_add_time_ids</c> check).
    /// </summary>
    StableDiffusionModel CheckXL(string where)
    {
        if (!IsXL) return this;
        var c = UNet.Config;
        int width = TextEncoder.Config.HiddenSize + TextEncoder2!.Config.HiddenSize;
        if (c.CrossAttentionDim != width)
            throw new UserError($"{where}: cross_attention_dim {c.CrossAttentionDim} is not the two text encoders' widths together ({width}); the folder mixes models.");
        int added = TextTimeConditioning.TimeIdCount * c.AdditionTimeEmbedDim + TextEncoder2.Config.ProjectionDim;
        if (c.ProjectionClassEmbeddingsInputDim != added)
            throw new UserError($"{where}: projection_class_embeddings_input_dim {c.ProjectionClassEmbeddingsInputDim} is not {TextTimeConditioning.TimeIdCount} time ids x " +
                                $"{c.AdditionTimeEmbedDim} + the second text encoder's projection_dim ({added}); a refiner (which adds an aesthetic score) is not a text-to-image model.");
        return this;
    }

    /// <summary>
    /// Where the VAE runs: in float32 instead of float16 for SDXL VAEs with <c>force_upcast</c> (their activations overflow
    /// float16 and decode to black images; diffusers' SDXL pipeline upcasts them the same way), else as the model.
    /// </summary>
    internal static ModelPlacement VaePlacement(ModelPlacement placement, VaeConfig config, bool xl) =>
        xl && config.ForceUpcast && placement.DType == ScalarType.Float16 ? placement with { DType = ScalarType.Float32 } : placement;

    /// <summary>The dtype the VAE's weights are in (see <see cref="VaePlacement"/>).</summary>
    public ScalarType VaeDType => Vae.parameters().First().dtype;

    /// <summary>A text encoder of a diffusers folder (<c>text_encoder/</c>, <c>text_encoder_2/</c>), alone.</summary>
    public static ClipTextModel LoadTextEncoder(string folder, ModelPlacement placement, Action<string>? log = null) =>
        Component(new ClipTextModel(ClipTextConfig.From(ConfigOf(folder))), folder, "model", placement, log);

    /// <summary>The VAE of a diffusers folder's <c>vae/</c>, alone.</summary>
    public static AutoencoderKL LoadVae(string folder, ModelPlacement placement, Action<string>? log = null) =>
        Component(new AutoencoderKL(VaeConfig.From(ConfigOf(folder))), folder, "diffusion_pytorch_model", placement, log, VaeAttentionNames);

    /// <summary>The UNet of a diffusers folder's <c>unet/</c>, alone.</summary>
    public static UNet2DConditionModel LoadUNet(string folder, ModelPlacement placement, Action<string>? log = null) =>
        Component(new UNet2DConditionModel(UNetConfig.From(ConfigOf(folder))), folder, "diffusion_pytorch_model", placement, log);

    static ConfigJson ConfigOf(string folder) => ConfigJson.Load(Path.Combine(folder, "config.json"));

    /// <summary>Loads one component's weights (<paramref name="weights"/>.safetensors in <paramref name="folder"/>, float16 files preferred for half precision) into <paramref name="module"/>.</summary>
    static T Component<T>(T module, string folder, string weights, ModelPlacement placement, Action<string>? log,
                          Func<string, IEnumerable<(string, Func<Tensor, Tensor>?)>>? rename = null) where T : nn.Module
    {
        LoadComponent(module, WeightLoader.ComponentFiles(folder, weights, placement.DType != ScalarType.Float32), Path.GetFileName(folder), placement, log, rename);
        return module;
    }

    /// <summary>Newer diffusers VAE checkpoints name the mid-block attention like the UNet's; map to the original names.</summary>
    internal static IEnumerable<(string, Func<Tensor, Tensor>?)> VaeAttentionNames(string key)
    {
        foreach (var (from, to) in new[] { (".to_q.", ".query."), (".to_k.", ".key."), (".to_v.", ".value."), (".to_out.0.", ".proj_attn.") })
            if (key.Contains(".attentions.") && key.Contains(from))
                return [(key.Replace(from, to), null)];
        return [(key, null)];
    }

    static readonly HashSet<string> KnownBuffers = ["text_model.embeddings.position_ids"];

    static void LoadComponent(nn.Module module, string[] files, string name, ModelPlacement placement, Action<string>? log,
                              Func<string, IEnumerable<(string, Func<Tensor, Tensor>?)>>? rename)
    {
        using var raw = TensorSource.Open($"{name} ({string.Join(", ", files.Select(Path.GetFileName))})", files);
        using var source = rename is null ? null : raw.Map(raw.Description, rename);
        var unexpected = WeightLoader.Load(module, source ?? raw, placement.Device, placement.DType, KnownBuffers);
        if (unexpected.Count > 0)
            log?.Invoke($"warning: {name}: {unexpected.Count} weight(s) in the file are not used by the model, e.g. {string.Join(", ", unexpected.Take(5))}");
        module.eval();
    }

    string? _fingerprint;

    /// <summary>
    /// Identity of the model's numbers: SHA-256 (first 16 hex digits) over the configs, the tokenizer size and, for
    /// every parameter in name order, its name, shape and up to 256 evenly spaced values. The same weights give the
    /// same fingerprint whether loaded from a diffusers folder or a single file; float16 and float32 copies differ.
    /// </summary>
    public string Fingerprint => _fingerprint ??= ComputeFingerprint();

    string ComputeFingerprint()
    {
        using var sha = System.Security.Cryptography.SHA256.Create();
        void Add(string text) { var b = System.Text.Encoding.UTF8.GetBytes(text + "\n"); sha.TransformBlock(b, 0, b.Length, null, 0); }
        Add(JsonSerializer.Serialize(new object[] { UNet.Config, Vae.Config, TextEncoder.Config, Tokenizer.VocabSize, Tokenizer.MaxLength }));
        using var _ = no_grad();
        foreach (var module in new nn.Module?[] { TextEncoder, TextEncoder2, UNet, Vae }.OfType<nn.Module>())
            foreach (var (name, p) in module.named_parameters().OrderBy(p => p.name, StringComparer.Ordinal))
            {
                Add($"{name} [{string.Join(",", p.shape)}]");
                using var flat = p.detach().flatten();
                long count = flat.shape[0], stride = Math.Max(1, count / 256);
                using var sample = flat[TensorIndex.Slice(0, count, stride)].to(ScalarType.Float32).cpu().contiguous();
                var bytes = sample.bytes.ToArray();
                sha.TransformBlock(bytes, 0, bytes.Length, null, 0);
            }
        sha.TransformFinalBlock([], 0, 0);
        return Convert.ToHexString(sha.Hash!)[..16].ToLowerInvariant();
    }

    public void Dispose()
    {
        TextEncoder.Dispose();
        TextEncoder2?.Dispose();
        UNet.Dispose();
        Vae.Dispose();
    }
}
