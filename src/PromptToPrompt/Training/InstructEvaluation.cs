using System.Diagnostics;
using PromptToPrompt.Control;
using PromptToPrompt.Datasets;
using PromptToPrompt.Editing;
using PromptToPrompt.Imaging;
using PromptToPrompt.Pipelines;
using RecolourSample = (bool Colour, double IoU, bool OtherObject, int Objects);

namespace PromptToPrompt.Training;

/// <summary>
/// One method on one instruction kind: share of edits the shapes filter passes (instructed change, other objects and
/// background kept; <see cref="ShapesPairFilter"/>), its mean measures, and seconds per edit (inversion included).
/// </summary>
public sealed record InstructMethodReport(int Samples, double Passed, double Instructed, double KeptIoU, double BackgroundChange, double Seconds);

/// <summary>
/// Recolourings measured against the drawn object (<see cref="InstructEvaluation.RecolourMeasures"/>): the share with the
/// new colour where the object is, the mean IoU of the new colour's mask with the drawn mask, the share with both (IoU ≥ 0.8),
/// and the share in which another object took the new colour (the instruction bound to the wrong object); the share with
/// both also on the one-object and the two-object scenes alone (half the scenes each; NaN where there are none).
/// </summary>
public sealed record RecolourReport(double NewColour, double MaskIoU, double Both, double OtherObject, double BothOneObject, double BothTwoObjects);

public sealed record InstructReport(IReadOnlyDictionary<string, (InstructMethodReport Instruct, InstructMethodReport? PromptToPrompt)> Kinds,
    RecolourReport Recolour, RecolourReport? RecolourPromptToPrompt)
{
    public const double RecolourIoU = 0.8;

    public string ToTable()
    {
        var lines = new List<string>
        {
            $"{"instruction kind",-12} {"method",-18} {"n",3} {"passed",7} {"instructed",10} {"kept IoU",8} {"bg change",9} {"s/edit",6}",
        };
        string Row(string kind, string method, InstructMethodReport r) =>
            $"{kind,-12} {method,-18} {r.Samples,3} {r.Passed,7:P0} {r.Instructed,10:0.000} {r.KeptIoU,8:0.000} {r.BackgroundChange,9:0.0} {r.Seconds,6:0.00}";
        foreach (var (kind, (instruct, p2p)) in Kinds)
        {
            lines.Add(Row(kind, "InstructPix2Pix", instruct));
            if (p2p is not null) lines.Add(Row("", "P2P + null-text", p2p));
        }
        lines.Add($"recolouring, against the drawn object   new colour   mask IoU   both (IoU >= {RecolourIoU})   1 / 2 objects   other object recoloured");
        string Recolouring(string method, RecolourReport r) =>
            $"  {method,-37} {r.NewColour,10:P0}   {r.MaskIoU,8:0.000}   {r.Both,17:P0}   {$"{Share(r.BothOneObject)} / {Share(r.BothTwoObjects)}",13}   {r.OtherObject,23:P0}";
        static string Share(double v) => double.IsNaN(v) ? "–" : v.ToString("P0");
        lines.Add(Recolouring("InstructPix2Pix", Recolour));
        if (RecolourPromptToPrompt is { } r) lines.Add(Recolouring("P2P + null-text", r));
        return string.Join("\n", lines);
    }
}

/// <summary>
/// <c>p2p eval-instruct</c>: scenes drawn by <see cref="Scenes"/> (never by a model), an instruction of every kind of
/// the dataset grammar (<see cref="ShapeTriplets.Apply"/>) for each, edited by the instruction model and — side by side,
/// on the same scenes — by Prompt-to-Prompt on the text-to-image model after null-text inversion (word swap when the
/// captions have the same number of words, with a local blend on the shape for a recolouring; refinement otherwise).
/// Each edit is judged by the dataset's shapes filter; recolourings also against the drawn object's mask.
/// </summary>
public sealed class InstructEvaluation(InstructPix2PixPipeline instruct, StableDiffusionPipeline? promptToPrompt, int steps = 20, double guidance = 7.5,
    double imageGuidance = 1.5, string? scheduler = null, double crossReplace = 0.8, double selfReplace = 0.4, double blendThreshold = 0.3)
{
    /// <param name="samples">Scenes per instruction kind for the instruction model.</param>
    /// <param name="promptToPromptSamples">The first that many of them also edited by Prompt-to-Prompt (0: none).</param>
    /// <param name="showEdit">Receives each sample: its name, captions and the images scene, instruction edit (and Prompt-to-Prompt edit).</param>
    public InstructReport Run(int samples, int promptToPromptSamples, long seed, IProgress<string>? progress = null,
        Action<string, string[], RgbImage[]>? showEdit = null)
    {
        var scenes = new Scenes(instruct.Model.DefaultImageSize);
        var kinds = new Dictionary<string, (InstructMethodReport, InstructMethodReport?)>();
        var recolour = new List<RecolourSample>[] { [], [] };
        int p2pSamples = promptToPrompt is null ? 0 : Math.Min(samples, promptToPromptSamples);
        for (int k = 0; k < ShapeTriplets.Kinds.Length; k++)
        {
            var kind = ShapeTriplets.Kinds[k];
            var scores = new List<(PairScore Score, double Seconds)>[] { [], [] };
            for (int i = 0; i < samples; i++)
            {
                var scene = DrawScene(scenes, seed, k, i, kind == "remove" ? 2 : 1 + i % 2);
                var objects = scene.Objects.Select(o => (o.Shape, o.Colour, o.SizeWord)).ToList();
                var rng = new Random(Scenes.StableSeed(seed + 31 * k, i));
                var (instruction, edited, background, striped) = ShapeTriplets.Apply(kind, objects, scene.Background, scene.Striped, rng);
                var caption = Scenes.Caption(objects, scene.Background, scene.Striped);
                var target = Scenes.Caption(edited, background, striped);
                var triplet = new Triplet(caption, instruction, target, TripletFile.ToJson(caption, instruction, target));

                var clock = Stopwatch.StartNew();
                using var result = instruct.Edit(new InstructRequest
                {
                    Image = scene.Image, Instruction = instruction, Steps = steps, GuidanceScale = guidance, ImageGuidanceScale = imageGuidance,
                    Scheduler = scheduler, Seed = Scenes.StableSeed(seed, 1000 * k + i),
                });
                scores[0].Add((ShapesPairFilter.Score(triplet, scene.Image, result.Image), clock.Elapsed.TotalSeconds));
                var images = new List<RgbImage> { scene.Image, result.Image };
                if (i < p2pSamples)
                {
                    clock.Restart();
                    var p2pEdit = PromptToPromptEdit(scene, caption, target, kind == "colour" ? objects[Changed(objects, edited)].Shape : null);
                    scores[1].Add((ShapesPairFilter.Score(triplet, scene.Image, p2pEdit), clock.Elapsed.TotalSeconds));
                    images.Add(p2pEdit);
                }
                if (kind == "colour")
                {
                    int changed = Changed(objects, edited);
                    for (int m = 0; m < images.Count - 1; m++)
                    {
                        var (colour, iou, other) = RecolourMeasures(scene, changed, edited[changed].Colour, images[m + 1]);
                        recolour[m].Add((colour, iou, other, objects.Count));
                    }
                }
                showEdit?.Invoke($"{kind}_{i:000}", [caption, $"\"{instruction}\"", .. images.Count > 2 ? new[] { $"P2P: {target}" } : []], [.. images]);
                progress?.Report($"{kind} {i + 1}/{samples}");
            }
            kinds[kind] = (Summary(scores[0]), scores[1].Count > 0 ? Summary(scores[1]) : null);
        }
        static double Both(IEnumerable<RecolourSample> r) =>
            r.Any() ? r.Average(x => x.Colour && x.IoU >= InstructReport.RecolourIoU ? 1.0 : 0) : double.NaN;
        RecolourReport Recolour(List<RecolourSample> r) => new(r.Average(x => x.Colour ? 1.0 : 0),
            r.Average(x => x.IoU), Both(r), r.Average(x => x.OtherObject ? 1.0 : 0), Both(r.Where(x => x.Objects == 1)), Both(r.Where(x => x.Objects == 2)));
        return new InstructReport(kinds, Recolour(recolour[0]), recolour[1].Count > 0 ? Recolour(recolour[1]) : null);
    }

    static InstructMethodReport Summary(List<(PairScore Score, double Seconds)> s) => new(s.Count,
        s.Average(x => x.Score.Keep ? 1.0 : 0), s.Average(x => x.Score.Measures["instructed"]), s.Average(x => x.Score.Measures["kept_iou"]),
        s.Average(x => x.Score.Measures["background_change"]), s.Average(x => x.Seconds));

    /// <summary>
    /// A recolouring of object <paramref name="changed"/> of a drawn scene to <paramref name="colour"/>: whether the
    /// palette colour nearest the mean of the edit's pixels in the drawn mask is the new colour, and the IoU with the
    /// drawn mask of the edit's pixels nearest to the new colour among the scene's colours (background, the objects'
    /// colours before and after), pixels of another object of that colour left out; and whether another object, drawn
    /// in another colour, took the new colour (the same nearest-palette test on its drawn mask). The drawn scene
    /// recoloured scores (true, 1, false).
    /// </summary>
    public static (bool Colour, double IoU, bool OtherObject) RecolourMeasures(Scene scene, int changed, string colour, RgbImage edit)
    {
        var drawn = scene.Objects[changed].Mask;
        var mask = ShapesEvaluation.ObjectMask(edit, scene.Background, colour, scene.Objects.Select(o => o.Colour));
        foreach (var other in scene.Objects.Where((o, j) => j != changed && o.Colour == colour))
            for (int p = 0; p < mask.Length; p++) mask[p] &= !other.Mask[p];
        bool otherObject = scene.Objects.Where((o, j) => j != changed && o.Colour != colour).Any(o => ShapesEvaluation.MaskColour(edit, o.Mask) == colour);
        return (ShapesEvaluation.MaskColour(edit, drawn) == colour, ShapesEvaluation.IoU(mask, drawn), otherObject);
    }

    /// <summary>The index of the object an edit changed (a recolouring changes exactly one).</summary>
    static int Changed(List<(string Shape, string Colour, string SizeWord)> before, List<(string Shape, string Colour, string SizeWord)> after) =>
        Enumerable.Range(0, before.Count).First(j => before[j] != after[j]);

    /// <summary>A scene of <paramref name="count"/> objects of different shapes (so that "the circle" names one object).</summary>
    static Scene DrawScene(Scenes scenes, long seed, int kind, int index, int count)
    {
        for (int attempt = 0; ; attempt++)
        {
            var scene = scenes.Generate(seed + 900 + kind, index + 100_000L * attempt, count);
            if (scene.Objects.Select(o => o.Shape).Distinct().Count() == count) return scene;
        }
    }

    RgbImage PromptToPromptEdit(Scene scene, string caption, string target, string? blendWord)
    {
        var pipeline = promptToPrompt!;
        using var inverted = new InvertedImageSession(pipeline.Model, scene.Image, caption, new InversionSettings(InversionMethod.NullText, steps, 10, guidance), "evaluation");
        var session = inverted.Session;
        bool sameLength = caption.Split(' ').Length == target.Split(' ').Length;
        using var edit = session.Edit(new EditRequest([target], new EditDescription
        {
            Edit = sameLength ? EditKind.Replace : EditKind.Refine, CrossReplaceSteps = crossReplace, SelfReplaceSteps = StepWindow.Until(selfReplace),
            LocalBlend = blendWord is null ? null : new LocalBlendOptions([[blendWord], [blendWord]], blendThreshold),
        }));
        return edit.Images[1];
    }
}
