using System.CommandLine;
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
        var modelOptions = CliSupport.ModelOptions.Create();
        var command = new Command("eval-shapes", "Measure the shapes model: colour accuracy, word-swap mask IoU with and without injection, local blend.")
        {
            model, samples, seed, steps, guidance, cross, self,
        };
        foreach (var o in modelOptions.All) command.Options.Add(o);
        command.SetAction(r => CliSupport.Run(() =>
        {
            using var sd = modelOptions.Load(r, r.GetValue(model));
            var evaluation = new ShapesEvaluation(new StableDiffusionPipeline(sd, CliSupport.Warn), r.GetValue(steps), r.GetValue(guidance),
                r.GetValue(cross), r.GetValue(self));
            var report = evaluation.Run(r.GetValue(samples), r.GetValue(seed), new Progress<string>(s => Console.Error.Write($"\r{s}   ")));
            Console.Error.WriteLine();
            Console.WriteLine(report.ToTable());
            return 0;
        }));
        return command;
    }
}
