using System.CommandLine;
using System.Diagnostics;
using System.Runtime.InteropServices;
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
        var unetSteps = new Option<int>("--unet-steps") { Description = "UNet + text encoder training steps (rerun with more to train a finished model further).", DefaultValueFactory = _ => new ShapesTrainingOptions("").UNetSteps };
        var attentionLoss = new Option<double>("--attention-loss")
        {
            Description = "Weight of the loss binding each caption word's cross-attention to its object (0: plain diffusion training).",
            DefaultValueFactory = _ => new ShapesTrainingOptions("").AttentionLossWeight,
        };
        var vaeCrop = new Option<int>("--vae-crop")
        {
            Description = "Train the VAE on random squares of this many pixels (0: whole images); it is convolutional, so it then works on whole images.",
            DefaultValueFactory = _ => new ShapesTrainingOptions("").VaeCrop,
        };
        var latentReuse = new Option<int>("--latent-reuse")
        {
            Description = "UNet steps that train on each encoded scene, each with new noise (divides the batch of 32; 1: every step encodes new scenes).",
            DefaultValueFactory = _ => new ShapesTrainingOptions("").LatentReuse,
        };
        var varied = new Option<bool>("--varied-captions")
        {
            Description = "Caption each scene as people type it, drawn anew at every use (objects in any order, sizes and the background left out, synonyms, 'a circle, red'); default: the canonical grammar.",
        };
        var init = new Option<string?>("--init")
        {
            Description = "Start from a model this command trained (such as models/shapes): its VAE is kept (no VAE phase) and its UNet and text encoder train further; new words start as their shape's word.",
        };
        var learningRate = new Option<double>("--learning-rate") { Description = "AdamW learning rate of the UNet and text encoder.", DefaultValueFactory = _ => new ShapesTrainingOptions("").LearningRate };
        var canonicalShare = new Option<double>("--canonical-share") { Description = "With --varied-captions: the share of captions kept in the canonical grammar (0..1)." };
        var command = new Command("train-shapes", "Train a small text-to-image model on generated shape scenes (saved as a diffusers folder).")
        {
            output, minutes, seed, vaeSteps, unetSteps, attentionLoss, vaeCrop, latentReuse, varied, init, learningRate, canonicalShare,
        };
        command.SetAction(r => CliSupport.Run(() =>
        {
            var options = new ShapesTrainingOptions(r.GetValue(output)!, r.GetValue(seed), r.GetValue(vaeSteps), r.GetValue(unetSteps), Minutes: r.GetValue(minutes),
                AttentionLossWeight: r.GetValue(attentionLoss), VaeCrop: r.GetValue(vaeCrop), LatentReuse: r.GetValue(latentReuse),
                VariedCaptions: r.GetValue(varied), Init: r.GetValue(init), LearningRate: r.GetValue(learningRate), CanonicalShare: r.GetValue(canonicalShare));
            var trainer = new ShapesTrainer(options, CliSupport.Warn);
            return RunResumable(trainer.Run);
        }));
        return command;
    }

    /// <summary>
    /// Runs a trainer with the progress line; a libtorch error that a rerun does not repeat (TorchSharp finalising an
    /// implicit scalar during the call that uses it, dotnet/TorchSharp#1434; CollectionPause now prevents it within a
    /// step) resumes from the last checkpoint, up to three times.
    /// </summary>
    internal static int RunResumable(Action<IProgress<TrainingProgress>, CancellationToken> run)
    {
        for (int failures = 0; ; failures++)
            try
            {
                run(new TrainingProgressLine(), CliSupport.Cancellation);
                return 0;
            }
            catch (ExternalException e) when (failures < 3)
            {
                CliSupport.Warn($"libtorch failed ({e.Message.Split('\n')[0]}); resuming from the last checkpoint.");
            }
    }

    /// <summary>One line every two seconds: phase, step, loss, elapsed time and the phase's remaining time.</summary>
    sealed class TrainingProgressLine : IProgress<TrainingProgress>
    {
        readonly Stopwatch _last = Stopwatch.StartNew();
        (string Phase, int Step, TimeSpan Elapsed) _phaseStart;

        public void Report(TrainingProgress p)
        {
            if (p.Phase != _phaseStart.Phase) _phaseStart = (p.Phase, p.Step, p.Elapsed);
            if (_last.Elapsed.TotalSeconds < 2 && p.Step != p.Total) return;
            _last.Restart();
            double seconds = (p.Elapsed - _phaseStart.Elapsed).TotalSeconds;
            var eta = p.Step > _phaseStart.Step && seconds > 0
                ? $"  ETA {TimeSpan.FromSeconds((p.Total - p.Step) * seconds / (p.Step - _phaseStart.Step)):h\\:mm\\:ss}"
                : "";
            Console.Error.WriteLine($"{p.Phase}: step {p.Step}/{p.Total}  loss {p.Loss:0.0000}{(p.AttentionLoss is double a ? $" (attention {a:0.000})" : "")}  elapsed {p.Elapsed:h\\:mm\\:ss}{eta}");
        }
    }
}
