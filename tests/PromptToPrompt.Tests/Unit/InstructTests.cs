using System.Text.Json;
using PromptToPrompt.Editing;
using PromptToPrompt.Imaging;
using PromptToPrompt.Loading;
using PromptToPrompt.Pipelines;
using PromptToPrompt.Tests.Conformance;

namespace PromptToPrompt.Tests.Unit;

/// <summary>
/// InstructPix2Pix around the conformance-tested core: the input's size rule and its PIL Lanczos resize, the s_I x s_T
/// grid, models used where the other kind is needed, bad scales, and <c>p2p instruct</c> as a user runs it.
/// </summary>
[Collection("conformance")]
public class InstructTests(ConformanceData data)
{
    /// <summary>The image make_lanczos_reference.py draws (the same formula).</summary>
    static RgbImage Pattern(int w, int h)
    {
        var pixels = new byte[w * h * 3];
        for (int y = 0; y < h; y++)
            for (int x = 0; x < w; x++)
                for (int c = 0; c < 3; c++)
                    pixels[(y * w + x) * 3 + c] = (byte)((x * 37 + y * 91 + c * 53 + (x * y) % 17 * 11) % 256);
        return new RgbImage(w, h, pixels);
    }

    [Fact]
    public void Lanczos_resize_equals_pillow_exactly()
    {
        // Data/lanczos_pil.json: Pillow 9.4's Image.resize(size, LANCZOS), shrinking and enlarging, one axis or both.
        var reference = JsonDocument.Parse(File.ReadAllText(Path.Combine(AppContext.BaseDirectory, "Data", "lanczos_pil.json"))).RootElement;
        var input = Pattern(reference.GetProperty("width").GetInt32(), reference.GetProperty("height").GetInt32());
        foreach (var c in reference.GetProperty("resized").EnumerateObject())
        {
            var size = c.Name.Split('x').Select(int.Parse).ToArray();
            var ours = ImageInput.Lanczos(input, size[0], size[1]);
            Assert.True(Convert.FromBase64String(c.Value.GetString()!).SequenceEqual(ours.Pixels), $"Lanczos {c.Name} differs from Pillow");
        }
    }

    [Fact]
    public void The_edit_keeps_the_photo_size_rounded_down_to_a_multiple_of_8_unless_asked()
    {
        var pipeline = new InstructPix2PixPipeline(data.Ip2pModel);
        var photo = Pattern(203, 117);
        var own = pipeline.PrepareImage(photo);
        Assert.Equal((200, 112), (own.Width, own.Height));
        Assert.Equal(ImageInput.Lanczos(photo, 200, 112).Pixels, own.Pixels);
        var exact = Pattern(64, 48);
        Assert.Same(exact, pipeline.PrepareImage(exact));
        var byWidth = pipeline.PrepareImage(photo, width: 96);
        Assert.Equal((96, 56), (byWidth.Width, byWidth.Height)); // 117 * 96 / 203 = 55.3 -> 56
        var both = pipeline.PrepareImage(photo, 64, 64, FitMode.Pad);
        Assert.Equal((64, 64), (both.Width, both.Height));
        Assert.Equal(0, both.Pixels[0]); // padded with black above the photo
        Assert.Contains("width 100 is not a positive multiple of 8", Assert.Throws<UserError>(() => pipeline.PrepareImage(photo, 100, 64)).Message);
        Assert.Contains("at least 8x8 pixels", Assert.Throws<UserError>(() => pipeline.PrepareImage(Pattern(7, 30))).Message);
    }

    [Fact]
    public void The_grid_holds_each_pair_of_scales_as_its_own_edit_would()
    {
        var pipeline = new InstructPix2PixPipeline(data.Ip2pModel);
        var request = new InstructRequest { Image = Pattern(64, 32), Instruction = "make it blue", Steps = 3, Seed = 5 };
        var seen = new List<(int, double, double)>();
        var (grid, cells) = pipeline.Grid(request, [1.0, 2.0], [5.0, 7.5], (i, si, st) => { seen.Add((i, si, st)); return null; });
        Assert.Equal([(0, 1.0, 5.0), (1, 1.0, 7.5), (2, 2.0, 5.0), (3, 2.0, 7.5)], seen);
        using var single = pipeline.Edit(request with { ImageGuidanceScale = 2.0, GuidanceScale = 5.0 });
        Assert.Equal(single.Image.Pixels, cells[2].Image.Pixels);
        Assert.NotEqual(cells[0].Image.Pixels, cells[3].Image.Pixels);
        Assert.True(grid.Width > 2 * 64 && grid.Height > 2 * 32, $"grid {grid.Width}x{grid.Height}");
        foreach (var c in cells) c.Dispose();
    }

    [Fact]
    public void Each_model_kind_is_refused_where_the_other_is_needed_and_bad_scales_are_named()
    {
        Assert.Equal("tiny-ip2p is an InstructPix2Pix model (its UNet also takes the input image's latent); it edits by instruction: use p2p instruct with it, or give a text-to-image model.",
            Assert.Throws<UserError>(() => new StableDiffusionPipeline(data.Ip2pModel).Generate(new GenerationRequest { Prompts = ["a cat"], Steps = 2 })).Message);
        Assert.Contains("is an InstructPix2Pix model", Assert.Throws<UserError>(() => new EditSession(data.Ip2pModel, new SourceSettings { Prompt = "a cat", Steps = 2 })).Message);
        Assert.Equal("tiny-sd is not an InstructPix2Pix model (its UNet takes 4 input channels, not the latent and the image's latent, 8); give an instruction model such as timbrooks/instruct-pix2pix to p2p instruct.",
            Assert.Throws<UserError>(() => new InstructPix2PixPipeline(data.Model)).Message);

        var ok = new InstructRequest { Image = Pattern(16, 16), Instruction = "make it blue" };
        Assert.Contains("The instruction is empty", Assert.Throws<UserError>(() => InstructPix2PixPipeline.Validate(ok with { Instruction = "  " })).Message);
        Assert.Equal("The image guidance scale must be a finite number of at least 0 (1 = no guidance); got NaN.",
            Assert.Throws<UserError>(() => InstructPix2PixPipeline.Validate(ok with { ImageGuidanceScale = double.NaN })).Message);
        Assert.Contains("The guidance scale must be a finite number of at least 0", Assert.Throws<UserError>(() => InstructPix2PixPipeline.Validate(ok with { GuidanceScale = -2 })).Message);
    }

    [Fact]
    public void An_ancestral_scheduler_generates_reproducibly_but_is_refused_for_edits()
    {
        var pipeline = new StableDiffusionPipeline(data.Model);
        var request = new GenerationRequest { Prompts = ["a red circle"], Steps = 4, Scheduler = "euler-a", Seed = 3, Width = 64, Height = 64 };
        var a = pipeline.Generate(request);
        var b = pipeline.Generate(request);
        var c = pipeline.Generate(request with { Seed = 4 });
        Assert.Equal(a.Images[0].Pixels, b.Images[0].Pixels);
        Assert.NotEqual(a.Images[0].Pixels, c.Images[0].Pixels);
        Assert.Contains("euler-a adds fresh noise at every step", Assert.Throws<UserError>(() =>
            new EditSession(data.Model, new SourceSettings { Prompt = "a red circle", Steps = 4, Scheduler = "euler-a" })).Message);
    }

    [Fact]
    public void P2p_instruct_writes_the_edit_its_parameters_and_latents_and_names_bad_input()
    {
        using var dir = new TempDir();
        Png.Save(dir.File("photo.png"), Pattern(75, 50));
        var (code, stdout, stderr) = CliTests.RunP2P("instruct", "--model", ConformanceData.Ip2pPath, "--image", dir.File("photo.png"),
            "--instruction", "make it blue", "--steps", "3", "--seed", "11", "--image-guidance", "1.25", "--out", dir.File("edit.png"),
            "--save-latents", dir.File("z.safetensors"));
        Assert.True(code == 0, stderr);
        Assert.Contains("step 3/3", stderr);
        Assert.Contains("editing at 72x48 (the photo is 75x50)", stderr);
        Assert.Contains(dir.File("edit.png"), stdout);
        var text = Png.ReadText(dir.File("edit.png"));
        Assert.Contains("Image CFG scale: 1.25, Seed: 11, Size: 72x48", text["parameters"]);
        Assert.Contains("\"instruction\":\"make it blue\"", text["instruct-pix2pix"]);
        using (var latents = new SafetensorsFile(dir.File("z.safetensors")))
            Assert.Equal([1L, 4, 6, 9], latents.Entries["latents"].Shape);

        string[] Run(params string[] extra) => ["instruct", "--image", dir.File("photo.png"), "--instruction", "make it blue", "--out", dir.File("x.png"), .. extra];
        foreach (var (args, message) in new[]
        {
            (Run("--model", ShippedModelTests.Folder), "shapes is not an InstructPix2Pix model (its UNet takes 4 input channels"),
            (Run("--model", ConformanceData.ModelPath), "tiny-sd is not an InstructPix2Pix model"),
            (Run("--model", ConformanceData.Ip2pPath, "--guidance", "5,high"), "--guidance 5,high: 'high' is not a finite number."),
            (Run("--model", ConformanceData.Ip2pPath, "--image-guidance", "-1"), "The image guidance scale must be a finite number of at least 0"),
            (Run("--model", ConformanceData.Ip2pPath, "--guidance", "5,7", "--save-latents", dir.File("g.safetensors")), "--save-latents writes one edit's latents"),
            (["generate", "--model", ConformanceData.Ip2pPath, "--prompt", "a cat", "--out", dir.File("g.png")], "is an InstructPix2Pix model"),
            (["serve", "--model", ConformanceData.Ip2pPath, "--port", "0"], "is an InstructPix2Pix model"),
        })
        {
            var (c, _, err) = CliTests.RunP2P(args);
            Assert.True(c != 0, $"{string.Join(" ", args)} succeeded");
            Assert.Contains(message, err);
            Assert.DoesNotContain("   at ", err);
        }
    }
}
