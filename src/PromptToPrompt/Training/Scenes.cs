using PromptToPrompt.Imaging;

namespace PromptToPrompt.Training;

/// <summary>One object of a scene: its shape, colour, size word, and pixel mask (row-major, Size x Size).</summary>
public sealed record SceneObject(string Shape, string Colour, string SizeWord, bool[] Mask);

/// <summary>A captioned synthetic image with its objects; <see cref="Caption"/> is the canonical grammar's caption.</summary>
public sealed record Scene(RgbImage Image, string Caption, string Background, IReadOnlyList<SceneObject> Objects, bool Striped);

/// <summary>
/// A caption as words, each with what it describes: an object's index in <see cref="Scene.Objects"/>,
/// <see cref="Background"/>, or <see cref="Free"/> (articles, "and", "on", punctuation).
/// </summary>
public sealed record CaptionWords(IReadOnlyList<(string Word, int Owner)> Words)
{
    public const int Background = -1, Free = -2;

    /// <summary>The caption as typed: words separated by spaces, punctuation attached to the word before it.</summary>
    public string Text => string.Join(" ", Words.Select(w => w.Word)).Replace(" ,", ",").Replace(" .", ".");

    /// <summary>The word that names object <paramref name="owner"/>'s shape (or its synonym) as <see cref="Text"/> spells
    /// it, with punctuation attached ("disc,"): a word of the prompt split on spaces, as local blend names words.</summary>
    public string ShapeWord(int owner)
    {
        int i = Words.ToList().FindLastIndex(w => w.Owner == owner && Scenes.ShapeOf(w.Word) is not null);
        return i + 1 < Words.Count && Words[i + 1].Word is "," or "." ? Words[i].Word + Words[i + 1].Word : Words[i].Word;
    }

    /// <summary>The same caption with object <paramref name="owner"/>'s word <paramref name="word"/> replaced (a word swap).</summary>
    public CaptionWords Replace(int owner, string word, string with) =>
        new(Words.Select(w => w.Owner == owner && w.Word == word ? (with, w.Owner) : w).ToList());
}

/// <summary>
/// A deterministic generator of captioned scenes: one to three objects (circle, square, triangle, star, ring) in
/// named colours and two sizes, on a plain or striped background, captioned from a small grammar:
/// <c>a [small|large] red circle [and a ...] on a yellow background</c>.
/// </summary>
public sealed class Scenes(int size = 64)
{
    public static readonly string[] Shapes = ["circle", "square", "triangle", "star", "ring"];
    /// <summary>The most objects a scene holds.</summary>
    public const int MaxObjects = 3;
    public static readonly Dictionary<string, (byte R, byte G, byte B)> Colours = new()
    {
        ["red"] = (220, 40, 40), ["green"] = (40, 180, 60), ["blue"] = (40, 70, 220), ["yellow"] = (235, 220, 50),
        ["purple"] = (150, 60, 190), ["orange"] = (245, 140, 30), ["white"] = (245, 245, 245), ["black"] = (20, 20, 20),
    };
    /// <summary>Other words a person may type for a shape.</summary>
    public static readonly Dictionary<string, string[]> Synonyms = new() { ["circle"] = ["disc", "ball"], ["square"] = ["box"], ["ring"] = ["donut"] };
    public static readonly string[] Backgrounds = ["white", "black", "yellow", "blue", "gray"];
    public static readonly Dictionary<string, (byte R, byte G, byte B)> BackgroundColours = new()
    {
        ["white"] = (245, 245, 245), ["black"] = (20, 20, 20), ["yellow"] = (235, 220, 50), ["blue"] = (40, 70, 220), ["gray"] = (128, 128, 128),
    };

    public int Size => size;

    /// <summary>Every word the canonical grammar can produce (for building the tokenizer).</summary>
    public static IEnumerable<string> Vocabulary =>
        new[] { "a", "and", "on", "background", "small", "large", "striped" }.Concat(Shapes).Concat(Colours.Keys).Concat(Backgrounds).Distinct();

    /// <summary>Every word <see cref="Describe"/> can produce: the canonical words and the shapes' synonyms (punctuation
    /// is one byte-level token anyway).</summary>
    public static IEnumerable<string> VariedVocabulary => Vocabulary.Concat(Synonyms.Values.SelectMany(w => w)).Distinct();

    /// <summary>The shape a word names (a shape or one of its synonyms), or null.</summary>
    public static string? ShapeOf(string word) =>
        Shapes.Contains(word) ? word : Synonyms.FirstOrDefault(s => s.Value.Contains(word)).Key;

    /// <summary>Scene number <paramref name="index"/> of the stream seeded by <paramref name="seed"/> (the same pair always gives the same scene).</summary>
    public Scene Generate(long seed, long index, int? objectCount = null)
    {
        var rng = new Random(StableSeed(seed, index));
        int count = objectCount ?? rng.Next(1, MaxObjects + 1);
        var bg = Backgrounds[rng.Next(Backgrounds.Length)];
        bool striped = rng.NextDouble() < 0.2;
        var objects = new List<(string Shape, string Colour, string SizeWord, double Cx, double Cy, double R)>();
        for (int i = 0; i < count; i++)
        {
            string colour;
            do colour = Colours.Keys.ElementAt(rng.Next(Colours.Count)); while (colour == bg);
            var shape = Shapes[rng.Next(Shapes.Length)];
            bool large = rng.NextDouble() < 0.5;
            objects.Add(Place(objects, shape, colour, large ? "large" : "small", rng));
        }
        return Render(objects, bg, striped);
    }

    /// <summary>
    /// Draws the objects, background and stripes of a caption of the grammar (<see cref="ParseCaption"/>), placed at
    /// random by <paramref name="rng"/> as <see cref="Generate"/> places them.
    /// </summary>
    public Scene Draw(IReadOnlyList<(string Shape, string Colour, string SizeWord)> objects, string background, bool striped, Random rng)
    {
        var placed = new List<(string Shape, string Colour, string SizeWord, double Cx, double Cy, double R)>();
        foreach (var (shape, colour, sizeWord) in objects) placed.Add(Place(placed, shape, colour, sizeWord, rng));
        return Render(placed, background, striped);
    }

    /// <summary>An object of the size word's radius, away from the border and, best effort, from the objects placed before.</summary>
    (string Shape, string Colour, string SizeWord, double Cx, double Cy, double R) Place(
        List<(string Shape, string Colour, string SizeWord, double Cx, double Cy, double R)> placed, string shape, string colour, string sizeWord, Random rng)
    {
        double r = size * (sizeWord == "large" ? 0.22 : 0.13);
        double cx = 0, cy = 0;
        for (int attempt = 0; attempt < 20; attempt++)
        {
            cx = r + rng.NextDouble() * (size - 2 * r);
            cy = r + rng.NextDouble() * (size - 2 * r);
            if (placed.All(o => Math.Sqrt((o.Cx - cx) * (o.Cx - cx) + (o.Cy - cy) * (o.Cy - cy)) > o.R + r + 2)) break;
        }
        return (shape, colour, sizeWord, cx, cy, r);
    }

    /// <summary>Renders a scene from explicit objects (used by the evaluation to build captions it controls).</summary>
    public Scene Render(IReadOnlyList<(string Shape, string Colour, string SizeWord, double Cx, double Cy, double R)> objects, string background, bool striped)
    {
        var pixels = new byte[size * size * 3];
        var (br, bgc, bb) = BackgroundColours[background];
        for (int y = 0; y < size; y++)
            for (int x = 0; x < size; x++)
            {
                bool stripe = striped && (x + y) / 4 % 2 == 0;
                int o = (y * size + x) * 3;
                // Stripes: the background colour alternating with a darker shade.
                pixels[o] = (byte)(stripe ? br * 3 / 4 : br);
                pixels[o + 1] = (byte)(stripe ? bgc * 3 / 4 : bgc);
                pixels[o + 2] = (byte)(stripe ? bb * 3 / 4 : bb);
            }
        var result = new List<SceneObject>();
        foreach (var (shape, colour, sizeWord, cx, cy, r) in objects)
        {
            var mask = new bool[size * size];
            var (cr, cg, cb) = Colours[colour];
            for (int y = 0; y < size; y++)
                for (int x = 0; x < size; x++)
                {
                    if (!Inside(shape, x + 0.5 - cx, y + 0.5 - cy, r)) continue;
                    mask[y * size + x] = true;
                    int o = (y * size + x) * 3;
                    (pixels[o], pixels[o + 1], pixels[o + 2]) = (cr, cg, cb);
                }
            // Later objects cover earlier ones.
            foreach (var earlier in result)
                for (int i = 0; i < mask.Length; i++) if (mask[i]) earlier.Mask[i] = false;
            result.Add(new SceneObject(shape, colour, sizeWord, mask));
        }
        return new Scene(new RgbImage(size, size, pixels), Caption(result.Select(o => (o.Shape, o.Colour, o.SizeWord)), background, striped), background, result, striped);
    }

    /// <summary>
    /// The scene's caption as a person might type it, drawn with <paramref name="rng"/> (null: the canonical caption):
    /// the objects in any order, a size word left out, a synonym for the shape ("a red disc"), the colour after the
    /// shape ("a circle, red"), no articles ("red circle on white"), the background clause short ("on white") or left
    /// out (plain backgrounds only: a caption without one asks for a plain background), a final full stop.
    /// </summary>
    public static CaptionWords Describe(Scene scene, Random? rng) =>
        Describe(scene.Objects.Select(o => (o.Shape, o.Colour, o.SizeWord)).ToList(), scene.Background, scene.Striped, rng);

    /// <summary>The same for objects described without a rendered scene; owners index <paramref name="objects"/>.</summary>
    public static CaptionWords Describe(IReadOnlyList<(string Shape, string Colour, string SizeWord)> objects, string background, bool striped, Random? rng)
    {
        bool Chance(double p) => rng is not null && rng.NextDouble() < p;
        var words = new List<(string, int)>();
        var order = Enumerable.Range(0, objects.Count).ToList();
        if (rng is not null) order = [.. order.OrderBy(_ => rng.Next())];
        bool articles = !Chance(0.15);
        foreach (var index in order)
        {
            var o = objects[index];
            if (words.Count > 0) words.Add(("and", CaptionWords.Free));
            if (articles) words.Add(("a", CaptionWords.Free));
            bool size = !Chance(0.35), colourAfter = Chance(0.15);
            var shape = Synonyms.TryGetValue(o.Shape, out var other) && Chance(0.3) ? other[rng!.Next(other.Length)] : o.Shape;
            if (size) words.Add((o.SizeWord, index));
            if (!colourAfter) words.Add((o.Colour, index));
            words.Add((shape, index));
            if (colourAfter) { words.Add((",", CaptionWords.Free)); words.Add((o.Colour, index)); }
        }
        double clause = rng?.NextDouble() ?? 0;
        if (striped || clause < 0.55)
        {
            words.Add(("on", CaptionWords.Free));
            words.Add(("a", CaptionWords.Free));
            if (striped) words.Add(("striped", CaptionWords.Background));
            words.Add((background, CaptionWords.Background));
            words.Add(("background", CaptionWords.Background));
        }
        else if (clause < 0.75)
        {
            words.Add(("on", CaptionWords.Free));
            words.Add((background, CaptionWords.Background));
        }
        if (Chance(0.1)) words.Add((".", CaptionWords.Free));
        return new CaptionWords(words);
    }

    /// <summary>The grammar's caption: <c>a large red circle and a small blue star on a [striped ]white background</c>.</summary>
    public static string Caption(IEnumerable<(string Shape, string Colour, string SizeWord)> objects, string background, bool striped) =>
        Describe(objects.ToList(), background, striped, null).Text;

    static readonly System.Text.RegularExpressions.Regex CaptionPattern = new(
        @"^(?<objects>a (small|large) \w+ \w+( and a (small|large) \w+ \w+)*) on a (?<striped>striped )?(?<background>\w+) background$");

    /// <summary>The objects and background of a grammar caption, or null when the caption is not one (or names unknown words).</summary>
    public static (List<(string Shape, string Colour, string SizeWord)> Objects, string Background, bool Striped)? ParseCaption(string caption)
    {
        var m = CaptionPattern.Match(caption.Trim());
        if (!m.Success || !BackgroundColours.ContainsKey(m.Groups["background"].Value)) return null;
        var objects = new List<(string, string, string)>();
        foreach (var part in m.Groups["objects"].Value.Split(" and "))
        {
            var w = part.Split(' ');
            if (!Colours.ContainsKey(w[2]) || !Shapes.Contains(w[3])) return null;
            objects.Add((w[3], w[2], w[1]));
        }
        return (objects, m.Groups["background"].Value, m.Groups["striped"].Success);
    }

    /// <summary>
    /// Paired sentences for a pix2pix-zero edit direction from <paramref name="from"/> to <paramref name="to"/> (two colours,
    /// two shapes or two backgrounds of the grammar): canonical captions of random one- to three-object scenes naming
    /// <paramref name="from"/> (an object's colour or shape, or the background), and the same captions naming <paramref name="to"/>.
    /// </summary>
    public static (List<string> From, List<string> To) DirectionSentences(string from, string to, int count, int seed)
    {
        // A word that is a colour and a background ("blue") is taken as what the other word is.
        string? kind = new[] { "colour", "shape", "background" }.FirstOrDefault(k => Is(from, k) && Is(to, k));
        if (kind is null || from == to)
            throw new UserError($"'{from}' -> '{to}' is not an edit the shapes grammar can describe: give two colours ({string.Join(", ", Colours.Keys)}), " +
                                $"two shapes ({string.Join(", ", Shapes)}) or two backgrounds ({string.Join(", ", Backgrounds)}), or sentence files with --directions DIR.");
        var rng = new Random(seed);
        var a = new List<string>();
        var b = new List<string>();
        for (int i = 0; i < count; i++)
        {
            var objects = Enumerable.Range(0, rng.Next(1, 4)).Select(_ => (Shape: Shapes[rng.Next(Shapes.Length)],
                Colour: Colours.Keys.ElementAt(rng.Next(Colours.Count)), SizeWord: rng.Next(2) == 0 ? "small" : "large")).ToList();
            var background = Backgrounds[rng.Next(Backgrounds.Length)];
            bool striped = rng.NextDouble() < 0.2;
            int which = rng.Next(objects.Count);
            string Sentence(string word)
            {
                var o = objects.ToList();
                o[which] = kind switch { "colour" => o[which] with { Colour = word }, "shape" => o[which] with { Shape = word }, _ => o[which] };
                return Caption(o, kind == "background" ? word : background, striped);
            }
            a.Add(Sentence(from));
            b.Add(Sentence(to));
        }
        return (a, b);

        bool Is(string word, string k) => k switch { "colour" => Colours.ContainsKey(word), "shape" => Shapes.Contains(word), _ => Backgrounds.Contains(word) };
    }

    /// <summary>A seed mixed from two numbers, the same in every process (unlike HashCode.Combine).</summary>
    public static int StableSeed(long a, long b)
    {
        ulong h = (ulong)a * 0x9E3779B97F4A7C15UL ^ (ulong)b * 0xC2B2AE3D27D4EB4FUL;
        h ^= h >> 31;
        h *= 0xBF58476D1CE4E5B9UL;
        h ^= h >> 29;
        return (int)(h & 0x7FFFFFFF);
    }

    static bool Inside(string shape, double dx, double dy, double r) => shape switch
    {
        "circle" => dx * dx + dy * dy <= r * r,
        "ring" => dx * dx + dy * dy <= r * r && dx * dx + dy * dy >= 0.45 * r * r,
        "square" => Math.Abs(dx) <= r * 0.85 && Math.Abs(dy) <= r * 0.85,
        "triangle" => dy <= r * 0.8 && dy >= -r && Math.Abs(dx) <= (dy + r) * 0.6,
        "star" => Star(dx, dy, r),
        _ => false,
    };

    static bool Star(double dx, double dy, double r)
    {
        double angle = Math.Atan2(dy, dx) + Math.PI / 2;
        double d = Math.Sqrt(dx * dx + dy * dy);
        // Radius oscillates between the outer and inner radius five times around.
        double t = Math.Abs(((angle / (2 * Math.PI) * 5) % 1 + 1) % 1 - 0.5) * 2; // 1 at the points, 0 between
        return d <= r * (0.45 + 0.55 * t);
    }
}
