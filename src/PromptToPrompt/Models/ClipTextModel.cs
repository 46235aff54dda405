using PromptToPrompt.Loading;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace PromptToPrompt.Models;

public sealed class ClipAttention : nn.Module<Tensor, Tensor>
{
    readonly Linear q_proj, k_proj, v_proj, out_proj;
    readonly int _heads;
    readonly bool _causal;

    /// <param name="causal">Causal self-attention (the text tower) or full (the vision tower).</param>
    public ClipAttention(int dim, int heads, bool causal = true) : base("self_attn")
    {
        _causal = causal;
        q_proj = nn.Linear(dim, dim);
        k_proj = nn.Linear(dim, dim);
        v_proj = nn.Linear(dim, dim);
        out_proj = nn.Linear(dim, dim);
        _heads = heads;
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)
    {
        using var scope = NewDisposeScope();
        long b = x.shape[0], l = x.shape[1];
        Tensor Heads(Tensor t) => t.view(b, l, _heads, -1).transpose(1, 2);
        var o = nn.functional.scaled_dot_product_attention(Heads(q_proj.forward(x)), Heads(k_proj.forward(x)), Heads(v_proj.forward(x)), is_casual: _causal);
        return out_proj.forward(o.transpose(1, 2).reshape(b, l, -1)).MoveToOuterDisposeScope();
    }
}

public sealed class ClipMlp : nn.Module<Tensor, Tensor>
{
    readonly Linear fc1, fc2;
    readonly bool _quickGelu;

    public ClipMlp(int dim, int intermediate, bool quickGelu) : base("mlp")
    {
        fc1 = nn.Linear(dim, intermediate);
        fc2 = nn.Linear(intermediate, dim);
        _quickGelu = quickGelu;
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)
    {
        using var scope = NewDisposeScope();
        var h = fc1.forward(x);
        h = _quickGelu ? h * sigmoid(1.702 * h) : F.gelu(h);
        return fc2.forward(h).MoveToOuterDisposeScope();
    }
}

public sealed class ClipEncoderLayer : nn.Module<Tensor, Tensor>
{
    readonly ClipAttention self_attn;
    readonly LayerNorm layer_norm1, layer_norm2;
    readonly ClipMlp mlp;

    public ClipEncoderLayer(ClipTextConfig c, bool causal = true) : base("layer")
    {
        self_attn = new ClipAttention(c.HiddenSize, c.NumHeads, causal);
        layer_norm1 = nn.LayerNorm(c.HiddenSize, c.LayerNormEps);
        mlp = new ClipMlp(c.HiddenSize, c.IntermediateSize, c.HiddenAct == "quick_gelu");
        layer_norm2 = nn.LayerNorm(c.HiddenSize, c.LayerNormEps);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)
    {
        using var scope = NewDisposeScope();
        x = x + self_attn.forward(layer_norm1.forward(x));
        x = x + mlp.forward(layer_norm2.forward(x));
        return x.MoveToOuterDisposeScope();
    }
}

public sealed class ClipEmbeddings : nn.Module<Tensor, Tensor>
{
    readonly Embedding token_embedding, position_embedding;

    public ClipEmbeddings(ClipTextConfig c) : base("embeddings")
    {
        token_embedding = nn.Embedding(c.VocabSize, c.HiddenSize);
        position_embedding = nn.Embedding(c.MaxPositions, c.HiddenSize);
        RegisterComponents();
    }

    public override Tensor forward(Tensor ids)
    {
        using var positions = arange(ids.shape[1], ScalarType.Int64, ids.device).unsqueeze(0);
        using var tokens = token_embedding.forward(ids);
        using var pos = position_embedding.forward(positions);
        return tokens + pos;
    }
}

public sealed class ClipTransformer : nn.Module<Tensor, Tensor>
{
    readonly ClipEmbeddings embeddings;
    readonly ClipEncoder encoder;
    readonly LayerNorm final_layer_norm;

    public ClipTransformer(ClipTextConfig c) : base("text_model")
    {
        embeddings = new ClipEmbeddings(c);
        encoder = new ClipEncoder(c);
        final_layer_norm = nn.LayerNorm(c.HiddenSize, c.LayerNormEps);
        RegisterComponents();
    }

    public override Tensor forward(Tensor ids)
    {
        using var scope = NewDisposeScope();
        var h = encoder.forward(embeddings.forward(ids));
        return final_layer_norm.forward(h).MoveToOuterDisposeScope();
    }

    /// <summary>transformers' <c>hidden_states</c>: the embeddings, then each layer's output (none through the final LayerNorm).</summary>
    public List<Tensor> HiddenStates(Tensor ids)
    {
        var states = new List<Tensor> { embeddings.forward(ids) };
        foreach (var layer in encoder.Layers) states.Add(layer.forward(states[^1]));
        return states;
    }

    public Tensor FinalNorm(Tensor h) => final_layer_norm.forward(h);
}

public sealed class ClipEncoder : nn.Module<Tensor, Tensor>
{
    readonly ModuleList<ClipEncoderLayer> layers;

    public ClipEncoder(ClipTextConfig c, bool causal = true) : base("encoder")
    {
        layers = nn.ModuleList(Enumerable.Range(0, c.NumLayers).Select(_ => new ClipEncoderLayer(c, causal)).ToArray());
        RegisterComponents();
    }

    public IEnumerable<ClipEncoderLayer> Layers => layers;

    public override Tensor forward(Tensor x)
    {
        using var scope = NewDisposeScope();
        foreach (var layer in layers) x = layer.forward(x);
        return x.MoveToOuterDisposeScope();
    }
}

/// <summary>
/// transformers CLIPTextModel: token + position embeddings, pre-LN transformer layers with causal self-attention,
/// final LayerNorm. <see cref="forward"/> returns <c>last_hidden_state</c> [B, L, hidden]. SD 1.x uses quick-GELU;
/// SD 2.x (OpenCLIP, config already cut to the penultimate layer) uses GELU. With a projection (transformers'
/// CLIPTextModelWithProjection, SDXL's second encoder) it also gives the pooled, projected <c>text_embeds</c>.
/// </summary>
public sealed class ClipTextModel : nn.Module<Tensor, Tensor>
{
    readonly ClipTransformer text_model;
    readonly Linear? text_projection;

    public ClipTextConfig Config { get; }

    public ClipTextModel(ClipTextConfig c) : base("text_encoder")
    {
        Config = c;
        text_model = new ClipTransformer(c);
        if (c.ProjectionDim > 0) text_projection = nn.Linear(c.HiddenSize, c.ProjectionDim, hasBias: false);
        RegisterComponents();
    }

    public override Tensor forward(Tensor inputIds) => text_model.forward(inputIds);

    /// <inheritdoc cref="ClipTransformer.HiddenStates"/>
    public List<Tensor> HiddenStates(Tensor inputIds) => text_model.HiddenStates(inputIds);

    /// <summary>
    /// <c>text_embeds</c> [B, projection_dim]: the final-normed last hidden state at each row's end position (the first
    /// largest id, transformers' rule for these configs: the end token has the largest id), projected.
    /// </summary>
    public Tensor TextEmbeds(Tensor inputIds, Tensor lastHiddenState)
    {
        var projection = text_projection ?? throw new InvalidOperationException("This text encoder has no text_projection.");
        using var scope = NewDisposeScope();
        var ends = inputIds.argmax(-1);
        var pooled = text_model.FinalNorm(lastHiddenState)[arange(inputIds.shape[0], ScalarType.Int64, inputIds.device), ends];
        return projection.forward(pooled).MoveToOuterDisposeScope();
    }
}
