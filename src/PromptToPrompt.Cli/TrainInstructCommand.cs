using System.CommandLine;
using PromptToPrompt.Training;

namespace PromptToPrompt.Cli;

/// <summary><c>p2p train-instruct</c>: train an InstructPix2Pix model on a dataset made by <c>p2p dataset generate</c>.</summary>
static class TrainInstructCommand
{
    public static Command Create()
    {
        var defaults = new InstructTrainingOptions([""], "", "");
        var data = new Option<string[]>("--data")
        {
            Description = "Dataset folder written by p2p dataset generate (record folders or data/*.parquet); repeat to train on several as one.", Required = true,
        };
        var output = new Option<string>("--out", "-o") { Description = "Output model folder (also holds the checkpoint; rerun to resume).", Required = true };
        var init = new Option<string?>("--init") { Description = "Text-to-image diffusers folder to start from (default: the shipped shapes model)." };
        var minutes = new Option<double?>("--minutes") { Description = "Stop (at a checkpoint) after this much wall time; run again to resume." };
        var seed = new Option<long>("--seed") { Description = "Seed of the batches, noise and dropout.", DefaultValueFactory = _ => 0 };
        var steps = new Option<int>("--steps") { Description = "Training steps (rerun with more to train a finished model further).", DefaultValueFactory = _ => defaults.Steps };
        var batch = new Option<int>("--batch") { Description = "Pairs per step.", DefaultValueFactory = _ => defaults.Batch };
        var rate = new Option<double>("--learning-rate") { Description = "AdamW learning rate (constant).", DefaultValueFactory = _ => defaults.LearningRate };
        var flip = new Option<bool>("--random-flip") { Description = "Also train on every pair mirrored left to right (as diffusers' --random_flip)." };
        var convIn = new Option<double?>("--conv-in-learning-rate") { Description = "Learning rate of the UNet's conv_in, which holds the new image channels (default: --learning-rate)." };
        var attention = new Option<double>("--attention-loss") { Description = "Weight of the attention localisation loss binding the instruction's shape and colour words to the region the edit changed (0: off)." };
        var ema = new Option<double>("--ema-decay") { Description = "Save the exponential moving average of the weights with this decay (diffusers' EMAModel, warmed up; e.g. 0.999; 0: off, the last weights)." };
        var layers = new Option<int?>("--layers-per-block") { Description = "Make the UNet deeper: this many layers per block (more than the --init model's; the new ones start as the identity)." };
        var snrGamma = new Option<double>("--snr-gamma") { Description = "Weight each sample's loss by min(SNR, gamma)/SNR (Min-SNR, as diffusers' --snr_gamma; e.g. 5; 0: off)." };
        var editWeight = new Option<double>("--edit-weight")
        {
            Description = "Count the latents the pair's edit changed this many times in the loss (1: every latent alike).", DefaultValueFactory = _ => defaults.EditWeight,
        };
        var command = new Command("train-instruct", "Train an InstructPix2Pix model from a text-to-image model and a p2p dataset (saved as a diffusers folder).")
        {
            data, output, init, minutes, seed, steps, batch, rate, flip, convIn, attention, ema, layers, snrGamma, editWeight,
        };
        command.SetAction(r => CliSupport.Run(() =>
        {
            var options = new InstructTrainingOptions(r.GetValue(data)!, r.GetValue(output)!, r.GetValue(init) ?? CliSupport.DefaultModel(), r.GetValue(seed),
                r.GetValue(steps), r.GetValue(batch), r.GetValue(minutes), r.GetValue(rate), RandomFlip: r.GetValue(flip), ConvInLearningRate: r.GetValue(convIn),
                AttentionLossWeight: r.GetValue(attention), EmaDecay: r.GetValue(ema), LayersPerBlock: r.GetValue(layers),
                SnrGamma: r.GetValue(snrGamma), EditWeight: r.GetValue(editWeight));
            return TrainShapesCommand.RunResumable(new InstructTrainer(options, CliSupport.Warn).Run);
        }));
        return command;
    }
}
