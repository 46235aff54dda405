using System.CommandLine;
using System.Diagnostics;
using PromptToPrompt.Training;

namespace PromptToPrompt.Cli;

/// <summary><c>p2p train-shapes</c>: train the small demo model on generated scenes.</summary>
static class TrainShapesCommand
{
    public static Command Create()
    {
        var output = new Option<string>("--out", "-o") { Description = "Output model folder (also holds the checkpoint; rerun to resume).", Required = true };
        var minutes = new Option<double?>("--minutes") { Description = "Stop (at a checkpoint) after this much wall time; run again to resume." };
        var seed = new Option<long>("--seed") { Description = "Seed of the data stream and the initialisation.", DefaultValueFactory = _ => 0 };
        var vaeSteps = new Option<int>("--vae-steps") { Description = "VAE training steps.", DefaultValueFactory = _ => new ShapesTrainingOptions("").VaeSteps };
        var unetSteps = new Option<int>("--unet-steps") { Description = "UNet + text encoder training steps.", DefaultValueFactory = _ => new ShapesTrainingOptions("").UNetSteps };
        var command = new Command("train-shapes", "Train a small text-to-image model on generated shape scenes (saved as a diffusers folder).")
        {
            output, minutes, seed, vaeSteps, unetSteps,
        };
        command.SetAction(r => CliSupport.Run(() =>
        {
            var options = new ShapesTrainingOptions(r.GetValue(output)!, r.GetValue(seed), r.GetValue(vaeSteps), r.GetValue(unetSteps), Minutes: r.GetValue(minutes));
            new ShapesTrainer(options, CliSupport.Warn).Run(new TrainingProgressLine(), CliSupport.Cancellation);
            return 0;
        }));
        return command;
    }

    sealed class TrainingProgressLine : IProgress<TrainingProgress>
    {
        readonly Stopwatch _last = Stopwatch.StartNew();

        public void Report(TrainingProgress p)
        {
            if (_last.Elapsed.TotalSeconds < 2 && p.Step != p.Total) return;
            _last.Restart();
            double rate = p.Elapsed.TotalSeconds > 0 ? p.Step / p.Elapsed.TotalSeconds : 0;
            Console.Error.WriteLine($"{p.Phase}: step {p.Step}/{p.Total}  loss {p.Loss:0.0000}  elapsed {p.Elapsed:h\\:mm\\:ss}");
        }
    }
}
