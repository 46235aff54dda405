using PromptToPrompt.Control;
using PromptToPrompt.Editing;
using PromptToPrompt.Imaging;
using PromptToPrompt.Pipelines;

namespace PromptToPrompt.Training;

/// <summary>One way of recolouring a drawn object: share of edits whose object took the new colour (the mean colour of the
/// pixels away from the background, wherever they are), mean IoU of the edited object's mask with the drawn one (where it is), mean pixel change (0..255) away from the object, seconds per edit (inversion included).</summary>
public sealed record ZeroMethodReport(double NewColour, double MaskIoU, double OutsideChange, double Seconds);

/// <summary>pix2pix-zero beside Prompt-to-Prompt after null-text inversion on the same drawn scenes.</summary>
public sealed record ZeroReport(int Samples, ZeroMethodReport Zero, ZeroMethodReport PromptToPrompt)
{
    public string ToTable() => string.Join("\n", [
        $"{$"recolouring a drawn object, {Samples} scenes",-48} {"new colour",10}   {"mask IoU",8}   {"outside",7}   {"s/edit",6}",
        .. new[] { ("pix2pix-zero (regularised DDIM inversion)", Zero), ("Prompt-to-Prompt after null-text inversion", PromptToPrompt) }
            .Select(x => $"  {x.Item1,-46} {x.Item2.NewColour,10:P0}   {x.Item2.MaskIoU,8:0.000}   {x.Item2.OutsideChange,7:0.0}   {x.Item2.Seconds,6:0.0}")]);
}

/// <summary>Measured quality of a model trained on <see cref="Scenes"/> for one set of captions.</summary>
/// <param name="ColourAccuracy">Share of single-object captions whose generated object has the caption's colour.</param>
/// <param name="SwapIoUWithInjection">Mean IoU of the object mask between source and word-swap edit, with Prompt-to-Prompt.</param>
/// <param name="SwapIoUWithoutInjection">The same for a plain regeneration of the edited prompt from the same noise.</param>
/// <param name="SwapIoUWithBlend">The same for the Prompt-to-Prompt edit with local blending on the shape word.</param>
/// <param name="SwapNewColourWithInjection">Share of word-swap edits whose object takes the new colour (with injection).</param>
/// <param name="SwapNewColourWithoutInjection">The same without injection.</param>
/// <param name="OutsideChangeWithBlend">Mean absolute pixel change (0..255) away from the source and edited objects, edit with local blend.</param>
/// <param name="OutsideChangeWithoutBlend">The same for the edit without local blend.</param>
/// <param name="Examples">The first few captions of the set.</param>
public sealed record CaptionSetReport(double ColourAccuracy, double SwapIoUWithInjection, double SwapIoUWithoutInjection, double SwapIoUWithBlend,
    double SwapNewColourWithInjection, double SwapNewColourWithoutInjection, double OutsideChangeWithBlend, double OutsideChangeWithoutBlend,
    IReadOnlyList<string> Examples);

/// <summary>Measured quality of a model trained on <see cref="Scenes"/>: on the canonical grammar's captions and on
/// captions phrased as people type them (<see cref="Scenes.Describe"/>).</summary>
/// <param name="VaeReconstructionError">Mean absolute pixel difference (0..255) between scenes and their VAE encoding decoded.</param>
public sealed record ShapesReport(int Samples, CaptionSetReport Canonical, CaptionSetReport Varied, double VaeReconstructionError)
{
    public string ToTable()
    {
        string Row(string label, Func<CaptionSetReport, double> value, string format) =>
            $"{label,-48} {value(Canonical).ToString(format),9}   {value(Varied).ToString(format),9}";
        return string.Join("\n",
            $"samples per measure {Samples,38}",
            $"{"",-48} {"canonical",9}   {"varied",9}",
            Row("colour accuracy, single objects", r => r.ColourAccuracy, "P0"),
            Row("word swap: object IoU, with injection", r => r.SwapIoUWithInjection, "0.000"),
            Row("           without (plain regeneration)", r => r.SwapIoUWithoutInjection, "0.000"),
            Row("           with injection and local blend", r => r.SwapIoUWithBlend, "0.000"),
            Row("word swap: new colour, with injection", r => r.SwapNewColourWithInjection, "P0"),
            Row("           without", r => r.SwapNewColourWithoutInjection, "P0"),
            Row("local blend: change away from the object (0..255)", r => r.OutsideChangeWithBlend, "0.0"),
            Row("           without local blend", r => r.OutsideChangeWithoutBlend, "0.0"),
            $"VAE: mean error of a scene encoded and decoded   {VaeReconstructionError:0.0}  (0..255)",
            $"varied captions, for example: {string.Join(" | ", Varied.Examples)}");
    }
}

/// <summary>One inversion method on real images: reconstruction, time, and an edit of the inverted image.</summary>
/// <param name="Psnr">Mean PSNR (dB) of the reconstruction against the image.</param>
/// <param name="Seconds">Mean wall time of the inversion and its reconstruction.</param>
/// <param name="NewColour">Share of colour swaps (word swap with local blend on the shape) whose object takes the new colour.</param>
/// <param name="OutsideChange">Mean absolute change (0..255) of the edit against the image away from every object.</param>
public sealed record InversionMethodReport(InversionMethod Method, double Psnr, double Seconds, double NewColour, double OutsideChange);

/// <summary>How well real images come back through inversion and edit from it.</summary>
/// <param name="Samples">Scenes inverted (drawn by the scene generator, not by the model: images it never made).</param>
/// <param name="Vae">PSNR of encoding and decoding alone: the bound no reconstruction can pass.</param>
public sealed record InversionReport(int Samples, double Vae, IReadOnlyList<InversionMethodReport> Methods)
{
    public InversionMethodReport this[InversionMethod m] => Methods.Single(x => x.Method == m);

    public string ToTable() => string.Join("\n", [
        $"inversion of {Samples} scenes        PSNR (dB)   seconds   edit: new colour   edit: change away from the objects (0..255)",
        $"  VAE alone (the bound)          {Vae,6:0.0}",
        .. Methods.Select(m => $"  {InversionFile.MethodName(m.Method),-30} {m.Psnr,6:0.0}   {m.Seconds,7:0.0}   {m.NewColour,16:P0}   {m.OutsideChange,6:0.0}")]);
}

/// <summary>
/// Measures what the paper claims on the shapes model: colour fidelity, layout kept by attention injection during
/// a colour swap, and the background kept by local blending. For colour accuracy, the object is the pixels whose
/// colour is far from the caption's background colour, and its colour the palette colour nearest to their mean; for
/// the mask IoU, an object is the pixels past the half-contrast edge between the background and the caption's colour.
/// </summary>
public sealed class ShapesEvaluation(StableDiffusionPipeline pipeline, int steps = 20, double guidance = 7.5, double crossReplace = 0.8, double selfReplace = 0.4,
    double blendThreshold = 0.3)
{
    const double ObjectDistance = 80;

    /// <param name="showEdit">Receives each word-swap sample: its name (<c>canonical_003</c>, <c>varied_003</c>), prompts
    /// and the images source, injected edit, plain regeneration, edit with local blend (for inspecting what the figures measure).</param>
    public ShapesReport Run(int samples, long seed, IProgress<string>? progress = null, Action<string, string[], RgbImage[]>? showEdit = null)
    {
        // Canonical: "a large red circle on a white background". Varied: the same kind of scene described as people
        // type it (drawn by the evaluation's own seed, so these captions are not the training stream's).
        var canonical = Measure("canonical", samples, seed, new Random(Scenes.StableSeed(seed, 99)),
            (_, bg, colour, shape) => Scenes.Describe([(shape, colour, "large")], bg, false, null), progress, showEdit);
        var varied = Measure("varied", samples, seed, new Random(Scenes.StableSeed(seed, 98)),
            (rng, bg, colour, shape) => Scenes.Describe([(shape, colour, rng.NextDouble() < 0.5 ? "large" : "small")], bg, false, rng), progress, showEdit);
        return new ShapesReport(samples, canonical, varied, VaeError(samples, seed));
    }

    CaptionSetReport Measure(string name, int samples, long seed, Random rng, Func<Random, string, string, string, CaptionWords> caption,
        IProgress<string>? progress, Action<string, string[], RgbImage[]>? showEdit)
    {
        var colours = Scenes.Colours.Keys.ToArray();
        string Pick(string[] options, params string[] except) { string c; do c = options[rng.Next(options.Length)]; while (except.Contains(c)); return c; }
        var shapes = Scenes.Shapes.Where(s => s != "ring").ToArray(); // thin rings make masks unstable at 64 px
        string[] backgrounds = ["white", "black", "gray"];
        var examples = new List<string>();
        // The background a caption names, or (a caption without one) the one the model drew.
        string Background(CaptionWords words, string named, RgbImage image) =>
            words.Words.Any(w => w.Owner == CaptionWords.Background) ? named : DrawnBackground(image);

        int correct = 0;
        for (int i = 0; i < samples; i++)
        {
            var bg = Pick(backgrounds);
            var colour = Pick(colours, bg);
            var words = caption(rng, bg, colour, Pick(shapes));
            if (examples.Count < 4) examples.Add(words.Text);
            var image = Generate([words.Text], seed + i, null)[0];
            if (ObjectColour(image, Background(words, bg, image)) == colour) correct++;
            progress?.Report($"{name} colour {i + 1}/{samples}");
        }

        double iouWith = 0, iouWithout = 0, iouBlend = 0, newWith = 0, newWithout = 0, outsideBlend = 0, outsideNoBlend = 0;
        for (int i = 0; i < samples; i++)
        {
            var bg = Pick(backgrounds);
            var from = Pick(colours, bg);
            var to = Pick(colours, bg, from);
            var words = caption(rng, bg, from, Pick(shapes));
            var shape = words.ShapeWord(0);
            string[] prompts = [words.Text, words.Replace(0, from, to).Text];
            var tokenizer = pipeline.Model.Tokenizer;
            var schedule = new EditSchedule(crossReplace, StepWindow.Until(selfReplace));
            var injected = Generate(prompts, 1000 + seed + i, new AttentionReplace(tokenizer, prompts, steps, schedule));
            var plain = Generate(prompts, 1000 + seed + i, new AttentionReplace(tokenizer, prompts, steps, new EditSchedule(0.0, StepWindow.Until(0))));
            var blended = Generate(prompts, 1000 + seed + i, new AttentionReplace(tokenizer, prompts, steps, schedule,
                new LocalBlend(tokenizer, prompts, new LocalBlendOptions([[shape], [shape]], blendThreshold), steps)))[1];
            var (sourceBg, editBg) = (Background(words, bg, injected[0]), Background(words, bg, injected[1]));
            var (plainSourceBg, plainEditBg) = (Background(words, bg, plain[0]), Background(words, bg, plain[1]));
            var source = ObjectMask(injected[0], sourceBg, from);
            var edit = ObjectMask(injected[1], editBg, to);
            var blendedEdit = ObjectMask(blended, Background(words, bg, blended), to);
            iouWith += IoU(source, edit);
            iouWithout += IoU(ObjectMask(plain[0], plainSourceBg, from), ObjectMask(plain[1], plainEditBg, to));
            iouBlend += IoU(source, blendedEdit);
            if (ObjectColour(injected[1], editBg) == to) newWith++;
            if (ObjectColour(plain[1], plainEditBg) == to) newWithout++;
            outsideBlend += OutsideChange(injected[0], blended, source, blendedEdit);
            outsideNoBlend += OutsideChange(injected[0], injected[1], source, edit);
            showEdit?.Invoke($"{name}_{i:D3}", prompts, [injected[0], injected[1], plain[1], blended]);
            progress?.Report($"{name} edits {i + 1}/{samples}");
        }
        return new CaptionSetReport((double)correct / samples, iouWith / samples, iouWithout / samples, iouBlend / samples,
            newWith / samples, newWithout / samples, outsideBlend / samples, outsideNoBlend / samples, examples);
    }

    /// <summary>The background colour (of <see cref="Scenes.BackgroundColours"/>) nearest to the median of the image's
    /// border pixels (objects are drawn away from the border).</summary>
    public static string DrawnBackground(RgbImage image)
    {
        int w = image.Width, h = image.Height;
        var border = Enumerable.Range(0, w * h).Where(i => i % w == 0 || i % w == w - 1 || i / w == 0 || i / w == h - 1).ToList();
        double Median(int channel) => border.Select(i => (double)image.Pixels[3 * i + channel]).Order().ElementAt(border.Count / 2);
        return Nearest(Scenes.BackgroundColours, Median(0), Median(1), Median(2));
    }

    /// <summary>The name of the colour of <paramref name="palette"/> nearest to (r, g, b).</summary>
    public static string Nearest(IReadOnlyDictionary<string, (byte R, byte G, byte B)> palette, double r, double g, double b) =>
        palette.MinBy(c => Math.Pow(c.Value.R - r, 2) + Math.Pow(c.Value.G - g, 2) + Math.Pow(c.Value.B - b, 2)).Key;

    /// <summary>Mean absolute pixel change (0..255) of training-distribution scenes through the VAE and back.</summary>
    double VaeError(int samples, long seed)
    {
        var scenes = new Scenes(pipeline.Model.DefaultImageSize);
        double sum = 0;
        for (int i = 0; i < samples; i++)
        {
            var image = scenes.Generate(seed, i).Image;
            sum += image.Pixels.Zip(ThroughVae(image).Pixels, (a, b) => Math.Abs(a - b)).Average();
        }
        return sum / samples;
    }

    RgbImage ThroughVae(RgbImage image)
    {
        using var latents = pipeline.Encode(image.ToTensor());
        return pipeline.Decode(latents)[0];
    }

    /// <summary>
    /// Inverts scenes from the generator (captioned, never generated by the model) with each method, DDIM with the
    /// evaluation's steps and guidance and 10 inner steps, compares the reconstruction to the scene, and edits the
    /// inverted scene: the first object's colour swapped (word swap, local blend on its shape word), through an
    /// <see cref="EditSession"/> (direct inversion's source is the inverted trajectory itself).
    /// </summary>
    public InversionReport MeasureInversion(int samples, long seed, IProgress<string>? progress = null)
    {
        var scenes = new Scenes(pipeline.Model.DefaultImageSize);
        var methods = new[] { InversionMethod.Ddim, InversionMethod.NegativePrompt, InversionMethod.NullText, InversionMethod.Direct };
        var rng = new Random(Scenes.StableSeed(seed, 77));
        double vae = 0;
        var psnr = new double[methods.Length];
        var seconds = new double[methods.Length];
        var newColour = new double[methods.Length];
        var outside = new double[methods.Length];
        for (int i = 0; i < samples; i++)
        {
            var scene = scenes.Generate(seed + 500, i);
            vae += Inversion.Psnr(scene.Image, ThroughVae(scene.Image));
            var obj = scene.Objects[0];
            var to = Scenes.Colours.Keys.Where(c => c != obj.Colour && c != scene.Background).OrderBy(_ => rng.Next()).First();
            var target = scene.Caption.Replace($"{obj.Colour} {obj.Shape}", $"{to} {obj.Shape}");
            var everything = scene.Objects.Select(o => o.Mask).Aggregate((x, y) => x.Zip(y, (p, q) => p || q).ToArray());
            for (int m = 0; m < methods.Length; m++)
            {
                // The reconstruction is the session's recorded source: sampling from the inversion (for direct inversion,
                // with the source put back onto the trajectory), the same run every edit of it uses.
                var clock = System.Diagnostics.Stopwatch.StartNew();
                using var inverted = new InvertedImageSession(pipeline.Model, scene.Image, scene.Caption, new InversionSettings(methods[m], steps, 10, guidance), "evaluation");
                var session = inverted.Session;
                psnr[m] += Inversion.Psnr(scene.Image, session.Recorded().Image);
                seconds[m] += clock.Elapsed.TotalSeconds;
                using var edit = session.Edit(new EditRequest([target], new EditDescription
                {
                    Edit = EditKind.Replace, CrossReplaceSteps = crossReplace, SelfReplaceSteps = StepWindow.Until(selfReplace),
                    LocalBlend = new LocalBlendOptions([[obj.Shape], [obj.Shape]], blendThreshold),
                }));
                if (MaskColour(edit.Images[1], obj.Mask) == to) newColour[m]++;
                outside[m] += OutsideChange(scene.Image, edit.Images[1], everything, everything);
            }
            progress?.Report($"inversion {i + 1}/{samples}");
        }
        return new InversionReport(samples, vae / samples,
            methods.Select((m, k) => new InversionMethodReport(m, psnr[k] / samples, seconds[k] / samples, newColour[k] / samples, outside[k] / samples)).ToList());
    }

    /// <summary>
    /// pix2pix-zero beside Prompt-to-Prompt after null-text inversion, on drawn one-object scenes: each recolours the object
    /// (a random other colour) of the scene its caption describes; pix2pix-zero with its defaults and a direction from the
    /// grammar's sentences, Prompt-to-Prompt as <see cref="MeasureInversion"/> edits (word swap with local blend).
    /// </summary>
    /// <param name="showEdit">Receives each sample: its name (<c>zero_003</c>), captions and the images scene, pix2pix-zero edit, Prompt-to-Prompt edit.</param>
    public ZeroReport MeasureZero(int samples, long seed, IProgress<string>? progress = null, Action<string, string[], RgbImage[]>? showEdit = null)
    {
        var scenes = new Scenes(pipeline.Model.DefaultImageSize);
        var rng = new Random(Scenes.StableSeed(seed, 91));
        var zero = new Pix2PixZero(pipeline);
        var settings = new ZeroSettings { Steps = steps, Seed = seed };
        var directions = new Dictionary<(string, string), EditDirection>();
        var sums = new double[2, 4];
        try
        {
            for (int i = 0; i < samples; i++)
            {
                var scene = scenes.Generate(seed + 700, i, objectCount: 1);
                var obj = scene.Objects[0];
                var to = Scenes.Colours.Keys.Where(c => c != obj.Colour && c != scene.Background).OrderBy(_ => rng.Next()).First();
                var clock = System.Diagnostics.Stopwatch.StartNew();
                if (!directions.TryGetValue((obj.Colour, to), out var direction))
                {
                    var (a, b) = Scenes.DirectionSentences(obj.Colour, to, Editing.ZeroEditing.GrammarSentences, 0);
                    directions[(obj.Colour, to)] = direction = zero.Direction(obj.Colour, to, a, b, "shapes grammar");
                }
                RgbImage zeroEdit;
                using (var xT = zero.Invert(scene.Image, scene.Caption, settings))
                using (var result = zero.Edit(xT, scene.Caption, direction, settings))
                    zeroEdit = result.Edit;
                Add(0, zeroEdit, clock.Elapsed.TotalSeconds);

                clock.Restart();
                using var inverted = new InvertedImageSession(pipeline.Model, scene.Image, scene.Caption, new InversionSettings(InversionMethod.NullText, steps, 10, guidance), "evaluation");
                var session = inverted.Session;
                var target = scene.Caption.Replace($"{obj.Colour} {obj.Shape}", $"{to} {obj.Shape}");
                using var edit = session.Edit(new EditRequest([target], new EditDescription
                {
                    Edit = EditKind.Replace, CrossReplaceSteps = crossReplace, SelfReplaceSteps = StepWindow.Until(selfReplace),
                    LocalBlend = new LocalBlendOptions([[obj.Shape], [obj.Shape]], blendThreshold),
                }));
                Add(1, edit.Images[1], clock.Elapsed.TotalSeconds);
                showEdit?.Invoke($"zero_{i:000}", [scene.Caption, $"pix2pix-zero {obj.Colour} -> {to}", target], [scene.Image, zeroEdit, edit.Images[1]]);
                progress?.Report($"pix2pix-zero {i + 1}/{samples}");

                void Add(int method, RgbImage image, double seconds)
                {
                    if (ObjectColour(image, scene.Background) == to) sums[method, 0]++;
                    sums[method, 1] += IoU(ObjectMask(image, scene.Background, to), obj.Mask);
                    sums[method, 2] += OutsideChange(scene.Image, image, obj.Mask, obj.Mask);
                    sums[method, 3] += seconds;
                }
            }
        }
        finally
        {
            foreach (var d in directions.Values) d.Dispose();
        }
        ZeroMethodReport Mean(int m) => new(sums[m, 0] / samples, sums[m, 1] / samples, sums[m, 2] / samples, sums[m, 3] / samples);
        return new ZeroReport(samples, Mean(0), Mean(1));
    }

    /// <summary>The palette colour nearest to the mean colour of the pixels in <paramref name="mask"/>.</summary>
    public static string MaskColour(RgbImage image, bool[] mask)
    {
        double r = 0, g = 0, b = 0;
        int n = 0;
        for (int i = 0; i < mask.Length; i++)
            if (mask[i]) { r += image.Pixels[3 * i]; g += image.Pixels[3 * i + 1]; b += image.Pixels[3 * i + 2]; n++; }
        return Nearest(Scenes.Colours, r / Math.Max(1, n), g / Math.Max(1, n), b / Math.Max(1, n));
    }

    RgbImage[] Generate(string[] prompts, long seed, AttentionController? controller)
    {
        using (controller)
        {
            var result = pipeline.Generate(new GenerationRequest { Prompts = prompts, Steps = steps, GuidanceScale = guidance, Seed = seed, Scheduler = "ddim" },
                null, controller);
            result.Latents.Dispose();
            return result.Images;
        }
    }

    /// <summary>Pixels whose colour is far from the background colour (any object, whatever its colour).</summary>
    public static bool[] Mask(RgbImage image, string background)
    {
        var (br, bg, bb) = Scenes.BackgroundColours[background];
        var mask = new bool[image.Width * image.Height];
        for (int i = 0; i < mask.Length; i++)
        {
            double dr = image.Pixels[3 * i] - br, dg = image.Pixels[3 * i + 1] - bg, db = image.Pixels[3 * i + 2] - bb;
            mask[i] = Math.Sqrt(dr * dr + dg * dg + db * db) > ObjectDistance;
        }
        return mask;
    }

    /// <summary>
    /// Pixels whose colour is nearest to the object's among the scene's colours: the background and the colours of the
    /// scene's other objects (<paramref name="otherColours"/>, e.g. the colours both captions of a pair name). With the
    /// background alone this is the half-contrast edge (the bisector between the two colours): the mask of a shape,
    /// independent of how strongly its colour contrasts with the background, so a black star and the same star in blue
    /// give the same mask however soft the decoder draws the edge. The other colours keep a second object out of the
    /// mask when its colour lies past that edge too (a red circle is past the half-contrast edge of purple on black).
    /// </summary>
    public static bool[] ObjectMask(RgbImage image, string background, string colour, params IEnumerable<string> otherColours)
    {
        var target = Scenes.Colours[colour];
        var rivals = otherColours.Select(c => Scenes.Colours[c]).Append(Scenes.BackgroundColours[background]).Where(c => c != target).Distinct().ToArray();
        var mask = new bool[image.Width * image.Height];
        for (int i = 0; i < mask.Length; i++)
        {
            int r = image.Pixels[3 * i], g = image.Pixels[3 * i + 1], b = image.Pixels[3 * i + 2];
            double Distance((byte R, byte G, byte B) c) => (r - c.R) * (r - c.R) + (g - c.G) * (g - c.G) + (b - c.B) * (b - c.B);
            double own = Distance(target);
            mask[i] = rivals.All(c => own < Distance(c));
        }
        return mask;
    }

    /// <summary>The palette colour nearest to the mean colour of the object pixels (null when there are none).</summary>
    public static string? ObjectColour(RgbImage image, string background)
    {
        var mask = Mask(image, background);
        double r = 0, g = 0, b = 0;
        int n = 0;
        for (int i = 0; i < mask.Length; i++)
            if (mask[i]) { r += image.Pixels[3 * i]; g += image.Pixels[3 * i + 1]; b += image.Pixels[3 * i + 2]; n++; }
        if (n < mask.Length / 100) return null;
        return Nearest(Scenes.Colours, r / n, g / n, b / n);
    }

    public static double IoU(bool[] a, bool[] b)
    {
        int inter = 0, union = 0;
        for (int i = 0; i < a.Length; i++) { if (a[i] && b[i]) inter++; if (a[i] || b[i]) union++; }
        return union == 0 ? 1 : (double)inter / union;
    }

    /// <summary>Mean absolute pixel change (0..255) away from both objects: pixels more than
    /// <see cref="EdgeMargin"/> pixels from either mask, so the colour bleeding of a changed edge is not counted.</summary>
    static double OutsideChange(RgbImage a, RgbImage b, bool[] maskA, bool[] maskB)
    {
        int w = a.Width, h = a.Height;
        var near = new bool[w * h];
        for (int y = 0; y < h; y++)
            for (int x = 0; x < w; x++)
                if (maskA[y * w + x] || maskB[y * w + x])
                    for (int yy = Math.Max(0, y - EdgeMargin); yy <= Math.Min(h - 1, y + EdgeMargin); yy++)
                        for (int xx = Math.Max(0, x - EdgeMargin); xx <= Math.Min(w - 1, x + EdgeMargin); xx++)
                            near[yy * w + xx] = true;
        double sum = 0;
        int n = 0;
        for (int i = 0; i < near.Length; i++)
        {
            if (near[i]) continue;
            for (int c = 0; c < 3; c++) sum += Math.Abs(a.Pixels[3 * i + c] - b.Pixels[3 * i + c]);
            n += 3;
        }
        return n == 0 ? 0 : sum / n;
    }

    const int EdgeMargin = 2;
}
