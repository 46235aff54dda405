using System.CommandLine;
using System.Globalization;
using PromptToPrompt.Imaging;
using PromptToPrompt.Loading;
using PromptToPrompt.Pipelines;

namespace PromptToPrompt.Cli;

/// <summary><c>p2p instruct</c>: edit a photo by an instruction with an InstructPix2Pix model.</summary>
static class InstructCommand
{
    public static Command Create()
    {
        var model = CliSupport.Model();
        model.Description = "An InstructPix2Pix model: diffusers folder (UNet in_channels 8, e.g. timbrooks/instruct-pix2pix) or single-file .safetensors (default: the shipped models/shapes-instruct).";
        var image = new Option<string>("--image", "-i") { Description = "Photo to edit (PNG or JPEG).", Required = true };
        var instruction = new Option<string>("--instruction") { Description = "What to change, e.g. \"make the circle blue\".", Required = true };
        var guidance = new Option<string>("--guidance") { Description = "Text guidance s_T; a list (5,7.5,10) makes a grid.", DefaultValueFactory = _ => "7.5" };
        var imageGuidance = new Option<string>("--image-guidance") { Description = "Image guidance s_I; a list (1,1.5,2) makes a grid.", DefaultValueFactory = _ => "1.5" };
        var steps = CliSupport.Steps(100);
        var seed = CliSupport.Seed();
        var negative = CliSupport.NegativePrompt();
        var scheduler = CliSupport.Scheduler();
        var width = new Option<int?>("--width") { Description = "Edit at this width (a multiple of 8; default: the photo's own size rounded down to a multiple of 8)." };
        var height = new Option<int?>("--height") { Description = "Edit at this height (a multiple of 8; with only one of the two, the aspect ratio is kept)." };
        var fit = new Option<string?>("--fit") { Description = "crop (default) or pad, when --width/--height (or the model's size) differ from the photo's aspect." };
        var saveLatents = new Option<string?>("--save-latents") { Description = "Write the final latents (before VAE decoding) as tensor 'latents' [1, 4, H/8, W/8]." };
        var overwrite = CliSupport.Overwrite();
        var output = new Option<string>("--out", "-o") { Description = "Output PNG (the edit, or the labelled s_I x s_T grid).", Required = true };
        var modelOptions = CliSupport.ModelOptions.Create();
        var command = new Command("instruct", "Edit a photo by an instruction (InstructPix2Pix).")
        {
            model, image, instruction, guidance, imageGuidance, steps, seed, negative, scheduler, width, height, fit, saveLatents, overwrite, output,
        };
        foreach (var o in modelOptions.All) command.Options.Add(o);
        command.SetAction(r => CliSupport.Run(() =>
        {
            var outPath = r.GetValue(output)!;
            if (!outPath.EndsWith(".png", StringComparison.OrdinalIgnoreCase)) throw new UserError($"--out {outPath}: the output must be a .png file.");
            var textScales = Scales(r.GetValue(guidance)!, "--guidance");
            var imageScales = Scales(r.GetValue(imageGuidance)!, "--image-guidance");
            bool grid = textScales.Length > 1 || imageScales.Length > 1;
            var latentsPath = r.GetValue(saveLatents);
            if (grid && latentsPath is not null) throw new UserError("--save-latents writes one edit's latents; give single --guidance and --image-guidance values with it.");
            foreach (var p in new[] { outPath, latentsPath }.OfType<string>()) AtomicFile.EnsureWritable(p, r.GetValue(overwrite));
            var fitMode = InvertCommand.PhotoOptions.ParseFitOrNull(r.GetValue(fit));
            var photo = ImageInput.LoadUpright(r.GetValue(image)!);
            var request = new InstructRequest
            {
                Image = photo, Instruction = r.GetValue(instruction)!, NegativePrompt = r.GetValue(negative) ?? "", Steps = r.GetValue(steps),
                GuidanceScale = textScales[0], ImageGuidanceScale = imageScales[0], Scheduler = r.GetValue(scheduler),
            };
            foreach (var (si, st) in imageScales.SelectMany(si => textScales.Select(st => (si, st))))
                InstructPix2PixPipeline.Validate(request with { ImageGuidanceScale = si, GuidanceScale = st });
            long seedValue = r.GetValue(seed) ?? Random.Shared.NextInt64(0, 1L << 32);
            Console.Error.WriteLine($"seed {seedValue}");
            using var sd = modelOptions.Load(r, r.GetValue(model) ?? CliSupport.DefaultModel("shapes-instruct"));
            var pipeline = new InstructPix2PixPipeline(sd, CliSupport.Warn);
            request = request with { Image = pipeline.PrepareImage(photo, r.GetValue(width), r.GetValue(height), fitMode), Seed = seedValue };
            if (request.Image.Width != photo.Width || request.Image.Height != photo.Height)
                Console.Error.WriteLine($"editing at {request.Image.Width}x{request.Image.Height} (the photo is {photo.Width}x{photo.Height})");
            if (!grid)
            {
                using var result = pipeline.Edit(request, new ConsoleProgress("instruct"), CliSupport.Cancellation);
                Png.Save(outPath, result.Image, result.Parameters);
                Console.WriteLine(outPath);
                if (latentsPath is not null)
                {
                    SafetensorsFile.Write(latentsPath, new Dictionary<string, TorchSharp.torch.Tensor> { ["latents"] = result.Latents },
                        new Dictionary<string, string>(result.Parameters));
                    Console.WriteLine(latentsPath);
                }
                return 0;
            }
            int count = imageScales.Length * textScales.Length;
            var (gridImage, cells) = pipeline.Grid(request, imageScales, textScales, (i, si, st) =>
                new ConsoleProgress(string.Format(CultureInfo.InvariantCulture, "edit {0}/{1} (image {2}, text {3})", i + 1, count, si, st)),
                CliSupport.Cancellation);
            var text = new Dictionary<string, string>(cells[0].Parameters)
            {
                ["grid"] = $"rows: image guidance {string.Join(", ", imageScales.Select(Invariant))}; columns: text guidance {string.Join(", ", textScales.Select(Invariant))}",
            };
            foreach (var c in cells) c.Dispose();
            Png.Save(outPath, gridImage, text);
            Console.WriteLine(outPath);
            return 0;
        }));
        return command;
    }

    static string Invariant(double x) => x.ToString(CultureInfo.InvariantCulture);

    /// <summary>"7.5" or "5,7.5,10" as numbers.</summary>
    internal static double[] Scales(string text, string option)
    {
        var parts = text.Split(',', StringSplitOptions.TrimEntries);
        var values = new double[parts.Length];
        for (int i = 0; i < parts.Length; i++)
            if (!Numbers.TryParseFinite(parts[i], out values[i]))
                throw new UserError($"{option} {text}: '{parts[i]}' is not a finite number. Give a number or a comma-separated list, e.g. {option} 5,7.5,10.");
        return values;
    }
}
