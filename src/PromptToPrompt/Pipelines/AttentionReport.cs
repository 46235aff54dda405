using System.Text.Json;
using PromptToPrompt.Control;
using PromptToPrompt.Imaging;
using PromptToPrompt.Models;
using PromptToPrompt.Text;
using TorchSharp;
using static TorchSharp.torch;

namespace PromptToPrompt.Pipelines;

/// <summary>What to show of a run's attention.</summary>
/// <param name="Resolution">R: maps are aggregated over the layers whose queries form an R x R grid (reference: 16).</param>
/// <param name="From">Places of the UNet whose layers are aggregated (reference: up, down).</param>
/// <param name="PerStep">UNet evaluations to show one by one (kept as float16 snapshots).</param>
/// <param name="PerLayer">Also show each cross-attention layer, averaged over steps (stores all resolutions).</param>
/// <param name="SelfComponents">Number of principal components of the averaged self-attention at R (0 = none).</param>
/// <param name="CellSize">Pixel size of each map in the grids.</param>
/// <param name="FullPrecision">Keep per-step snapshots in float32 rather than float16.</param>
public sealed record AttentionViewOptions(
    int Resolution = 16, IReadOnlyList<UNetPlace>? From = null, IReadOnlyList<int>? PerStep = null,
    bool PerLayer = false, int SelfComponents = 0, int CellSize = 256, bool FullPrecision = false)
{
    public IReadOnlyList<UNetPlace> Places => From ?? [UNetPlace.Up, UNetPlace.Down];

    public static IReadOnlyList<UNetPlace> ParsePlaces(string text) => text.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
        .Select(p => p.ToLowerInvariant() switch
        {
            "down" => UNetPlace.Down, "mid" => UNetPlace.Mid, "up" => UNetPlace.Up,
            _ => throw new UserError($"Unknown UNet place '{p}'. Use down, mid and/or up, e.g. --from up,down."),
        }).ToList();

    /// <summary>What a store must keep for these views.</summary>
    public StoreSettings StoreSettings => new(
        CrossMaxPixels: PerLayer ? int.MaxValue : Math.Max(32 * 32, Resolution * Resolution),
        SelfMaxPixels: SelfComponents > 0 ? Resolution * Resolution : 0,
        KeepSteps: PerStep?.ToHashSet(),
        SnapshotType: FullPrecision ? ScalarType.Float32 : ScalarType.Float16);

    /// <summary>Checks the options against the run (number of UNet evaluations).</summary>
    public void Validate(int evaluations)
    {
        if (Resolution < 1) throw new UserError($"--res must be positive; got {Resolution}.");
        if (SelfComponents < 0) throw new UserError($"--self-components must be 0 or more; got {SelfComponents}.");
        foreach (var s in PerStep ?? [])
            if (s < 0 || s >= evaluations)
                throw new UserError($"--per-step {s} is outside this run's UNet evaluations 0..{evaluations - 1}.");
    }
}

/// <summary>
/// Turns an <see cref="AttentionStore"/> into per-token heat-map grids and raw tensors: what <c>p2p attention</c> and
/// <c>p2p edit --show-attention</c> write.
/// </summary>
public static class AttentionReport
{
    /// <summary>Labels of a prompt's tokens as the reference shows them: start token, the prompt's tokens, end token.</summary>
    public static List<string> TokenLabels(ClipTokenizer tokenizer, string prompt) =>
        tokenizer.Encode(prompt).Take(tokenizer.MaxLength).Select(id => tokenizer.Decode([id])).ToList();

    /// <summary>One heat map per token of the prompt, over the generated image, labelled with the token.</summary>
    public static RgbImage TokenGrid(Tensor maps, IReadOnlyList<string> labels, RgbImage? background, int cellSize)
    {
        var back = background?.Resize(cellSize, cellSize);
        var cells = labels.Select((_, i) =>
        {
            using var map = maps[.., .., i];
            return back is null ? HeatMap.Render(map, cellSize, cellSize) : HeatMap.Overlay(back, map);
        }).ToList();
        return Grid.WithCaptions(cells, labels, columns: Math.Min(labels.Count, 8), minCellWidth: 0);
    }

    /// <summary>The images of the views for prompt <paramref name="select"/>, by file name.</summary>
    public static Dictionary<string, RgbImage> Images(AttentionStore store, ClipTokenizer tokenizer, string prompt, int select,
                                                      RgbImage? generated, AttentionViewOptions o, string prefix = "")
    {
        var labels = TokenLabels(tokenizer, prompt);
        int r = o.Resolution;
        var images = new Dictionary<string, RgbImage>();
        using (var avg = store.Aggregate(r, r, o.Places, cross: true, select))
            images[$"{prefix}tokens.png"] = TokenGrid(avg, labels, generated, o.CellSize);
        foreach (var step in o.PerStep ?? [])
            using (var maps = store.Aggregate(r, r, o.Places, cross: true, select, [step]))
                images[$"{prefix}step_{step:D3}.png"] = TokenGrid(maps, labels, generated, o.CellSize);
        if (o.PerLayer)
            foreach (var layer in store.Layers.Where(l => l.IsCross))
                using (var maps = store.LayerMaps(layer, select))
                    images[$"{prefix}layer_{store.LayerName(layer)}.png"] = TokenGrid(maps, labels, generated, o.CellSize);
        if (o.SelfComponents > 0)
        {
            var (components, values) = store.SelfAttentionComponents(r, r, o.Places, select, o.SelfComponents);
            using (components) using (values)
            {
                var s = values.data<float>().ToArray();
                var cells = Enumerable.Range(0, (int)components.shape[0]).Select(i => HeatMap.Grey(components[i], o.CellSize, o.CellSize)).ToList();
                images[$"{prefix}self_components.png"] = Grid.WithCaptions(cells, s.Select((v, i) => $"component {i} (s={v:G3})").ToList(), columns: Math.Min(cells.Count, 5), minCellWidth: 0);
            }
        }
        return images;
    }

    /// <summary>
    /// The raw maps of prompt <paramref name="select"/> as tensors (token-major): <c>cross_avg</c> [L, R, R];
    /// <c>cross_step_NNN</c> [L, R, R]; <c>cross_layer_NAME</c> [L, h, w]; <c>self_components</c> [K, R, R] and
    /// <c>self_singular_values</c> [K]; plus a metadata description of each.
    /// </summary>
    public static (Dictionary<string, Tensor> Tensors, Dictionary<string, string> Metadata) Tensors(
        AttentionStore store, ClipTokenizer tokenizer, string prompt, int select, AttentionViewOptions o)
    {
        int r = o.Resolution;
        var places = string.Join(",", o.Places.Select(p => p.ToString().ToLowerInvariant()));
        var tensors = new Dictionary<string, Tensor>();
        var about = new Dictionary<string, string>();
        tensors["cross_avg"] = store.Aggregate(r, r, o.Places, true, select).permute(2, 0, 1).contiguous();
        about["cross_avg"] = $"[tokens, {r}, {r}]: cross-attention of each token, averaged over all steps, heads and the {r}x{r} layers of {places} (the reference's aggregate_attention, token-major)";
        foreach (var step in o.PerStep ?? [])
        {
            tensors[$"cross_step_{step:D3}"] = store.Aggregate(r, r, o.Places, true, select, [step]).permute(2, 0, 1).contiguous();
            about[$"cross_step_{step:D3}"] = $"[tokens, {r}, {r}]: as cross_avg, at UNet evaluation {step} only (kept in {(o.FullPrecision ? "float32" : "float16")})";
        }
        if (o.PerLayer)
            foreach (var layer in store.Layers.Where(l => l.IsCross))
            {
                var name = $"cross_layer_{store.LayerName(layer)}";
                tensors[name] = store.LayerMaps(layer, select).permute(2, 0, 1).contiguous();
                about[name] = $"[tokens, h, w]: cross-attention of layer {layer.Path}, averaged over steps and heads";
            }
        if (o.SelfComponents > 0)
        {
            var (components, values) = store.SelfAttentionComponents(r, r, o.Places, select, o.SelfComponents);
            tensors["self_components"] = components;
            tensors["self_singular_values"] = values;
            about["self_components"] = $"[K, {r}, {r}]: top right singular vectors of the row-centred, step-averaged {r}x{r} self-attention of {places}";
            about["self_singular_values"] = "[K]: their singular values, descending";
        }
        var metadata = new Dictionary<string, string>
        {
            ["prompt"] = prompt,
            ["tokens"] = JsonSerializer.Serialize(TokenLabels(tokenizer, prompt)),
            ["resolution"] = r.ToString(),
            ["from"] = places,
            ["steps_accumulated"] = store.StepCount.ToString(),
            ["tensors"] = JsonSerializer.Serialize(about),
        };
        return (tensors, metadata);
    }
}
