using System.CommandLine;
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

        var command = new Command("generate", "Generate images from text.")
        {
            model, prompt, saveLatents, overwrite, output,
        };
        foreach (var o in sampling.All.Concat(modelOptions.All)) command.Options.Add(o);
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
            var result = pipeline.Generate(sampling.Request(r, prompts, initial, seedValue), new ConsoleProgress("denoising"), null, CliSupport.Cancellation);
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
