using PromptToPrompt.Imaging;
using PromptToPrompt.Loading;
using PromptToPrompt.Pipelines;
using PromptToPrompt.Tests.Conformance;
using static TorchSharp.torch;

namespace PromptToPrompt.Tests.Unit;

[Collection("conformance")]
public class InversionTests(ConformanceData data, ITestOutputHelper output)
{
    const string Prompt = "a red ball next to a blue ball";
    const double Guidance = 7.5;
    static RgbImage Photo(int size) => ImageInput.Load(ConformanceData.Golden("inversion/images/inv01_red_ball_image_gt.png"), size, size);

    (InversionResult Result, double LatentMse) InvertAndReconstruct(InversionMethod method, StableDiffusionModel model, int size = 128, int steps = 5)
    {
        var pipeline = new StableDiffusionPipeline(model);
        var photo = Photo(size);
        var result = new Inversion(pipeline).Invert(photo, Prompt, new InversionSettings(method, steps, InnerSteps: 10, GuidanceScale: Guidance));
        var rec = pipeline.Generate(new GenerationRequest
        {
            Prompts = [Prompt], Steps = steps, Scheduler = "ddim", GuidanceScale = Guidance, InitialLatent = result.XT, UnconditionalEmbeddings = result.NullEmbeddings,
        });
        // With random weights every reconstruction is poor: image PSNR is about 10 dB for every method (the reference's
        // own null-text reconstruction of its case: 9.43 dB), because DDIM inversion is far from exact when the noise
        // prediction changes a lot between timesteps. What null-text inversion optimises, and what it must improve, is
        // the distance of the sampled x_0 to the encoded photo.
        using var x0 = result.DdimLatents[0];
        double latentMse = (rec.Latents - x0).pow(2).mean().item<float>();
        output.WriteLine($"{method}: PSNR vs photo {Inversion.Psnr(photo, rec.Images[0]):F2} dB, latent MSE {latentMse:E3}");
        return (result, latentMse);
    }

    /// <summary>On SDXL the null text is the context's unconditional half; its pooled half stays the empty prompt's (zeros for tiny-sdxl).</summary>
    [Theory]
    [InlineData("tiny-sd")]
    [InlineData("tiny-sdxl")]
    public void Null_text_reconstructs_better_than_plain_ddim_inversion(string name)
    {
        var model = name == "tiny-sdxl" ? data.SdxlModel : data.Model;
        var (nullText, nullError) = InvertAndReconstruct(InversionMethod.NullText, model);
        var (ddim, ddimError) = InvertAndReconstruct(InversionMethod.Ddim, model);
        using (nullText) using (ddim)
            Assert.True(nullError < 0.95 * ddimError, $"null-text reconstruction error {nullError:E3} should be clearly below plain DDIM inversion's {ddimError:E3}");
    }

    [Fact]
    public void Negative_prompt_inversion_uses_the_prompt_embedding_as_null_text()
    {
        var pipeline = new StableDiffusionPipeline(data.Model);
        using var result = new Inversion(pipeline).Invert(Photo(64), Prompt, new InversionSettings(InversionMethod.NegativePrompt, Steps: 3));
        using var cond = pipeline.EncodePrompts([Prompt]);
        Assert.Equal([3L, 1, 77, 32], result.NullEmbeddings.shape);
        for (int i = 0; i < 3; i++) TensorAssert.Equal(cond, result.NullEmbeddings[i], $"null embedding {i}");
        Assert.Equal([4L, 1, 4, 8, 8], result.DdimLatents.shape);
    }

    [Fact]
    public void Inversion_files_round_trip_and_refuse_other_models_and_step_counts()
    {
        var pipeline = new StableDiffusionPipeline(data.Model);
        using var result = new Inversion(pipeline).Invert(Photo(64), Prompt, new InversionSettings(InversionMethod.NegativePrompt, Steps: 3));
        using var dir = new TempDir();
        var path = dir.File("inv.safetensors");
        InversionFile.Save(path, result, data.Model, ConformanceData.Golden("inversion/images/inv01_red_ball_image_gt.png"), FitMode.Crop, 64, 64, 12.5);
        using var file = InversionFile.Load(path);
        Assert.Equal(Prompt, file.Prompt);
        Assert.Equal(3, file.Steps);
        Assert.Equal("negative-prompt", file.Metadata["method"]);
        Assert.Equal(InversionFile.Sha256(ConformanceData.Golden("inversion/images/inv01_red_ball_image_gt.png")), file.Metadata["image_sha256"]);
        Assert.Equal([3L, 77, 32], file.NullEmbeddings.shape);
        TensorAssert.Equal(result.XT, file.XT, "x_T");
        TensorAssert.Equal(result.NullEmbeddings, file.PerStepUnconditional, "null_embeddings");
        file.CheckCompatible(data.Model, 3);
        Assert.Contains("has 3 steps", Assert.Throws<UserError>(() => file.CheckCompatible(data.Model, 50)).Message);
        using var other = StableDiffusionModel.Load(ConformanceData.ModelPath, new ModelPlacement(CPU, ScalarType.BFloat16));
        Assert.Contains("Invert the image again with this model", Assert.Throws<UserError>(() => file.CheckCompatible(other, null)).Message);
    }

    [Fact]
    public void Fingerprint_is_the_same_for_the_same_weights_from_a_different_path()
    {
        using var dir = new TempDir();
        foreach (var f in Directory.GetFiles(ConformanceData.ModelPath, "*", SearchOption.AllDirectories))
        {
            var target = Path.Combine(dir.Path, Path.GetRelativePath(ConformanceData.ModelPath, f));
            Directory.CreateDirectory(Path.GetDirectoryName(target)!);
            File.Copy(f, target);
        }
        using var copy = StableDiffusionModel.Load(dir.Path, ModelPlacement.Cpu);
        Assert.Equal(data.Model.Fingerprint, copy.Fingerprint);
    }
}

public class ImageInputTests
{
    static RgbImage Numbered(int w, int h) => new(w, h, Enumerable.Range(0, w * h).SelectMany(i => new[] { (byte)i, (byte)0, (byte)0 }).ToArray());
    static int At(RgbImage im, int x, int y) => im.Pixels[(y * im.Width + x) * 3];

    [Theory]
    [InlineData(6, 2, 3)]   // rotate 90 CW: a 3x2 image becomes 2x3, its bottom-left pixel goes top-left
    [InlineData(8, 2, 3)]
    [InlineData(3, 3, 2)]
    public void Exif_orientation_turns_images_upright(int orientation, int w, int h)
    {
        var image = Numbered(3, 2); // pixel value = index: row 0 = 0 1 2, row 1 = 3 4 5
        var upright = ImageInput.ApplyOrientation(image, orientation);
        Assert.Equal((w, h), (upright.Width, upright.Height));
        var expectedTopLeft = orientation switch { 6 => 3, 8 => 2, _ => 5 };
        Assert.Equal(expectedTopLeft, At(upright, 0, 0));
    }

    [Fact]
    public void Exif_orientation_is_read_from_a_jpeg_header()
    {
        // SOI, APP1 "Exif\0\0" + big-endian TIFF with one IFD entry: Orientation (0x0112) = 6.
        byte[] tiff = [(byte)'M', (byte)'M', 0, 42, 0, 0, 0, 8, 0, 1, 0x01, 0x12, 0, 3, 0, 0, 0, 1, 0, 6, 0, 0, 0, 0, 0, 0, 0, 0];
        var app1 = "Exif\0\0"u8.ToArray().Concat(tiff).ToArray();
        var jpeg = new byte[] { 0xFF, 0xD8, 0xFF, 0xE1, (byte)((app1.Length + 2) >> 8), (byte)(app1.Length + 2) }.Concat(app1).Concat(new byte[] { 0xFF, 0xD9 }).ToArray();
        Assert.Equal(6, ImageInput.ExifOrientation(jpeg));
        Assert.Equal(1, ImageInput.ExifOrientation([0x89, 0x50, 0x4E, 0x47]));
    }

    [Fact]
    public void Crop_takes_the_centre_and_pad_keeps_everything()
    {
        var wide = new RgbImage(8, 4, Enumerable.Range(0, 32).SelectMany(i => new byte[] { (byte)(i % 8 * 30), 0, 0 }).ToArray());
        var cropped = ImageInput.Fit(wide, 4, 4, FitMode.Crop);
        Assert.Equal(60, At(cropped, 0, 0));   // columns 2..5 of 8
        Assert.Equal(150, At(cropped, 3, 0));
        var padded = ImageInput.Fit(wide, 8, 8, FitMode.Pad);
        Assert.Equal(0, padded.Pixels[..(8 * 2 * 3)].Max());  // two black rows above
        Assert.Equal(210, At(padded, 7, 2));
    }
}
