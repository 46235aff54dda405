using PromptToPrompt.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace PromptToPrompt.Control;

/// <summary>What an <see cref="AttentionStore"/> keeps; see there.</summary>
public sealed record StoreSettings(int CrossMaxPixels = 32 * 32, int SelfMaxPixels = 0, IReadOnlySet<int>? KeepSteps = null,
                                   ScalarType SnapshotType = ScalarType.Float16);

/// <summary>
/// Accumulates the attention maps of the conditional prompts, per layer, summed over the steps (the reference's
/// <c>AttentionStore</c>): cross-attention maps of layers with at most <see cref="CrossMaxPixels"/> queries (reference:
/// 32x32; the 64x64 layers of SD at 512px are skipped) and, only if asked, self-attention maps up to
/// <see cref="SelfMaxPixels"/> (nothing in editing reads them, and a 32x32 self map is 1024x1024 per head).
/// For the steps in <see cref="KeepSteps"/> it also keeps a snapshot of each layer's head-averaged maps, in
/// <see cref="SnapshotType"/> (float16 by default, which halves the memory; maps are in [0, 1], so float16 keeps
/// them to about 1e-3 relative).
/// Edit controllers derive from it: the maps stored for edited prompts are the post-edit maps, as in the reference.
/// </summary>
public class AttentionStore(int promptCount, StoreSettings? settings = null) : AttentionController(promptCount)
{
    readonly StoreSettings _settings = settings ?? new StoreSettings();
    readonly Dictionary<AttentionLayer, Tensor> _sums = new();
    readonly Dictionary<(int Step, AttentionLayer Layer), Tensor> _snapshots = new();
    readonly Dictionary<AttentionLayer, (int Height, int Width)> _sizes = new();
    readonly List<AttentionLayer> _order = new();

    public int CrossMaxPixels => _settings.CrossMaxPixels;
    public int SelfMaxPixels => _settings.SelfMaxPixels;
    public IReadOnlySet<int>? KeepSteps => _settings.KeepSteps;
    /// <summary>Number of UNet evaluations accumulated (the reference's <c>cur_step</c> after the run).</summary>
    public int StepCount { get; private set; }

    /// <summary>Stored layers in call order.</summary>
    public IReadOnlyList<AttentionLayer> Layers => _order;
    public (int Height, int Width) SizeOf(AttentionLayer layer) => _sizes[layer];
    /// <summary>Steps with snapshots.</summary>
    public IEnumerable<int> SnapshotSteps => _snapshots.Keys.Select(k => k.Step).Distinct().OrderBy(s => s);

    /// <summary>A layer's name with its resolution, e.g. <c>down_cross_0_res_64</c>.</summary>
    public string LayerName(AttentionLayer layer) => $"{layer.Name}_res_{(_sizes[layer].Height == _sizes[layer].Width ? $"{_sizes[layer].Height}" : $"{_sizes[layer].Height}x{_sizes[layer].Width}")}";

    protected bool Stores(in AttentionCall call) => call.QueryLength <= (call.Layer.IsCross ? CrossMaxPixels : SelfMaxPixels);

    public override bool Needs(in AttentionCall call) => Stores(call);

    protected override Tensor OnConditionalMaps(in AttentionCall call, Tensor maps)
    {
        if (Stores(call)) Accumulate(call, maps);
        return maps;
    }

    void Accumulate(in AttentionCall call, Tensor maps)
    {
        var layer = call.Layer;
        var value = maps.detach().to(ScalarType.Float32);
        if (_sums.TryGetValue(layer, out var sum)) sum.add_(value);
        else
        {
            _sums[layer] = value.clone().DetachFromDisposeScope();
            _sizes[layer] = (call.Height, call.Width);
            _order.Add(layer);
        }
        if (KeepSteps?.Contains(CurrentStep) == true)
            _snapshots[(CurrentStep, layer)] = value.mean([1]).to(_settings.SnapshotType).DetachFromDisposeScope();
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

    IEnumerable<AttentionLayer> Select(int height, int width, IEnumerable<UNetPlace> places, bool cross) =>
        places.SelectMany(place => _order.Where(l => l.Place == place && l.IsCross == cross && _sizes[l] == (height, width)));

    /// <summary>
    /// The reference's <c>aggregate_attention</c>: maps of prompt <paramref name="select"/> from the layers of the given
    /// places (in that order) whose resolution is <paramref name="height"/> x <paramref name="width"/>, averaged over
    /// layers and heads, and over all steps — or over <paramref name="steps"/> only (these need snapshots, see
    /// <see cref="KeepSteps"/>). Result [height, width, keys].
    /// </summary>
    public Tensor Aggregate(int height, int width, IEnumerable<UNetPlace> places, bool cross, int select, IEnumerable<int>? steps = null)
    {
        using var scope = NewDisposeScope();
        var layers = Select(height, width, places, cross).ToList();
        if (layers.Count == 0)
            throw new UserError($"No {(cross ? "cross" : "self")}-attention maps of {height}x{width} were stored from {string.Join(", ", places.Select(p => p.ToString().ToLowerInvariant()))}. " +
                                $"Stored resolutions: {string.Join(", ", _order.Where(l => l.IsCross == cross).Select(l => $"{_sizes[l].Height}x{_sizes[l].Width}").Distinct())}.");
        Tensor result;
        if (steps is null)
        {
            var all = cat(layers.Select(l => { var a = Average(l)[select]; return a.reshape(a.shape[0], height, width, a.shape[2]); }).ToArray(), 0);
            result = all.sum([0L]) / all.shape[0];
        }
        else
        {
            var list = steps.ToList();
            var maps = new List<Tensor>();
            foreach (var s in list)
                foreach (var l in layers)
                    maps.Add(_snapshots.TryGetValue((s, l), out var snap)
                        ? snap[select].to(ScalarType.Float32).reshape(height, width, -1)
                        : throw new UserError($"Step {s} was not kept (kept: {string.Join(", ", SnapshotSteps)}); ask for it in KeepSteps / --per-step."));
            result = stack(maps).mean([0L]);
        }
        return result.MoveToOuterDisposeScope();
    }

    /// <summary>
    /// One layer's maps of prompt <paramref name="select"/>, averaged over heads and over all steps (or one kept step):
    /// [height, width, keys].
    /// </summary>
    public Tensor LayerMaps(AttentionLayer layer, int select, int? step = null)
    {
        var (h, w) = _sizes[layer];
        using var scope = NewDisposeScope();
        var maps = step is int s
            ? (_snapshots.TryGetValue((s, layer), out var snap) ? snap[select].to(ScalarType.Float32) : throw new UserError($"Step {s} was not kept."))
            : Average(layer)[select].mean([0L]);
        return maps.reshape(h, w, -1).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// The reference's <c>show_self_attention_comp</c>: the averaged self-attention at the given resolution as a
    /// [R*R, R*R] matrix, rows centred, and the top <paramref name="count"/> right singular vectors as [count, h, w],
    /// with their singular values (descending).
    /// </summary>
    public (Tensor Components, Tensor SingularValues) SelfAttentionComponents(int height, int width, IEnumerable<UNetPlace> places, int select, int count)
    {
        using var scope = NewDisposeScope();
        var maps = Aggregate(height, width, places, cross: false, select).reshape(height * width, height * width).to(ScalarType.Float64);
        var centred = maps - maps.mean([1L], keepdim: true);
        var (_, s, vh) = linalg.svd(centred, fullMatrices: false);
        int k = Math.Min(count, (int)s.shape[0]);
        return (vh[..k].reshape(k, height, width).to(ScalarType.Float32).MoveToOuterDisposeScope(), s[..k].to(ScalarType.Float32).MoveToOuterDisposeScope());
    }

    public override void Dispose()
    {
        foreach (var t in _sums.Values.Concat(_snapshots.Values)) t.Dispose();
        _sums.Clear();
        _snapshots.Clear();
        base.Dispose();
    }
}
