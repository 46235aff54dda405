using System.Globalization;
using System.Security.Cryptography;
using PromptToPrompt.Imaging;
using PromptToPrompt.Loading;
using TorchSharp;
using static TorchSharp.torch;

namespace PromptToPrompt.Pipelines;

/// <summary>
/// A saved inversion: safetensors with <c>x_T</c> [1, C, h, w] and <c>null_embeddings</c> [steps, tokens, dim] (one per
/// sampling step, in sampling order), and in <c>__metadata__</c> the prompt, every setting, the model's name and
/// fingerprint, and the photo's SHA-256.
/// </summary>
/// A direct inversion also keeps <c>ddim_latents</c> [steps + 1, C, h, w], the trajectory its source is put back onto.
public sealed record InversionFile(Tensor XT, Tensor NullEmbeddings, IReadOnlyDictionary<string, string> Metadata, Tensor? DdimLatents = null) : IDisposable
{
    public const string Format = "p2p-inversion/1";

    public string Prompt => Metadata["prompt"];
    public int Steps => int.Parse(Metadata["steps"], CultureInfo.InvariantCulture);
    public double GuidanceScale => double.Parse(Metadata["guidance_scale"], CultureInfo.InvariantCulture);
    /// <summary>The null embeddings as the pipeline takes them: [steps, 1, tokens, dim].</summary>
    public Tensor PerStepUnconditional => NullEmbeddings.unsqueeze(1);

    public static string Sha256(string path)
    {
        using var stream = File.OpenRead(path);
        return Convert.ToHexString(SHA256.HashData(stream)).ToLowerInvariant();
    }

    public static void Save(string path, InversionResult result, StableDiffusionModel model, string imagePath, FitMode fit, int width, int height, double psnr)
    {
        var inv = CultureInfo.InvariantCulture;
        var s = result.Settings;
        var metadata = new Dictionary<string, string>
        {
            ["format"] = Format,
            ["prompt"] = result.Prompt,
            ["method"] = MethodName(s.Method),
            ["steps"] = s.Steps.ToString(inv),
            ["inner_steps"] = s.InnerSteps.ToString(inv),
            ["guidance_scale"] = s.GuidanceScale.ToString("R", inv),
            ["early_stop_epsilon"] = s.EarlyStopEpsilon.ToString("R", inv),
            ["scheduler"] = "ddim",
            ["model"] = model.Name,
            ["model_fingerprint"] = model.Fingerprint,
            ["image"] = Path.GetFileName(imagePath),
            ["image_sha256"] = Sha256(imagePath),
            ["fit"] = fit.ToString().ToLowerInvariant(),
            ["width"] = width.ToString(inv),
            ["height"] = height.ToString(inv),
            ["reconstruction_psnr_db"] = psnr.ToString("F2", inv),
        };
        using var embeddings = result.NullEmbeddings.squeeze(1);
        var tensors = new Dictionary<string, Tensor> { ["x_T"] = result.XT, ["null_embeddings"] = embeddings };
        using var ddim = s.Method == InversionMethod.Direct ? result.DdimLatents.squeeze(1) : null;
        if (ddim is not null) tensors["ddim_latents"] = ddim;
        SafetensorsFile.Write(path, tensors, metadata);
    }

    public static string MethodName(InversionMethod m) => m switch
    {
        InversionMethod.NullText => "null-text", InversionMethod.NegativePrompt => "negative-prompt", InversionMethod.Direct => "direct", _ => "ddim",
    };

    public static InversionFile Load(string path)
    {
        using var file = new SafetensorsFile(path);
        foreach (var name in new[] { "x_T", "null_embeddings" })
            if (!file.Entries.ContainsKey(name))
                throw new UserError($"{path} is not an inversion file (no tensor '{name}'). Make one with p2p invert.");
        foreach (var key in new[] { "prompt", "steps", "guidance_scale", "model_fingerprint" })
            if (!file.Metadata.ContainsKey(key))
                throw new UserError($"{path} lacks the '{key}' metadata of an inversion file. Make it again with p2p invert.");
        if (!int.TryParse(file.Metadata["steps"], NumberStyles.None, CultureInfo.InvariantCulture, out var steps) || steps <= 0
            || !double.TryParse(file.Metadata["guidance_scale"], NumberStyles.Float, CultureInfo.InvariantCulture, out var g) || !double.IsFinite(g))
            throw new UserError($"{path}: its 'steps' ({file.Metadata["steps"]}) or 'guidance_scale' ({file.Metadata["guidance_scale"]}) metadata is not a valid number. Make it again with p2p invert.");
        const string again = "The file is corrupt: invert the photo again.";
        var xT = file.ReadUserTensor("x_T", 4, again);
        var nulls = file.ReadUserTensor("null_embeddings", 3, again);
        bool direct = file.Metadata.GetValueOrDefault("method") == "direct";
        if (direct && !file.Entries.ContainsKey("ddim_latents"))
            throw new UserError($"{path} is a direct inversion without its trajectory (tensor 'ddim_latents'). Invert the photo again.");
        var ddim = direct ? file.ReadUserTensor("ddim_latents", 4, again) : null;
        var result = new InversionFile(xT, nulls, file.Metadata, ddim);
        // The ranks are checked by ReadUserTensor; here, that the shapes fit the steps and each other.
        if (xT.shape[0] != 1 || nulls.shape[0] != steps
            || (ddim is not null && (ddim.shape[0] != steps + 1 || !ddim.shape[1..].SequenceEqual(xT.shape[1..]))))
            throw new UserError($"{path}: x_T [{string.Join(",", xT.shape)}], null_embeddings [{string.Join(",", nulls.shape)}] or ddim_latents do not fit {steps} steps. The file is corrupt: invert again.");
        return result;
    }

    /// <summary>Refuses to edit with an inversion made by another model or for a different step count.</summary>
    public void CheckCompatible(StableDiffusionModel model, int? steps)
    {
        if (Metadata["model_fingerprint"] != model.Fingerprint)
            throw new UserError($"This inversion was made with model '{Metadata.GetValueOrDefault("model", "?")}' (fingerprint {Metadata["model_fingerprint"]}), " +
                                $"not with '{model.Name}' (fingerprint {model.Fingerprint}) in this precision. Invert the image again with this model.");
        if (steps is int s && s != Steps)
            throw new UserError($"This inversion has {Steps} steps; editing it needs the same number (got --steps {s}). Drop --steps or invert again with --steps {s}.");
    }

    public void Dispose()
    {
        XT.Dispose();
        NullEmbeddings.Dispose();
        DdimLatents?.Dispose();
    }
}
