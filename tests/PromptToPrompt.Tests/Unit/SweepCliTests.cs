using PromptToPrompt.Imaging;

namespace PromptToPrompt.Tests.Unit;

/// <summary><c>p2p sweep</c> and <c>p2p edit --cache</c> as a user runs them, on the shipped model.</summary>
public class SweepCliTests
{
    const string Source = "a large red circle on a white background";
    const string Target = "a large blue circle on a white background";

    [Fact]
    public void Sweep_writes_every_cell_with_its_spec_and_a_grid()
    {
        using var dir = new TempDir();
        var outDir = dir.File("sweep");
        var (code, stdout, stderr) = CliTests.RunP2P("sweep", "--prompt", Source, "--target", Target, "--seed", "3", "--steps", "8",
            "--cross-replace", "0.2,0.8", "--reweight", "blue=0,2,4", "--out", outDir);
        Assert.True(code == 0, stderr);
        Assert.Contains("sweep: 6 cells of cross_replace (2) x reweight blue (3)", stderr);
        var cell = Path.Combine(outDir, "cross_replace_0.8__reweight_blue_4.png");
        Assert.Contains(cell, stdout);
        Assert.Equal(8, Directory.GetFiles(outDir, "*.png").Length); // 6 cells, source, grid
        var text = Png.ReadText(cell);
        Assert.Equal("cross_replace 0.8, reweight blue 4", text["sweep_cell"]);
        Assert.Contains("\"edit\":\"reweight\"", text["prompt-to-prompt"]);
        Assert.Contains("\"values\":[4]", text["prompt-to-prompt"]);
        Assert.Contains("\"cross_replace_steps\":0.8", text["prompt-to-prompt"]);
        Assert.Contains("\"seed\":3", text["prompt-to-prompt"]);
        var grid = RgbImage.Load(Path.Combine(outDir, "grid.png"));
        Assert.True(grid.Width > 4 * 192 && grid.Height > 2 * 192, $"grid {grid.Width}x{grid.Height} is not 4 columns by 2 rows of cells");
        // The cell re-run as an edit from its own metadata's values gives the same image.
        var (code2, _, stderr2) = CliTests.RunP2P("edit", "--prompt", Source, "--target", Target, "--seed", "3", "--steps", "8", "--scheduler", "ddim",
            "--cross-replace", "0.8", "--reweight", "blue=4", "--out", dir.File("edit"));
        Assert.True(code2 == 0, stderr2);
        Assert.Equal(RgbImage.Load(cell).Pixels, RgbImage.Load(Path.Combine(dir.File("edit"), "prompt_1.png")).Pixels);
    }

    [Fact]
    public void Sweep_takes_its_settings_from_a_spec_or_an_inversion()
    {
        using var dir = new TempDir();
        var examples = Path.Combine(Path.GetDirectoryName(ShippedModelTests.Folder)!, "..", "examples");
        var (code, _, stderr) = CliTests.RunP2P("sweep", "--spec", Path.Combine(examples, "shapes_sweep.json"), "--cross-replace", "0.2,1", "--out", dir.File("spec"));
        Assert.True(code == 0, stderr);
        var text = Png.ReadText(Path.Combine(dir.File("spec"), "cross_replace_1.png"));
        Assert.Contains("\"steps\":20", text["prompt-to-prompt"]);
        Assert.Contains("\"seed\":5", text["prompt-to-prompt"]);

        const string photoPrompt = "a large purple square and a small white circle on a blue background";
        var inv = CliTests.RunP2P("invert", "--image", Path.Combine(examples, "shapes_photo.png"), "--prompt", photoPrompt, "--method", "direct",
            "--steps", "6", "--out", dir.File("inv.safetensors"));
        Assert.True(inv.Code == 0, inv.Err);
        var sweep = CliTests.RunP2P("sweep", "--inversion", dir.File("inv.safetensors"), "--target", photoPrompt.Replace("purple", "orange"),
            "--self-replace", "0.2,0.6", "--out", dir.File("inv"));
        Assert.True(sweep.Code == 0, sweep.Err);
        var cell = Png.ReadText(Path.Combine(dir.File("inv"), "self_replace_0.6.png"));
        Assert.Contains("\"steps\":6", cell["prompt-to-prompt"]);
        Assert.Contains("(direct, image sha256", cell["inversion"]);
    }

    [Theory]
    [InlineData("error: The cross_replace sweep value 1.5 is outside [0, 1]", "--cross-replace", "0.2,1.5")]
    [InlineData("error: The reweight blue sweep value 50 is outside [-10, 10]", "--reweight", "blue=1,50")]
    [InlineData("error: A blend_threshold sweep needs a local blend", "--blend-threshold", "0.2,0.5")]
    [InlineData("error: A sweep varies one or two of", "--cross-replace", "0.8")]
    [InlineData("error: The recorded source needs 21.7 MB", "--cross-replace", "0.2,0.8", "--steps", "50", "--cache-budget", "1")]
    public void Bad_sweeps_fail_in_one_line_and_write_nothing(string message, params string[] options)
    {
        using var dir = new TempDir();
        var outDir = dir.File("sweep");
        var (code, _, stderr) = CliTests.RunP2P(["sweep", "--prompt", Source, "--target", Target, "--seed", "3", "--out", outDir, .. options]);
        Assert.Equal(1, code);
        Assert.Contains(message, stderr);
        Assert.Single(stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries), l => l.StartsWith("error:"));
        Assert.False(Directory.Exists(outDir) && Directory.EnumerateFileSystemEntries(outDir).Any(), "the sweep wrote output");
    }

    [Fact]
    public void Edit_cache_folder_must_be_a_writable_folder_and_is_reused()
    {
        using var dir = new TempDir();
        var file = dir.File("not-a-folder");
        File.WriteAllText(file, "x");
        var (code, _, stderr) = CliTests.RunP2P("edit", "--prompt", Source, "--target", Target, "--steps", "5", "--cache", file, "--out", dir.File("e"));
        Assert.Equal(1, code);
        Assert.Contains($"error: The cache folder {file} is a file.", stderr);
        Assert.False(Directory.Exists(dir.File("e")));

        string[] edit = ["edit", "--prompt", Source, "--seed", "3", "--steps", "5", "--cache", dir.File("cache")];
        var first = CliTests.RunP2P([.. edit, "--target", Target, "--out", dir.File("e1")]);
        Assert.True(first.Code == 0, first.Err);
        Assert.Contains("cache: recorded the source", first.Err);
        var second = CliTests.RunP2P([.. edit, "--target", "a large green circle on a white background", "--out", dir.File("e2")]);
        Assert.True(second.Code == 0, second.Err);
        Assert.Contains("cache: loaded the source", second.Err);
        Assert.Equal(RgbImage.Load(Path.Combine(dir.File("e1"), "prompt_0.png")).Pixels, RgbImage.Load(Path.Combine(dir.File("e2"), "prompt_0.png")).Pixels);
        // Without --cache (or --cache-budget) an edit runs source and target in one batch and records nothing.
        var plain = CliTests.RunP2P("edit", "--prompt", Source, "--seed", "3", "--steps", "5", "--target", Target, "--out", dir.File("e3"));
        Assert.True(plain.Code == 0, plain.Err);
        Assert.DoesNotContain("cache:", plain.Err);
        var budgetOnly = CliTests.RunP2P("edit", "--prompt", Source, "--seed", "3", "--steps", "5", "--target", Target, "--cache-budget", "100", "--out", dir.File("e4"));
        Assert.True(budgetOnly.Code == 0, budgetOnly.Err);
        Assert.Contains("cache: recorded the source", budgetOnly.Err);
    }
}
