using PromptToPrompt.Loading;
using PromptToPrompt.Models;
using static TorchSharp.torch;

namespace PromptToPrompt.Tests.Conformance;

/// <summary>
/// SDXL's UNet (tiny-sdxl, golden/sdxl/unet: diffusers 0.19.3) against the reference: stacked transformer blocks per
/// block (transformer_layers_per_block), linear projections, per-block heads and the text_time added conditioning.
/// Bounds from the conformance README (9.7): about 20x the reference's own float64-vs-float32 differences
/// (2.5e-5 on the noise, 5e-7 on the embeddings).
/// </summary>
public class SdxlConformanceTests
{
    [Theory]
    [InlineData(901.0)]
    [InlineData(1.0)]
    public void Unet_noise_prediction_with_text_time_conditioning(double t)
    {
        using var golden = new SafetensorsFile(ConformanceData.Golden("sdxl/unet.safetensors"));
        using var unet = StableDiffusionModel.LoadUNet(Path.Combine(ConformanceData.SdxlPath, "unet"), ModelPlacement.Cpu);
        Assert.Equal(34, unet.AttentionLayers.Count);
        Assert.Contains(unet.AttentionLayers, l => l.Path == "down_blocks.2.attentions.1.transformer_blocks.1.attn2");
        using var sample = golden.Read("sample");
        using var context = golden.Read("encoder_hidden_states");
        var added = new TextTimeConditioning(golden.Read("text_embeds"), golden.Read("time_ids"));
        using var expected = golden.Read($"noise_pred_t{t:0}");
        using var expectedAdded = golden.Read($"emb_added_t{t:0}");
        using var _ = no_grad();
        // Euler passes a float64 timestep, DDIM an int64 one, as the reference's two cases.
        using var timestep = t == 1 ? tensor(1L) : tensor(t, ScalarType.Float64);
        using var actualAdded = unet.AddedEmbedding(added);
        TensorAssert.Close(expectedAdded, actualAdded, 1e-5, $"emb_added_t{t:0}");
        using var actual = unet.forward(sample, timestep, context, added);
        TensorAssert.Close(expected, actual, 5e-4, $"noise_pred_t{t:0}");
        added.TextEmbeds.Dispose();
        added.TimeIds.Dispose();
    }
}
