using System.CommandLine;
using PromptToPrompt.Imaging;
using PromptToPrompt.Pipelines;
using PromptToPrompt.Training;

namespace PromptToPrompt.Cli;

/// <summary><c>p2p eval-instruct</c>: instruction edits of drawn scenes, beside Prompt-to-Prompt after null-text inversion.</summary>
static class EvalInstructCommand
{
    public static Command Create()
    {
        var model = new Option<string?>("--model", "-m") { Description = "InstructPix2Pix model (default: the shipped models/shapes-instruct)." };
        var p2pModel = new Option<string?>("--p2p-model") { Description = "Text-to-image model for the Prompt-to-Prompt side (default: the shipped shapes model)." };
        var samples = new Option<int>("--samples") { Description = "Drawn scenes per instruction kind.", DefaultValueFactory = _ => 20 };
        var p2pSamples = new Option<int>("--p2p-samples") { Description = "Of them, scenes also edited by Prompt-to-Prompt after null-text inversion (0: skip).", DefaultValueFactory = _ => 5 };
        var seed = new Option<long>("--seed") { Description = "Seed of the scenes, instructions and noise.", DefaultValueFactory = _ => 0 };
        var steps = CliSupport.Steps(20);
        var guidance = CliSupport.Guidance();
        var imageGuidance = new Option<double>("--image-guidance") { Description = "Image guidance scale s_I of the instruction edits.", DefaultValueFactory = _ => 1.5 };
        var scheduler = new Option<string?>("--scheduler") { Description = "Scheduler of the instruction edits: pndm, ddim, euler, euler-a or dpmpp-2m (default: the model's own)." };
        var show = new Option<string?>("--save-edits") { Description = "Folder to write one captioned grid per sample (scene, instruction edit, Prompt-to-Prompt edit)." };
        var modelOptions = CliSupport.ModelOptions.Create();
        var command = new Command("eval-instruct", "Measure an instruction model on drawn scenes, per instruction kind, beside Prompt-to-Prompt after null-text inversion.")
        {
            model, p2pModel, samples, p2pSamples, seed, steps, guidance, imageGuidance, scheduler, show,
        };
        foreach (var o in modelOptions.All) command.Options.Add(o);
        command.SetAction(r => CliSupport.Run(() =>
        {
            if (r.GetValue(samples) < 1) throw new UserError($"--samples must be at least 1; got {r.GetValue(samples)}.");
            if (r.GetValue(p2pSamples) < 0) throw new UserError($"--p2p-samples must be 0 (skip) or more; got {r.GetValue(p2pSamples)}.");
            InstructPix2PixPipeline.Validate(new InstructRequest
            {
                Image = new RgbImage(8, 8, new byte[192]), Instruction = "-", Steps = r.GetValue(steps), GuidanceScale = r.GetValue(guidance),
                ImageGuidanceScale = r.GetValue(imageGuidance), Scheduler = r.GetValue(scheduler),
            });
            using var ip2p = modelOptions.Load(r, r.GetValue(model) ?? CliSupport.DefaultModel("shapes-instruct"));
            var instruct = new InstructPix2PixPipeline(ip2p, CliSupport.Warn);
            using var sd = r.GetValue(p2pSamples) > 0 ? modelOptions.Load(r, r.GetValue(p2pModel)) : null;
            var evaluation = new InstructEvaluation(instruct, sd is null ? null : new StableDiffusionPipeline(sd, CliSupport.Warn),
                r.GetValue(steps), r.GetValue(guidance), r.GetValue(imageGuidance), r.GetValue(scheduler));
            var folder = r.GetValue(show);
            if (folder != null) Directory.CreateDirectory(folder);
            Action<string, string[], RgbImage[]>? save = folder == null ? null : (name, captions, images) =>
                Png.Save(Path.Combine(folder, $"instruct_{name}.png"), Grid.WithCaptions(images, captions, images.Length),
                    new Dictionary<string, string> { ["captions"] = string.Join(" | ", captions) });
            var status = new StatusLine();
            var report = evaluation.Run(r.GetValue(samples), r.GetValue(p2pSamples), r.GetValue(seed), status, save);
            Console.WriteLine(report.ToTable());
            return 0;
        }));
        return command;
    }
}
