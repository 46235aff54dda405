using System.Text.Json;
using PromptToPrompt.Datasets;
using PromptToPrompt.Imaging;
using PromptToPrompt.Loading;
using PromptToPrompt.Models;
using PromptToPrompt.Tests.Conformance;
using static TorchSharp.torch;

namespace PromptToPrompt.Tests.Unit;

/// <summary>
/// The InstructPix2Pix CLIP filter on a small random CLIP written in the Hugging Face layout: its four similarities
/// against an independent computation in the test (attention, layer norms and pooling written out from the raw
/// weights), and the filter's thresholds deciding what p2p dataset generate keeps.
/// </summary>
public class ClipFilterTests
{
    /// <summary>A random CLIP folder: config.json, model.safetensors, and the conformance tokenizer's files.</summary>
    public static string WriteTinyClip(string folder)
    {
        Directory.CreateDirectory(folder);
        manual_seed(17);
        var text = new ClipTextConfig(49408, 32, 64, 2, 4, 77, 1e-5, "quick_gelu");
        var vision = new ClipVisionConfig(24, 48, 2, 3, 32, 8, 1e-5, "quick_gelu");
        var tokenizer = Text.ClipTokenizer.Load(Path.Combine(ConformanceData.ModelPath, "tokenizer"));
        using var model = new ClipModel(text, vision, 16, tokenizer);
        var tensors = new Dictionary<string, Tensor>();
        foreach (var (name, p) in model.named_parameters()) tensors[name] = (randn(p.shape) * 0.3).contiguous();
        tensors["logit_scale"] = tensor(2.6592f);
        SafetensorsFile.Write(Path.Combine(folder, "model.safetensors"), tensors);
        File.WriteAllText(Path.Combine(folder, "config.json"), JsonSerializer.Serialize(new
        {
            architectures = new[] { "CLIPModel" }, projection_dim = 16,
            text_config = new { hidden_size = 32, intermediate_size = 64, num_hidden_layers = 2, num_attention_heads = 4, max_position_embeddings = 77 },
            vision_config = new { hidden_size = 24, intermediate_size = 48, num_hidden_layers = 2, num_attention_heads = 3, image_size = 32, patch_size = 8 },
        }));
        foreach (var f in new[] { "vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json" })
            File.Copy(Path.Combine(ConformanceData.ModelPath, "tokenizer", f), Path.Combine(folder, f));
        return folder;
    }

    static Tensor LayerNorm(Tensor x, Tensor w, Tensor b)
    {
        var mean = x.mean([-1], keepdim: true);
        var variance = (x - mean).square().mean([-1], keepdim: true);
        return (x - mean) / (variance + 1e-5).sqrt() * w + b;
    }

    /// <summary>A pre-LayerNorm transformer layer written out: heads by hand, quick-GELU.</summary>
    static Tensor Layer(Tensor x, Func<string, Tensor> w, string p, int heads, bool causal)
    {
        Tensor Linear(Tensor t, string name) => matmul(t, w($"{p}.{name}.weight").t()) + w($"{p}.{name}.bias");
        var h = LayerNorm(x, w($"{p}.layer_norm1.weight"), w($"{p}.layer_norm1.bias"));
        long n = x.shape[0], l = x.shape[1], d = x.shape[2] / heads;
        Tensor Split(Tensor t) => t.view(n, l, heads, d).permute(0, 2, 1, 3);
        var scores = matmul(Split(Linear(h, "self_attn.q_proj")), Split(Linear(h, "self_attn.k_proj")).transpose(2, 3)) / Math.Sqrt(d);
        if (causal) scores = scores + triu(full(l, l, float.NegativeInfinity), 1);
        var attended = matmul(scores.softmax(-1), Split(Linear(h, "self_attn.v_proj"))).permute(0, 2, 1, 3).reshape(n, l, -1);
        x = x + Linear(attended, "self_attn.out_proj");
        h = Linear(LayerNorm(x, w($"{p}.layer_norm2.weight"), w($"{p}.layer_norm2.bias")), "mlp.fc1");
        return x + Linear(h * sigmoid(1.702 * h), "mlp.fc2");
    }

    [Fact]
    public void The_four_similarities_equal_an_independent_computation_and_decide_what_is_kept()
    {
        using var dir = new TempDir();
        var folder = WriteTinyClip(dir.File("clip"));
        using var clip = ClipModel.Load(folder, ModelPlacement.Cpu);
        var filter = new ClipPairFilter(clip, new ClipThresholds());
        var scenes = new Training.Scenes(48);
        var a = scenes.Generate(3, 0);
        var b = scenes.Generate(3, 1);
        var triplet = new Triplet(a.Caption, "edit it", b.Caption, "{}");
        var ours = filter.Similarities(triplet, a.Image, b.Image);

        using var weights = new SafetensorsFile(Path.Combine(folder, "model.safetensors"));
        Tensor W(string name) => weights.Read(name);
        Tensor Image(RgbImage image)
        {
            var x = tensor(image.Pixels, [1, image.Height, image.Width, 3]).permute(0, 3, 1, 2).to(ScalarType.Float32) / 255f;
            x = nn.functional.interpolate(x, [32, 32], mode: InterpolationMode.Bicubic, align_corners: false);
            x = (x - tensor(new[] { 0.48145466f, 0.4578275f, 0.40821073f }).view(1, 3, 1, 1)) / tensor(new[] { 0.26862954f, 0.26130258f, 0.27577711f }).view(1, 3, 1, 1);
            var patches = nn.functional.conv2d(x, W("vision_model.embeddings.patch_embedding.weight"), null, [8, 8]).flatten(2).transpose(1, 2);
            var h = cat([W("vision_model.embeddings.class_embedding").view(1, 1, -1), patches], 1) + W("vision_model.embeddings.position_embedding.weight").unsqueeze(0);
            h = LayerNorm(h, W("vision_model.pre_layrnorm.weight"), W("vision_model.pre_layrnorm.bias"));
            for (int i = 0; i < 2; i++) h = Layer(h, W, $"vision_model.encoder.layers.{i}", 3, causal: false);
            var pooled = LayerNorm(h[.., 0], W("vision_model.post_layernorm.weight"), W("vision_model.post_layernorm.bias"));
            var f = matmul(pooled, W("visual_projection.weight").t())[0];
            return f / f.norm();
        }
        Tensor Text(string caption)
        {
            var tokens = clip.Tokenizer.Tokenize(caption);
            var h = W("text_model.embeddings.token_embedding.weight")[tensor(tokens.Ids)] + W("text_model.embeddings.position_embedding.weight");
            h = h.unsqueeze(0);
            for (int i = 0; i < 2; i++) h = Layer(h, W, $"text_model.encoder.layers.{i}", 4, causal: true);
            h = LayerNorm(h, W("text_model.final_layer_norm.weight"), W("text_model.final_layer_norm.bias"));
            var f = matmul(h[0, tokens.TokenCount - 1], W("text_projection.weight").t());
            return f / f.norm();
        }
        var (i0, i1, t0, t1) = (Image(a.Image), Image(b.Image), Text(a.Caption), Text(b.Caption));
        double Cos(Tensor x, Tensor y) => (x.dot(y) / (x.norm() * y.norm())).item<float>();
        Assert.Equal(Cos(i0, t0), ours.Caption0, 5);
        Assert.Equal(Cos(i1, t1), ours.Caption1, 5);
        Assert.Equal(Cos(i1 - i0, t1 - t0), ours.Direction, 5);
        Assert.Equal(Cos(i0, i1), ours.Image, 5);

        // The thresholds decide: everything passes at -1, nothing at a direction threshold above 1.
        Assert.True(new ClipPairFilter(clip, new ClipThresholds(-1, -1, -1)).Score(triplet, a.Image, b.Image).Keep);
        var strict = new ClipPairFilter(clip, new ClipThresholds(-1, -1, 1.01)).Score(triplet, a.Image, b.Image);
        Assert.False(strict.Keep);
        Assert.Equal(Math.Round(ours.Direction, 6), strict.Measures["clip_sim_dir"]);
    }

    [Fact]
    public void Dataset_generate_with_the_clip_filter_records_its_similarities()
    {
        using var dir = new TempDir();
        var folder = WriteTinyClip(dir.File("clip"));
        ShapeTriplets.Write(dir.File("t.jsonl"), 2, 9);
        string[] Args(string output, params string[] extra) => ["dataset", "generate", "--model", ShippedModelTests.Folder, "--prompts", dir.File("t.jsonl"),
            "--out", dir.File(output), "--samples-per-prompt", "2", "--keep", "2", "--steps", "6", "--filter", "clip", .. extra];
        var (code, _, err) = CliTests.RunP2P(Args("all", "--clip-model", folder, "--clip-threshold", "-1", "--clip-image-threshold", "-1", "--clip-direction-threshold", "-1"));
        Assert.True(code == 0, err);
        var lines = File.ReadAllLines(dir.File("all/0000000/metadata.jsonl"));
        Assert.Equal(2, lines.Length);
        var first = JsonDocument.Parse(lines[0]).RootElement;
        Assert.True(first.GetProperty("clip_sim_dir").GetDouble() >= JsonDocument.Parse(lines[1]).RootElement.GetProperty("clip_sim_dir").GetDouble(),
            "kept pairs are ordered by directional similarity");
        (code, _, err) = CliTests.RunP2P(Args("none", "--clip-model", folder, "--clip-direction-threshold", "1.01"));
        Assert.True(code == 0, err);
        Assert.Contains("0 pairs kept", err);
        (code, _, err) = CliTests.RunP2P(Args("missing"));
        Assert.Equal(1, code);
        Assert.Contains("--filter clip needs --clip-model DIR", err);
    }
}
