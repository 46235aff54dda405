using System.CommandLine;
using System.Net;
using PromptToPrompt.Editing;
using PromptToPrompt.Server;

namespace PromptToPrompt.Cli;

/// <summary><c>p2p serve</c>: the browser editor on this machine (loopback unless --listen says otherwise).</summary>
static class ServeCommand
{
    public static Command Create()
    {
        var model = CliSupport.Model();
        var port = new Option<int>("--port") { Description = "Port to listen on (0: any free port).", DefaultValueFactory = _ => 7860 };
        var listen = new Option<string>("--listen") { Description = "Address to listen on; 0.0.0.0 opens the editor to the network.", DefaultValueFactory = _ => "127.0.0.1" };
        var output = new Option<string>("--output", "-o") { Description = "Folder of results: one folder per job.", DefaultValueFactory = _ => "p2p-serve" };
        var queue = new Option<int>("--queue") { Description = "Jobs that may wait; more are refused (HTTP 429).", DefaultValueFactory = _ => 8 };
        var budget = new Option<long>("--cache-budget") { Description = "Memory for recorded sources, in MB.", DefaultValueFactory = _ => SourceCache.DefaultBudgetMb };
        var modelOptions = CliSupport.ModelOptions.Create();
        var command = new Command("serve", "Edit images in the browser: generate, edit by editing words, see each token's attention, edit photos.")
        {
            model, port, listen, output, queue, budget,
        };
        foreach (var o in modelOptions.All) command.Options.Add(o);
        command.SetAction(r => CliSupport.Run(() =>
        {
            var options = new ServerOptions(r.GetValue(listen)!, r.GetValue(port));
            if (IPAddress.TryParse(options.Listen, out var address) && !IPAddress.IsLoopback(address))
                Console.Error.WriteLine($"warning: listening on {options.Listen}: anyone who can reach this machine can use the editor and its CPU/GPU.");
            using var editor = new Editor(() => modelOptions.Load(r, r.GetValue(model)), r.GetValue(output)!,
                new EditorLimits(QueueCapacity: r.GetValue(queue), CacheBudgetMb: r.GetValue(budget)), CliSupport.Warn);
            var app = EditorServer.Build(editor, options);
            try { app.StartAsync(CliSupport.Cancellation).GetAwaiter().GetResult(); }
            catch (IOException e) when (e.Message.Contains("address already in use", StringComparison.OrdinalIgnoreCase))
            {
                throw new UserError($"Port {options.Port} on {options.Listen} is in use (another p2p serve?). Choose another with --port, or --port 0 for any free one.");
            }
            foreach (var url in EditorServer.Urls(app)) Console.WriteLine($"editor at {url}");
            Console.Error.WriteLine("Ctrl-C stops the server.");
            // Ctrl-C, or SIGTERM (a service manager or a container stopping it), which the host turns into ApplicationStopping.
            using var stop = CancellationTokenSource.CreateLinkedTokenSource(CliSupport.Cancellation, app.Lifetime.ApplicationStopping);
            try { Task.Delay(Timeout.Infinite, stop.Token).GetAwaiter().GetResult(); }
            catch (OperationCanceledException) { }
            app.StopAsync().GetAwaiter().GetResult();
            return 0;
        }));
        return command;
    }
}
