using PromptToPrompt.Control;
using PromptToPrompt.Imaging;
using PromptToPrompt.Pipelines;

namespace PromptToPrompt.Training;

/// <summary>What attention guidance does on the shapes model, each figure beside plain generation from the same noise.</summary>
/// <param name="AllPresentTwo">Share of two-object captions whose every object is drawn in its colour: plain, with Attend-and-Excite.</param>
/// <param name="AllPresentThree">The same for three-object captions.</param>
/// <param name="InBox">Share of single-object captions whose object's centroid falls in the box asked for: plain, with Directed Diffusion.</param>
/// <param name="SecondsPerImage">Mean wall time of one image: plain, with Attend-and-Excite, with Directed Diffusion.</param>
public sealed record GuidanceReport(int Samples, (double Plain, double Excite) AllPresentTwo, (double Plain, double Excite) AllPresentThree,
    (double Plain, double Directed) InBox, (double Plain, double Excite, double Directed) SecondsPerImage)
{
    public string ToTable() => string.Join("\n",
        $"{$"attention guidance, {Samples} samples per measure",-64} {"plain",6}   {"guided",6}",
        $"  every object drawn, two-object captions (Attend-and-Excite)   {AllPresentTwo.Plain,6:P0}   {AllPresentTwo.Excite,6:P0}",
        $"  every object drawn, three-object captions (Attend-and-Excite) {AllPresentThree.Plain,6:P0}   {AllPresentThree.Excite,6:P0}",
        $"  object centred in its box (Directed Diffusion, a quadrant)    {InBox.Plain,6:P0}   {InBox.Directed,6:P0}",
        $"  seconds per image: plain {SecondsPerImage.Plain:0.00}, Attend-and-Excite {SecondsPerImage.Excite:0.00}, Directed Diffusion {SecondsPerImage.Directed:0.00}");
}

/// <summary>
/// Measures Attend-and-Excite and Directed Diffusion on a model trained on <see cref="Scenes"/>, each with its
/// defaults (Directed Diffusion editing the same share of the steps as the reference's 10 of 50), against plain
/// generation from the same seed. An object counts as drawn when at least
/// <see cref="PresentShare"/> of the pixels are far from the background and nearest to its colour in the palette;
/// its centroid is the mean position of those pixels. The subjects excited are the shape words.
/// </summary>
public sealed class GuidanceEvaluation(StableDiffusionPipeline pipeline, int steps = 20, double guidance = 7.5)
{
    public const double PresentShare = 0.02;

    public GuidanceReport Run(int samples, long seed, IProgress<string>? progress = null)
    {
        var rng = new Random(Scenes.StableSeed(seed, 55));
        var shapes = Scenes.Shapes.Where(s => s != "ring").ToArray();
        var clock = new System.Diagnostics.Stopwatch();
        double plainSeconds = 0, exciteSeconds = 0, directedSeconds = 0;
        RgbImage Timed(GenerationRequest request, ref double seconds)
        {
            clock.Restart();
            var result = pipeline.Generate(request);
            result.Latents.Dispose();
            seconds += clock.Elapsed.TotalSeconds;
            return result.Images[0];
        }

        (double, double) Objects(int count)
        {
            int plain = 0, excited = 0;
            for (int i = 0; i < samples; i++)
            {
                var background = Pick(rng, ["white", "black", "gray"]);
                var colours = Scenes.Colours.Keys.Where(c => c != background).OrderBy(_ => rng.Next()).Take(count).ToArray();
                var objects = colours.Select(c => (Shape: Pick(rng, shapes), Colour: c, Size: rng.NextDouble() < 0.5 ? "large" : "small")).ToList();
                var prompt = Scenes.Caption(objects.Select(o => (o.Shape, o.Colour, o.Size)), background, striped: false);
                var request = Request(prompt, seed + i);
                if (colours.All(c => Present(Timed(request, ref plainSeconds), background, c))) plain++;
                var excite = new ExciteSettings { TokenIndices = AttendAndExcite.SubjectTokens(pipeline.Model.Tokenizer, prompt, objects.Select(o => o.Shape).Distinct()) };
                if (colours.All(c => Present(Timed(request with { Excite = excite }, ref exciteSeconds), background, c))) excited++;
                progress?.Report($"guidance: {count} objects {i + 1}/{samples}");
            }
            return ((double)plain / samples, (double)excited / samples);
        }

        var two = Objects(2);
        var three = Objects(3);
        int inPlain = 0, inDirected = 0;
        Box[] quadrants = [new(0, 0.5, 0, 0.5), new(0.5, 1, 0, 0.5), new(0, 0.5, 0.5, 1), new(0.5, 1, 0.5, 1)];
        for (int i = 0; i < samples; i++)
        {
            var background = Pick(rng, ["white", "black", "gray"]);
            var colour = Pick(rng, Scenes.Colours.Keys.Where(c => c != background).ToArray());
            var shape = Pick(rng, shapes);
            var box = quadrants[rng.Next(quadrants.Length)];
            var prompt = Scenes.Caption([(shape, colour, "small")], background, striped: false);
            var request = Request(prompt, seed + 2000 + i);
            if (InBox(Timed(request, ref plainSeconds), background, colour, box)) inPlain++;
            // The reference edits 10 of its 50 steps: the same share of this run's steps.
            var directed = new DirectedSettings { Regions = [DirectedRegion.ForWord(pipeline.Model.Tokenizer, prompt, shape, box)], Steps = Math.Max(1, steps / 5) };
            if (InBox(Timed(request with { Boxes = directed }, ref directedSeconds), background, colour, box)) inDirected++;
            progress?.Report($"guidance: boxes {i + 1}/{samples}");
        }
        return new GuidanceReport(samples, two, three, ((double)inPlain / samples, (double)inDirected / samples),
            (plainSeconds / (3 * samples), exciteSeconds / (2 * samples), directedSeconds / samples));
    }

    GenerationRequest Request(string prompt, long seed) =>
        new() { Prompts = [prompt], Steps = steps, GuidanceScale = guidance, Seed = seed, Scheduler = "ddim" };

    static string Pick(Random rng, string[] options) => options[rng.Next(options.Length)];

    /// <summary>Pixels far from the background whose nearest palette colour is <paramref name="colour"/>.</summary>
    public static bool[] ColourMask(RgbImage image, string background, string colour)
    {
        var far = ShapesEvaluation.Mask(image, background);
        var mask = new bool[far.Length];
        for (int i = 0; i < far.Length; i++)
        {
            if (!far[i]) continue;
            mask[i] = ShapesEvaluation.Nearest(Scenes.Colours, image.Pixels[3 * i], image.Pixels[3 * i + 1], image.Pixels[3 * i + 2]) == colour;
        }
        return mask;
    }

    public static bool Present(RgbImage image, string background, string colour) =>
        ColourMask(image, background, colour).Count(m => m) >= PresentShare * image.Width * image.Height;

    /// <summary>Whether the object of <paramref name="colour"/> is drawn and its centroid lies in <paramref name="box"/>.</summary>
    public static bool InBox(RgbImage image, string background, string colour, Box box)
    {
        var mask = ColourMask(image, background, colour);
        int n = mask.Count(m => m);
        if (n < PresentShare * mask.Length) return false;
        double x = 0, y = 0;
        for (int i = 0; i < mask.Length; i++)
            if (mask[i]) { x += i % image.Width + 0.5; y += i / image.Width + 0.5; }
        (x, y) = (x / n / image.Width, y / n / image.Height);
        return x >= box.Left && x < box.Right && y >= box.Top && y < box.Bottom;
    }
}
