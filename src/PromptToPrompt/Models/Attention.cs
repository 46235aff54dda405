using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace PromptToPrompt.Models;

/// <summary>Where an attention layer sits in the UNet, named as the reference names it.</summary>
public enum UNetPlace { Down, Mid, Up }

/// <summary>
/// Identity of one UNet attention layer. <see cref="Path"/> is the diffusers module path
/// (<c>down_blocks.1.attentions.0.transformer_blocks.0.attn2</c>); <see cref="IndexInPlace"/> counts layers of the
/// same place and kind (self or cross) in forward order, which is how the reference keys its attention store;
/// <see cref="Level"/> is the UNet level it works at (0: the latent's own resolution; each level down halves it).
/// </summary>
/// <see cref="HeadDim"/> is each head's width and <see cref="Upcast"/> whether its scores are computed in float32.
public sealed record AttentionLayer(string Path, UNetPlace Place, bool IsCross, int IndexInPlace, int Heads, int Level = 0, int HeadDim = 0, bool Upcast = false)
{
    /// <summary>Short name like <c>down_cross_0</c>.</summary>
    public string Name => $"{Place.ToString().ToLowerInvariant()}_{(IsCross ? "cross" : "self")}_{IndexInPlace}";
}

/// <summary>One call of an attention layer: the layer, the spatial size of its queries and the key length.</summary>
public readonly record struct AttentionCall(AttentionLayer Layer, int Height, int Width, int KeyLength)
{
    public int QueryLength => Height * Width;
}

/// <summary>
/// The one hook every UNet attention layer calls. When <see cref="Needs"/> says no, the layer runs fused
/// scaled-dot-product attention and never materialises the probabilities. When it says yes, the layer computes
/// <c>softmax(QK^T * scale)</c> of the rows the hook looks at ([rows*heads, queries, keys], row = b*heads + h),
/// passes it to <see cref="Edit"/> and multiplies what comes back by V; the leading
/// <see cref="UntouchedRows"/> samples of the batch (the unconditional half of classifier-free guidance, which no
/// controller edits) stay on the fused kernel.
/// </summary>
public interface IAttentionHook
{
    bool Needs(in AttentionCall call);
    Tensor Edit(in AttentionCall call, Tensor probabilities);

    /// <summary>How many leading samples of a batch of <paramref name="batch"/> the hook neither reads nor edits. Default: none.</summary>
    int UntouchedRows(long batch) => 0;

    /// <summary>
    /// Sees every call's queries and keys ([B, heads, L, d], before the softmax), whether or not the probabilities are
    /// needed: for hooks that keep them to recompute the maps later (the source cache). Default: nothing.
    /// </summary>
    void OnQueryKey(in AttentionCall call, Tensor queries, Tensor keys) { }
}

/// <summary>Holds the hook of the current run; shared by all attention layers of one UNet. Never global.</summary>
public sealed class AttentionHookSlot
{
    public IAttentionHook? Current { get; private set; }

    /// <summary>Installs <paramref name="hook"/> until the returned handle is disposed.</summary>
    public IDisposable Use(IAttentionHook? hook)
    {
        var previous = Current;
        Current = hook;
        return new Restore(this, previous);
    }

    sealed class Restore(AttentionHookSlot slot, IAttentionHook? previous) : IDisposable
    {
        public void Dispose() => slot.Current = previous;
    }
}

/// <summary>
/// Multi-head attention of the UNet's transformer blocks (diffusers <c>CrossAttention</c> / <c>Attention</c>):
/// self-attention when no context is given, cross-attention over the text embedding otherwise.
/// </summary>
public sealed class Attention : nn.Module
{
    readonly Linear to_q, to_k, to_v;
    readonly ModuleList<nn.Module> to_out;
    readonly int _heads;
    readonly bool _upcast;
    readonly AttentionHookSlot _slot;

    public AttentionLayer? Layer { get; internal set; }
    public int Heads => _heads;
    public int HeadDim { get; }
    public bool Upcast => _upcast;

    public Attention(int queryDim, int contextDim, int heads, int headDim, bool upcast, AttentionHookSlot slot) : base("attention")
    {
        int inner = heads * headDim;
        to_q = nn.Linear(queryDim, inner, hasBias: false);
        to_k = nn.Linear(contextDim, inner, hasBias: false);
        to_v = nn.Linear(contextDim, inner, hasBias: false);
        to_out = nn.ModuleList<nn.Module>(nn.Linear(inner, queryDim), nn.Dropout(0));
        _heads = heads;
        HeadDim = headDim;
        _upcast = upcast;
        _slot = slot;
        RegisterComponents();
    }

    /// <param name="x">[B, H*W, C] hidden states.</param>
    /// <param name="context">[B, K, D] text embedding for cross-attention, or null for self-attention.</param>
    public Tensor forward(Tensor x, Tensor? context, int height, int width)
    {
        using var scope = NewDisposeScope();
        var kv = context ?? x;
        var q = SplitHeads(to_q.forward(x));
        var k = SplitHeads(to_k.forward(kv));
        var v = SplitHeads(to_v.forward(kv));
        var hook = _slot.Current;
        var call = new AttentionCall(Layer!, height, width, (int)kv.shape[1]);
        hook?.OnQueryKey(call, q, k);
        Tensor o;
        if (hook is null || !hook.Needs(call)) o = Fused(q, k, v, _upcast);
        else if (hook.UntouchedRows(q.shape[0]) is var skip and > 0)
            o = cat([Fused(q[..skip], k[..skip], v[..skip], _upcast), WithProbabilities(q[skip..], k[skip..], v[skip..], call, hook)], 0);
        else o = WithProbabilities(q, k, v, call, hook);
        o = MergeHeads(o);
        o = ((Linear)to_out[0]).forward(o);
        return o.MoveToOuterDisposeScope();
    }

    /// <summary>Fused attention over [B, heads, L, d] tensors; scale = d^-0.5.</summary>
    public static Tensor Fused(Tensor q, Tensor k, Tensor v, bool upcast = false)
    {
        if (upcast && q.dtype != ScalarType.Float32)
        {
            var dtype = q.dtype;
            return nn.functional.scaled_dot_product_attention(q.to(ScalarType.Float32), k.to(ScalarType.Float32), v.to(ScalarType.Float32)).to(dtype);
        }
        return nn.functional.scaled_dot_product_attention(q, k, v);
    }

    Tensor WithProbabilities(Tensor q, Tensor k, Tensor v, AttentionCall call, IAttentionHook hook)
    {
        long b = q.shape[0], h = q.shape[1], lq = q.shape[2], d = q.shape[3];
        var probs = hook.Edit(call, Probabilities(q, k, _upcast));
        return bmm(probs.to(q.dtype), v.reshape(b * h, -1, d)).reshape(b, h, lq, d);
    }

    /// <summary>
    /// <c>softmax(QK^T / sqrt(d))</c> of [B, heads, L, d] queries and keys as [B*heads, Lq, Lk], in the queries' dtype
    /// (scores in float32 when <paramref name="upcast"/>). The one place the maps are computed, so that maps recomputed
    /// from cached queries and keys equal the ones a batched run computes.
    /// </summary>
    public static Tensor Probabilities(Tensor q, Tensor k, bool upcast)
    {
        long b = q.shape[0], h = q.shape[1], lq = q.shape[2], d = q.shape[3];
        var q3 = q.reshape(b * h, lq, d);
        var k3 = k.reshape(b * h, -1, d);
        if (upcast) { q3 = q3.to(ScalarType.Float32); k3 = k3.to(ScalarType.Float32); }
        return (matmul(q3, k3.transpose(1, 2)) * (1.0 / Math.Sqrt(d))).softmax(-1).to(q.dtype);
    }

    Tensor SplitHeads(Tensor t) => t.view(t.shape[0], t.shape[1], _heads, -1).transpose(1, 2);

    static Tensor MergeHeads(Tensor t) => t.transpose(1, 2).reshape(t.shape[0], t.shape[2], -1);
}
