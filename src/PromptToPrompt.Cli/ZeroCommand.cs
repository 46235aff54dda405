using System.CommandLine;
using PromptToPrompt.Editing;
using PromptToPrompt.Loading;
using PromptToPrompt.Pipelines;

namespace PromptToPrompt.Cli;

/// <summary><c>p2p zero</c>: pix2pix-zero, a photo edited along a text-embedding direction with cross-attention guidance.</summary>
static class ZeroCommand
{
    public static Command Create()
    {
        var model = CliSupport.Model();
        var image = new Option<string>("--image", "-i") { Description = "Photo to edit (PNG or JPEG).", Required = true };
        var prompt = new Option<string>("--prompt", "-p") { Description = "A caption of the photo (it is inverted with it; the authors use BLIP's).", Required = true };
        var from = new Option<string>("--from") { Description = "The word the edit moves away from, e.g. red.", Required = true };
        var to = new Option<string>("--to") { Description = "The word it moves to, e.g. blue.", Required = true };
        var directions = new Option<string?>("--directions") { Description = "Folder with FROM.txt and TO.txt, one sentence a line (at least 10 each); default: sentences from the shapes grammar." };
        var steps = CliSupport.Steps();
        var guidance = new Option<double>("--guidance") { Description = "Classifier-free guidance against the unedited caption (the reference's negative_guidance_scale).", DefaultValueFactory = _ => 5.0 };
        var xa = new Option<double>("--xa-guidance") { Description = "Cross-attention guidance step size (0 turns it off).", DefaultValueFactory = _ => 0.1 };
        var lambdaAc = new Option<double>("--lambda-ac") { Description = "Inversion: weight of the auto-correlation regulariser.", DefaultValueFactory = _ => 20 };
        var lambdaKl = new Option<double>("--lambda-kl") { Description = "Inversion: weight of the KL regulariser.", DefaultValueFactory = _ => 20 };
        var regSteps = new Option<int>("--reg-steps") { Description = "Inversion: regularisation steps per noise prediction.", DefaultValueFactory = _ => 5 };
        var rolls = new Option<int>("--ac-rolls") { Description = "Inversion: auto-correlation steps (random rolls) per regularisation step.", DefaultValueFactory = _ => 5 };
        var seed = new Option<long>("--seed") { Description = "Seed of the auto-correlation rolls.", DefaultValueFactory = _ => 0 };
        var fit = new Option<string?>("--fit") { Description = "crop (default: centre-crop to the model's aspect) or pad (keep the whole photo, pad with black)." };
        var width = CliSupport.Width();
        var height = CliSupport.Height();
        var overwrite = CliSupport.Overwrite();
        var output = new Option<string>("--out", "-o") { Description = "Output folder: edit.png and reconstruction.png.", Required = true };
        var modelOptions = CliSupport.ModelOptions.Create();
        var command = new Command("zero", "pix2pix-zero: edit a photo along a text direction (red -> blue) keeping its structure by cross-attention guidance.")
        {
            model, image, prompt, from, to, directions, steps, guidance, xa, lambdaAc, lambdaKl, regSteps, rolls, seed, fit, width, height, overwrite, output,
        };
        foreach (var o in modelOptions.All) command.Options.Add(o);
        command.SetAction(r => CliSupport.Run(() =>
        {
            var folder = r.GetValue(output)!;
            foreach (var name in ZeroPhotoEdit.FileNames) AtomicFile.EnsureWritable(Path.Combine(folder, name), r.GetValue(overwrite));
            var settings = new ZeroSettings
            {
                Steps = r.GetValue(steps), GuidanceScale = r.GetValue(guidance), CrossAttentionGuidance = r.GetValue(xa),
                LambdaAutoCorrelation = r.GetValue(lambdaAc), LambdaKl = r.GetValue(lambdaKl), RegularizationSteps = r.GetValue(regSteps),
                AutoCorrelationRolls = r.GetValue(rolls), Seed = r.GetValue(seed),
            };
            settings.Validate();
            var fitMode = InvertCommand.PhotoOptions.ParseFitOrNull(r.GetValue(fit)) ?? Imaging.FitMode.Crop;
            using var sd = modelOptions.Load(r, r.GetValue(model));
            using var edit = ZeroEditing.Run(sd, r.GetValue(image)!, r.GetValue(prompt)!, r.GetValue(from)!, r.GetValue(to)!, r.GetValue(directions),
                settings, fitMode, r.GetValue(width), r.GetValue(height), new ConsoleProgress("pix2pix-zero"), CliSupport.Cancellation, CliSupport.Warn);
            Console.Error.WriteLine($"direction {edit.Direction.From} -> {edit.Direction.To} from {edit.Direction.FromSentences} + {edit.Direction.ToSentences} sentences ({edit.Direction.Source}); " +
                                    $"reconstruction PSNR {edit.Psnr:F2} dB");
            foreach (var path in edit.Save(folder)) Console.WriteLine(path);
            return 0;
        }));
        return command;
    }
}
