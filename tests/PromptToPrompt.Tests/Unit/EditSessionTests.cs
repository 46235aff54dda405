using PromptToPrompt.Control;
using PromptToPrompt.Editing;
using PromptToPrompt.Imaging;
using PromptToPrompt.Loading;
using PromptToPrompt.Pipelines;
using PromptToPrompt.Tests.Conformance;
using static TorchSharp.torch;

namespace PromptToPrompt.Tests.Unit;

/// <summary>The editing layer on the shipped model: cache keys, cache files, cached vs batched edits, sweeps, direct inversion.</summary>
public sealed class EditSessionTests(ITestOutputHelper output) : IDisposable
{
    const string Source = "a large red circle on a white background";
    const string Target = "a large blue circle on a white background";
    readonly StableDiffusionModel _model = StableDiffusionModel.Load(ShippedModelTests.Folder, ModelPlacement.Cpu);

    public void Dispose() => _model.Dispose();

    SourceSettings Settings(int steps = 10) => new() { Prompt = Source, Seed = 3, Steps = steps, Scheduler = "ddim" };
    static EditRequest Swap(string target = Target, double cross = 0.8) => new([target], new EditDescription { Edit = EditKind.Replace, CrossReplaceSteps = cross });

    [Fact]
    public void Cache_key_changes_with_every_input_that_determines_the_source_and_no_other()
    {
        var s = Settings();
        string Key(SourceSettings x) => new EditSession(_model, x).Key.Hash;
        var baseKey = Key(s);
        Assert.Equal(baseKey, Key(s with { }));
        Assert.Equal(baseKey, Key(s with { Origin = "another note" }));
        Assert.Equal(baseKey, Key(s with { Width = 64, Height = 64 })); // the model's size, spelled out
        using var latent = new StableDiffusionPipeline(_model).InitialNoise(3, 1, 64, 64);
        using var otherLatent = latent + 1e-3;
        using var nulls = zeros(10, 1, _model.Tokenizer.MaxLength, _model.TextEncoder.Config.HiddenSize);
        using var otherNulls = nulls + 1e-3;
        var variants = new Dictionary<string, SourceSettings>
        {
            ["prompt"] = s with { Prompt = "a large red square on a white background" },
            ["negative prompt"] = s with { NegativePrompt = "blurry" },
            ["seed"] = s with { Seed = 4 },
            ["x_T"] = s with { InitialLatent = latent },
            ["steps"] = s with { Steps = 11 },
            ["guidance"] = s with { GuidanceScale = 5 },
            ["scheduler"] = s with { Scheduler = "euler" },
            ["size"] = s with { Width = 72, Height = 64 },
            ["variant"] = s with { Variant = ReferenceVariant.NullText },
            ["storage"] = s with { CacheStorage = ScalarType.Float16 },
            ["null embeddings"] = s with { NullEmbeddings = nulls },
            ["Attend-and-Excite"] = s with { Excite = new ExciteSettings { TokenIndices = [4] } },
            ["Attend-and-Excite settings"] = s with { Excite = new ExciteSettings { TokenIndices = [4], ScaleFactor = 3 } },
            ["Directed Diffusion"] = s with { Boxes = new DirectedSettings { Regions = [new DirectedRegion([4], new Box(0, 0.5, 0, 1))] } },
            ["Directed Diffusion box"] = s with { Boxes = new DirectedSettings { Regions = [new DirectedRegion([4], new Box(0.5, 1, 0, 1))] } },
        };
        var keys = variants.ToDictionary(kv => kv.Key, kv => Key(kv.Value));
        foreach (var (what, key) in keys) Assert.True(key != baseKey, $"the key ignores the {what}");
        Assert.Equal(keys.Count, keys.Values.Distinct().Count());
        Assert.NotEqual(Key(s with { InitialLatent = latent }), Key(s with { InitialLatent = otherLatent }));
        Assert.NotEqual(Key(s with { NullEmbeddings = nulls }), Key(s with { NullEmbeddings = otherNulls }));
        // With x_T given the seed no longer matters.
        Assert.Equal(Key(s with { InitialLatent = latent, Seed = 1 }), Key(s with { InitialLatent = latent, Seed = 2 }));
    }

    [Fact]
    public void Cached_edits_equal_the_batched_edit_and_reuse_the_source()
    {
        using var batchedResult = new EditSession(_model, Settings()).Edit(Swap());
        using var cache = new SourceCache();
        var session = new EditSession(_model, Settings(), cache);
        using var first = session.Edit(Swap());
        using var second = session.Edit(Swap("a large green circle on a white background"));
        Assert.Equal(1, cache.Count);
        using var diff = (first.Latents - batchedResult.Latents).abs().max();
        output.WriteLine($"cached vs batched: max |diff| {diff.item<float>():E2}");
        Assert.True(diff.item<float>() < 1e-4, $"cached and batched edits differ by {diff.item<float>()}");
        // The source of every edit is the same recording.
        TensorAssert.Equal(first.Latents[..1], second.Latents[..1], "source latents of two edits");
        Assert.Same(first.Images[0], second.Images[0]);
        Assert.Contains("\"cross_replace_steps\":0.8", first.Metadata["prompt-to-prompt"]);
    }

    [Fact]
    public void A_corrupt_or_stale_cache_file_is_reported_and_recomputed()
    {
        using var dir = new TempDir();
        var log = new List<string>();
        EditResult Run()
        {
            using var cache = new SourceCache(directory: dir.Path, log: log.Add);
            return new EditSession(_model, Settings(), cache).Edit(Swap());
        }
        using var reference = Run();
        var file = Directory.GetFiles(dir.Path, "*.safetensors").Single();
        Assert.Contains(log, l => l.StartsWith("cache: saved"));

        // One flipped byte in the last tensor's data: the checksum catches it.
        var bytes = File.ReadAllBytes(file);
        bytes[^10] ^= 0x40;
        File.WriteAllBytes(file, bytes);
        log.Clear();
        using (var again = Run()) TensorAssert.Equal(reference.Latents, again.Latents, "after recomputing a corrupt file");
        Assert.Contains(log, l => l.Contains("checksum does not match") && l.EndsWith("recomputing the source."));
        Assert.Contains(log, l => l.StartsWith("cache: saved"));

        // A truncated file.
        File.WriteAllBytes(file, File.ReadAllBytes(file)[..1000]);
        log.Clear();
        using (var again = Run()) TensorAssert.Equal(reference.Latents, again.Latents, "after recomputing a truncated file");
        Assert.Contains(log, l => l.StartsWith($"cache: {file} is corrupt") && l.EndsWith("recomputing the source."));

        // A file recorded for another source under this name: stale.
        var other = new EditSession(_model, Settings() with { Seed = 9 });
        using (var cache = new SourceCache(directory: dir.Path)) new EditSession(_model, Settings() with { Seed = 9 }, cache).Recorded();
        File.Copy(Path.Combine(dir.Path, other.Key.Hash + ".safetensors"), file, overwrite: true);
        log.Clear();
        using (var again = Run()) TensorAssert.Equal(reference.Latents, again.Latents, "after recomputing a stale file");
        Assert.Contains(log, l => l.Contains("stale: it was recorded for another source"));

        // And a good file is loaded, not recomputed.
        log.Clear();
        using (var again = Run()) TensorAssert.Equal(reference.Latents, again.Latents, "from the file");
        Assert.Contains(log, l => l.StartsWith("cache: loaded"));
    }

    [Fact]
    public void Budget_and_cache_folder_errors_name_the_fix()
    {
        using var dir = new TempDir();
        var session = new EditSession(_model, Settings(50), new SourceCache(budgetMb: 1));
        var e = Assert.Throws<UserError>(() => session.Edit(Swap()));
        Assert.Contains($"The recorded source needs {TrajectoryPlan.Megabytes(session.Plan.Bytes)}", e.Message);
        Assert.Contains("Raise --cache-budget to at least", e.Message);
        var notAFolder = dir.File("plain-file");
        File.WriteAllText(notAFolder, "x");
        Assert.Equal($"The cache folder {notAFolder} is a file. Give a folder for --cache (it is created if absent).",
            Assert.Throws<UserError>(() => new SourceCache(directory: notAFolder)).Message);
        Assert.Throws<UserError>(() => new SourceCache(budgetMb: 0));
    }

    [Fact]
    public void Sweep_cells_carry_their_values_and_batched_cells_equal_single_edits()
    {
        var sweep = new Sweep(Target, Swap().Edit, [
            new SweepAxis(SweepParameter.SelfReplace, [0.2, 0.6]),
            new SweepAxis(SweepParameter.CrossReplace, [0.2, 0.5, 0.8])]);
        var cells = sweep.Cells(Source);
        Assert.Equal(6, cells.Count);
        Assert.Equal(["self_replace 0.2, cross_replace 0.2", "self_replace 0.2, cross_replace 0.5", "self_replace 0.2, cross_replace 0.8",
                      "self_replace 0.6, cross_replace 0.2", "self_replace 0.6, cross_replace 0.5", "self_replace 0.6, cross_replace 0.8"],
            cells.Select(c => c.Label));
        Assert.Equal((1, 2), (cells[5].Row, cells[5].Column));
        Assert.Equal(StepWindow.Until(0.6), cells[5].Request.Edit.SelfReplaceSteps);
        Assert.Equal(StepWindow.Until(0.8), cells[5].Request.Edit.CrossReplaceSteps.Default);
        Assert.Equal("self_replace_0.6__cross_replace_0.8.png", Sweep.FileName(cells[5]));

        using var cache = new SourceCache();
        var session = new EditSession(_model, Settings(), cache);
        var results = session.EditAll(cells.Select(c => c.Request).ToList(), batch: 4);
        try
        {
            using var alone = session.Edit(cells[4].Request);
            using var diff = (results[4].Latents - alone.Latents).abs().max();
            Assert.True(diff.item<float>() < 1e-4, $"a cell run in a batch of 2 differs from the same edit alone by {diff.item<float>()}");
            // Different windows give different images.
            Assert.NotEqual(results[0].Images[1].Pixels, results[2].Images[1].Pixels);
            var grid = sweep.Grid(results[0].Images[0], Source, cells, results.Select(r => r.Images[1]).ToList());
            Assert.True(grid.Width > 4 * 192 && grid.Height > 2 * 192, $"grid {grid.Width}x{grid.Height}");
        }
        finally
        {
            foreach (var r in results) r.Dispose();
        }
        // Values out of range, and reweighting words, are checked with the parameter's name.
        Assert.Contains("cross_replace sweep value 1.5 is outside [0, 1]",
            Assert.Throws<UserError>(() => new Sweep(Target, Swap().Edit, [new SweepAxis(SweepParameter.CrossReplace, [0.2, 1.5])]).Cells(Source)).Message);
        Assert.Contains("needs a local blend",
            Assert.Throws<UserError>(() => new Sweep(Target, Swap().Edit, [new SweepAxis(SweepParameter.BlendThreshold, [0.2, 0.5])]).Cells(Source)).Message);
    }

    [Fact]
    public void Direct_inversion_source_follows_the_inverted_trajectory_exactly()
    {
        var pipeline = new StableDiffusionPipeline(_model);
        var photo = RgbImage.Load(Path.Combine(Path.GetDirectoryName(ShippedModelTests.Folder)!, "..", "examples", "shapes_photo.png")).Resize(64, 64);
        using var inverted = new Inversion(pipeline).Invert(photo, "a large purple square and a small white circle on a blue background",
            new InversionSettings(InversionMethod.Direct, Steps: 10));
        using var cache = new SourceCache();
        var session = new EditSession(_model, EditSession.FromInversion(inverted, ReferenceVariant.PromptToPrompt, "test"), cache);
        using var result = session.Edit(new EditRequest(["a large orange square and a small white circle on a blue background"],
            new EditDescription { Edit = EditKind.Replace }));
        // The source ends exactly on the photo's latent, and passes through every inverted latent on the way.
        TensorAssert.Equal(inverted.DdimLatents[0], result.Latents[..1], "source final latent vs the encoded photo");
        var trajectory = session.Recorded().Trajectory;
        for (int i = 0; i < 10; i++) TensorAssert.Equal(inverted.DdimLatents[9 - i], trajectory.Latents[i..(i + 1)], $"source after step {i}");
        Assert.NotEqual(result.Images[0].Pixels, result.Images[1].Pixels);
        Assert.Throws<UserError>(() => new EditSession(_model, session.Source).Edit(Swap()));
    }
}
