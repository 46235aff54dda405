using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using PromptToPrompt.Editing;
using PromptToPrompt.Tests.Unit;

namespace PromptToPrompt.Tests.Server;

/// <summary><c>p2p serve</c> as a user starts it, and the job queue under failures.</summary>
public class ServeCommandTests
{
    [System.Runtime.InteropServices.DllImport("libc", SetLastError = true)]
    static extern int kill(int pid, int signal);

    [Fact]
    public async Task Serve_prints_its_address_answers_there_and_stops_on_sigterm()
    {
        using var dir = new TempDir();
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in new[] { Path.Combine(AppContext.BaseDirectory, "p2p.dll"), "serve", "--port", "0", "--output", dir.File("out") }) psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        try
        {
            var line = await p.StandardOutput.ReadLineAsync().WaitAsync(TimeSpan.FromSeconds(60));
            Assert.StartsWith("editor at http://127.0.0.1:", line);
            using var http = new HttpClient();
            var info = await http.GetStringAsync(line!["editor at ".Length..] + "api/info");
            Assert.Contains("\"model\":\"shapes\"", info);
            // A service manager or a container stops it with SIGTERM: the server shuts down and exits 0.
            Assert.Equal(0, kill(p.Id, 15));
            Assert.True(p.WaitForExit(TimeSpan.FromSeconds(30)), "p2p serve did not stop within 30 s of SIGTERM");
            Assert.Equal(0, p.ExitCode);
        }
        finally
        {
            p.Kill(entireProcessTree: true);
        }
    }

    [Fact]
    public void A_port_in_use_and_a_bad_address_are_one_line_errors()
    {
        var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        try
        {
            int port = ((IPEndPoint)listener.LocalEndpoint).Port;
            using var dir = new TempDir();
            var (code, _, err) = CliTests.RunP2P("serve", "--port", $"{port}", "--output", dir.File("out"));
            Assert.Equal(1, code);
            Assert.Contains($"error: Port {port} on 127.0.0.1 is in use", err);
            var bad = CliTests.RunP2P("serve", "--listen", "everywhere", "--output", dir.File("out"));
            Assert.Equal(1, bad.Code);
            Assert.Contains("error: --listen everywhere is not an IP address", bad.Err);
        }
        finally
        {
            listener.Stop();
        }
    }

    [Fact]
    public void A_job_that_crashes_fails_alone()
    {
        using var dir = new TempDir();
        using var queue = new JobQueue(dir.Path);
        var crash = queue.Enqueue("test", _ => throw new InvalidOperationException("boom"));
        var user = queue.Enqueue("test", _ => throw new UserError("Give a prompt."));
        var fine = queue.Enqueue("test", ctx => new JobOutcome([], new Dictionary<string, object?> { ["folder"] = ctx.Folder }));
        SpinWait.SpinUntil(() => fine.Finished, TimeSpan.FromSeconds(30));
        Assert.Equal(JobState.Failed, crash.State);
        Assert.Equal("InvalidOperationException: boom", crash.Error);
        Assert.Equal(JobState.Failed, user.State);
        Assert.Equal("Give a prompt.", user.Error);
        Assert.Equal(JobState.Done, fine.State);
        Assert.Equal(Path.Combine(dir.Path, fine.Id), fine.Outcome!.Details["folder"]);
        Assert.True(Directory.Exists(fine.Folder));
    }

    [Fact]
    public async Task Invoked_work_runs_on_the_job_thread_before_waiting_jobs_and_rethrows()
    {
        using var dir = new TempDir();
        using var queue = new JobQueue(dir.Path);
        using var release = new ManualResetEventSlim();
        var order = new System.Collections.Concurrent.ConcurrentQueue<string>();
        int jobThread = -1;
        var running = queue.Enqueue("test", _ => { jobThread = Environment.CurrentManagedThreadId; release.Wait(); order.Enqueue("running"); return new JobOutcome([], new Dictionary<string, object?>()); });
        var waiting = queue.Enqueue("test", _ => { order.Enqueue("waiting"); return new JobOutcome([], new Dictionary<string, object?>()); });
        SpinWait.SpinUntil(() => running.State == JobState.Running, TimeSpan.FromSeconds(30));
        using var invoking = new ManualResetEventSlim();
        var invoked = Task.Run(() => { invoking.Set(); return queue.Invoke(() => { order.Enqueue("invoked"); return Environment.CurrentManagedThreadId; }); });
        invoking.Wait();
        Thread.Sleep(200);   // Invoke has queued its work by now
        Assert.False(invoked.IsCompleted);   // it waits for the running job
        release.Set();
        Assert.Equal(jobThread, await invoked);
        SpinWait.SpinUntil(() => waiting.Finished, TimeSpan.FromSeconds(30));
        Assert.Equal(["running", "invoked", "waiting"], order.ToArray());
        var error = Assert.Throws<UserError>(() => queue.Invoke<int>(() => throw new UserError("No such job.")));
        Assert.Equal("No such job.", error.Message);
    }
}
