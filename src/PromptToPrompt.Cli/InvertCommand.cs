using System.CommandLine;
using PromptToPrompt.Editing;
using PromptToPrompt.Imaging;
using PromptToPrompt.Loading;
using PromptToPrompt.Pipelines;

namespace PromptToPrompt.Cli;

/// <summary><c>p2p invert</c>: invert a photo (DDIM, null-text or negative-prompt inversion) and save the result.</summary>
static class InvertCommand
{
    /// <summary>The options describing how a photo is inverted, shared with <c>p2p edit --image</c>.</summary>
    internal sealed record PhotoOptions(Option<string?> Method, Option<int?> InnerSteps, Option<string?> Fit)
    {
        public static PhotoOptions Create() => new(
            new Option<string?>("--method") { Description = "null-text (default), negative-prompt, direct (PnP inversion: the source follows the DDIM trajectory exactly) or ddim." },
            new Option<int?>("--inner-steps") { Description = "Null-text: Adam iterations per step (default 10)." },
            new Option<string?>("--fit") { Description = "crop (default: centre-crop to the model's aspect, as the reference) or pad (keep the whole photo, pad with black)." });

        public IEnumerable<Option> All => [Method, InnerSteps, Fit];

        public InversionMethod ParseMethod(ParseResult r) => r.GetValue(Method) switch
        {
            null or "null-text" => InversionMethod.NullText,
            "negative-prompt" => InversionMethod.NegativePrompt,
            "ddim" => InversionMethod.Ddim,
            "direct" => InversionMethod.Direct,
            var m => throw new UserError($"Unknown inversion method '{m}'. Use null-text, negative-prompt, direct or ddim."),
        };

        public FitMode ParseFit(ParseResult r) => ParseFitOrNull(r.GetValue(Fit)) ?? FitMode.Crop;

        /// <summary>crop, pad, or null when not given.</summary>
        public static FitMode? ParseFitOrNull(string? fit) => fit switch
        {
            null => null,
            "crop" => FitMode.Crop,
            "pad" => FitMode.Pad,
            var f => throw new UserError($"Unknown --fit '{f}'. Use crop or pad."),
        };
    }

    public static Command Create()
    {
        var model = CliSupport.Model();
        var image = new Option<string>("--image", "-i") { Description = "Photo to invert (PNG or JPEG).", Required = true };
        var prompt = new Option<string>("--prompt", "-p") { Description = "A prompt describing the photo (the source prompt of later edits).", Required = true };
        var steps = CliSupport.Steps();
        var guidance = CliSupport.Guidance();
        var width = CliSupport.Width();
        var height = CliSupport.Height();
        var photo = PhotoOptions.Create();
        var reconstruction = new Option<string?>("--reconstruction") { Description = "Also write the image that sampling from the inversion reproduces." };
        var overwrite = CliSupport.Overwrite();
        var output = new Option<string>("--out", "-o") { Description = "Output inversion file (.safetensors): x_T and null_embeddings.", Required = true };
        var modelOptions = CliSupport.ModelOptions.Create();
        var command = new Command("invert", "Invert a photo so that it can be edited with Prompt-to-Prompt.")
        {
            model, image, prompt, steps, guidance, width, height, reconstruction, overwrite, output,
        };
        foreach (var o in photo.All.Concat(modelOptions.All)) command.Options.Add(o);
        command.SetAction(r => CliSupport.Run(() =>
        {
            var outPath = r.GetValue(output)!;
            var recPath = r.GetValue(reconstruction);
            foreach (var f in new[] { outPath, recPath }.OfType<string>()) AtomicFile.EnsureWritable(f, r.GetValue(overwrite));
            var settings = new InversionSettings(photo.ParseMethod(r), r.GetValue(steps), r.GetValue(photo.InnerSteps) ?? 10, r.GetValue(guidance));
            settings.Validate();
            using var sd = modelOptions.Load(r, r.GetValue(model));
            using var inverted = Run(sd, r.GetValue(image)!, r.GetValue(prompt)!, settings, photo.ParseFit(r), r.GetValue(width), r.GetValue(height));
            double psnr = inverted.Psnr;
            Console.Error.WriteLine($"reconstruction PSNR {psnr:F2} dB against the input photo (at {inverted.Fitted.Width}x{inverted.Fitted.Height})");
            InversionFile.Save(outPath, inverted.Result, sd, r.GetValue(image)!, photo.ParseFit(r), inverted.Fitted.Width, inverted.Fitted.Height, psnr);
            Console.WriteLine(outPath);
            if (recPath is not null)
            {
                Png.Save(recPath, inverted.Reconstruction, new Dictionary<string, string> { ["prompt"] = r.GetValue(prompt)!, ["reconstruction_psnr_db"] = $"{psnr:F2}" });
                Console.WriteLine(recPath);
            }
            return 0;
        }));
        return command;
    }

    /// <summary>Inverts a photo through the editing layer, with progress on the console.</summary>
    internal static PhotoInversion Run(StableDiffusionModel model, string imagePath, string prompt, InversionSettings settings, FitMode fit, int? width, int? height)
    {
        Console.Error.WriteLine($"inverting {imagePath} ({InversionFile.MethodName(settings.Method)})");
        return EditSession.InvertPhoto(model, imagePath, prompt, settings, fit, width, height, new ConsoleProgress("inversion"),
            new ConsoleProgress("reconstruction"), CliSupport.Cancellation);
    }
}
