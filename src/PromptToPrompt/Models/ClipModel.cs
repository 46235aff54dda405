using System.Text.Json.Nodes;
using PromptToPrompt.Loading;
using PromptToPrompt.Text;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace PromptToPrompt.Models;

/// <summary>transformers CLIPVisionConfig, the fields the vision tower uses.</summary>
public sealed record ClipVisionConfig(int HiddenSize, int IntermediateSize, int NumLayers, int NumHeads, int ImageSize, int PatchSize,
                                      double LayerNormEps, string HiddenAct)
{
    /// <summary>The encoder layers' shape, in the form the shared CLIP layers take.</summary>
    public ClipTextConfig Layers => new(0, HiddenSize, IntermediateSize, NumLayers, NumHeads, 0, LayerNormEps, HiddenAct);
}

/// <summary>transformers CLIPVisionTransformer: patch and class embeddings, pre-LayerNorm, full-attention layers, post-LayerNorm of the class token.</summary>
public sealed class ClipVisionTransformer : nn.Module<Tensor, Tensor>
{
    readonly ClipVisionEmbeddings embeddings;
    readonly LayerNorm pre_layrnorm, post_layernorm; // sic: transformers' parameter names
    readonly ClipEncoder encoder;

    public ClipVisionTransformer(ClipVisionConfig c) : base("vision_model")
    {
        embeddings = new ClipVisionEmbeddings(c);
        pre_layrnorm = nn.LayerNorm(c.HiddenSize, c.LayerNormEps);
        encoder = new ClipEncoder(c.Layers, causal: false);
        post_layernorm = nn.LayerNorm(c.HiddenSize, c.LayerNormEps);
        RegisterComponents();
    }

    /// <summary>The pooled output [B, hidden] of images [B, 3, S, S] (normalised as CLIP expects).</summary>
    public override Tensor forward(Tensor pixels)
    {
        using var scope = NewDisposeScope();
        var h = encoder.forward(pre_layrnorm.forward(embeddings.forward(pixels)));
        return post_layernorm.forward(h[.., 0]).MoveToOuterDisposeScope();
    }
}

public sealed class ClipVisionEmbeddings : nn.Module<Tensor, Tensor>
{
    readonly Parameter class_embedding;
    readonly Conv2d patch_embedding;
    readonly Embedding position_embedding;

    public ClipVisionEmbeddings(ClipVisionConfig c) : base("embeddings")
    {
        class_embedding = new Parameter(zeros(c.HiddenSize), requires_grad: false);
        patch_embedding = nn.Conv2d(3, c.HiddenSize, c.PatchSize, stride: c.PatchSize, bias: false);
        int patches = c.ImageSize / c.PatchSize;
        position_embedding = nn.Embedding(patches * patches + 1, c.HiddenSize);
        RegisterComponents();
    }

    public override Tensor forward(Tensor pixels)
    {
        using var scope = NewDisposeScope();
        long b = pixels.shape[0];
        var patches = patch_embedding.forward(pixels).flatten(2).transpose(1, 2);
        var tokens = cat([class_embedding.expand(b, 1, -1), patches], 1);
        var positions = arange(tokens.shape[1], ScalarType.Int64, pixels.device).unsqueeze(0);
        return (tokens + position_embedding.forward(positions)).MoveToOuterDisposeScope();
    }
}

/// <summary>
/// transformers CLIPModel (e.g. openai/clip-vit-large-patch14): both towers and their projections, with its parameter
/// names, so a Hugging Face folder loads by name. Features are L2-normalised, as the InstructPix2Pix filter uses them.
/// </summary>
public sealed class ClipModel : nn.Module
{
    readonly ClipTransformer text_model;
    readonly ClipVisionTransformer vision_model;
    readonly Linear visual_projection, text_projection;

    public ClipTextConfig TextConfig { get; }
    public ClipVisionConfig VisionConfig { get; }
    public ClipTokenizer Tokenizer { get; }

    public ClipModel(ClipTextConfig text, ClipVisionConfig vision, int projectionDim, ClipTokenizer tokenizer) : base("clip")
    {
        TextConfig = text;
        VisionConfig = vision;
        Tokenizer = tokenizer;
        text_model = new ClipTransformer(text);
        vision_model = new ClipVisionTransformer(vision);
        visual_projection = nn.Linear(vision.HiddenSize, projectionDim, hasBias: false);
        text_projection = nn.Linear(text.HiddenSize, projectionDim, hasBias: false);
        RegisterComponents();
    }

    /// <summary>CLIP's normalisation of RGB in [0, 1].</summary>
    public static readonly float[] Mean = [0.48145466f, 0.4578275f, 0.40821073f], Std = [0.26862954f, 0.26130258f, 0.27577711f];

    /// <summary>
    /// Image features [N, D], unit length, of images [N, 3, H, W] in [0, 1]: bicubic resize to the model's size (no crop,
    /// as the InstructPix2Pix filter does), CLIP's normalisation, the vision tower, the projection.
    /// </summary>
    public Tensor EncodeImages(Tensor images)
    {
        using var _ = no_grad();
        using var scope = NewDisposeScope();
        var device = visual_projection.weight!.device;
        var x = nn.functional.interpolate(images.to(ScalarType.Float32).to(device), [VisionConfig.ImageSize, VisionConfig.ImageSize],
            mode: InterpolationMode.Bicubic, align_corners: false);
        x = (x - tensor(Mean, device: device).view(1, 3, 1, 1)) / tensor(Std, device: device).view(1, 3, 1, 1);
        var features = visual_projection.forward(vision_model.forward(x.to(visual_projection.weight!.dtype)));
        return (features / features.norm(1, keepdim: true)).to(ScalarType.Float32).MoveToOuterDisposeScope();
    }

    /// <summary>Text features [N, D], unit length: the end token's final hidden state, projected.</summary>
    public Tensor EncodeTexts(IReadOnlyList<string> texts)
    {
        using var _ = no_grad();
        using var scope = NewDisposeScope();
        var device = text_projection.weight!.device;
        var tokenized = texts.Select(Tokenizer.Tokenize).ToList();
        var ids = tensor(tokenized.SelectMany(t => t.Ids).ToArray(), [texts.Count, Tokenizer.MaxLength]).to(device);
        var hidden = text_model.forward(ids);
        var end = tensor(tokenized.Select(t => (long)t.TokenCount - 1).ToArray(), device: device);
        var pooled = hidden[arange(texts.Count, device: device), end];
        var features = text_projection.forward(pooled);
        return (features / features.norm(1, keepdim: true)).to(ScalarType.Float32).MoveToOuterDisposeScope();
    }

    /// <summary>Loads a Hugging Face CLIP folder: config.json (text_config, vision_config, projection_dim), model.safetensors, the tokenizer files.</summary>
    public static ClipModel Load(string folder, ModelPlacement placement, Action<string>? log = null)
    {
        var configPath = Path.Combine(folder, "config.json");
        if (!File.Exists(configPath)) throw new UserError($"{folder} is not a CLIP model folder (no config.json). Pass a Hugging Face CLIP folder such as openai/clip-vit-large-patch14.");
        var root = JsonNode.Parse(File.ReadAllText(configPath)) as JsonObject ?? throw new UserError($"{configPath} is not a JSON object.");
        if (root["vision_config"] is not JsonObject v || root["text_config"] is not JsonObject t)
            throw new UserError($"{configPath} has no text_config and vision_config: it is not a CLIPModel config.");
        int Int(JsonObject o, string key, int fallback) => o[key]?.GetValue<int>() ?? fallback;
        double Real(JsonObject o, string key, double fallback) => o[key]?.GetValue<double>() ?? fallback;
        string Text(JsonObject o, string key, string fallback) => o[key]?.GetValue<string>() ?? fallback;
        // transformers' defaults where a config leaves a field out.
        var text = new ClipTextConfig(Int(t, "vocab_size", 49408), Int(t, "hidden_size", 512), Int(t, "intermediate_size", 2048), Int(t, "num_hidden_layers", 12),
            Int(t, "num_attention_heads", 8), Int(t, "max_position_embeddings", 77), Real(t, "layer_norm_eps", 1e-5), Text(t, "hidden_act", "quick_gelu"));
        var vision = new ClipVisionConfig(Int(v, "hidden_size", 768), Int(v, "intermediate_size", 3072), Int(v, "num_hidden_layers", 12), Int(v, "num_attention_heads", 12),
            Int(v, "image_size", 224), Int(v, "patch_size", 32), Real(v, "layer_norm_eps", 1e-5), Text(v, "hidden_act", "quick_gelu"));
        var tokenizerFolder = File.Exists(Path.Combine(folder, "vocab.json")) ? folder : Path.Combine(folder, "tokenizer");
        var model = new ClipModel(text, vision, Int(root, "projection_dim", 512), ClipTokenizer.Load(tokenizerFolder, text.MaxPositions));
        using var source = TensorSource.Open($"CLIP ({folder})", WeightLoader.ComponentFiles(folder, "model", preferFp16: false));
        var unexpected = WeightLoader.Load(model, source, placement.Device, placement.DType, new HashSet<string> { "text_model.embeddings.position_ids", "vision_model.embeddings.position_ids", "logit_scale" });
        if (unexpected.Count > 0) log?.Invoke($"warning: CLIP: {unexpected.Count} weight(s) in the file are not used, e.g. {string.Join(", ", unexpected.Take(5))}");
        model.eval();
        return model;
    }
}
