using PromptToPrompt.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace PromptToPrompt.Control;

/// <summary>How the source's attention of one layer is kept: whichever costs less memory per UNet evaluation.</summary>
public enum SourceRecordKind
{
    /// <summary>The probabilities themselves, [heads, q, k] per evaluation.</summary>
    Maps,
    /// <summary>Cross-attention: the queries [heads, q, d] per evaluation; the keys (the source prompt's, the same at every step) once.</summary>
    Queries,
    /// <summary>Self-attention: queries and keys [heads, q, d] each, per evaluation.</summary>
    QueriesAndKeys,
}

/// <summary>One recorded layer: its call (layer, query grid, key length) and how it is kept.</summary>
public sealed record RecordedLayer(AttentionCall Call, SourceRecordKind Kind)
{
    AttentionLayer Layer => Call.Layer;
    int HeadDim => Layer.HeadDim;

    /// <summary>Shape of the per-evaluation tensor (without the leading evaluation dimension).</summary>
    public long[] StepShape => Kind == SourceRecordKind.Maps
        ? [Layer.Heads, Call.QueryLength, Call.KeyLength]
        : [Layer.Heads, Call.QueryLength, HeadDim];

    /// <summary>Shape of the keys tensor, or null when the layer keeps none: [1, heads, k, d] (cross) or [E, heads, q, d] (self).</summary>
    public long[]? KeyShape(int evaluations) => Kind switch
    {
        SourceRecordKind.Queries => [1, Layer.Heads, Call.KeyLength, HeadDim],
        SourceRecordKind.QueriesAndKeys => [evaluations, Layer.Heads, Call.QueryLength, HeadDim],
        _ => null,
    };

    public long Elements(int evaluations) =>
        evaluations * StepShape.Aggregate(1L, (a, b) => a * b) + (KeyShape(evaluations)?.Aggregate(1L, (a, b) => a * b) ?? 0);

    /// <summary>Maps cost heads*q*k per evaluation; queries heads*q*d (plus the fixed keys), queries and keys 2*heads*q*d.</summary>
    public static SourceRecordKind Choose(in AttentionCall call)
    {
        long maps = (long)call.QueryLength * call.KeyLength;
        long queries = (long)call.QueryLength * call.Layer.HeadDim * (call.Layer.IsCross ? 1 : 2);
        if (call.Layer.HeadDim <= 0 || maps <= queries) return SourceRecordKind.Maps;
        return call.Layer.IsCross ? SourceRecordKind.Queries : SourceRecordKind.QueriesAndKeys;
    }
}

/// <summary>
/// What is recorded of a source run, known before it runs (from the UNet's layers and the latent size): every
/// cross-attention layer (edits replace all of them), the self-attention layers with at most
/// <see cref="SelfMaxPixels"/> queries, and the latents after every UNet evaluation. When the source run edits its own
/// cross-attention (Directed Diffusion), those layers are kept as maps: recomputing them from queries would lose the edit.
/// </summary>
/// <see cref="Shifted"/>: latent guidance moves the source, and each evaluation's move is kept too.
public sealed record TrajectoryPlan(IReadOnlyList<RecordedLayer> Layers, int Evaluations, long[] LatentShape, ScalarType Storage, int SelfMaxPixels,
                                    bool Shifted = false)
{
    public static TrajectoryPlan For(UNet2DConditionModel unet, int latentHeight, int latentWidth, int tokens, int evaluations, int selfMaxPixels,
                                     ScalarType storage, bool crossMaps = false, bool shifted = false)
    {
        var layers = new List<RecordedLayer>();
        foreach (var layer in unet.AttentionLayers)
        {
            var (h, w) = unet.QueryGrid(layer, latentHeight, latentWidth);
            if (!layer.IsCross && h * w > selfMaxPixels) continue;
            var call = new AttentionCall(layer, h, w, layer.IsCross ? tokens : h * w);
            layers.Add(new RecordedLayer(call, crossMaps && layer.IsCross ? SourceRecordKind.Maps : RecordedLayer.Choose(call)));
        }
        return new TrajectoryPlan(layers, evaluations, [1, unet.Config.InChannels, latentHeight, latentWidth], storage, selfMaxPixels, shifted);
    }

    static int ElementSize(ScalarType t) => t switch { ScalarType.Float16 or ScalarType.BFloat16 => 2, ScalarType.Float64 => 8, _ => 4 };

    /// <summary>Bytes the recorded source occupies: attention in <see cref="Storage"/>, latents (and moves) in float32.</summary>
    public long Bytes => Layers.Sum(l => l.Elements(Evaluations)) * ElementSize(Storage) + (Shifted ? 2 : 1) * Evaluations * LatentShape.Aggregate(1L, (a, b) => a * b) * 4;

    public static string Megabytes(long bytes) => $"{bytes / (1024.0 * 1024.0):F1} MB";
}

/// <summary>
/// The source branch of an edit, recorded once (<see cref="SourceRecorder"/>) and replayed into any number of later
/// edits (<see cref="CachedSourceEdit"/>): per UNet evaluation, the source's latents after the step and, per recorded
/// layer, its attention maps or the queries/keys they are recomputed from (<see cref="Models.Attention.Probabilities"/>,
/// the code the batched run uses). Tensors live on the model's device.
/// </summary>
public sealed class SourceTrajectory : IDisposable
{
    readonly Dictionary<string, (RecordedLayer Record, Tensor Data, Tensor? Keys)> _layers = new();

    public TrajectoryPlan Plan { get; }
    /// <summary>[E, C, h, w] float32: the source's latents after each UNet evaluation's scheduler step.</summary>
    public Tensor Latents { get; }
    /// <summary>[E, C, h, w] float32: how latent guidance moved the source before each evaluation's pass (null when the plan is not shifted).</summary>
    public Tensor? Shifts { get; }
    /// <summary>Number of evaluations recorded so far (= Plan.Evaluations once complete).</summary>
    public int Recorded { get; internal set; }

    SourceTrajectory(TrajectoryPlan plan, Tensor latents, Tensor? shifts)
    {
        Plan = plan;
        Latents = latents;
        Shifts = shifts;
    }

    /// <summary>Allocates an empty trajectory for <paramref name="plan"/> on <paramref name="device"/>.</summary>
    public static SourceTrajectory Allocate(TrajectoryPlan plan, Device device)
    {
        long[] shape = [plan.Evaluations, .. plan.LatentShape[1..]];
        var t = new SourceTrajectory(plan, zeros(shape, ScalarType.Float32, device).DetachFromDisposeScope(),
                                     plan.Shifted ? zeros(shape, ScalarType.Float32, device).DetachFromDisposeScope() : null);
        foreach (var r in plan.Layers)
        {
            var data = empty([plan.Evaluations, .. r.StepShape], plan.Storage, device).DetachFromDisposeScope();
            var keys = r.KeyShape(plan.Evaluations) is { } ks ? empty(ks, plan.Storage, device).DetachFromDisposeScope() : null;
            t._layers[r.Call.Layer.Path] = (r, data, keys);
        }
        return t;
    }

    /// <summary>Builds a trajectory from stored tensors (a cache file), checking every shape against the plan; it takes ownership of what <paramref name="read"/> returns.</summary>
    public static SourceTrajectory FromTensors(TrajectoryPlan plan, Func<string, Tensor> read, Device device)
    {
        Tensor Checked(string name, long[] shape)
        {
            var t = read(name);
            if (!t.shape.SequenceEqual(shape) || t.dtype != (name is "latents" or "shifts" ? ScalarType.Float32 : plan.Storage))
            {
                var got = $"[{string.Join(",", t.shape)}] {t.dtype}";
                t.Dispose();
                throw new InvalidDataException($"tensor {name} is {got}, expected [{string.Join(",", shape)}]");
            }
            var moved = t.to(device);
            if (!ReferenceEquals(moved, t)) t.Dispose();
            return moved.DetachFromDisposeScope();
        }
        long[] latents = [plan.Evaluations, .. plan.LatentShape[1..]];
        var result = new SourceTrajectory(plan, Checked("latents", latents), plan.Shifted ? Checked("shifts", latents) : null);
        try
        {
            foreach (var r in plan.Layers)
            {
                var data = Checked(TensorName(r, false), [plan.Evaluations, .. r.StepShape]);
                var keys = r.KeyShape(plan.Evaluations) is { } ks ? Checked(TensorName(r, true), ks) : null;
                result._layers[r.Call.Layer.Path] = (r, data, keys);
            }
        }
        catch
        {
            result.Dispose();
            throw;
        }
        result.Recorded = plan.Evaluations;
        return result;
    }

    static string TensorName(RecordedLayer r, bool keys) =>
        $"{r.Call.Layer.Path}.{(keys ? "keys" : r.Kind == SourceRecordKind.Maps ? "maps" : "queries")}";

    /// <summary>Every tensor by the name it is stored under in a cache file.</summary>
    public IEnumerable<(string Name, Tensor Tensor)> Tensors()
    {
        yield return ("latents", Latents);
        if (Shifts is not null) yield return ("shifts", Shifts);
        foreach (var (r, data, keys) in _layers.Values)
        {
            yield return (TensorName(r, false), data);
            if (keys is not null) yield return (TensorName(r, true), keys);
        }
    }

    public bool Has(AttentionLayer layer) => _layers.ContainsKey(layer.Path);

    internal (RecordedLayer Record, Tensor Data, Tensor? Keys) Entry(AttentionLayer layer) => _layers[layer.Path];

    /// <summary>The source's conditional attention probabilities of one layer at one evaluation, [heads, q, k] in <paramref name="dtype"/>.</summary>
    public Tensor Maps(int step, AttentionLayer layer, ScalarType dtype)
    {
        if (!_layers.TryGetValue(layer.Path, out var e))
            throw new UserError($"The cached source has no maps of {layer.Path} (self-attention is kept up to {Plan.SelfMaxPixels} queries). " +
                                "Open the session with a larger self-attention limit for this view.");
        if (step >= Recorded) throw new InvalidOperationException($"Evaluation {step} of the source was not recorded.");
        if (e.Record.Kind == SourceRecordKind.Maps) return e.Data[step].to(dtype);
        var q = e.Data[step].unsqueeze(0).to(dtype);
        var k = (e.Record.Kind == SourceRecordKind.Queries ? e.Keys![0] : e.Keys![step]).unsqueeze(0).to(dtype);
        return Models.Attention.Probabilities(q, k, e.Record.Call.Layer.Upcast);
    }

    /// <summary>
    /// Runs the recorded source through <paramref name="store"/> (a controller of one prompt) as if it were
    /// generated again: each evaluation's layers in call order, then the step end. Gives the source's attention
    /// views without running the UNet.
    /// </summary>
    public void Replay(AttentionController store)
    {
        if (store.PromptCount != 1) throw new ArgumentException("Replay feeds a controller of one prompt.");
        var order = Plan.Layers.Select(r => r.Call).ToList();
        for (int i = 0; i < Recorded; i++)
        {
            using var scope = NewDisposeScope();
            store.OnStepStart(i, Plan.Evaluations);
            foreach (var call in order)
                if (store.Needs(call))
                    store.Edit(call, Maps(i, call.Layer, ScalarType.Float32));
            store.OnStepEnd(i, Latents[i..(i + 1)]);
        }
    }

    public void Dispose()
    {
        Latents.Dispose();
        Shifts?.Dispose();
        foreach (var (_, data, keys) in _layers.Values)
        {
            data.Dispose();
            keys?.Dispose();
        }
        _layers.Clear();
    }
}
