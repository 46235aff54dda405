using System.CommandLine;
using PromptToPrompt.Cli;

var root = new RootCommand("p2p: Prompt-to-Prompt image editing with Stable Diffusion (TorchSharp).")
{
    GenerateCommand.Create(),
    EditCommand.Create(),
    SweepCommand.Create(),
    AttentionCommand.Create(),
    InvertCommand.Create(),
    ZeroCommand.Create(),
    InstructCommand.Create(),
    DatasetCommand.Create(),
    ServeCommand.Create(),
    BenchmarkCommand.Create(),
    TrainShapesCommand.Create(),
    TrainInstructCommand.Create(),
    EvalShapesCommand.Create(),
    EvalInstructCommand.Create(),
};
var progress = new Option<ProgressMode>("--progress")
{
    Description = "auto (a bar on a terminal, a line every 5% in a log), bar, plain or none.", Recursive = true, DefaultValueFactory = _ => ProgressMode.Auto,
};
root.Options.Add(progress);
CliSupport.RequireFiniteNumbers(root);
var parsed = root.Parse(args);
if (parsed.Errors.Count > 0 && !args.Any(a => a is "-h" or "--help" or "-?"))
{
    // One line naming the first problem, as for every other error, then where to look.
    Console.Error.WriteLine($"error: {parsed.Errors[0].Message}");
    var path = new List<string>();
    for (var r = parsed.CommandResult; r is not null; r = r.Parent as System.CommandLine.Parsing.CommandResult)
        path.Insert(0, r.Command is RootCommand ? "p2p" : r.Command.Name);
    Console.Error.WriteLine($"See '{string.Join(' ', path)} --help' for the options.");
    return 1;
}
ConsoleProgress.Mode = parsed.GetValue(progress);
return parsed.Invoke();
