using System.CommandLine;
using PromptToPrompt.Cli;

var root = new RootCommand("p2p: Prompt-to-Prompt image editing with Stable Diffusion (TorchSharp).")
{
    GenerateCommand.Create(),
    EditCommand.Create(),
    SweepCommand.Create(),
    AttentionCommand.Create(),
    InvertCommand.Create(),
    ServeCommand.Create(),
    BenchmarkCommand.Create(),
    TrainShapesCommand.Create(),
    EvalShapesCommand.Create(),
};
return root.Parse(args).Invoke();
