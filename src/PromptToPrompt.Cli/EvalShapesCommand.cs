using System.CommandLine;
using PromptToPrompt.Imaging;
using PromptToPrompt.Pipelines;
using PromptToPrompt.Training;

namespace PromptToPrompt.Cli;

/// <summary><c>p2p eval-shapes</c>: measure colour fidelity, layout preservation and local blending on the shapes model.</summary>
static class EvalShapesCommand
{
    public static Command Create()
    {
        var model = new Option<string?>("--model", "-m") { Description = "Model folder (default: the shipped shapes model)." };
        var samples = new Option<int>("--samples") { Description = "Samples per measure.", DefaultValueFactory = _ => 20 };
        var seed = new Option<long>("--seed") { Description = "Seed of the captions and the noise.", DefaultValueFactory = _ => 0 };
        var steps = CliSupport.Steps(20);
        var guidance = CliSupport.Guidance();
        var cross = new Option<double>("--cross-replace") { Description = "cross_replace_steps of the word swaps.", DefaultValueFactory = _ => 0.8 };
        var self = new Option<double>("--self-replace") { Description = "self_replace_steps of the word swaps.", DefaultValueFactory = _ => 0.4 };
        var blend = new Option<double>("--blend-threshold") { Description = "Local-blend mask threshold of the blended edits.", DefaultValueFactory = _ => 0.3 };
        var show = new Option<string?>("--save-edits") { Description = "Folder to write one captioned grid per word-swap sample (source, edit, plain regeneration, edit with local blend) and per pix2pix-zero sample (scene, pix2pix-zero, Prompt-to-Prompt)." };
        var inversion = new Option<int>("--inversion-samples")
        {
            Description = "Scenes to invert with DDIM, negative-prompt and null-text inversion, for their reconstruction PSNR (0: skip).",
            DefaultValueFactory = _ => 5,
        };
        var guided = new Option<int>("--guidance-samples")
        {
            Description = "Samples of each attention-guidance measure: objects drawn with and without Attend-and-Excite, objects in their box with and without Directed Diffusion (0: skip).",
            DefaultValueFactory = _ => 10,
        };
        var zero = new Option<int>("--zero-samples")
        {
            Description = "Drawn scenes recoloured by pix2pix-zero and by Prompt-to-Prompt after null-text inversion (0: skip).",
            DefaultValueFactory = _ => 10,
        };
        var modelOptions = CliSupport.ModelOptions.Create();
        var command = new Command("eval-shapes", "Measure the shapes model: colour accuracy, word-swap mask IoU with and without injection, local blend, VAE and inversion reconstruction, attention guidance, pix2pix-zero.")
        {
            model, samples, seed, steps, guidance, cross, self, blend, show, inversion, guided, zero,
        };
        foreach (var o in modelOptions.All) command.Options.Add(o);
        command.SetAction(r => CliSupport.Run(() =>
        {
            if (r.GetValue(samples) < 1) throw new UserError($"--samples must be at least 1; got {r.GetValue(samples)}.");
            if (r.GetValue(guided) < 0) throw new UserError($"--guidance-samples must be 0 (skip) or more; got {r.GetValue(guided)}.");
            if (r.GetValue(zero) < 0) throw new UserError($"--zero-samples must be 0 (skip) or more; got {r.GetValue(zero)}.");
            if (r.GetValue(inversion) < 0) throw new UserError($"--inversion-samples must be 0 (skip) or more; got {r.GetValue(inversion)}.");
            using var sd = modelOptions.Load(r, r.GetValue(model));
            var pipeline = new StableDiffusionPipeline(sd, CliSupport.Warn);
            var evaluation = new ShapesEvaluation(pipeline, r.GetValue(steps), r.GetValue(guidance),
                r.GetValue(cross), r.GetValue(self), r.GetValue(blend));
            var folder = r.GetValue(show);
            if (folder != null) Directory.CreateDirectory(folder);
            Action<string, string[], RgbImage[]>? save = folder == null ? null : (name, prompts, images) =>
                Png.Save(Path.Combine(folder, $"edit_{name}.png"), Grid.WithCaptions(images,
                    images.Length == 4 ? [prompts[0], $"{prompts[1]} (injected)", "plain regeneration", "injected, local blend"] : prompts, images.Length),
                    new Dictionary<string, string> { ["prompts"] = string.Join(" | ", prompts) });
            var status = new StatusLine();
            var report = evaluation.Run(r.GetValue(samples), r.GetValue(seed), status, save);
            Console.WriteLine(report.ToTable());
            if (r.GetValue(inversion) is > 0 and var n)
            {
                var inverted = evaluation.MeasureInversion(n, r.GetValue(seed), status);
                Console.WriteLine(inverted.ToTable());
            }
            if (r.GetValue(guided) is > 0 and var g)
            {
                var guidedReport = new GuidanceEvaluation(pipeline, r.GetValue(steps), r.GetValue(guidance))
                    .Run(g, r.GetValue(seed), status);
                Console.WriteLine(guidedReport.ToTable());
            }
            if (r.GetValue(zero) is > 0 and var z)
            {
                var zeroReport = evaluation.MeasureZero(z, r.GetValue(seed), status, save);
                Console.WriteLine(zeroReport.ToTable());
            }
            return 0;
        }));
        return command;
    }
}
