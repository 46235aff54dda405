using PromptToPrompt.Loading;
using TorchSharp;
using static TorchSharp.torch;

namespace PromptToPrompt.Tests.Conformance;

/// <summary>
/// Single model calls against the reference. The reference's own float32-vs-float64 differences are at most
/// ~6e-6 (UNet), ~1e-6 (text encoder), ~5e-5 (VAE encoder); the bounds below leave a margin of about 20x for a
/// different kernel summation order, and are far below any real error (a wrong layer changes values by O(1)).
/// </summary>
[Collection("conformance")]
public class ModelConformanceTests(ConformanceData data)
{
    [Fact]
    public void Text_encoder_hidden_states()
    {
        using var golden = new SafetensorsFile(ConformanceData.Golden("text_encoder.safetensors"));
        using var ids = golden.Read("input_ids");
        using var expected = golden.Read("last_hidden_state");
        var prompts = ConformanceData.Manifest("text_encoder.json").GetProperty("prompts").EnumerateArray().Select(p => p.GetString()!).ToArray();
        var ourIds = prompts.SelectMany(p => data.Model.Tokenizer.Tokenize(p).Ids).ToArray();
        Assert.Equal(ids.data<long>().ToArray(), ourIds);
        using var _ = no_grad();
        using var actual = data.Model.TextEncoder.forward(ids);
        TensorAssert.Close(expected, actual, 2e-5, "last_hidden_state");
    }

    [Theory]
    [InlineData(981)]
    [InlineData(1)]
    public void Unet_noise_prediction(int t)
    {
        using var golden = new SafetensorsFile(ConformanceData.Golden("unet.safetensors"));
        using var latent = golden.Read("latent");
        using var context = golden.Read("context");
        using var expected = golden.Read($"noise_pred_t{t}");
        using var _ = no_grad();
        using var timestep = tensor((long)t);
        using var actual = data.Model.UNet.forward(latent, timestep, context);
        TensorAssert.Close(expected, actual, 1e-4, $"noise_pred_t{t}");
    }

    [Fact]
    public void Vae_decode()
    {
        using var golden = new SafetensorsFile(ConformanceData.Golden("vae.safetensors"));
        using var latent = golden.Read("latent");
        using var expected = golden.Read("decoded");
        using var _ = no_grad();
        using var actual = data.Model.Vae.Decode(latent / 0.18215);
        TensorAssert.Close(expected, actual, 1e-4, "decoded");
    }

    [Fact]
    public void Vae_encode()
    {
        using var golden = new SafetensorsFile(ConformanceData.Golden("vae.safetensors"));
        using var image = golden.Read("image_uint8");
        using var _ = no_grad();
        using var x = (image.to(ScalarType.Float32) / 127.5 - 1).permute(2, 0, 1).unsqueeze(0);
        var (mean, std) = data.Model.Vae.Encode(x);
        using (mean) using (std)
        {
            using var expectedMean = golden.Read("posterior_mean");
            using var expectedStd = golden.Read("posterior_std");
            TensorAssert.Close(expectedMean, mean, 1e-3, "posterior_mean");
            TensorAssert.Close(expectedStd, std, 1e-3, "posterior_std");
        }
    }
}
