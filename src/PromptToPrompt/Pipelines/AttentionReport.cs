using System.Text.Json;
using PromptToPrompt.Control;
using PromptToPrompt.Imaging;
using PromptToPrompt.Loading;
using PromptToPrompt.Models;
using PromptToPrompt.Text;
using TorchSharp;
using static TorchSharp.torch;

namespace PromptToPrompt.Pipelines;

/// <summary>What to show of a run's attention.</summary>
/// <param name="Resolution">
/// R: maps are aggregated over the layers whose query grid has R on its shorter side (an R x R grid for square
/// images; the reference uses 16 at 512x512). Null: the coarsest grid with cross-attention in the chosen places
/// outside the middle block, the one local blending uses (16x16 for SD at 512x512).
/// </param>
/// <param name="From">Places of the UNet whose layers are aggregated (reference: up, down).</param>
/// <param name="PerStep">UNet evaluations to show one by one (kept as float16 snapshots).</param>
/// <param name="PerLayer">Also show each cross-attention layer, averaged over steps (stores all resolutions).</param>
/// <param name="SelfComponents">Number of principal components of the averaged self-attention at R (0 = none).</param>
/// <param name="CellSize">Pixel size of the longer side of each map in the grids (the shorter follows the image's aspect).</param>
/// <param name="FullPrecision">Keep per-step snapshots in float32 rather than float16.</param>
/// <param name="Grid">The query grid the views aggregate, set by <see cref="ForRun"/> from the model and the image size.</param>
public sealed record AttentionViewOptions(
    int? Resolution = null, IReadOnlyList<UNetPlace>? From = null, IReadOnlyList<int>? PerStep = null,
    bool PerLayer = false, int SelfComponents = 0, int CellSize = 256, bool FullPrecision = false, (int Height, int Width)? Grid = null)
{
    public IReadOnlyList<UNetPlace> Places => From ?? [UNetPlace.Up, UNetPlace.Down];

    /// <summary>The resolved grid (see <see cref="ForRun"/>).</summary>
    public (int Height, int Width) GridSize => Grid ?? throw new InvalidOperationException("Call ForRun first: the grid depends on the model and the image size.");

    public static IReadOnlyList<UNetPlace> ParsePlaces(string text) => text.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
        .Select(p => p.ToLowerInvariant() switch
        {
            "down" => UNetPlace.Down, "mid" => UNetPlace.Mid, "up" => UNetPlace.Up,
            _ => throw new UserError($"Unknown UNet place '{p}'. Use down, mid and/or up, e.g. --from up,down."),
        }).ToList();

    /// <summary>What a store must keep for these views.</summary>
    public StoreSettings StoreSettings => new(
        CrossMaxPixels: PerLayer ? int.MaxValue : Math.Max(32 * 32, GridSize.Height * GridSize.Width),
        SelfMaxPixels: SelfComponents > 0 ? GridSize.Height * GridSize.Width : 0,
        KeepSteps: PerStep?.ToHashSet(),
        SnapshotType: FullPrecision ? ScalarType.Float32 : ScalarType.Float16);

    /// <summary>
    /// Checks the options against a run before it starts (images of <paramref name="width"/> x <paramref name="height"/>
    /// pixels, <paramref name="evaluations"/> UNet evaluations) and resolves <see cref="Grid"/>.
    /// </summary>
    public AttentionViewOptions ForRun(StableDiffusionModel model, int width, int height, int evaluations)
    {
        if (Resolution < 1) throw new UserError($"--res must be positive; got {Resolution}.");
        if (SelfComponents < 0) throw new UserError($"--self-components must be 0 or more; got {SelfComponents}.");
        foreach (var s in PerStep ?? [])
            if (s < 0 || s >= evaluations)
                throw new UserError($"--per-step {s} is outside this run's UNet evaluations 0..{evaluations - 1}.");
        var unet = model.UNet;
        var layers = unet.AttentionLayers.Where(l => l.IsCross && Places.Contains(l.Place)).ToList();
        var places = string.Join(", ", Places.Select(p => p.ToString().ToLowerInvariant()));
        if (layers.Count == 0) throw new UserError($"The UNet has no cross-attention layers in {places}. Choose other places with --from.");
        (int Height, int Width) GridOf(AttentionLayer l) => unet.QueryGrid(l, height / model.VaeScale, width / model.VaeScale);
        var grids = layers.Select(GridOf).Distinct().OrderByDescending(g => g.Height * g.Width).ToList();
        if (Resolution is not int r)
        {
            var outer = layers.Where(l => l.Place != UNetPlace.Mid).Select(GridOf).ToList();
            return this with { Grid = (outer.Count > 0 ? outer : grids).MinBy(g => g.Height * g.Width) };
        }
        var match = grids.Where(g => Math.Min(g.Height, g.Width) == r).ToList();
        if (match.Count == 0)
            throw new UserError($"--res {r}: no cross-attention layer in {places} has a query grid with {r} on its shorter side at {width}x{height} pixels. " +
                                $"Use one of: {string.Join(", ", grids.Select(g => $"--res {Math.Min(g.Height, g.Width)} ({g.Height}x{g.Width})"))}.");
        return this with { Grid = match[0] };
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
        var (cellWidth, cellHeight) = CellOf(maps.shape[0], maps.shape[1], cellSize);
        var back = background?.Resize(cellWidth, cellHeight);
        var cells = labels.Select((_, i) =>
        {
            using var map = maps[.., .., i];
            return back is null ? HeatMap.Render(map, cellWidth, cellHeight) : HeatMap.Overlay(back, map);
        }).ToList();
        return Grid.WithCaptions(cells, labels, columns: Math.Min(labels.Count, 8), minCellWidth: 0);
    }

    /// <summary>A cell of <paramref name="size"/> pixels on its longer side with the aspect of an h x w map.</summary>
    static (int Width, int Height) CellOf(long h, long w, int size) =>
        w >= h ? (size, (int)Math.Max(1, Math.Round((double)size * h / w))) : ((int)Math.Max(1, Math.Round((double)size * w / h)), size);

    /// <summary>The images of the views for prompt <paramref name="select"/>, by file name.</summary>
    public static Dictionary<string, RgbImage> Images(AttentionStore store, ClipTokenizer tokenizer, string prompt, int select,
                                                      RgbImage? generated, AttentionViewOptions o, string prefix = "")
    {
        var labels = TokenLabels(tokenizer, prompt);
        var (h, w) = o.GridSize;
        var images = new Dictionary<string, RgbImage>();
        using (var avg = store.Aggregate(h, w, o.Places, cross: true, select))
            images[$"{prefix}tokens.png"] = TokenGrid(avg, labels, generated, o.CellSize);
        foreach (var step in o.PerStep ?? [])
            using (var maps = store.Aggregate(h, w, o.Places, cross: true, select, [step]))
                images[$"{prefix}step_{step:D3}.png"] = TokenGrid(maps, labels, generated, o.CellSize);
        if (o.PerLayer)
            foreach (var layer in store.Layers.Where(l => l.IsCross))
                using (var maps = store.LayerMaps(layer, select))
                    images[$"{prefix}layer_{store.LayerName(layer)}.png"] = TokenGrid(maps, labels, generated, o.CellSize);
        if (o.SelfComponents > 0)
        {
            var (components, values) = store.SelfAttentionComponents(h, w, o.Places, select, o.SelfComponents);
            using (components) using (values)
            {
                var s = values.data<float>().ToArray();
                var (cellWidth, cellHeight) = CellOf(h, w, o.CellSize);
                var cells = Enumerable.Range(0, (int)components.shape[0]).Select(i => HeatMap.Grey(components[i], cellWidth, cellHeight)).ToList();
                images[$"{prefix}self_components.png"] = Grid.WithCaptions(cells, s.Select((v, i) => $"component {i} (s={v:G3})").ToList(), columns: Math.Min(cells.Count, 5), minCellWidth: 0);
            }
        }
        return images;
    }

    /// <summary>
    /// The raw maps of prompt <paramref name="select"/> as tensors (token-major), on the grid H x W of the options:
    /// <c>cross_avg</c> [L, H, W]; <c>cross_step_NNN</c> [L, H, W]; <c>cross_layer_NAME</c> [L, h, w] (the layer's
    /// own grid); <c>self_components</c> [K, H, W] and
    /// <c>self_singular_values</c> [K]; plus a metadata description of each.
    /// </summary>
    public static (Dictionary<string, Tensor> Tensors, Dictionary<string, string> Metadata) Tensors(
        AttentionStore store, ClipTokenizer tokenizer, string prompt, int select, AttentionViewOptions o)
    {
        var (h, w) = o.GridSize;
        var places = string.Join(",", o.Places.Select(p => p.ToString().ToLowerInvariant()));
        var tensors = new Dictionary<string, Tensor>();
        var about = new Dictionary<string, string>();
        tensors["cross_avg"] = store.Aggregate(h, w, o.Places, true, select).permute(2, 0, 1).contiguous();
        about["cross_avg"] = $"[tokens, {h}, {w}]: cross-attention of each token, averaged over all steps, heads and the {h}x{w} layers of {places} (the reference's aggregate_attention, token-major)";
        foreach (var step in o.PerStep ?? [])
        {
            tensors[$"cross_step_{step:D3}"] = store.Aggregate(h, w, o.Places, true, select, [step]).permute(2, 0, 1).contiguous();
            about[$"cross_step_{step:D3}"] = $"[tokens, {h}, {w}]: as cross_avg, at UNet evaluation {step} only (kept in {(o.FullPrecision ? "float32" : "float16")})";
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
            var (components, values) = store.SelfAttentionComponents(h, w, o.Places, select, o.SelfComponents);
            tensors["self_components"] = components;
            tensors["self_singular_values"] = values;
            about["self_components"] = $"[K, {h}, {w}]: top right singular vectors of the row-centred, step-averaged {h}x{w} self-attention of {places}";
            about["self_singular_values"] = "[K]: their singular values, descending";
        }
        var metadata = new Dictionary<string, string>
        {
            ["prompt"] = prompt,
            ["tokens"] = JsonSerializer.Serialize(TokenLabels(tokenizer, prompt)),
            ["resolution"] = $"{h}x{w}",
            ["from"] = places,
            ["steps_accumulated"] = store.StepCount.ToString(),
            ["tensors"] = JsonSerializer.Serialize(about),
        };
        return (tensors, metadata);
    }
}
