using PromptToPrompt.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace PromptToPrompt.Control;

/// <summary>
/// Accumulates attention maps of the conditional prompts over the steps, per layer, for layers whose query count
/// is at most <see cref="MaxPixels"/> (reference: 32x32; the 64x64 layers of SD at 512px are skipped). Cross maps are
/// always stored; self maps only when <see cref="StoreSelfAttention"/> (they are large and nothing in editing reads them).
/// Edit controllers derive from it: the maps stored for edited prompts are the post-edit maps, as in the reference.
/// </summary>
public class AttentionStore(int promptCount) : AttentionController(promptCount)
{
    readonly Dictionary<AttentionLayer, Tensor> _sums = new();
    readonly Dictionary<AttentionLayer, (int Height, int Width)> _sizes = new();
    readonly List<AttentionLayer> _order = new();

    public int MaxPixels { get; init; } = 32 * 32;
    public bool StoreSelfAttention { get; init; }
    /// <summary>Number of UNet evaluations accumulated (the reference's <c>cur_step</c> after the run).</summary>
    public int StepCount { get; private set; }

    /// <summary>Stored layers in call order.</summary>
    public IReadOnlyList<AttentionLayer> Layers => _order;

    public (int Height, int Width) SizeOf(AttentionLayer layer) => _sizes[layer];

    protected bool Stores(in AttentionCall call) => call.QueryLength <= MaxPixels && (call.Layer.IsCross || StoreSelfAttention);

    public override bool Needs(in AttentionCall call) => Stores(call);

    protected override Tensor OnConditionalMaps(in AttentionCall call, Tensor maps)
    {
        if (Stores(call)) Accumulate(call, maps);
        return maps;
    }

    protected void Accumulate(in AttentionCall call, Tensor maps)
    {
        var layer = call.Layer;
        if (_sums.TryGetValue(layer, out var sum)) sum.add_(maps.to(ScalarType.Float32));
        else
        {
            _sums[layer] = maps.to(ScalarType.Float32).clone().DetachFromDisposeScope();
            _sizes[layer] = (call.Height, call.Width);
            _order.Add(layer);
        }
    }

    public override Tensor OnStepEnd(int stepIndex, Tensor latents)
    {
        StepCount = stepIndex + 1;
        return base.OnStepEnd(stepIndex, latents);
    }

    /// <summary>Running sum over the steps so far of one layer's maps, [N, heads, q, k] (what LocalBlend reads).</summary>
    public Tensor Sum(AttentionLayer layer) => _sums[layer];

    /// <summary>Average over the steps of one layer's maps, [N, heads, q, k].</summary>
    public Tensor Average(AttentionLayer layer) => _sums[layer] / Math.Max(1, StepCount);

    /// <summary>
    /// The reference's <c>aggregate_attention</c>: the step-averaged maps of prompt <paramref name="select"/> from the
    /// layers of the given places (in that order) whose resolution is <paramref name="height"/> x <paramref name="width"/>,
    /// averaged over layers and heads: [height, width, keys].
    /// </summary>
    public Tensor Aggregate(int height, int width, IEnumerable<UNetPlace> places, bool cross, int select)
    {
        using var scope = NewDisposeScope();
        var maps = new List<Tensor>();
        foreach (var place in places)
            foreach (var layer in _order.Where(l => l.Place == place && l.IsCross == cross && _sizes[l] == (height, width)))
            {
                var avg = Average(layer);
                maps.Add(avg[select].reshape(avg.shape[1], height, width, avg.shape[3]));
            }
        if (maps.Count == 0)
            throw new UserError($"No {(cross ? "cross" : "self")}-attention maps of {height}x{width} were stored from {string.Join(", ", places)}. " +
                                $"Stored resolutions: {string.Join(", ", _order.Select(l => $"{_sizes[l].Height}x{_sizes[l].Width}").Distinct())}.");
        var all = cat(maps, 0);
        return (all.sum([0L]) / all.shape[0]).MoveToOuterDisposeScope();
    }

    public override void Dispose()
    {
        foreach (var t in _sums.Values) t.Dispose();
        _sums.Clear();
        base.Dispose();
    }
}
