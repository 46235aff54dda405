using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace PromptToPrompt.Models;

/// <summary>GEGLU projection: <c>h, gate = proj(x).chunk(2); h * gelu(gate)</c> (exact erf GELU).</summary>
public sealed class GEGLU : nn.Module<Tensor, Tensor>
{
    readonly Linear proj;

    public GEGLU(int dim, int inner) : base("geglu")
    {
        proj = nn.Linear(dim, inner * 2);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)
    {
        using var scope = NewDisposeScope();
        var parts = proj.forward(x).chunk(2, -1);
        return (parts[0] * F.gelu(parts[1])).MoveToOuterDisposeScope();
    }
}

/// <summary>diffusers FeedForward: <c>net = [GEGLU(dim, 4*dim), Dropout, Linear(4*dim, dim)]</c>.</summary>
public sealed class FeedForward : nn.Module<Tensor, Tensor>
{
    readonly ModuleList<nn.Module<Tensor, Tensor>> net;

    public FeedForward(int dim, int mult = 4) : base("ff")
    {
        net = nn.ModuleList<nn.Module<Tensor, Tensor>>(new GEGLU(dim, dim * mult), nn.Dropout(0), nn.Linear(dim * mult, dim));
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)
    {
        using var h = net[0].forward(x);
        return net[2].forward(h);
    }
}

/// <summary>Self-attention, cross-attention and feed-forward, each pre-LayerNorm with a residual.</summary>
public sealed class BasicTransformerBlock : nn.Module
{
    readonly LayerNorm norm1, norm2, norm3;
    public readonly Attention attn1, attn2;
    readonly FeedForward ff;

    public BasicTransformerBlock(int dim, int heads, int headDim, int contextDim, bool upcast, AttentionHookSlot slot)
        : base("transformer_block")
    {
        norm1 = nn.LayerNorm(dim, 1e-5);
        attn1 = new Attention(dim, dim, heads, headDim, upcast, slot);
        norm2 = nn.LayerNorm(dim, 1e-5);
        attn2 = new Attention(dim, contextDim, heads, headDim, upcast, slot);
        norm3 = nn.LayerNorm(dim, 1e-5);
        ff = new FeedForward(dim);
        RegisterComponents();
    }

    public Tensor forward(Tensor x, Tensor context, int height, int width)
    {
        using var scope = NewDisposeScope();
        x = attn1.forward(norm1.forward(x), null, height, width) + x;
        x = attn2.forward(norm2.forward(x), context, height, width) + x;
        x = ff.forward(norm3.forward(x)) + x;
        return x.MoveToOuterDisposeScope();
    }
}

/// <summary>
/// diffusers Transformer2DModel (SpatialTransformer): GroupNorm, projection in (1x1 conv, or linear for SD 2.x),
/// transformer blocks over the H*W tokens, projection out, residual.
/// </summary>
public sealed class Transformer2DModel : nn.Module
{
    readonly Norm32 norm;
    readonly nn.Module<Tensor, Tensor> proj_in, proj_out;
    public readonly ModuleList<BasicTransformerBlock> transformer_blocks;
    readonly bool _linear;

    public Transformer2DModel(int channels, int heads, int contextDim, int groups, bool linearProjection, bool upcast, AttentionHookSlot slot, int depth = 1)
        : base("transformer")
    {
        norm = new Norm32(groups, channels, 1e-6);
        _linear = linearProjection;
        proj_in = linearProjection ? nn.Linear(channels, channels) : nn.Conv2d(channels, channels, 1);
        transformer_blocks = nn.ModuleList(Enumerable.Range(0, depth)
            .Select(_ => new BasicTransformerBlock(channels, heads, channels / heads, contextDim, upcast, slot)).ToArray());
        proj_out = linearProjection ? nn.Linear(channels, channels) : nn.Conv2d(channels, channels, 1);
        RegisterComponents();
    }

    public Tensor forward(Tensor x, Tensor context)
    {
        using var scope = NewDisposeScope();
        long b = x.shape[0], c = x.shape[1], h = x.shape[2], w = x.shape[3];
        var hidden = norm.forward(x);
        if (!_linear) hidden = proj_in.forward(hidden);
        hidden = hidden.permute(0, 2, 3, 1).reshape(b, h * w, -1);
        if (_linear) hidden = proj_in.forward(hidden);
        foreach (var block in transformer_blocks) hidden = block.forward(hidden, context, (int)h, (int)w);
        if (_linear) hidden = proj_out.forward(hidden);
        hidden = hidden.reshape(b, h, w, -1).permute(0, 3, 1, 2);
        if (!_linear) hidden = proj_out.forward(hidden.contiguous());
        return (hidden + x).MoveToOuterDisposeScope();
    }
}
