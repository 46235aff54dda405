using PromptToPrompt.Loading;
using PromptToPrompt.Models;
using PromptToPrompt.Tests.Conformance;
using static TorchSharp.torch;

namespace PromptToPrompt.Tests.Unit;

/// <summary>
/// SDXL checkpoints in the single-file layout (<c>model.diffusion_model</c>, <c>first_stage_model</c>,
/// <c>conditioner.embedders.0.transformer</c> CLIP-L, <c>conditioner.embedders.1.model</c> OpenCLIP bigG): key pairs as
/// real SDXL base checkpoints name them, configs inferred from SDXL base's shapes, and tiny-sdxl rewritten in that
/// layout loading into exactly the same network as its diffusers folder.
/// </summary>
[Collection("conformance")]
public class SdxlSingleFileTests(ConformanceData data)
{
    const string Clip = "conditioner.embedders.0.transformer.";
    const string BigG = "conditioner.embedders.1.model.";

    [Theory]
    [InlineData("label_emb.0.0.weight", "add_embedding.linear_1.weight")]
    [InlineData("label_emb.0.2.bias", "add_embedding.linear_2.bias")]
    [InlineData("input_blocks.7.1.transformer_blocks.9.attn2.to_k.weight", "down_blocks.2.attentions.0.transformer_blocks.9.attn2.to_k.weight")]
    [InlineData("input_blocks.6.0.op.weight", "down_blocks.1.downsamplers.0.conv.weight")]
    [InlineData("middle_block.1.transformer_blocks.9.ff.net.2.weight", "mid_block.attentions.0.transformer_blocks.9.ff.net.2.weight")]
    [InlineData("output_blocks.2.2.conv.weight", "up_blocks.0.upsamplers.0.conv.weight")]
    [InlineData("output_blocks.5.1.proj_out.bias", "up_blocks.1.attentions.2.proj_out.bias")]
    [InlineData("output_blocks.8.0.skip_connection.weight", "up_blocks.2.resnets.2.conv_shortcut.weight")]
    public void Unet_keys_map_like_sdxl_base(string original, string diffusers) =>
        Assert.Equal(diffusers, SingleFileCheckpoint.MapUNetKey("model.diffusion_model." + original, 2).Single().Item1);

    [Fact]
    public void Text_encoder_keys_map_like_sdxl_base()
    {
        Assert.Equal("text_model.encoder.layers.11.mlp.fc2.bias", SingleFileCheckpoint.MapClipKey(Clip + "text_model.encoder.layers.11.mlp.fc2.bias", Clip).Single().Item1);
        var bigG = new ClipTextConfig(49408, 4, 8, 2, 2, 77, 1e-5, "gelu", ProjectionDim: 3);
        var (name, transform) = SingleFileCheckpoint.MapOpenClipKey(BigG + "text_projection", bigG, BigG).Single();
        Assert.Equal("text_projection.weight", name);
        using var projection = arange(12f).reshape(4, 3); // OpenCLIP: x [.., 4] @ P [4, 3]
        using var weight = transform!(projection);
        Assert.Equal([3L, 4], weight.shape); // Linear: [out, in]
        Assert.Equal(projection[1, 2].item<float>(), weight[2, 1].item<float>());
        Assert.Equal("text_model.encoder.layers.1.mlp.fc1.weight", SingleFileCheckpoint.MapOpenClipKey(BigG + "transformer.resblocks.1.mlp.c_fc.weight", bigG, BigG).Single().Item1);
    }

    /// <summary>The shapes config inference reads, as SDXL base 1.0 has them.</summary>
    static Dictionary<string, long[]> BaseShapes()
    {
        var s = new Dictionary<string, long[]>();
        const string u = "model.diffusion_model.";
        int[] ch = [320, 640, 1280];
        int[] depth = [0, 2, 10];
        s[u + "input_blocks.0.0.weight"] = [320, 4, 3, 3];
        for (int b = 0; b < 3; b++)
        {
            for (int j = 0; j < 2; j++)
            {
                int i = 1 + b * 3 + j;
                s[$"{u}input_blocks.{i}.0.out_layers.3.weight"] = [ch[b], ch[b], 3, 3];
                if (depth[b] > 0) s[$"{u}input_blocks.{i}.1.proj_in.weight"] = [ch[b], ch[b]];
                for (int d = 0; d < depth[b]; d++) s[$"{u}input_blocks.{i}.1.transformer_blocks.{d}.attn2.to_k.weight"] = [ch[b], 2048];
            }
            if (b < 2) s[$"{u}input_blocks.{1 + b * 3 + 2}.0.op.weight"] = [ch[b], ch[b], 3, 3];
        }
        s[u + "out.2.weight"] = [4, 320, 3, 3];
        s[u + "label_emb.0.0.weight"] = [1280, 2816];
        int[] vch = [128, 256, 512, 512];
        for (int i = 0; i < 4; i++)
            for (int j = 0; j < 2; j++)
                s[$"first_stage_model.encoder.down.{i}.block.{j}.conv1.weight"] = [vch[i], i == 0 ? 128 : vch[i - 1], 3, 3];
        s["first_stage_model.post_quant_conv.weight"] = [4, 4, 1, 1];
        s[Clip + "text_model.embeddings.token_embedding.weight"] = [49408, 768];
        s[Clip + "text_model.embeddings.position_embedding.weight"] = [77, 768];
        for (int l = 0; l < 12; l++) s[$"{Clip}text_model.encoder.layers.{l}.mlp.fc1.weight"] = [3072, 768];
        s[BigG + "token_embedding.weight"] = [49408, 1280];
        s[BigG + "positional_embedding"] = [77, 1280];
        s[BigG + "text_projection"] = [1280, 1280];
        for (int l = 0; l < 32; l++) s[$"{BigG}transformer.resblocks.{l}.mlp.c_fc.weight"] = [5120, 1280];
        return s;
    }

    [Fact]
    public void Sdxl_base_configs_are_inferred_from_shapes()
    {
        var shapes = BaseShapes();
        var c = SingleFileCheckpoint.Infer(k => shapes[k], shapes.Keys, sd2: false);
        Assert.Equal([320, 640, 1280], c.UNet.BlockOutChannels);
        Assert.Equal(["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"], c.UNet.DownBlockTypes);
        Assert.Equal(["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"], c.UNet.UpBlockTypes);
        Assert.Equal([5, 10, 20], c.UNet.HeadsPerBlock);
        Assert.Equal([1, 2, 10], c.UNet.TransformerLayersPerBlock!);
        Assert.Equal((2, 2048, true, false), (c.UNet.LayersPerBlock, c.UNet.CrossAttentionDim, c.UNet.UseLinearProjection, c.UNet.UpcastAttention));
        Assert.Equal((256, 2816, 128), (c.UNet.AdditionTimeEmbedDim, c.UNet.ProjectionClassEmbeddingsInputDim, c.UNet.SampleSize));
        Assert.Equal(0.13025, c.Vae.ScalingFactor);
        Assert.Equal(new ClipTextConfig(49408, 768, 3072, 12, 12, 77, 1e-5, "quick_gelu"), c.Text);
        Assert.Equal(new ClipTextConfig(49408, 1280, 5120, 32, 20, 77, 1e-5, "gelu", 1280), c.Text2);
        Assert.Equal(("EulerDiscreteScheduler", "leading"), (c.Scheduler.ClassName, c.Scheduler.TimestepSpacing));

        shapes["model.diffusion_model.label_emb.0.0.weight"] = [1280, 2560]; // a refiner's: 5 time ids (with the aesthetic score)
        var e = Assert.Throws<UserError>(() => SingleFileCheckpoint.Infer(k => shapes[k], shapes.Keys, sd2: false));
        Assert.Contains("takes 2560 features, which is not 6 time ids", e.Message);
    }

    /// <summary>An OpenCLIP text tower's tensors for a transformers-named CLIP text model (q/k/v fused, projection transposed).</summary>
    static IEnumerable<(string, Tensor)> ToOpenClip(ClipTextModel model)
    {
        var p = model.named_parameters().ToDictionary(x => x.name, x => x.parameter.detach());
        yield return (BigG + "token_embedding.weight", p["text_model.embeddings.token_embedding.weight"]);
        yield return (BigG + "positional_embedding", p["text_model.embeddings.position_embedding.weight"]);
        yield return (BigG + "ln_final.weight", p["text_model.final_layer_norm.weight"]);
        yield return (BigG + "ln_final.bias", p["text_model.final_layer_norm.bias"]);
        yield return (BigG + "text_projection", p["text_projection.weight"].t().contiguous());
        for (int l = 0; l < model.Config.NumLayers; l++)
        {
            string o = $"{BigG}transformer.resblocks.{l}.", d = $"text_model.encoder.layers.{l}.";
            foreach (var kind in new[] { "weight", "bias" })
            {
                yield return ($"{o}attn.in_proj_{kind}", cat([p[$"{d}self_attn.q_proj.{kind}"], p[$"{d}self_attn.k_proj.{kind}"], p[$"{d}self_attn.v_proj.{kind}"]], 0));
                foreach (var (from, to) in new[] { ("attn.out_proj", "self_attn.out_proj"), ("ln_1", "layer_norm1"), ("ln_2", "layer_norm2"), ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2") })
                    yield return ($"{o}{from}.{kind}", p[$"{d}{to}.{kind}"]);
            }
        }
    }

    [Fact]
    public void Tiny_sdxl_in_the_single_file_layout_loads_to_the_same_network()
    {
        var folder = data.SdxlModel;
        using var dir = new TempDir();
        var path = dir.File("tiny-sdxl.safetensors");
        var tensors = new Dictionary<string, Tensor>();
        foreach (var module in new nn.Module[] { folder.UNet, folder.Vae })
            foreach (var (name, p) in module.named_parameters())
            {
                var (k, v) = SingleFileCheckpointTests.ToOriginal(name, p.detach(), upHasAttention: b => b < 2);
                tensors[k] = v;
            }
        foreach (var (name, p) in folder.TextEncoder.named_parameters()) tensors[Clip + name] = p.detach();
        foreach (var (k, v) in ToOpenClip(folder.TextEncoder2!)) tensors[k] = v;
        SafetensorsFile.Write(path, tensors);

        // tiny-sdxl's head counts are not SDXL base's (32 channels per head), so its configs come from --config.
        using var loaded = StableDiffusionModel.Load(path, ModelPlacement.Cpu, null, new SingleFileOptions(ConfigFolder: ConformanceData.SdxlPath));
        Assert.True(loaded.IsXL);
        Assert.True(loaded.ForceZerosForEmptyPrompt);
        Assert.Equal((49407, 0), (loaded.Tokenizer.PadId, loaded.Tokenizer2!.PadId));
        foreach (var (a, b) in new (nn.Module, nn.Module)[] { (folder.UNet, loaded.UNet), (folder.Vae, loaded.Vae), (folder.TextEncoder, loaded.TextEncoder), (folder.TextEncoder2!, loaded.TextEncoder2!) })
        {
            var expected = a.named_parameters().ToDictionary(p => p.name, p => p.parameter);
            var actual = b.named_parameters().ToList();
            Assert.Equal(expected.Count, actual.Count);
            foreach (var (name, p) in actual)
                Assert.True(expected[name].equal(p).all().item<bool>(), $"{name} differs after the single-file round trip");
        }
        Assert.Equal(folder.Fingerprint, loaded.Fingerprint);
    }

    [Fact]
    public void A_refiner_checkpoint_is_refused_with_a_message()
    {
        using var dir = new TempDir();
        var path = dir.File("refiner.safetensors");
        SafetensorsFile.Write(path, new Dictionary<string, Tensor>
        {
            ["model.diffusion_model.input_blocks.0.0.weight"] = ones(2), ["conditioner.embedders.0.model.token_embedding.weight"] = ones(2),
        });
        var e = Assert.Throws<UserError>(() => StableDiffusionModel.Load(path, ModelPlacement.Cpu));
        Assert.Contains("is an SDXL refiner", e.Message);
    }
}
