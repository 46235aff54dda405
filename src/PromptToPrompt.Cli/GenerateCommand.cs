using System.CommandLine;
using PromptToPrompt.Control;
using PromptToPrompt.Imaging;
using PromptToPrompt.Loading;
using PromptToPrompt.Pipelines;

namespace PromptToPrompt.Cli;

/// <summary><c>p2p generate</c>: plain text-to-image.</summary>
static class GenerateCommand
{
    public static Command Create()
    {
        var model = CliSupport.Model();
        var prompt = new Option<string[]>("--prompt", "-p") { Description = "Prompt (repeat for a batch).", Required = true };
        var sampling = CliSupport.SamplingOptions.Create();
        var saveLatents = new Option<string?>("--save-latents") { Description = "Write the final latents (before VAE decoding) as tensor 'latents' [N, C, H/8, W/8]." };
        var modelOptions = CliSupport.ModelOptions.Create();
        var overwrite = CliSupport.Overwrite();
        var output = new Option<string>("--out", "-o") { Description = "Output PNG (with several prompts: NAME_0.png, NAME_1.png, ...).", Required = true };
        var excite = ExciteOptions.Create();
        var boxes = BoxOptions.Create();

        var command = new Command("generate", "Generate images from text.")
        {
            model, prompt, saveLatents, overwrite, output,
        };
        foreach (var o in sampling.All.Concat(modelOptions.All).Concat(excite.All).Concat(boxes.All)) command.Options.Add(o);
        command.SetAction(r => CliSupport.Run(() =>
        {
            var prompts = r.GetValue(prompt)!;
            var outPaths = OutputPaths(r.GetValue(output)!, prompts.Length);
            var latentsPath = r.GetValue(saveLatents);
            bool replace = r.GetValue(overwrite);
            foreach (var p in outPaths.Append(latentsPath).OfType<string>()) AtomicFile.EnsureWritable(p, replace);
            var (initial, seedValue) = sampling.Prepare(r);
            using var _ = initial;
            using var sd = modelOptions.Load(r, r.GetValue(model));
            var pipeline = new StableDiffusionPipeline(sd, CliSupport.Warn);
            var request = sampling.Request(r, prompts, initial, seedValue) with { Excite = excite.Settings(r, sd, prompts), Boxes = boxes.Settings(r, sd, prompts) };
            var result = pipeline.Generate(request, new ConsoleProgress("denoising"), null, CliSupport.Cancellation);
            if (result.Excite is { } steps) Console.Error.WriteLine(AttendAndExcite.Summary(steps));
            using (result.Latents)
            {
                for (int i = 0; i < prompts.Length; i++)
                {
                    var text = new Dictionary<string, string>(result.Parameters) { ["prompt"] = prompts[i] };
                    Png.Save(outPaths[i], result.Images[i], text);
                    Console.WriteLine(outPaths[i]);
                }
                if (latentsPath is not null)
                {
                    SafetensorsFile.Write(latentsPath, new Dictionary<string, TorchSharp.torch.Tensor> { ["latents"] = result.Latents },
                        new Dictionary<string, string>(result.Parameters));
                    Console.WriteLine(latentsPath);
                }
            }
            return 0;
        }));
        return command;
    }

    static string[] OutputPaths(string path, int count)
    {
        if (!path.EndsWith(".png", StringComparison.OrdinalIgnoreCase))
            throw new UserError($"--out {path}: the output must be a .png file.");
        if (count == 1) return [path];
        var stem = path[..^4];
        return Enumerable.Range(0, count).Select(i => $"{stem}_{i}.png").ToArray();
    }
}

/// <summary>The Directed Diffusion options (<c>--box word=left,right,top,bottom</c>, repeatable, and its settings).</summary>
sealed record BoxOptions(Option<string[]> Boxes, Option<int> Steps, Option<int> Trailing, Option<double> Strength)
{
    public static BoxOptions Create() => new(
        new Option<string[]>("--box") { Description = "Directed Diffusion: place a word's object in a box, word=left,right,top,bottom as fractions of the image (repeat for more objects)." },
        new Option<int>("--box-steps") { Description = "Edit the attention during the first N steps (the reference's num_affected_steps).", DefaultValueFactory = _ => 10 },
        new Option<int>("--box-trailing") { Description = "Trailing attention maps (end token and padding) edited with each object (num_trailing_attn).", DefaultValueFactory = _ => 10 },
        new Option<double>("--box-strength") { Description = "Amplification of the attention inside a box (the reference's noise_scale).", DefaultValueFactory = _ => 1.0 });

    public IEnumerable<Option> All => [Boxes, Steps, Trailing, Strength];
    public bool Given(ParseResult r) => r.GetValue(Boxes) is { Length: > 0 };

    public DirectedSettings? Settings(ParseResult r, StableDiffusionModel model, IReadOnlyList<string> prompts)
    {
        if (r.GetValue(Boxes) is not { Length: > 0 } given) return null;
        if (prompts.Count != 1) throw new UserError("--box places the objects of one prompt at a time: give a single --prompt.");
        var regions = given.Select(text => DirectedRegion.Parse(model.Tokenizer, prompts[0], text, $"--box {text}")).ToList();
        var settings = new DirectedSettings { Regions = regions, Steps = r.GetValue(Steps), Trailing = r.GetValue(Trailing), Strength = r.GetValue(Strength) };
        settings.Validate();
        return settings;
    }
}

/// <summary>The Attend-and-Excite options (<c>--excite WORDS</c> and its settings), shared by the commands that generate.</summary>
sealed record ExciteOptions(Option<string?> Words, Option<int> Steps, Option<double> Scale, Option<string?> Thresholds, Option<bool> NormalizeEot)
{
    public static ExciteOptions Create() => new(
        new Option<string?>("--excite") { Description = "Attend-and-Excite: the subject words that must appear, comma-separated (e.g. cat,frog)." },
        new Option<int>("--excite-steps") { Description = "Update the latent during the first N steps (the reference's max_iter_to_alter).", DefaultValueFactory = _ => 25 },
        new Option<double>("--excite-scale") { Description = "Step size factor (the reference's scale_factor).", DefaultValueFactory = _ => 20 },
        new Option<string?>("--excite-thresholds") { Description = "Iterative refinement as step:value pairs (default 0:0.05,10:0.5,20:0.8)." },
        new Option<bool>("--excite-normalize-eot") { Description = "Softmax over the prompt's own tokens only (the reference's SD 2.1 setting)." });

    public IEnumerable<Option> All => [Words, Steps, Scale, Thresholds, NormalizeEot];
    public bool Given(ParseResult r) => r.GetValue(Words) is not null;

    public ExciteSettings? Settings(ParseResult r, StableDiffusionModel model, IReadOnlyList<string> prompts)
    {
        if (r.GetValue(Words) is not { } words) return null;
        if (prompts.Count != 1) throw new UserError("--excite guides one prompt at a time: give a single --prompt.");
        var subjects = words.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries);
        var settings = new ExciteSettings
        {
            TokenIndices = AttendAndExcite.SubjectTokens(model.Tokenizer, prompts[0], subjects),
            MaxIterToAlter = r.GetValue(Steps), ScaleFactor = r.GetValue(Scale), NormalizeEot = r.GetValue(NormalizeEot),
        };
        if (r.GetValue(Thresholds) is { } text) settings = settings with { Thresholds = ParseThresholds(text) };
        settings.Validate();
        return settings;
    }

    static Dictionary<int, double> ParseThresholds(string text)
    {
        var result = new Dictionary<int, double>();
        foreach (var pair in text.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries))
        {
            var parts = pair.Split(':');
            if (parts.Length != 2 || !int.TryParse(parts[0], out var step) ||
                !Numbers.TryParseFinite(parts[1], out var value))
                throw new UserError($"--excite-thresholds {text}: '{pair}' is not step:value. Write e.g. 0:0.05,10:0.5,20:0.8.");
            result[step] = value;
        }
        return result;
    }
}
