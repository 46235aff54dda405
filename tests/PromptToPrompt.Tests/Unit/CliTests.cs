using System.Diagnostics;
using PromptToPrompt.Imaging;
using PromptToPrompt.Loading;
using PromptToPrompt.Tests.Conformance;

namespace PromptToPrompt.Tests.Unit;

/// <summary>The p2p command as a user runs it: exit codes, one-line errors, outputs and their metadata.</summary>
public class CliTests
{
    public static (int Code, string Out, string Err) RunP2P(params string[] args) =>
        TestProcess.Run("dotnet", [Path.Combine(AppContext.BaseDirectory, "p2p.dll"), .. args]);

    [Fact]
    public void Generate_writes_png_and_latents_with_parameters()
    {
        using var dir = new TempDir();
        var (code, stdout, stderr) = RunP2P("generate", "--model", ConformanceData.ModelPath, "--prompt", "a red fox", "--seed", "7",
            "--steps", "3", "--scheduler", "ddim", "--width", "128", "--height", "96", "--out", dir.File("fox.png"), "--save-latents", dir.File("z.safetensors"));
        Assert.True(code == 0, stderr);
        Assert.Contains("step 3/3", stderr);
        Assert.Contains("it/s", stderr);
        Assert.Contains(dir.File("fox.png"), stdout);
        var text = Png.ReadText(dir.File("fox.png"));
        Assert.Contains("Seed: 7", text["parameters"]);
        Assert.Contains("Sampler: ddim", text["parameters"]);
        Assert.Contains("\"steps\":3", text["prompt-to-prompt"]);
        using var latents = new SafetensorsFile(dir.File("z.safetensors"));
        Assert.Equal([1L, 4, 12, 16], latents.Entries["latents"].Shape);
        Assert.Equal((128, 96), (RgbImage.Load(dir.File("fox.png")).Width, RgbImage.Load(dir.File("fox.png")).Height));
    }

    [Fact]
    public void Generate_from_a_latent_file_matches_its_size()
    {
        using var dir = new TempDir();
        SafetensorsFile.Write(dir.File("x.safetensors"), new Dictionary<string, TorchSharp.torch.Tensor> { ["latent"] = TorchSharp.torch.randn(1, 4, 8, 16) });
        var (code, _, stderr) = RunP2P("generate", "--model", ConformanceData.ModelPath, "--prompt", "x", "--steps", "2",
            "--latent", dir.File("x.safetensors"), "--out", dir.File("o.png"));
        Assert.True(code == 0, stderr);
        Assert.Equal(128, RgbImage.Load(dir.File("o.png")).Width);
        Assert.Equal(64, RgbImage.Load(dir.File("o.png")).Height);
    }

    [Fact]
    public void Progress_in_a_log_is_a_line_every_five_percent_or_none()
    {
        using var dir = new TempDir();
        string[] Args(params string[] extra) => ["generate", "--prompt", "a large red circle on a white background", "--seed", "1", "--steps", "40",
            "--scheduler", "ddim", "--out", dir.File($"{string.Join("_", extra)}.png"), .. extra];
        var (code, _, stderr) = RunP2P(Args()); // stderr is redirected here: plain by default
        Assert.True(code == 0, stderr);
        var lines = stderr.Split('\n').Where(l => l.StartsWith("denoising [")).ToList();
        Assert.Equal(21, lines.Count); // step 1 (the run has started), then 2, 4, ..., 40
        Assert.Contains("step 1/40", lines[0]);
        Assert.Contains("step 2/40", lines[1]);
        Assert.Contains("step 40/40", lines[^1]);
        Assert.DoesNotContain('\r', stderr);
        var none = RunP2P(Args("--progress", "none"));
        Assert.True(none.Code == 0, none.Err);
        Assert.DoesNotContain("denoising [", none.Err);
        var bar = RunP2P(Args("--progress", "bar"));
        Assert.True(bar.Code == 0, bar.Err);
        Assert.Equal(40, bar.Err.Split('\r').Count(l => l.StartsWith("denoising [")));
    }

    [Fact]
    public void An_evaluation_reports_progress_as_the_progress_option_says()
    {
        string[] args = ["eval-shapes", "--samples", "2", "--steps", "2", "--inversion-samples", "0", "--guidance-samples", "0", "--zero-samples", "0"];
        var plain = RunP2P(args);
        Assert.True(plain.Code == 0, plain.Err);
        Assert.DoesNotContain('\r', plain.Err);
        // As generation's progress: a line per 5% of each measure's samples ("canonical colour [####...] sample 1/2").
        var lines = plain.Err.Split('\n').Where(l => l.Contains(" colour [") || l.Contains(" edits ["))
            .Select(l => System.Text.RegularExpressions.Regex.Replace(l, @" \[[#-]+\] sample", "").Trim()).ToList();
        Assert.Equal(["canonical colour 1/2", "canonical colour 2/2", "canonical edits 1/2", "canonical edits 2/2",
                      "varied colour 1/2", "varied colour 2/2", "varied edits 1/2", "varied edits 2/2"], lines);
        Assert.Contains("colour accuracy, single objects", plain.Out);
        var none = RunP2P([.. args, "--progress", "none"]);
        Assert.True(none.Code == 0, none.Err);
        Assert.DoesNotContain("canonical colour", none.Err);
    }

    [Fact]
    public void Benchmark_reports_every_stage_on_a_model()
    {
        var (code, stdout, stderr) = RunP2P("benchmark", "--model", ShippedModelTests.Folder, "--steps", "2", "--inversion");
        Assert.True(code == 0, stderr);
        Assert.Contains("size 64x64, 2 steps (ddim)", stdout);
        string[] stages = ["load (shapes)", "text encoder (2 prompts)", "warm-up: first UNet evaluation", "plain generation, 1 prompt",
            "plain generation, 2 prompts", "generation + AttentionStore", "generation + Attend-and-Excite", "generation + Directed Diffusion", "word swap, 2 prompts", "record the source (", "later word swap, target alone + cache", "VAE decode, 1 image",
            "null-text inversion, 1 step x 10 inner", "direct inversion, 2 steps"];
        var lines = stdout.Split('\n');
        foreach (var stage in stages)
            Assert.Matches(@"^\S.* +\d+\.\d\d s.*peak RSS +\d+ MB$", Assert.Single(lines, l => l.StartsWith(stage)));
        Assert.Equal(9, lines.Count(l => l.Contains(" s/step (")));
        Assert.Matches(@"^a later edit costs \d+\.\d\dx the batched word swap; the cached source holds \d+\.\d MB \(2 evaluations, ", Assert.Single(lines, l => l.StartsWith("a later edit")));
        var none = RunP2P("benchmark");
        Assert.Equal(1, none.Code);
        Assert.Contains("error: Give exactly one of --model and --architecture.", none.Err);
    }

    [Theory]
    [InlineData("--samples|0", "error: --samples must be at least 1; got 0.")]
    [InlineData("--inversion-samples|-2", "error: --inversion-samples must be 0 (skip) or more; got -2.")]
    [InlineData("--guidance-samples|-1", "error: --guidance-samples must be 0 (skip) or more; got -1.")]
    [InlineData("--zero-samples|-1", "error: --zero-samples must be 0 (skip) or more; got -1.")]
    public void Eval_shapes_refuses_sample_counts_out_of_range(string extra, string message)
    {
        var (code, stdout, stderr) = RunP2P(["eval-shapes", .. extra.Split('|')]);
        Assert.Equal(1, code);
        Assert.Equal(message, stderr.Trim());
        Assert.Empty(stdout);
    }

    [Fact]
    public void Existing_outputs_are_not_replaced_without_overwrite()
    {
        using var dir = new TempDir();
        File.WriteAllText(dir.File("o.png"), "mine");
        var (code, _, stderr) = RunP2P("generate", "--model", ConformanceData.ModelPath, "--prompt", "x", "--steps", "1", "--out", dir.File("o.png"));
        Assert.Equal(1, code);
        Assert.Contains("--overwrite", stderr);
        Assert.Equal("mine", File.ReadAllText(dir.File("o.png")));
    }
}

/// <summary><c>p2p edit</c> end to end: flags and spec files reproduce the reference's edits.</summary>
public class EditCliTests
{
    static string WriteLatent(TempDir dir, string goldenCase)
    {
        using var golden = new SafetensorsFile(ConformanceData.Golden($"p2p/{goldenCase}.safetensors"));
        var path = dir.File("x_T.safetensors");
        SafetensorsFile.Write(path, new Dictionary<string, TorchSharp.torch.Tensor> { ["latent"] = golden.Read("x_T") });
        return path;
    }

    static void AssertMatchesGolden(string latentsPath, string goldenCase)
    {
        using var golden = new SafetensorsFile(ConformanceData.Golden($"p2p/{goldenCase}.safetensors"));
        using var ours = new SafetensorsFile(latentsPath);
        using var expected = golden.Read("latents_final");
        using var max = expected.abs().max();
        TensorAssert.Close(expected, ours.Read("latents"), 1e-4 * max.item<float>(), goldenCase);
    }

    [Fact]
    public void Flags_reproduce_the_local_blend_word_swap()
    {
        using var dir = new TempDir();
        var (code, stdout, stderr) = CliTests.RunP2P("edit", "--model", ConformanceData.ModelPath, "--prompt", "a cat sitting on a chair",
            "--target", "a dog sitting on a chair", "--blend", "cat;dog", "--steps", "10", "--scheduler", "pndm",
            "--latent", WriteLatent(dir, "05_replace_localblend_cat_dog"), "--out", dir.File("out"), "--save-latents", dir.File("z.safetensors"));
        Assert.True(code == 0, stderr);
        AssertMatchesGolden(dir.File("z.safetensors"), "05_replace_localblend_cat_dog");
        foreach (var f in new[] { "prompt_0.png", "prompt_1.png", "grid.png" }) Assert.Contains(Path.Combine(dir.File("out"), f), stdout);
        var meta = Png.ReadText(Path.Combine(dir.File("out"), "prompt_1.png"));
        Assert.Equal("a dog sitting on a chair", meta["prompt"]);
        Assert.Contains("\"edit\":\"replace\"", meta["prompt-to-prompt"]);
        Assert.Contains("\"local_blend\":{\"words\":[[\"cat\"],[\"dog\"]]", meta["prompt-to-prompt"]);
    }

    [Fact]
    public void A_spec_file_reproduces_the_refinement()
    {
        using var dir = new TempDir();
        WriteLatent(dir, "03_refine_castle_children_drawing");
        File.WriteAllText(dir.File("edit.json"), $$"""
            {"model": "{{ConformanceData.ModelPath}}", "prompts": ["a castle next to a river", "children drawing of a castle next to a river"],
             "edit": "refine", "cross_replace_steps": 0.8, "self_replace_steps": 0.4, "steps": 10, "guidance_scale": 7.5,
             "scheduler": "pndm", "latent": "x_T.safetensors"}
            """);
        var (code, _, stderr) = CliTests.RunP2P("edit", "--spec", dir.File("edit.json"), "--out", dir.File("out"), "--save-latents", dir.File("z.safetensors"));
        Assert.True(code == 0, stderr);
        AssertMatchesGolden(dir.File("z.safetensors"), "03_refine_castle_children_drawing");
    }
}

/// <summary>SDXL through the command line: a word swap with local blending reproduces the reference (golden/sdxl p04).</summary>
public class SdxlCliTests
{
    [Fact]
    public void Edit_reproduces_the_sdxl_local_blend_word_swap_and_records_the_micro_conditioning()
    {
        using var dir = new TempDir();
        using var golden = new SafetensorsFile(ConformanceData.Golden("sdxl/p04_replace_localblend_horse_cow.safetensors"));
        SafetensorsFile.Write(dir.File("x_T.safetensors"), new Dictionary<string, TorchSharp.torch.Tensor> { ["latent"] = golden.Read("x_T") });
        // The stated micro-conditioning is diffusers' default for 1024x1024, so the result stays the reference's.
        var (code, _, stderr) = CliTests.RunP2P("edit", "--model", ConformanceData.SdxlPath, "--prompt", "a horse in a meadow", "--target", "a cow in a meadow",
            "--blend", "horse;cow", "--blend-threshold", "0.7", "--steps", "10", "--scheduler", "euler", "--latent", dir.File("x_T.safetensors"),
            "--original-size", "1024,1024", "--crop-coords", "0,0", "--out", dir.File("out"), "--save-latents", dir.File("z.safetensors"));
        Assert.True(code == 0, stderr);
        using var ours = new SafetensorsFile(dir.File("z.safetensors"));
        using var expected = golden.Read("latents_final");
        using var max = expected.abs().max();
        TensorAssert.Close(expected, ours.Read("latents"), 2e-4 * max.item<float>(), "p04 through p2p edit");
        var meta = Png.ReadText(Path.Combine(dir.File("out"), "prompt_1.png"));
        Assert.Contains("\"original_size\":[1024,1024],\"crops_coords_top_left\":[0,0]", meta["prompt-to-prompt"]);
        Assert.Contains("SDXL original 1024x1024, crop 0,0, target 1024x1024", meta["parameters"]);
    }
}

/// <summary><c>p2p invert</c> and editing from an inversion, as a user runs them.</summary>
public class InversionCliTests
{
    static readonly string Photo = ConformanceData.Golden("inversion/images/inv01_red_ball_image_gt.png");

    [Fact]
    public void Invert_then_edit_from_the_file_and_refuse_mismatches()
    {
        using var dir = new TempDir();
        var (code, stdout, stderr) = CliTests.RunP2P("invert", "--model", ConformanceData.ModelPath, "--image", Photo, "--prompt", "a red ball next to a blue ball",
            "--steps", "3", "--inner-steps", "2", "--width", "128", "--height", "128", "--out", dir.File("inv.safetensors"), "--reconstruction", dir.File("rec.png"));
        Assert.True(code == 0, stderr);
        Assert.Contains("null-text optimisation", stderr);
        Assert.Contains("loss", stderr);
        Assert.Contains("reconstruction PSNR", stderr);
        Assert.Contains(dir.File("rec.png"), stdout);
        using (var inv = new SafetensorsFile(dir.File("inv.safetensors")))
        {
            Assert.Equal([1L, 4, 16, 16], inv.Entries["x_T"].Shape);
            Assert.Equal([3L, 77, 32], inv.Entries["null_embeddings"].Shape);
            Assert.Equal("null-text", inv.Metadata["method"]);
            Assert.Equal("a red ball next to a blue ball", inv.Metadata["prompt"]);
        }

        (code, stdout, stderr) = CliTests.RunP2P("edit", "--model", ConformanceData.ModelPath, "--inversion", dir.File("inv.safetensors"),
            "--target", "a red cube next to a blue ball", "--out", dir.File("edit"));
        Assert.True(code == 0, stderr);
        Assert.Contains("inv.safetensors", Png.ReadText(Path.Combine(dir.File("edit"), "prompt_1.png"))["inversion"]);
        Assert.Equal(128, RgbImage.Load(Path.Combine(dir.File("edit"), "prompt_1.png")).Width);

        foreach (var (args, message) in new[]
        {
            (new[] { "--steps", "5" }, "the edit must use the same"),
            (new[] { "--dtype", "bfloat16" }, "Invert the image again with this model"),
            (new[] { "--prompt", "a green ball next to a blue ball" }, "must start from that prompt"),
            (new[] { "--scheduler", "pndm" }, "sample with DDIM"),
        })
        {
            var all = new List<string> { "edit", "--model", ConformanceData.ModelPath, "--inversion", dir.File("inv.safetensors"),
                "--target", "a red cube next to a blue ball", "--out", dir.File("bad") };
            all.AddRange(args);
            (code, _, stderr) = CliTests.RunP2P(all.ToArray());
            Assert.Equal(1, code);
            Assert.Contains(message, stderr);
            Assert.False(Directory.Exists(dir.File("bad")));
        }
    }

    [Fact]
    public void Edit_a_photo_in_one_go()
    {
        using var dir = new TempDir();
        var (code, stdout, stderr) = CliTests.RunP2P("edit", "--model", ConformanceData.ModelPath, "--image", Photo, "--method", "negative-prompt",
            "--prompt", "a red ball next to a blue ball", "--target", "a red cube next to a blue ball", "--steps", "3", "--width", "64", "--height", "64",
            "--fit", "pad", "--save-inversion", dir.File("inv.safetensors"), "--out", dir.File("edit"));
        Assert.True(code == 0, stderr);
        Assert.Contains(dir.File("inv.safetensors"), stdout);
        using var inv = new SafetensorsFile(dir.File("inv.safetensors"));
        Assert.Equal("pad", inv.Metadata["fit"]);
        // The grid shows the photo as inverted, the reconstruction and the edit: three 64 px images shown at 192 px.
        Assert.Equal(3 * 192 + 4 * 8, RgbImage.Load(Path.Combine(dir.File("edit"), "grid.png")).Width);
    }
}

/// <summary><c>p2p generate --excite</c>: the guided run's record in the PNG and its summary line, and its bad input.</summary>
public class ExciteCliTests
{
    [Fact]
    public void Generate_with_excite_records_it_and_names_bad_input()
    {
        using var dir = new TempDir();
        var (code, _, stderr) = CliTests.RunP2P("generate", "--model", ConformanceData.ModelPath, "--prompt", "a cat and a frog", "--excite", "cat,frog",
            "--excite-steps", "2", "--excite-thresholds", "0:0.9", "--seed", "5", "--steps", "3", "--width", "128", "--height", "128", "--out", dir.File("ae.png"));
        Assert.True(code == 0, stderr);
        Assert.Matches(@"attend-and-excite: latent updated at \d step\(s\); refinement at step\(s\) (none|0 \(\d+\))", stderr);
        var text = Png.ReadText(dir.File("ae.png"));
        Assert.Contains("Attend-and-Excite tokens: 2 5", text["parameters"]);
        Assert.Contains("\"attend_and_excite\":{\"token_indices\":[2,5],\"max_iter_to_alter\":2", text["prompt-to-prompt"]);

        string[] Run(params string[] extra) => ["generate", "--model", ConformanceData.ModelPath, "--steps", "2", "--out", dir.File("x.png"), .. extra];
        foreach (var (args, message) in new[]
        {
            (Run("--prompt", "a cat and a frog", "--excite", "dog"), "The word 'dog' is not in the prompt \"a cat and a frog\""),
            (Run("--prompt", "a cat", "--excite", "cat", "--excite-thresholds", "5"), "--excite-thresholds 5: '5' is not step:value."),
            (Run("--prompt", "a cat", "--excite", "cat", "--excite-thresholds", "0:1.5"), "values between 0 and 1"),
            (Run("--prompt", "a cat", "--prompt", "a dog", "--excite", "cat"), "--excite guides one prompt at a time"),
            (Run("--prompt", "a cat", "--excite", ","), "Attend-and-Excite needs at least one subject word"),
        })
        {
            var (c, _, err) = CliTests.RunP2P(args);
            Assert.True(c == 1, $"{string.Join(" ", args)}: exit {c}\n{err}");
            Assert.Contains(message, err);
        }
    }
}

/// <summary>A guided source in the commands that edit and show attention: <c>p2p edit --excite/--box</c>, <c>p2p attention --excite</c>.</summary>
public class GuidedSourceCliTests
{
    [Fact]
    public void Edit_and_attention_take_a_guided_source_and_refuse_one_for_a_photo()
    {
        using var dir = new TempDir();
        string[] common = ["--model", ConformanceData.ModelPath, "--prompt", "a cat and a frog", "--seed", "5", "--steps", "3", "--width", "128", "--height", "128"];
        var (code, stdout, stderr) = CliTests.RunP2P(["edit", .. common, "--target", "a dog and a frog", "--excite", "cat,frog", "--excite-steps", "2",
            "--box", "frog=0.5,1,0,1", "--show-attention", "--out", dir.File("edit")]);
        Assert.True(code == 0, stderr);
        Assert.Contains("cache: recorded the source", stderr);
        Assert.Matches(@"attend-and-excite: latent updated at 2 step\(s\)", stderr);
        Assert.Contains(dir.File("edit/attention_1_tokens.png"), stdout);
        var text = Png.ReadText(dir.File("edit/prompt_1.png"));
        Assert.Contains("Directed Diffusion boxes: 5=0.5,1,0,1, Attend-and-Excite tokens: 2 5", text["parameters"]);
        Assert.Contains("\"attend_and_excite\":{\"token_indices\":[2,5],\"max_iter_to_alter\":2", text["source-guidance"]);

        (code, stdout, stderr) = CliTests.RunP2P(["attention", .. common, "--excite", "cat,frog", "--excite-steps", "2", "--out", dir.File("views")]);
        Assert.True(code == 0, stderr);
        Assert.Contains(dir.File("views/tokens.png"), stdout);
        Assert.Contains("Attend-and-Excite tokens: 2 5", Png.ReadText(dir.File("views/tokens.png"))["parameters"]);

        (code, _, stderr) = CliTests.RunP2P("edit", "--model", ConformanceData.ModelPath, "--image", ConformanceData.Golden("inversion/images/inv01_red_ball_image_gt.png"),
            "--prompt", "a red ball", "--target", "a blue ball", "--excite", "ball", "--out", dir.File("photo"));
        Assert.Equal(1, code);
        Assert.Contains("error: Attend-and-Excite and Directed Diffusion guide a generated source; an inverted photo's source is fixed by its inversion.", stderr);
        Assert.False(Directory.Exists(dir.File("photo")));
    }
}

/// <summary><c>p2p zero</c>: a photo edited along a direction read from sentence files, with its record in the PNGs.</summary>
public class ZeroCliTests
{
    [Fact]
    public void Zero_writes_the_edit_and_reconstruction_with_their_parameters()
    {
        using var dir = new TempDir();
        Directory.CreateDirectory(dir.File("directions"));
        File.WriteAllLines(dir.File("directions/red.txt"), Enumerable.Range(0, 12).Select(i => $"a red ball number {i}"));
        File.WriteAllLines(dir.File("directions/blue.txt"), Enumerable.Range(0, 10).Select(i => $"a blue ball number {i}").Append(""));
        var (code, stdout, stderr) = CliTests.RunP2P("zero", "--model", ConformanceData.ModelPath, "--image", ConformanceData.Golden("inversion/images/inv01_red_ball_image_gt.png"),
            "--prompt", "a red ball", "--from", "red", "--to", "blue", "--directions", dir.File("directions"), "--steps", "3", "--xa-guidance", "0",
            "--width", "64", "--height", "64", "--out", dir.File("z"));
        Assert.True(code == 0, stderr);
        Assert.Contains($"direction red -> blue from 12 + 10 sentences ({dir.File("directions")}); reconstruction PSNR ", stderr);
        Assert.Equal([dir.File("z/edit.png"), dir.File("z/reconstruction.png")], stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries));
        Assert.Equal(64, RgbImage.Load(dir.File("z/edit.png")).Width);
        var json = Png.ReadText(dir.File("z/edit.png"))["prompt-to-prompt"];
        Assert.Contains("\"method\":\"pix2pix-zero\",\"from\":\"red\",\"to\":\"blue\"", json);
        Assert.Contains("\"from_sentences\":12,\"to_sentences\":10,\"steps\":3", json);
        Assert.Contains("\"xa_guidance\":0,", json);

        (code, _, stderr) = CliTests.RunP2P("zero", "--model", ConformanceData.ModelPath, "--image", ConformanceData.Golden("inversion/images/inv01_red_ball_image_gt.png"),
            "--prompt", "a red ball", "--from", "red", "--to", "blue", "--directions", dir.File("directions"), "--steps", "3", "--out", dir.File("z"));
        Assert.Equal(1, code);
        Assert.Contains("--overwrite", stderr);
    }
}
