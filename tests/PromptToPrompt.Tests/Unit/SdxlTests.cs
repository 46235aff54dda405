using System.Text.Json.Nodes;
using PromptToPrompt.Control;
using PromptToPrompt.Loading;
using PromptToPrompt.Pipelines;
using PromptToPrompt.Tests.Conformance;
using static TorchSharp.torch;

namespace PromptToPrompt.Tests.Unit;

/// <summary>SDXL behaviour beyond the reference cases: micro-conditioning, zeroed negatives, float16, the layer rule.</summary>
[Collection("conformance")]
public class SdxlTests(ConformanceData data)
{
    GenerationResult Generate(StableDiffusionModel model, SizeConditioning? sizes = null, string negative = "") =>
        new StableDiffusionPipeline(model).Generate(new GenerationRequest
        {
            Prompts = ["a photo of an astronaut"], Steps = 2, Width = 128, Height = 128, Seed = 5, Scheduler = "ddim",
            SizeConditioning = sizes, NegativePrompt = negative,
        });

    static double MaxDiff(GenerationResult a, GenerationResult b) => (a.Latents - b.Latents).abs().max().item<float>();

    [Fact]
    public void Micro_conditioning_and_the_negative_prompt_reach_the_unet_and_the_metadata()
    {
        using var plain = Generate(data.SdxlModel).Latents;
        var defaults = Generate(data.SdxlModel, new SizeConditioning((128, 128), (0, 0), (128, 128)));
        var cropped = Generate(data.SdxlModel, new SizeConditioning(CropTopLeft: (64, 0)));
        var negative = Generate(data.SdxlModel, negative: "blurry");
        // diffusers' defaults are the output size and no crop: stating them changes nothing.
        Assert.Equal(0, (plain - defaults.Latents).abs().max().item<float>());
        Assert.True((plain - cropped.Latents).abs().max().item<float>() > 1e-3, "the crop coordinates did not change the result");
        Assert.True((plain - negative.Latents).abs().max().item<float>() > 1e-3, "the negative prompt did not change the result (zeros are used only without one)");
        var record = JsonNode.Parse(cropped.Parameters["prompt-to-prompt"])!;
        Assert.Equal("[128,128]", record["original_size"]!.ToJsonString());
        Assert.Equal("[64,0]", record["crops_coords_top_left"]!.ToJsonString());
        Assert.Contains("SDXL original 128x128, crop 64,0, target 128x128", cropped.Parameters["parameters"]);
    }

    [Fact]
    public void The_spec_carries_the_micro_conditioning_both_ways()
    {
        var spec = EditSpec.Parse(JsonNode.Parse("""{"prompts": ["a cat", "a dog"], "original_size": [512, 768], "crops_coords_top_left": [8, 16]}""")!.AsObject());
        Assert.Equal(new SizeConditioning((512, 768), (8, 16)), spec.SizeConditioning);
        var again = EditSpec.Parse(JsonNode.Parse(spec.ToJson(1))!.AsObject());
        Assert.Equal(spec.SizeConditioning, again.SizeConditioning);
        var e = Assert.Throws<UserError>(() => EditSpec.Parse(JsonNode.Parse("""{"prompts": ["a cat"], "target_size": [512]}""")!.AsObject()));
        Assert.Equal("spec: 'target_size' must be two integers, [height, width] or [top, left].", e.Message);
    }

    [Fact]
    public void In_float16_the_vae_runs_in_float32_and_the_image_is_not_black()
    {
        using var half = StableDiffusionModel.Load(ConformanceData.SdxlPath, new ModelPlacement(CPU, ScalarType.Float16));
        Assert.Equal(ScalarType.Float32, half.VaeDType);
        Assert.Equal(ScalarType.Float16, half.UNet.parameters().First().dtype);
        var result = Generate(half);
        var reference = Generate(data.SdxlModel);
        // float16 weights are exact (the files are float16); the float16 arithmetic of the encoders and the UNet (whose
        // scaled-up q/k make attention sharp) moves the latents: measured 0.38 of max |x| 19.9 after two steps (1.9%).
        double max = reference.Latents.abs().max().item<float>();
        Assert.True(MaxDiff(result, reference) < 0.05 * max, $"float16 latents differ from float32 by {MaxDiff(result, reference)} (max |x| {max})");
        Assert.Contains(result.Images[0].Pixels, p => p > 0);
        int differing = result.Images[0].Pixels.Zip(reference.Images[0].Pixels).Count(p => Math.Abs(p.First - p.Second) > 8);
        Assert.True(differing < result.Images[0].Pixels.Length / 100, $"{differing} of {result.Images[0].Pixels.Length} values differ by more than 8 levels from float32");
    }

    [Fact]
    public void Self_attention_is_replaced_from_a_quarter_of_the_latent_side_or_within_the_references_pixel_bound()
    {
        // SDXL at 1024 px (latent 128): 32x32; SD at 512 px (latent 64): 16x16; the null-text variant one level finer.
        Assert.Equal(32 * 32, EditSchedule.SelfReplaceMaxPixels(ReferenceVariant.PromptToPrompt, data.SdxlModel.UNet, 128, 128));
        Assert.Equal(16 * 16, EditSchedule.SelfReplaceMaxPixels(ReferenceVariant.PromptToPrompt, data.Model.UNet, 64, 64));
        Assert.Equal(32 * 32, EditSchedule.SelfReplaceMaxPixels(ReferenceVariant.NullText, data.Model.UNet, 64, 64));
        Assert.Equal(64 * 64, EditSchedule.SelfReplaceMaxPixels(ReferenceVariant.NullText, data.SdxlModel.UNet, 128, 128));
        // Small latents keep the reference's absolute bound: every layer of a 16x16 latent is replaced.
        Assert.Equal(16 * 16, EditSchedule.SelfReplaceMaxPixels(ReferenceVariant.PromptToPrompt, data.Model.UNet, 16, 16));
        // SD 2 at 768 px (latent 96): its 24x24 level is a quarter of the side.
        Assert.Equal(24 * 24, EditSchedule.SelfReplaceMaxPixels(ReferenceVariant.PromptToPrompt, data.Model.UNet, 96, 96));
    }
}
