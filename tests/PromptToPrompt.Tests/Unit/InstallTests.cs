using System.IO.Compression;
using static PromptToPrompt.Tests.Unit.TestProcess;

namespace PromptToPrompt.Tests.Unit;

/// <summary>p2p as a user installs it: a build placed outside the source tree, and the .NET tool package installed
/// into a tool path, both run from an unrelated folder with the shipped model that travels with them.</summary>
public class InstallTests
{
    static readonly Dictionary<string, string?> NoDefaultModel = new() { ["P2P_DEFAULT_MODEL"] = null };

    [Fact]
    public void P2p_outside_the_source_tree_finds_the_shipped_model_beside_itself()
    {
        // The test's own output is a build of p2p (with the model the build copies beside it). Place a copy outside the
        // repository (hard links, or a plain copy across file systems; symbolic links would lead .NET back to the
        // repository), so that only the model beside p2p.dll can be found, then run it from elsewhere.
        var bin = AppContext.BaseDirectory.TrimEnd(Path.DirectorySeparatorChar);
        Assert.True(File.Exists(Path.Combine(bin, "models", "shapes", "model_index.json")), "the build did not copy models/shapes beside p2p.dll");
        using var dir = new TempDir();
        var placed = dir.File("p2p-elsewhere");
        if (Run("cp", ["-al", bin, placed]).Code != 0)
        {
            if (Directory.Exists(placed)) Directory.Delete(placed, true);
            Assert.Equal(0, Run("cp", ["-a", bin, placed]).Code);
        }
        var (code, _, stderr) = Run("dotnet", [Path.Combine(placed, "p2p.dll"), "generate", "--prompt", "a large red circle on a white background",
            "--seed", "1", "--steps", "3", "--out", "x.png"], NoDefaultModel, dir.Path);
        Assert.True(code == 0, stderr);
        Assert.Contains($"loading {Path.Combine(placed, "models", "shapes")}", stderr);
        Assert.True(File.Exists(dir.File("x.png")));
    }

    [Fact]
    public void Packed_tool_installs_into_a_tool_path_and_edits_from_any_folder()
    {
        if (Run("dotnet", ["pack", "--help"]).Code != 0)
            throw new InvalidOperationException("dotnet pack is not available with this SDK, so the tool package cannot be made here.");
        using var dir = new TempDir();
        var nupkg = dir.File("nupkg");
        // The test's build is packed as it stands (--no-build), in the configuration the tests were built in.
        var configuration = new DirectoryInfo(AppContext.BaseDirectory.TrimEnd(Path.DirectorySeparatorChar)).Parent!.Name;
        foreach (var project in new[] { "PromptToPrompt.Cli", "PromptToPrompt" })
        {
            var pack = Run("dotnet", ["pack", Path.Combine(RepositoryRoot, "src", project), "--no-build", "-c", configuration, "-o", nupkg, "-v", "q"]);
            Assert.True(pack.Code == 0, pack.Out + pack.Err);
        }

        // The library package: the assembly, and TorchSharp as a dependency rather than inside it.
        var library = Directory.GetFiles(nupkg, "PromptToPrompt.*.nupkg").Single();
        using (var zip = ZipFile.OpenRead(library))
        {
            Assert.Contains(zip.Entries, e => e.FullName == "lib/net10.0/PromptToPrompt.dll");
            using var nuspec = new StreamReader(zip.Entries.Single(e => e.FullName.EndsWith(".nuspec")).Open());
            Assert.Contains("id=\"TorchSharp-cpu\"", nuspec.ReadToEnd());
        }

        // The tool package carries the shipped model; installed into a tool path, it edits from an unrelated folder.
        var tool = Directory.GetFiles(nupkg, "p2p.*.nupkg").Single();
        using (var zip = ZipFile.OpenRead(tool))
            Assert.Contains(zip.Entries, e => e.FullName.EndsWith("/models/shapes/model_index.json"));
        var toolPath = dir.File("tools");
        var install = Run("dotnet", ["tool", "install", "--tool-path", toolPath, "--add-source", nupkg, "p2p"]);
        Assert.True(install.Code == 0, install.Out + install.Err);
        var work = Directory.CreateDirectory(dir.File("somewhere-else")).FullName;
        var (code, stdout, stderr) = Run(Path.Combine(toolPath, "p2p"), ["edit", "--prompt", "a large red circle on a white background",
            "--target", "a large blue circle on a white background", "--steps", "4", "--seed", "3", "--out", "out"], NoDefaultModel, work);
        Assert.True(code == 0, stderr);
        Assert.Contains(Path.Combine(toolPath, ".store"), stderr);  // "loading <the model inside the installed tool>"
        Assert.True(File.Exists(Path.Combine(work, "out", "grid.png")), stdout);
    }
}
