using PromptToPrompt.Imaging;
using PromptToPrompt.Pipelines;
using PromptToPrompt.Tests.Conformance;
using PromptToPrompt.Text;
using static TorchSharp.torch;

namespace PromptToPrompt.Tests.Unit;

[Collection("conformance")]
public class PipelineTests(ConformanceData data)
{
    [Fact]
    public void Long_prompts_are_cut_with_a_warning()
    {
        var warnings = new List<string>();
        var pipeline = new StableDiffusionPipeline(data.Model, warnings.Add);
        var prompt = string.Join(" ", Enumerable.Repeat("red fox", 60));
        Assert.True(data.Model.Tokenizer.Tokenize(prompt).Truncated);
        using var e = pipeline.EncodePrompts([prompt, "a cat"]);
        Assert.Equal([2L, 77, 32], e.shape);
        Assert.Single(warnings);
        Assert.Contains("75 tokens", warnings[0]);
    }

    [Fact]
    public void A_word_not_in_the_prompt_names_the_words_it_has()
    {
        var e = Assert.Throws<UserError>(() => PromptWords.RequireTokenPositions(data.Model.Tokenizer, "a cat riding a bicycle", "dog"));
        Assert.Contains("'dog'", e.Message);
        Assert.Contains("'bicycle'", e.Message);
    }

    [Theory]
    [InlineData(100, 512, "width 100")]
    [InlineData(512, 0, "height 0")]
    public void Sizes_must_be_multiples_of_8(int width, int height, string expected)
    {
        var pipeline = new StableDiffusionPipeline(data.Model);
        var e = Assert.Throws<UserError>(() => pipeline.ResolveSize(width, height, null));
        Assert.Contains(expected, e.Message);
        Assert.Contains("multiple of 8", e.Message);
    }

    [Fact]
    public void A_latent_of_the_wrong_shape_is_refused()
    {
        var pipeline = new StableDiffusionPipeline(data.Model);
        using var latent = zeros(1, 4, 32, 32);
        var e = Assert.Throws<UserError>(() => pipeline.Generate(new GenerationRequest { Prompts = ["x"], Steps = 2, InitialLatent = latent, Width = 512, Height = 512 }));
        Assert.Contains("[1, 4, 32, 32]", e.Message);
        Assert.Contains("[1, 4, 64, 64]", e.Message);
    }

    [Fact]
    public void Size_defaults_to_the_latent_size_and_non_square_sizes_run()
    {
        var pipeline = new StableDiffusionPipeline(data.Model);
        var result = pipeline.Generate(new GenerationRequest { Prompts = ["a cat", "a dog"], Steps = 2, Seed = 1, Width = 200, Height = 136, Scheduler = "ddim" });
        Assert.Equal([2L, 4, 17, 25], result.Latents.shape);
        Assert.All(result.Images, im => Assert.Equal((200, 136), (im.Width, im.Height)));
        Assert.Equal((200, 136), pipeline.ResolveSize(null, null, result.Latents[..1]));
    }

    [Fact]
    public void Png_carries_pixels_and_parameters()
    {
        using var dir = new TempDir();
        var image = new RgbImage(3, 2, Enumerable.Range(0, 18).Select(i => (byte)(i * 13)).ToArray());
        var path = dir.File("x.png");
        Png.Save(path, image, new Dictionary<string, string> { ["parameters"] = "a café ☕, Seed: 8888" });
        Assert.Equal("a café ☕, Seed: 8888", Png.ReadText(path)["parameters"]);
        Assert.Equal(image.Pixels, RgbImage.Load(path).Pixels);
    }
}
