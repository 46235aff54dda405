using System.Text.RegularExpressions;
using PromptToPrompt.Loading;
using PromptToPrompt.Models;
using PromptToPrompt.Tests.Conformance;
using static TorchSharp.torch;

namespace PromptToPrompt.Tests.Unit;

/// <summary>
/// Single-file (CompVis / A1111 layout) checkpoints: key pairs known from real SD checkpoints, config inference
/// from tensor shapes, and a full round trip: the tiny model rewritten in the original layout must load into
/// exactly the same network as the diffusers folder.
/// </summary>
[Collection("conformance")]
public class SingleFileCheckpointTests(ConformanceData data)
{
    static string UNet(string original) => SingleFileCheckpoint.MapUNetKey("model.diffusion_model." + original, 2).Single().Item1;
    static string Vae(string original) => SingleFileCheckpoint.MapVaeKey("first_stage_model." + original, 4).Single().Item1;

    [Theory]
    [InlineData("time_embed.0.weight", "time_embedding.linear_1.weight")]
    [InlineData("input_blocks.0.0.bias", "conv_in.bias")]
    [InlineData("input_blocks.1.0.in_layers.0.weight", "down_blocks.0.resnets.0.norm1.weight")]
    [InlineData("input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight", "down_blocks.0.attentions.1.transformer_blocks.0.attn2.to_k.weight")]
    [InlineData("input_blocks.3.0.op.weight", "down_blocks.0.downsamplers.0.conv.weight")]
    [InlineData("input_blocks.4.0.skip_connection.weight", "down_blocks.1.resnets.0.conv_shortcut.weight")]
    [InlineData("input_blocks.11.0.emb_layers.1.bias", "down_blocks.3.resnets.1.time_emb_proj.bias")]
    [InlineData("middle_block.1.proj_in.weight", "mid_block.attentions.0.proj_in.weight")]
    [InlineData("middle_block.2.out_layers.3.weight", "mid_block.resnets.1.conv2.weight")]
    [InlineData("output_blocks.2.1.conv.weight", "up_blocks.0.upsamplers.0.conv.weight")]
    [InlineData("output_blocks.5.2.conv.bias", "up_blocks.1.upsamplers.0.conv.bias")]
    [InlineData("output_blocks.5.1.norm.weight", "up_blocks.1.attentions.2.norm.weight")]
    [InlineData("output_blocks.9.0.out_layers.0.bias", "up_blocks.3.resnets.0.norm2.bias")]
    [InlineData("out.2.weight", "conv_out.weight")]
    public void Unet_keys_map_like_real_checkpoints(string original, string diffusers) => Assert.Equal(diffusers, UNet(original));

    [Theory]
    [InlineData("encoder.down.0.block.1.conv2.weight", "encoder.down_blocks.0.resnets.1.conv2.weight")]
    [InlineData("encoder.down.2.downsample.conv.weight", "encoder.down_blocks.2.downsamplers.0.conv.weight")]
    [InlineData("encoder.down.1.block.0.nin_shortcut.weight", "encoder.down_blocks.1.resnets.0.conv_shortcut.weight")]
    [InlineData("decoder.up.3.block.2.norm1.bias", "decoder.up_blocks.0.resnets.2.norm1.bias")]
    [InlineData("decoder.up.1.upsample.conv.weight", "decoder.up_blocks.2.upsamplers.0.conv.weight")]
    [InlineData("decoder.mid.attn_1.q.weight", "decoder.mid_block.attentions.0.query.weight")]
    [InlineData("encoder.mid.attn_1.proj_out.bias", "encoder.mid_block.attentions.0.proj_attn.bias")]
    [InlineData("encoder.mid.attn_1.norm.weight", "encoder.mid_block.attentions.0.group_norm.weight")]
    [InlineData("encoder.mid.block_2.conv1.weight", "encoder.mid_block.resnets.1.conv1.weight")]
    [InlineData("decoder.norm_out.weight", "decoder.conv_norm_out.weight")]
    [InlineData("post_quant_conv.weight", "post_quant_conv.weight")]
    public void Vae_keys_map_like_real_checkpoints(string original, string diffusers) => Assert.Equal(diffusers, Vae(original));

    static Dictionary<string, long[]> Sd15Shapes(bool sd2)
    {
        var s = new Dictionary<string, long[]>();
        const string u = "model.diffusion_model.";
        int[] ch = [320, 640, 1280, 1280];
        int ctx = sd2 ? 1024 : 768;
        s[u + "input_blocks.0.0.weight"] = [320, 4, 3, 3];
        for (int b = 0; b < 4; b++)
        {
            for (int j = 0; j < 2; j++)
            {
                int i = 1 + b * 3 + j;
                s[$"{u}input_blocks.{i}.0.out_layers.3.weight"] = [ch[b], ch[b], 3, 3];
                if (b < 3)
                {
                    s[$"{u}input_blocks.{i}.1.proj_in.weight"] = sd2 ? [ch[b], ch[b]] : [ch[b], ch[b], 1, 1];
                    s[$"{u}input_blocks.{i}.1.transformer_blocks.0.attn2.to_k.weight"] = [ch[b], ctx];
                }
            }
            if (b < 3) s[$"{u}input_blocks.{1 + b * 3 + 2}.0.op.weight"] = [ch[b], ch[b], 3, 3];
        }
        s[u + "out.2.weight"] = [4, 320, 3, 3];
        int[] vch = [128, 256, 512, 512];
        for (int i = 0; i < 4; i++)
            for (int j = 0; j < 2; j++)
                s[$"first_stage_model.encoder.down.{i}.block.{j}.conv1.weight"] = [vch[i], i == 0 ? 128 : vch[i - 1], 3, 3];
        s["first_stage_model.post_quant_conv.weight"] = [4, 4, 1, 1];
        if (sd2)
        {
            s["cond_stage_model.model.token_embedding.weight"] = [49408, 1024];
            s["cond_stage_model.model.positional_embedding"] = [77, 1024];
            for (int l = 0; l < 24; l++) s[$"cond_stage_model.model.transformer.resblocks.{l}.mlp.c_fc.weight"] = [4096, 1024];
        }
        else
        {
            const string t = "cond_stage_model.transformer.text_model.";
            s[t + "embeddings.token_embedding.weight"] = [49408, 768];
            s[t + "embeddings.position_embedding.weight"] = [77, 768];
            for (int l = 0; l < 12; l++) s[$"{t}encoder.layers.{l}.mlp.fc1.weight"] = [3072, 768];
        }
        return s;
    }

    [Fact]
    public void Sd15_configs_are_inferred_from_shapes()
    {
        var shapes = Sd15Shapes(sd2: false);
        var c = SingleFileCheckpoint.Infer(k => shapes[k], shapes.Keys, sd2: false);
        Assert.Equal([320, 640, 1280, 1280], c.UNet.BlockOutChannels);
        Assert.Equal([8, 8, 8, 8], c.UNet.HeadsPerBlock);
        Assert.Equal(["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"], c.UNet.DownBlockTypes);
        Assert.Equal(["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"], c.UNet.UpBlockTypes);
        Assert.Equal((2, 768, false), (c.UNet.LayersPerBlock, c.UNet.CrossAttentionDim, c.UNet.UseLinearProjection));
        Assert.Equal([128, 256, 512, 512], c.Vae.BlockOutChannels);
        Assert.Equal(new ClipTextConfig(49408, 768, 3072, 12, 12, 77, 1e-5, "quick_gelu"), c.Text);
    }

    [Fact]
    public void An_instruct_pix2pix_checkpoint_is_recognised_by_its_8_channel_conv_in_and_an_inpainting_one_refused()
    {
        var shapes = Sd15Shapes(sd2: false);
        shapes["model.diffusion_model.input_blocks.0.0.weight"] = [320, 8, 3, 3];
        var c = SingleFileCheckpoint.Infer(k => shapes[k], shapes.Keys, sd2: false);
        Assert.Equal(8, c.UNet.InChannels);
        Assert.Equal("euler-a", Schedulers.Schedulers.DefaultFor(c.Scheduler));

        shapes["model.diffusion_model.input_blocks.0.0.weight"] = [320, 9, 3, 3];
        var e = Assert.Throws<UserError>(() => SingleFileCheckpoint.Infer(k => shapes[k], shapes.Keys, sd2: false));
        Assert.Equal("The checkpoint: the UNet takes 9 input channels (an inpainting or depth model?); supported are text-to-image models (4) and InstructPix2Pix models (8).", e.Message);
    }

    [Fact]
    public void The_tiny_instruct_pix2pix_model_in_original_layout_loads_to_the_same_network()
    {
        using var folder = StableDiffusionModel.Load(ConformanceData.Ip2pPath, ModelPlacement.Cpu);
        using var dir = new TempDir();
        var path = dir.File("tiny-ip2p.safetensors");
        var tensors = new Dictionary<string, Tensor>();
        foreach (var module in new TorchSharp.torch.nn.Module[] { folder.UNet, folder.Vae, folder.TextEncoder })
            foreach (var (name, p) in module.named_parameters())
            {
                var (k, v) = ToOriginal(name, p.detach(), upHasAttention: b => b > 0);
                tensors[k] = v;
            }
        SafetensorsFile.Write(path, tensors);
        using var loaded = StableDiffusionModel.Load(path, ModelPlacement.Cpu, null, new SingleFileOptions(ConfigFolder: ConformanceData.Ip2pPath));
        Assert.True(loaded.IsInstructPix2Pix);
        var expected = folder.UNet.named_parameters().ToDictionary(p => p.name, p => p.parameter);
        foreach (var (name, p) in loaded.UNet.named_parameters())
            Assert.True(expected[name].equal(p).all().item<bool>(), $"{name} differs after the single-file round trip");
        Assert.Equal(folder.Fingerprint, loaded.Fingerprint);
    }

    [Fact]
    public void Sd21_configs_are_inferred_from_shapes()
    {
        var shapes = Sd15Shapes(sd2: true);
        var c = SingleFileCheckpoint.Infer(k => shapes[k], shapes.Keys, sd2: true);
        Assert.Equal([5, 10, 20, 20], c.UNet.HeadsPerBlock);
        Assert.Equal((1024, true, true), (c.UNet.CrossAttentionDim, c.UNet.UseLinearProjection, c.UNet.UpcastAttention));
        Assert.Equal(new ClipTextConfig(49408, 1024, 4096, 23, 16, 77, 1e-5, "gelu"), c.Text);
    }

    /// <summary>The inverse of the mapping, written from the original layout's rules (3 input blocks per level, reversed decoder).</summary>
    /// <param name="upHasAttention">Whether up block b (when it has an upsampler) has attention layers, which put the upsampler at part 2.</param>
    internal static (string Key, Tensor Value) ToOriginal(string key, Tensor value, Func<int, bool> upHasAttention)
    {
        string R(string s) => s.Replace("norm1.", "in_layers.0.").Replace("conv1.", "in_layers.2.").Replace("norm2.", "out_layers.0.")
            .Replace("conv2.", "out_layers.3.").Replace("time_emb_proj.", "emb_layers.1.").Replace("conv_shortcut.", "skip_connection.");
        Match m;
        if (key.StartsWith("text_model.")) return ("cond_stage_model.transformer." + key, value);
        if (key.StartsWith("encoder.") || key.StartsWith("decoder.") || key.Contains("quant_conv"))
        {
            var k = key.Replace("conv_shortcut.", "nin_shortcut.").Replace("conv_norm_out.", "norm_out.");
            if ((m = Regex.Match(k, @"^encoder\.down_blocks\.(\d)\.resnets\.(\d)\.(.*)")).Success) k = $"encoder.down.{m.Groups[1]}.block.{m.Groups[2]}.{m.Groups[3]}";
            else if ((m = Regex.Match(k, @"^encoder\.down_blocks\.(\d)\.downsamplers\.0\.(.*)")).Success) k = $"encoder.down.{m.Groups[1]}.downsample.{m.Groups[2]}";
            else if ((m = Regex.Match(k, @"^decoder\.up_blocks\.(\d)\.resnets\.(\d)\.(.*)")).Success) k = $"decoder.up.{3 - int.Parse(m.Groups[1].Value)}.block.{m.Groups[2]}.{m.Groups[3]}";
            else if ((m = Regex.Match(k, @"^decoder\.up_blocks\.(\d)\.upsamplers\.0\.(.*)")).Success) k = $"decoder.up.{3 - int.Parse(m.Groups[1].Value)}.upsample.{m.Groups[2]}";
            else if ((m = Regex.Match(k, @"^(\w+)\.mid_block\.resnets\.(\d)\.(.*)")).Success) k = $"{m.Groups[1]}.mid.block_{int.Parse(m.Groups[2].Value) + 1}.{m.Groups[3]}";
            else if ((m = Regex.Match(k, @"^(\w+)\.mid_block\.attentions\.0\.(\w+)\.(.*)")).Success)
            {
                var name = new Dictionary<string, string> { ["group_norm"] = "norm", ["query"] = "q", ["key"] = "k", ["value"] = "v", ["proj_attn"] = "proj_out" }[m.Groups[2].Value];
                k = $"{m.Groups[1]}.mid.attn_1.{name}.{m.Groups[3]}";
                if (name != "norm" && value.dim() == 2) value = value.reshape(value.shape[0], value.shape[1], 1, 1); // 1x1 convs in the original
            }
            return ("first_stage_model." + k, value);
        }
        var u = key.Replace("time_embedding.linear_1.", "time_embed.0.").Replace("time_embedding.linear_2.", "time_embed.2.")
            .Replace("add_embedding.linear_1.", "label_emb.0.0.").Replace("add_embedding.linear_2.", "label_emb.0.2.");
        if (u.StartsWith("conv_in.")) u = "input_blocks.0.0." + u[8..];
        else if (u.StartsWith("conv_norm_out.")) u = "out.0." + u[14..];
        else if (u.StartsWith("conv_out.")) u = "out.2." + u[9..];
        else if ((m = Regex.Match(u, @"^down_blocks\.(\d)\.resnets\.(\d)\.(.*)")).Success) u = $"input_blocks.{1 + int.Parse(m.Groups[1].Value) * 3 + int.Parse(m.Groups[2].Value)}.0.{R(m.Groups[3].Value)}";
        else if ((m = Regex.Match(u, @"^down_blocks\.(\d)\.attentions\.(\d)\.(.*)")).Success) u = $"input_blocks.{1 + int.Parse(m.Groups[1].Value) * 3 + int.Parse(m.Groups[2].Value)}.1.{m.Groups[3]}";
        else if ((m = Regex.Match(u, @"^down_blocks\.(\d)\.downsamplers\.0\.conv\.(.*)")).Success) u = $"input_blocks.{3 + int.Parse(m.Groups[1].Value) * 3}.0.op.{m.Groups[2]}";
        else if ((m = Regex.Match(u, @"^mid_block\.resnets\.(\d)\.(.*)")).Success) u = $"middle_block.{int.Parse(m.Groups[1].Value) * 2}.{R(m.Groups[2].Value)}";
        else if ((m = Regex.Match(u, @"^mid_block\.attentions\.0\.(.*)")).Success) u = $"middle_block.1.{m.Groups[1]}";
        else if ((m = Regex.Match(u, @"^up_blocks\.(\d)\.resnets\.(\d)\.(.*)")).Success) u = $"output_blocks.{int.Parse(m.Groups[1].Value) * 3 + int.Parse(m.Groups[2].Value)}.0.{R(m.Groups[3].Value)}";
        else if ((m = Regex.Match(u, @"^up_blocks\.(\d)\.attentions\.(\d)\.(.*)")).Success) u = $"output_blocks.{int.Parse(m.Groups[1].Value) * 3 + int.Parse(m.Groups[2].Value)}.1.{m.Groups[3]}";
        else if ((m = Regex.Match(u, @"^up_blocks\.(\d)\.upsamplers\.0\.(.*)")).Success)
        {
            int b = int.Parse(m.Groups[1].Value);
            u = $"output_blocks.{b * 3 + 2}.{(upHasAttention(b) ? 2 : 1)}.{m.Groups[2]}";
        }
        return ("model.diffusion_model." + u, value);
    }

    [Fact]
    public void Tiny_model_in_original_layout_loads_to_the_same_network()
    {
        using var dir = new TempDir();
        var path = dir.File("tiny-original.safetensors");
        var tensors = new Dictionary<string, Tensor>();
        foreach (var module in new TorchSharp.torch.nn.Module[] { data.Model.UNet, data.Model.Vae, data.Model.TextEncoder })
            foreach (var (name, p) in module.named_parameters())
            {
                var (k, v) = ToOriginal(name, p.detach(), upHasAttention: b => b > 0);
                tensors[k] = v;
            }
        tensors["model_ema.decay"] = tensor(0.999f); // extra content real checkpoints carry
        SafetensorsFile.Write(path, tensors);

        var logs = new List<string>();
        using var loaded = StableDiffusionModel.Load(path, ModelPlacement.Cpu, logs.Add, new SingleFileOptions(ConfigFolder: ConformanceData.ModelPath));
        Assert.Contains(logs, l => l.Contains("ignored"));
        foreach (var (a, b) in new[] { ((TorchSharp.torch.nn.Module)data.Model.UNet, (TorchSharp.torch.nn.Module)loaded.UNet), (data.Model.Vae, loaded.Vae), (data.Model.TextEncoder, loaded.TextEncoder) })
        {
            var expected = a.named_parameters().ToDictionary(p => p.name, p => p.parameter);
            foreach (var (name, p) in b.named_parameters())
                Assert.True(expected[name].equal(p).all().item<bool>(), $"{name} differs after the single-file round trip");
        }
    }

    [Fact]
    public void OpenClip_text_tower_is_split_into_q_k_v_and_cut_to_the_configured_layers()
    {
        var config = new ClipTextConfig(100, 16, 32, 2, 2, 77, 1e-5, "gelu");
        manual_seed(3);
        using var reference = new ClipTextModel(config);
        var p = reference.named_parameters().ToDictionary(x => x.name, x => x.parameter.detach());
        var t = new Dictionary<string, Tensor>
        {
            ["cond_stage_model.model.token_embedding.weight"] = p["text_model.embeddings.token_embedding.weight"],
            ["cond_stage_model.model.positional_embedding"] = p["text_model.embeddings.position_embedding.weight"],
            ["cond_stage_model.model.ln_final.weight"] = p["text_model.final_layer_norm.weight"],
            ["cond_stage_model.model.ln_final.bias"] = p["text_model.final_layer_norm.bias"],
            ["cond_stage_model.model.text_projection"] = ones(16, 16),
        };
        for (int l = 0; l < 3; l++) // one layer more than the config keeps (SD 2.x uses the penultimate layer)
        {
            int s = Math.Min(l, 1);
            string o = $"cond_stage_model.model.transformer.resblocks.{l}.", d = $"text_model.encoder.layers.{s}.";
            t[o + "attn.in_proj_weight"] = cat([p[d + "self_attn.q_proj.weight"], p[d + "self_attn.k_proj.weight"], p[d + "self_attn.v_proj.weight"]], 0);
            t[o + "attn.in_proj_bias"] = cat([p[d + "self_attn.q_proj.bias"], p[d + "self_attn.k_proj.bias"], p[d + "self_attn.v_proj.bias"]], 0);
            foreach (var (from, to) in new[] { ("attn.out_proj", "self_attn.out_proj"), ("ln_1", "layer_norm1"), ("ln_2", "layer_norm2"), ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2") })
                foreach (var kind in new[] { "weight", "bias" }) t[$"{o}{from}.{kind}"] = p[$"{d}{to}.{kind}"];
        }
        using var dir = new TempDir();
        SafetensorsFile.Write(dir.File("clip.safetensors"), t);
        using var raw = TensorSource.Open("clip", dir.File("clip.safetensors"));
        using var mapped = raw.Map("clip", k => SingleFileCheckpoint.MapOpenClipKey(k, config));
        using var model = new ClipTextModel(config);
        var unused = WeightLoader.Load(model, mapped, CPU, ScalarType.Float32);
        Assert.Empty(unused);
        using var ids = tensor(new long[] { 1, 5, 7, 99, 2 }).unsqueeze(0);
        using var _ = no_grad();
        Assert.True(reference.forward(ids).allclose(model.forward(ids), 0, 0));
    }

    [Fact]
    public void A_lone_component_file_is_refused_with_a_message()
    {
        using var dir = new TempDir();
        var path = dir.File("lora.safetensors");
        SafetensorsFile.Write(path, new Dictionary<string, Tensor> { ["lora_unet_down.weight"] = ones(2) });
        var e = Assert.Throws<UserError>(() => StableDiffusionModel.Load(path, ModelPlacement.Cpu));
        Assert.Contains("not a Stable Diffusion checkpoint", e.Message);
    }
}
