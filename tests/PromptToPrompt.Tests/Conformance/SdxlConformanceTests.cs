using System.Text.Json;
using PromptToPrompt.Loading;
using PromptToPrompt.Models;
using PromptToPrompt.Pipelines;
using PromptToPrompt.Text;
using static TorchSharp.torch;

namespace PromptToPrompt.Tests.Conformance;

/// <summary>
/// SDXL (tiny-sdxl, golden/sdxl: diffusers 0.19.3, transformers 4.33) against the reference: the two text encoders
/// and their combination, and the UNet (stacked transformer blocks per block, linear projections, per-block heads, the
/// text_time added conditioning). Bounds from the conformance README (9.7): about 20x the reference's own
/// float64-vs-float32 differences (2.5e-5 on the noise, 5e-7 on the embeddings, 2e-6 on the text states).
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

    [Fact]
    public void Text_encoders_hidden_states_pooled_and_prompt_embeddings()
    {
        using var golden = new SafetensorsFile(ConformanceData.Golden("sdxl/text_encoding.safetensors"));
        using var encoder = StableDiffusionModel.LoadTextEncoder(Path.Combine(ConformanceData.SdxlPath, "text_encoder"), ModelPlacement.Cpu);
        using var encoder2 = StableDiffusionModel.LoadTextEncoder(Path.Combine(ConformanceData.SdxlPath, "text_encoder_2"), ModelPlacement.Cpu);
        var tokenizer = ClipTokenizer.Load(Path.Combine(ConformanceData.SdxlPath, "tokenizer"));
        var tokenizer2 = ClipTokenizer.Load(Path.Combine(ConformanceData.SdxlPath, "tokenizer_2"));
        Assert.Equal(0, tokenizer2.PadId);
        Assert.Equal(20, encoder2.Config.ProjectionDim);
        Assert.Equal(0, encoder.Config.ProjectionDim);
        var text = new SdxlTextEncoders(tokenizer, encoder, tokenizer2, encoder2);
        static string[] Texts(JsonElement c, string key) =>
            !c.TryGetProperty(key, out var v) ? [] : v.ValueKind == JsonValueKind.Array ? v.EnumerateArray().Select(x => x.GetString()!).ToArray() : [v.GetString()!];
        int sides = 0;
        using var _ = no_grad();
        foreach (var c in ConformanceData.Manifest("sdxl/text_encoding.json").GetProperty("cases").EnumerateObject())
        {
            var prompt = Texts(c.Value, "prompt");
            var negative = Texts(c.Value, "negative_prompt");
            foreach (var (side, first, second, output) in new[]
            {
                ("prompt", prompt, Texts(c.Value, "prompt_2") is { Length: > 0 } p2 ? p2 : prompt, "prompt_embeds"),
                ("negative", negative, Texts(c.Value, "negative_prompt_2") is { Length: > 0 } n2 ? n2 : negative, "negative_prompt_embeds"),
            })
            {
                if (first.Length == 0) continue;
                string at = $"{c.Name}/{side}";
                using var ids1 = text.Ids(first, second: false);
                using var ids2 = text.Ids(second, second: true);
                TensorAssert.Equal(golden.Read($"{at}/input_ids_1"), ids1, $"{at} input_ids_1");
                TensorAssert.Equal(golden.Read($"{at}/input_ids_2"), ids2, $"{at} input_ids_2");
                var states1 = encoder.HiddenStates(ids1);
                var states2 = encoder2.HiddenStates(ids2);
                TensorAssert.Close(golden.Read($"{at}/text_encoder_hidden_states"), stack(states1, 0), 5e-5, $"{at} text_encoder hidden states");
                TensorAssert.Close(golden.Read($"{at}/text_encoder_2_hidden_states"), stack(states2, 0), 5e-5, $"{at} text_encoder_2 hidden states");
                TensorAssert.Close(golden.Read($"{at}/text_encoder_2_text_embeds"), encoder2.TextEmbeds(ids2, states2[^1]), 5e-5, $"{at} text_embeds");
                var (embeds, pooled) = text.Encode(first, second);
                using (embeds) using (pooled)
                {
                    TensorAssert.Close(golden.Read($"{c.Name}/{output}"), embeds, 5e-5, $"{c.Name} {output}");
                    TensorAssert.Close(golden.Read($"{c.Name}/{(side == "prompt" ? "pooled_prompt_embeds" : "negative_pooled_prompt_embeds")}"), pooled, 5e-5, $"{c.Name} pooled ({side})");
                }
                sides++;
            }
        }
        Assert.Equal(9, sides);
    }

    [Fact]
    public void Time_ids_and_their_added_embedding()
    {
        using var golden = new SafetensorsFile(ConformanceData.Golden("sdxl/text_encoding.safetensors"));
        using var unet = StableDiffusionModel.LoadUNet(Path.Combine(ConformanceData.SdxlPath, "unet"), ModelPlacement.Cpu);
        using var pooled = golden.Read("t01_prompt_cfg_no_negative/pooled_prompt_embeds");
        using var _ = no_grad();
        int i = 0;
        foreach (var c in ConformanceData.Manifest("sdxl/text_encoding.json").GetProperty("time_id_cases").EnumerateArray())
        {
            int[] Pair(string key) => c.GetProperty(key).EnumerateArray().Select(v => v.GetInt32()).ToArray();
            var (o, crop, t) = (Pair("original_size"), Pair("crops_coords_top_left"), Pair("target_size"));
            using var ids = TextTimeConditioning.TimeIdsOf((o[0], o[1]), (crop[0], crop[1]), (t[0], t[1]));
            TensorAssert.Equal(golden.Read($"time_ids/{i}/add_time_ids"), ids, $"add_time_ids {i}");
            using var embedding = unet.AddedEmbedding(new TextTimeConditioning(pooled, ids));
            TensorAssert.Close(golden.Read($"time_ids/{i}/aug_emb"), embedding, 1e-5, $"aug_emb {i}");
            i++;
        }
        Assert.Equal(3, i);
    }

    [Fact]
    public void Vae_decode_with_the_sdxl_scaling_factor()
    {
        using var golden = new SafetensorsFile(ConformanceData.Golden("sdxl/vae_decode.safetensors"));
        using var vae = StableDiffusionModel.LoadVae(Path.Combine(ConformanceData.SdxlPath, "vae"), ModelPlacement.Cpu);
        Assert.Equal(0.13025, vae.Config.ScalingFactor);
        using var latents = golden.Read("latents");
        using var _ = no_grad();
        using var decoded = vae.Decode(latents / vae.Config.ScalingFactor);
        TensorAssert.Close(golden.Read("decoded"), decoded, 1e-4, "decoded");
    }
}
