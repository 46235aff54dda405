using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using PromptToPrompt.Training;

namespace PromptToPrompt.Datasets;

/// <summary>
/// One InstructPix2Pix training record before images: a caption, the instruction, the edited caption. <see cref="Json"/>
/// is the record as read (written back unchanged as the record's prompt.json).
/// </summary>
public sealed record Triplet(string Input, string Edit, string Output, string Json);

/// <summary>Reads and writes triplet JSONL files (<c>{"input", "edit", "output"}</c>; <c>caption</c> is accepted for <c>input</c>).</summary>
public static class TripletFile
{
    /// <summary>
    /// The records of <paramref name="path"/>, one per non-empty line. A malformed line is a user error with its line
    /// number, unless <paramref name="skipBadLines"/>, when it is reported to <paramref name="log"/> and left out (its
    /// index is still counted, so record indices are line-stable). Returns (line index, triplet) pairs.
    /// </summary>
    public static List<(int Index, Triplet Triplet)> Read(string path, bool skipBadLines = false, Action<string>? log = null)
    {
        if (!File.Exists(path)) throw new UserError($"Prompt file not found: {path}.");
        var result = new List<(int, Triplet)>();
        int index = 0, lineNumber = 0;
        foreach (var line in File.ReadLines(path))
        {
            lineNumber++;
            if (string.IsNullOrWhiteSpace(line)) continue;
            try { result.Add((index, Parse(line))); }
            catch (FormatException e)
            {
                var message = $"{path}:{lineNumber}: {e.Message}";
                if (!skipBadLines) throw new UserError(message + " Fix the line, or pass --skip-bad-lines to leave such lines out.");
                log?.Invoke($"warning: {message} (skipped)");
            }
            index++;
        }
        return result;
    }

    public static Triplet Parse(string line)
    {
        JsonObject o;
        try { o = JsonNode.Parse(line) as JsonObject ?? throw new FormatException("the line is not a JSON object."); }
        catch (JsonException e) { throw new FormatException($"not valid JSON ({e.Message})."); }
        string Field(params string[] names)
        {
            foreach (var n in names)
                if (o[n] is JsonValue v && v.TryGetValue<string>(out var s) && !string.IsNullOrWhiteSpace(s)) return s;
            throw new FormatException($"the record has no text field '{names[0]}'{(names.Length > 1 ? $" (or '{names[1]}')" : "")}.");
        }
        return new Triplet(Field("input", "caption"), Field("edit"), Field("output"), o.ToJsonString());
    }

    public static string ToJson(string input, string edit, string output) =>
        JsonSerializer.Serialize(new Dictionary<string, string> { ["input"] = input, ["edit"] = edit, ["output"] = output });
}

/// <summary>
/// Triplets from the shipped model's scene grammar — the stand-in for the paper's fine-tuned GPT-3: colour change, shape
/// swap, size, background colour, stripes on/off, adding or removing an object. Record <c>i</c> of seed <c>s</c> is
/// always the same.
/// </summary>
public static class ShapeTriplets
{
    public static readonly string[] Kinds = ["colour", "shape", "size", "background", "stripes", "add", "remove"];

    /// <summary>
    /// <paramref name="count"/> triplets of seed <paramref name="seed"/>, of the given instruction <paramref name="kinds"/>
    /// (default: all) on scenes of <paramref name="minObjects"/> to <paramref name="maxObjects"/> objects (the grammar's
    /// default: one or two). With the defaults record <c>i</c> is the grammar's record <c>i</c>.
    /// </summary>
    public static IEnumerable<string> Generate(int count, long seed, IReadOnlyList<string>? kinds = null, int minObjects = 1, int maxObjects = 2)
    {
        if (kinds?.Count == 0) throw new UserError($"--kinds names no kind; choose from {string.Join(", ", Kinds)}.");
        foreach (var kind in kinds ?? [])
            if (!Kinds.Contains(kind)) throw new UserError($"Unknown instruction kind '{kind}'; choose from {string.Join(", ", Kinds)}.");
        if (minObjects < 1 || maxObjects < minObjects || maxObjects > Scenes.MaxObjects)
            throw new UserError($"--objects must be N or MIN,MAX with 1 <= MIN <= MAX <= {Scenes.MaxObjects}; got {minObjects},{maxObjects}.");
        // Removal asked for by name must be possible; among all kinds it is drawn only where a scene has two objects.
        if (kinds?.Contains("remove") == true && maxObjects < 2)
            throw new UserError("Removing an object needs scenes of two objects or more; allow them with --objects 1,2, or leave remove out of --kinds.");
        kinds ??= Kinds;
        if (kinds.All(k => k == "remove")) minObjects = Math.Max(minObjects, 2);
        return Enumerable.Range(0, count).Select(i => One(seed, i, kinds, minObjects, maxObjects));
    }

    static string One(long seed, int index, IReadOnlyList<string> kinds, int minObjects, int maxObjects)
    {
        var rng = new Random(Scenes.StableSeed(seed, index));
        var colours = Scenes.Colours.Keys.ToArray();
        var shapes = Scenes.Shapes;
        var bg = Pick(rng, Scenes.Backgrounds);
        bool striped = rng.NextDouble() < 0.2;
        int count = rng.Next(minObjects, maxObjects + 1);
        var objects = new List<(string Shape, string Colour, string SizeWord)>();
        for (int k = 0; k < count; k++)
            objects.Add((Pick(rng, shapes, s => objects.All(o => o.Shape != s)), Pick(rng, colours, c => c != bg), rng.NextDouble() < 0.5 ? "large" : "small"));
        var kind = Pick(rng, kinds, k => k != "remove" || objects.Count > 1);
        var (instruction, edited, newBg, newStriped) = Apply(kind, objects, bg, striped, rng);
        return TripletFile.ToJson(Scenes.Caption(objects, bg, striped), instruction, Scenes.Caption(edited, newBg, newStriped));
    }

    /// <summary>
    /// An instruction of <paramref name="kind"/> for a scene of <paramref name="objects"/> on <paramref name="background"/>
    /// (one object chosen by <paramref name="rng"/>, and the new colour, shape, background or object drawn from it), and
    /// the scene it asks for. <c>remove</c> needs two objects or more.
    /// </summary>
    public static (string Instruction, List<(string Shape, string Colour, string SizeWord)> Objects, string Background, bool Striped) Apply(
        string kind, IReadOnlyList<(string Shape, string Colour, string SizeWord)> objects, string background, bool striped, Random rng)
    {
        if (kind == "remove" && objects.Count < 2) throw new ArgumentException("removing an object needs a scene of two objects or more");
        var colours = Scenes.Colours.Keys.ToArray();
        var shapes = Scenes.Shapes;
        var bg = background;
        int target = rng.Next(objects.Count);
        var o = objects[target];
        var edited = objects.ToList();
        var (newBg, newStriped) = (bg, striped);
        string instruction;
        switch (kind)
        {
            case "colour":
                var colour = Pick(rng, colours, c => c != bg && c != o.Colour);
                edited[target] = o with { Colour = colour };
                instruction = $"make the {o.Shape} {colour}";
                break;
            case "shape":
                var shape = Pick(rng, shapes, s => objects.All(x => x.Shape != s));
                edited[target] = o with { Shape = shape };
                instruction = $"turn the {o.Shape} into a {shape}";
                break;
            case "size":
                var size = o.SizeWord == "large" ? "small" : "large";
                edited[target] = o with { SizeWord = size };
                instruction = size == "large" ? $"make the {o.Shape} bigger" : $"make the {o.Shape} smaller";
                break;
            case "background":
                newBg = Pick(rng, Scenes.Backgrounds, b => b != bg && objects.All(x => x.Colour != b));
                instruction = $"put it on a {newBg} background";
                break;
            case "stripes":
                newStriped = !striped;
                instruction = striped ? "remove the stripes from the background" : "add stripes to the background";
                break;
            case "add":
                var added = (Pick(rng, shapes, s => objects.All(x => x.Shape != s)), Pick(rng, colours, c => c != bg), rng.NextDouble() < 0.5 ? "large" : "small");
                edited.Add(added);
                instruction = $"add a {added.Item3} {added.Item2} {added.Item1}";
                break;
            case "remove":
                edited.RemoveAt(target);
                instruction = $"remove the {o.Shape}";
                break;
            default:
                throw new ArgumentException($"unknown instruction kind {kind}");
        }
        return (instruction, edited, newBg, newStriped);
    }

    /// <summary>One of <paramref name="items"/> (those <paramref name="allowed"/>), drawn by <paramref name="rng"/>.</summary>
    static T Pick<T>(Random rng, IReadOnlyList<T> items, Func<T, bool>? allowed = null)
    {
        var options = items.Where(x => allowed?.Invoke(x) ?? true).ToList();
        return options[rng.Next(options.Count)];
    }

    /// <summary>Writes <paramref name="count"/> triplets as JSONL (atomically).</summary>
    public static void Write(string path, int count, long seed, IReadOnlyList<string>? kinds = null, int minObjects = 1, int maxObjects = 2)
    {
        var lines = Generate(count, seed, kinds, minObjects, maxObjects);
        Loading.AtomicFile.Write(path, s =>
        {
            using var w = new StreamWriter(s, new UTF8Encoding(false), -1, leaveOpen: true);
            foreach (var line in lines) w.Write(line + "\n");
        });
    }
}
