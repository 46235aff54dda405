using System.Diagnostics;

namespace PromptToPrompt.Tests.Unit;

/// <summary>Runs a program as a user would and returns its exit code and both outputs (an environment value of
/// null removes that variable).</summary>
public static class TestProcess
{
    public static (int Code, string Out, string Err) Run(string file, IEnumerable<string> args,
        IDictionary<string, string?>? env = null, string? cwd = null)
    {
        var psi = new ProcessStartInfo(file)
        {
            RedirectStandardOutput = true, RedirectStandardError = true, WorkingDirectory = cwd ?? Environment.CurrentDirectory,
        };
        foreach (var a in args) psi.ArgumentList.Add(a);
        foreach (var (k, v) in env ?? new Dictionary<string, string?>())
            if (v is null) psi.Environment.Remove(k); else psi.Environment[k] = v;
        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        p.WaitForExit();
        return (p.ExitCode, stdout.Result, stderr.Result);
    }

    /// <summary>The repository's root, found from the shipped model folder the tests use.</summary>
    public static string RepositoryRoot => Path.GetFullPath(Path.Combine(ShippedModelTests.Folder, "..", ".."));
}
