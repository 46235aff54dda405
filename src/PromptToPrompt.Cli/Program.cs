using System.CommandLine;
using PromptToPrompt.Cli;

var root = new RootCommand("p2p: Prompt-to-Prompt image editing with Stable Diffusion (TorchSharp).")
{
    GenerateCommand.Create(),
    EditCommand.Create(),
    SweepCommand.Create(),
    AttentionCommand.Create(),
    InvertCommand.Create(),
    InstructCommand.Create(),
    DatasetCommand.Create(),
    ServeCommand.Create(),
    BenchmarkCommand.Create(),
    TrainShapesCommand.Create(),
    EvalShapesCommand.Create(),
};
var progress = new Option<ProgressMode>("--progress")
{
    Description = "auto (a bar on a terminal, a line every 5% in a log), bar, plain or none.", Recursive = true, DefaultValueFactory = _ => ProgressMode.Auto,
};
root.Options.Add(progress);
var parsed = root.Parse(args);
ConsoleProgress.Mode = parsed.GetValue(progress);
return parsed.Invoke();
