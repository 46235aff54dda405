using System.Globalization;
using PromptToPrompt.Control;
using PromptToPrompt.Imaging;
using PromptToPrompt.Pipelines;

namespace PromptToPrompt.Editing;

/// <summary>An edit parameter a sweep varies.</summary>
public enum SweepParameter { CrossReplace, SelfReplace, Reweight, BlendThreshold }

/// <summary>One axis of a sweep: a parameter (for re-weighting, of one word) and its values.</summary>
public sealed record SweepAxis(SweepParameter Parameter, IReadOnlyList<double> Values, string? Word = null)
{
    public string Name => Parameter switch
    {
        SweepParameter.CrossReplace => "cross_replace",
        SweepParameter.SelfReplace => "self_replace",
        SweepParameter.Reweight => $"reweight {Word}",
        _ => "blend_threshold",
    };

    public string Label(double value) => $"{Name} {value.ToString("0.###", CultureInfo.InvariantCulture)}";

    /// <summary>Refuses values outside the parameter's range, naming it.</summary>
    public SweepAxis Validated()
    {
        if (Values.Count == 0) throw new UserError($"The {Name} sweep has no values.");
        var (low, high) = Parameter == SweepParameter.Reweight ? (-10.0, 10.0) : (0.0, 1.0);
        foreach (var v in Values)
            if (!(v >= low && v <= high))
                throw new UserError($"The {Name} sweep value {v.ToString(CultureInfo.InvariantCulture)} is outside [{low}, {high}]" +
                                    (Parameter == SweepParameter.Reweight ? " (a word's attention scale; -2..5 is typical)." : " (a fraction of the steps or of the mask's maximum)."));
        if (Values.Distinct().Count() != Values.Count) throw new UserError($"The {Name} sweep repeats a value.");
        return this;
    }

    /// <summary>The edit with this axis set to <paramref name="value"/>.</summary>
    public EditDescription Apply(EditDescription edit, double value, IReadOnlyList<string> prompts) => Parameter switch
    {
        SweepParameter.CrossReplace => WithBase(edit, e => e with { CrossReplaceSteps = new CrossReplaceSteps(StepWindow.Until(value), e.CrossReplaceSteps.PerWord) }),
        SweepParameter.SelfReplace => WithBase(edit, e => e with { SelfReplaceSteps = StepWindow.Until(value) }),
        SweepParameter.BlendThreshold => edit.LocalBlend is { } lb
            ? edit with { LocalBlend = lb with { Threshold = value } }
            : throw new UserError("A blend_threshold sweep needs a local blend: give --blend \"words of source;words of target\"."),
        _ => Reweighted(edit, value, prompts),
    };

    static EditDescription WithBase(EditDescription e, Func<EditDescription, EditDescription> change)
    {
        var changed = change(e);
        return changed.Base is { } b ? changed with { Base = change(b) } : changed;
    }

    EditDescription Reweighted(EditDescription edit, double value, IReadOnlyList<string> prompts)
    {
        if (edit.Edit == EditKind.Reweight)
        {
            var eq = (edit.Equalizer ?? []).Where(e => e.Word != Word).Append((Word!, value)).ToList();
            return edit with { Equalizer = eq };
        }
        // Re-weighting on top of the swap or refinement the prompts call for (the reference's prev_controller).
        bool identical = prompts.Skip(1).All(p => p == prompts[0]);
        return edit with
        {
            Edit = EditKind.Reweight, Equalizer = [(Word!, value)], LocalBlend = edit.LocalBlend,
            Base = identical ? null : edit with { LocalBlend = null },
        };
    }
}

/// <summary>One cell of a sweep: its position, its labels and its edit.</summary>
public sealed record SweepCell(int Row, int Column, string Label, EditRequest Request);

/// <summary>
/// A grid of edits of one source and one target over one or two parameters (the paper's figures of cross- and
/// self-attention fractions, re-weighting strengths, blend thresholds). Cells run through the session's cache.
/// </summary>
public sealed record Sweep(string Target, EditDescription Edit, IReadOnlyList<SweepAxis> Axes)
{
    /// <summary>
    /// A sweep from the options a user gives: every axis is checked; an axis with one value fixes that parameter in
    /// the edit every cell starts from; one or two axes with several values are swept.
    /// </summary>
    public static Sweep Create(string source, string target, EditDescription edit, IReadOnlyList<SweepAxis> axes)
    {
        foreach (var a in axes.Where(a => a.Values.Count == 1)) a.Validated(); // the swept ones are checked by Cells
        var swept = axes.Where(a => a.Values.Count > 1).ToList();
        if (swept.Count is < 1 or > 2)
            throw new UserError($"A sweep varies one or two of --cross-replace, --self-replace, --reweight, --blend-threshold (comma-separated values); got {swept.Count}.");
        foreach (var a in axes.Where(a => a.Values.Count == 1)) edit = a.Apply(edit, a.Values[0], [source, target]);
        return new Sweep(target, edit, swept);
    }

    public SweepAxis? Rows => Axes.Count == 2 ? Axes[0] : null;
    public SweepAxis ColumnsAxis => Axes[^1];

    public IReadOnlyList<SweepCell> Cells(string sourcePrompt)
    {
        if (Axes.Count is < 1 or > 2) throw new UserError($"A sweep varies one or two parameters; got {Axes.Count}. Give a list of values to one or two of the sweep options.");
        foreach (var a in Axes) a.Validated();
        IReadOnlyList<string> prompts = [sourcePrompt, Target];
        var rowValues = Rows?.Values ?? [double.NaN];
        var cells = new List<SweepCell>();
        for (int r = 0; r < rowValues.Count; r++)
            for (int c = 0; c < ColumnsAxis.Values.Count; c++)
            {
                var edit = Edit;
                var labels = new List<string>();
                if (Rows is { } rows)
                {
                    edit = rows.Apply(edit, rowValues[r], prompts);
                    labels.Add(rows.Label(rowValues[r]));
                }
                edit = ColumnsAxis.Apply(edit, ColumnsAxis.Values[c], prompts);
                labels.Add(ColumnsAxis.Label(ColumnsAxis.Values[c]));
                cells.Add(new SweepCell(r, c, string.Join(", ", labels), new EditRequest([Target], edit)));
            }
        return cells;
    }

    /// <summary>File name of a cell's image, from its values: <c>cross_replace_0.4__self_replace_0.2.png</c>.</summary>
    public static string FileName(SweepCell cell) =>
        cell.Label.Replace(", ", "__").Replace(' ', '_') + ".png";

    /// <summary>The files of a sweep in its folder: one per cell (<see cref="FileName"/>), then <c>source.png</c> and <c>grid.png</c>.</summary>
    public static IReadOnlyList<string> FileNames(IReadOnlyList<SweepCell> cells) => [.. cells.Select(FileName), "source.png", "grid.png"];

    /// <summary>
    /// Writes <see cref="FileNames"/> into <paramref name="folder"/> (atomically): every cell's image with its full spec
    /// and its label (<c>sweep_cell</c>), the source, and the grid. <paramref name="results"/> are the cells' edits in order.
    /// </summary>
    public IReadOnlyList<string> Save(string folder, string sourcePrompt, IReadOnlyList<SweepCell> cells, IReadOnlyList<EditResult> results)
    {
        var paths = FileNames(cells).Select(n => Path.Combine(folder, n)).ToList();
        var source = results[0].Images[0];
        for (int i = 0; i < cells.Count; i++)
            Png.Save(paths[i], results[i].Images[1], new Dictionary<string, string>(results[i].Metadata)
            {
                ["prompt"] = Target, ["role"] = "target", ["sweep_cell"] = cells[i].Label,
            });
        Png.Save(paths[^2], source, new Dictionary<string, string>(results[0].Metadata) { ["prompt"] = sourcePrompt, ["role"] = "source" });
        Png.Save(paths[^1], Grid(source, sourcePrompt, cells, results.Select(x => x.Images[1]).ToList()), new Dictionary<string, string>
        {
            ["parameters"] = results[0].Metadata["parameters"],
            ["sweep"] = string.Join("; ", Axes.Select(a => $"{a.Name}: {string.Join(",", a.Values.Select(v => v.ToString(CultureInfo.InvariantCulture)))}")),
        });
        return paths;
    }

    /// <summary>
    /// The labelled grid: one row per row value, one column per column value, each cell captioned with its values;
    /// the first column holds the source (top) and the rows' titles.
    /// </summary>
    public RgbImage Grid(RgbImage source, string sourcePrompt, IReadOnlyList<SweepCell> cells, IReadOnlyList<RgbImage> images)
    {
        int columns = ColumnsAxis.Values.Count + 1;
        // Enlarge small images here (as the grid would), so that the row titles are drawn at the final size.
        int factor = Math.Max(1, (int)Math.Ceiling(192.0 / source.Width));
        RgbImage Big(RgbImage i) => factor == 1 ? i : i.Resize(i.Width * factor, i.Height * factor);
        source = Big(source);
        var pictures = new List<RgbImage>();
        var captions = new List<string>();
        int rows = Rows?.Values.Count ?? 1;
        for (int r = 0; r < rows; r++)
        {
            if (r == 0)
            {
                pictures.Add(source);
                captions.Add($"source: {sourcePrompt}");
            }
            else
            {
                pictures.Add(Title(Rows!.Label(Rows.Values[r]), source.Width, source.Height));
                captions.Add("");
            }
            for (int c = 0; c < ColumnsAxis.Values.Count; c++)
            {
                int k = r * ColumnsAxis.Values.Count + c;
                pictures.Add(Big(images[k]));
                captions.Add(cells[k].Label);
            }
        }
        return Imaging.Grid.WithCaptions(pictures, captions, columns);
    }

    /// <summary>A white picture with a title in its middle (a row's title in the grid).</summary>
    static RgbImage Title(string text, int width, int height)
    {
        var image = new RgbImage(width, height, Enumerable.Repeat((byte)255, width * height * 3).ToArray());
        var lines = BitmapFont.Wrap(text, Math.Max(1, width / BitmapFont.CellWidth));
        for (int l = 0; l < lines.Count; l++)
            BitmapFont.Draw(image, lines[l], Math.Max(0, (width - lines[l].Length * BitmapFont.CellWidth) / 2),
                Math.Max(0, height / 2 - lines.Count * BitmapFont.CellHeight / 2 + l * BitmapFont.CellHeight), (0, 0, 0));
        return image;
    }
}
