using PromptToPrompt.Imaging;
using PromptToPrompt.Training;

namespace PromptToPrompt.Datasets;

/// <summary>A filter's verdict on one generated pair: keep it or not, a score to rank kept pairs, and the measures.</summary>
public sealed record PairScore(bool Keep, double Score, IReadOnlyDictionary<string, double> Measures);

/// <summary>
/// Judges a pair from the shipped model by measuring the images (the eval-shapes measures), from what the two
/// grammar captions say changed: the instructed change happened (the edited object in its new colour where the old one
/// was; the new shape or size present; an added object present, a removed one gone; the new background), the other
/// objects' colour masks kept (IoU), and the background kept (mean change away from the objects).
/// </summary>
public static class ShapesPairFilter
{
    public const double MinIoU = 0.5, MaxBackgroundChange = 40, MinArea = 0.01;

    /// <param name="minIoU">The least instructed-change measure and kept-object IoU of a pair that is kept (<c>--shapes-min-iou</c>).</param>
    public static PairScore Score(Triplet triplet, RgbImage source, RgbImage edit, double minIoU = MinIoU)
    {
        var a = Scenes.ParseCaption(triplet.Input);
        var b = Scenes.ParseCaption(triplet.Output);
        if (a is null || b is null) return new PairScore(false, 0, new Dictionary<string, double> { ["parsed"] = 0 });
        var (objectsA, bgA, stripedA) = a.Value;
        var (objectsB, bgB, stripedB) = b.Value;
        double Area(bool[] m) => (double)m.Count(x => x) / m.Length;
        // Both images measured the same way, so that the masks of one object compare: against the background and every
        // colour either caption names.
        var colours = objectsA.Concat(objectsB).Select(o => o.Colour).Distinct().ToList();
        bool[] Of(RgbImage image, string bg, string colour) => ObjectMask(image, bg, stripedA || stripedB, colour, colours);

        // Objects present in both captions unchanged: their masks must stay.
        var kept = objectsA.Where(objectsB.Contains).ToList();
        double keptIoU = kept.Count == 0 ? 1 : kept.Min(o => ShapesEvaluation.IoU(Of(source, bgA, o.Colour), Of(edit, bgB, o.Colour)));
        double instructed;
        if (bgA != bgB)
            instructed = ShapesEvaluation.IoU(ShapesEvaluation.Mask(source, bgA), ShapesEvaluation.Mask(edit, bgB));
        else
        {
            var removed = objectsA.Except(objectsB).ToList();
            var added = objectsB.Except(objectsA).ToList();
            if (removed.Count == 1 && added.Count == 1 && removed[0].Shape == added[0].Shape && removed[0].SizeWord == added[0].SizeWord)
                instructed = ShapesEvaluation.IoU(Of(source, bgA, removed[0].Colour), Of(edit, bgB, added[0].Colour)); // recoloured in place
            else if (added.Count > 0)
                instructed = added.Min(o => Math.Min(1, Area(Of(edit, bgB, o.Colour)) / MinArea / 2)); // the new object is there
            else if (removed.Count > 0)
                instructed = removed.Min(o => 1 - Math.Min(1, Area(Of(edit, bgB, o.Colour)) / Math.Max(MinArea, Area(Of(source, bgA, o.Colour)))));
            else if (stripedA != stripedB)
            {
                double stripes = StripeFraction(edit, bgB);
                instructed = stripedB ? Math.Min(1, stripes / 0.3) : Math.Max(0, 1 - stripes / 0.3);
            }
            else instructed = 0; // the captions do not differ in anything the grammar knows
        }
        double backgroundChange = bgA == bgB && stripedA == stripedB ? BackgroundChange(source, edit, bgA) : 0;
        bool keep = instructed >= minIoU && keptIoU >= minIoU && backgroundChange <= MaxBackgroundChange;
        return new PairScore(keep, instructed + keptIoU - backgroundChange / 255, new Dictionary<string, double>
        {
            ["instructed"] = Math.Round(instructed, 4), ["kept_iou"] = Math.Round(keptIoU, 4), ["background_change"] = Math.Round(backgroundChange, 3),
        });
    }

    /// <summary>
    /// The object mask of <see cref="ShapesEvaluation.ObjectMask"/>: pixels nearest to the object's colour among the
    /// background and the scene's colours. On a striped background, whose stripes the model draws in varying greys, instead the pixels whose nearest
    /// palette colour (the object colours, the background, its stripe shade and grey) is the object's.
    /// </summary>
    static bool[] ObjectMask(RgbImage image, string background, bool striped, string colour, IEnumerable<string> sceneColours)
    {
        if (!striped) return ShapesEvaluation.ObjectMask(image, background, colour, sceneColours);
        var (br, bg, bb) = Scenes.BackgroundColours[background];
        var target = Scenes.Colours[colour];
        List<(string Name, int R, int G, int B)> palette = [.. Scenes.Colours.Select(c => (c.Key, (int)c.Value.R, (int)c.Value.G, (int)c.Value.B)),
            ("(background)", br, bg, bb), ("(stripes)", br * 3 / 4, bg * 3 / 4, bb * 3 / 4), ("(grey)", 128, 128, 128)];
        palette.RemoveAll(p => p.Name != colour && (p.R, p.G, p.B) == (target.R, target.G, target.B));
        var mask = new bool[image.Width * image.Height];
        for (int i = 0; i < mask.Length; i++)
        {
            int r = image.Pixels[3 * i], g = image.Pixels[3 * i + 1], b = image.Pixels[3 * i + 2];
            mask[i] = palette.MinBy(p => (r - p.R) * (r - p.R) + (g - p.G) * (g - p.G) + (b - p.B) * (b - p.B)).Name == colour;
        }
        return mask;
    }

    /// <summary>The fraction of pixels nearer to the stripes' shade (3/4 of the background colour) than to the background.</summary>
    static double StripeFraction(RgbImage image, string background)
    {
        var (r, g, b) = Scenes.BackgroundColours[background];
        int n = 0;
        for (int i = 0; i < image.Width * image.Height; i++)
        {
            double Distance(double f) => Math.Pow(image.Pixels[3 * i] - r * f, 2) + Math.Pow(image.Pixels[3 * i + 1] - g * f, 2) + Math.Pow(image.Pixels[3 * i + 2] - b * f, 2);
            if (Distance(0.75) < Distance(1)) n++;
        }
        return (double)n / (image.Width * image.Height);
    }

    /// <summary>Mean absolute change (0..255) of the pixels that are background in both images.</summary>
    static double BackgroundChange(RgbImage a, RgbImage b, string background)
    {
        var ma = ShapesEvaluation.Mask(a, background);
        var mb = ShapesEvaluation.Mask(b, background);
        double sum = 0;
        int n = 0;
        for (int i = 0; i < ma.Length; i++)
        {
            if (ma[i] || mb[i]) continue;
            for (int c = 0; c < 3; c++) sum += Math.Abs(a.Pixels[3 * i + c] - b.Pixels[3 * i + c]);
            n += 3;
        }
        return n == 0 ? 0 : sum / n;
    }
}
