using System.Text.Json;
using System.Text.Json.Nodes;
using PromptToPrompt.Control;
using PromptToPrompt.Text;

namespace PromptToPrompt.Pipelines;

/// <summary>The kind of edit, named as in the spec file.</summary>
public enum EditKind { Store, Replace, Refine, Reweight }

/// <summary>
/// A Prompt-to-Prompt edit described with the paper's and the reference code's names. <see cref="Base"/> is the edit a
/// re-weighting stacks on (the reference's <c>prev_controller</c>).
/// </summary>
public sealed record EditDescription
{
    public EditKind Edit { get; init; } = EditKind.Replace;
    public CrossReplaceSteps CrossReplaceSteps { get; init; } = 0.8;
    public StepWindow SelfReplaceSteps { get; init; } = StepWindow.Until(0.4);
    public LocalBlendOptions? LocalBlend { get; init; }
    public IReadOnlyList<(string Word, double Value)>? Equalizer { get; init; }
    public EditDescription? Base { get; init; }
    public ReferenceVariant Variant { get; init; } = ReferenceVariant.PromptToPrompt;
    /// <summary>Reproduce the reference replacement mapper's index defect (for conformance only).</summary>
    public bool ReferenceMapperDefect { get; init; }

    /// <summary>
    /// Builds the controller for a run of <paramref name="numSteps"/> steps over <paramref name="prompts"/> (source
    /// first). <paramref name="views"/>: also keep what these attention views need (resolutions, steps).
    /// </summary>
    public AttentionStore Build(ClipTokenizer tokenizer, IReadOnlyList<string> prompts, int numSteps, AttentionViewOptions? views = null)
    {
        var store = views?.StoreSettings;
        if (Edit == EditKind.Store) return new AttentionStore(prompts.Count, store);
        if (prompts.Count < 2)
            throw new UserError($"A '{Edit.ToString().ToLowerInvariant()}' edit needs a source prompt and at least one target prompt.");
        var schedule = new EditSchedule(CrossReplaceSteps, SelfReplaceSteps, Variant);
        var blend = LocalBlend is null ? null : new Control.LocalBlend(tokenizer, prompts, LocalBlend, numSteps, Variant);
        switch (Edit)
        {
            case EditKind.Replace: return new AttentionReplace(tokenizer, prompts, numSteps, schedule, blend, ReferenceMapperDefect, store);
            case EditKind.Refine: return new AttentionRefine(tokenizer, prompts, numSteps, schedule, blend, store);
            default:
                if (Equalizer is null) throw new UserError("A 'reweight' edit needs an equalizer: {\"words\": [...], \"values\": [...]}.");
                AttentionEdit? previous = Base is null ? null : Base.Build(tokenizer, prompts, numSteps) as AttentionEdit
                    ?? throw new UserError("The base of a re-weighting must be a 'replace' or 'refine' edit.");
                return new AttentionReweight(tokenizer, prompts, numSteps, schedule, Equalizer, blend, previous, store);
        }
    }

    /// <summary>Replace when the prompts have the same number of words, refine otherwise.</summary>
    public static EditKind Infer(IReadOnlyList<string> prompts) =>
        prompts.Skip(1).All(p => p.Split(' ').Length == prompts[0].Split(' ').Length) ? EditKind.Replace : EditKind.Refine;

    /// <summary>The description as spec JSON (for PNG metadata).</summary>
    public JsonObject ToJson()
    {
        var o = new JsonObject { ["edit"] = Edit.ToString().ToLowerInvariant() };
        if (Edit == EditKind.Store) return o;
        o["cross_replace_steps"] = CrossJson(CrossReplaceSteps);
        o["self_replace_steps"] = WindowJson(SelfReplaceSteps);
        if (LocalBlend is { } lb)
        {
            var b = new JsonObject
            {
                ["words"] = new JsonArray(lb.Words.Select(w => (JsonNode)new JsonArray(w.Select(x => (JsonNode)x).ToArray())).ToArray()),
                ["threshold"] = lb.Threshold,
            };
            if (Variant == ReferenceVariant.NullText)
            {
                b["start_blend"] = lb.StartBlend;
                b["threshold"] = new JsonArray(lb.Threshold, lb.SubtractThreshold);
                if (lb.SubtractWords is { } sub)
                    b["substruct_words"] = new JsonArray(sub.Select(w => (JsonNode)new JsonArray(w.Select(x => (JsonNode)x).ToArray())).ToArray());
            }
            o["local_blend"] = b;
        }
        if (Equalizer is { } eq)
            o["equalizer"] = new JsonObject
            {
                ["words"] = new JsonArray(eq.Select(e => (JsonNode)e.Word).ToArray()),
                ["values"] = new JsonArray(eq.Select(e => (JsonNode)e.Value).ToArray()),
            };
        if (Base is { } baseEdit) o["base"] = baseEdit.ToJson();
        if (Variant == ReferenceVariant.NullText) o["variant"] = "null_text";
        if (ReferenceMapperDefect) o["reference_mapper_defect"] = true;
        return o;
    }

    static JsonNode WindowJson(StepWindow w) => w.Start == 0 ? w.End : new JsonArray(w.Start, w.End);

    static JsonNode CrossJson(CrossReplaceSteps c)
    {
        if (c.PerWord is not { Count: > 0 }) return WindowJson(c.Default);
        var o = new JsonObject { ["default_"] = WindowJson(c.Default) };
        foreach (var (word, w) in c.PerWord) o[word] = WindowJson(w);
        return o;
    }
}

/// <summary>
/// The JSON spec file of <c>p2p edit --spec</c>: an edit description plus the generation settings. Unknown fields
/// are refused by name; relative paths (model, latent) are relative to the spec file.
/// </summary>
public sealed record EditSpec
{
    public string? Model { get; init; }
    public required IReadOnlyList<string> Prompts { get; init; }
    public required EditDescription Edit { get; init; }
    public int Steps { get; init; } = 50;
    public double GuidanceScale { get; init; } = 7.5;
    public string? Scheduler { get; init; }
    public long? Seed { get; init; }
    public string? Latent { get; init; }
    public int? Width { get; init; }
    public int? Height { get; init; }
    public string NegativePrompt { get; init; } = "";
    /// <summary>SDXL micro-conditioning (<c>original_size</c>, <c>crops_coords_top_left</c>, <c>target_size</c>, diffusers' names); null = defaults.</summary>
    public SizeConditioning? SizeConditioning { get; init; }

    static readonly HashSet<string> TopFields = ["model", "prompts", "steps", "guidance_scale", "scheduler", "seed", "latent", "width", "height", "negative_prompt",
                                                 "original_size", "crops_coords_top_left", "target_size"];
    static readonly HashSet<string> EditFields = ["edit", "cross_replace_steps", "self_replace_steps", "local_blend", "equalizer", "base", "variant", "reference_mapper_defect"];

    /// <summary>How a spec's JSON is read: a field given twice is refused (invalid JSON), not an error later.</summary>
    public static readonly JsonDocumentOptions JsonOptions = new() { AllowDuplicateProperties = false };

    public static EditSpec Load(string path)
    {
        if (!File.Exists(path)) throw new UserError($"Spec file not found: {path}.");
        JsonObject root;
        try { root = JsonNode.Parse(File.ReadAllText(path), documentOptions: JsonOptions) as JsonObject ?? throw new UserError($"{path}: the spec must be a JSON object."); }
        catch (JsonException e) { throw new UserError($"{path} is not valid JSON: {e.Message}"); }
        var spec = Parse(root, path);
        var dir = Path.GetDirectoryName(Path.GetFullPath(path))!;
        string? Resolve(string? p) => p is null ? null : Path.IsPathRooted(p) ? p : Path.Combine(dir, p);
        return spec with { Model = Resolve(spec.Model), Latent = Resolve(spec.Latent) };
    }

    public static EditSpec Parse(JsonObject root, string where = "spec")
    {
        foreach (var (key, _) in root)
            if (!TopFields.Contains(key) && !EditFields.Contains(key))
                throw new UserError($"{where}: unknown field '{key}'. Known fields: {string.Join(", ", TopFields.Concat(EditFields))}.");
        var prompts = Get<string[]>(root, "prompts", where) ?? throw new UserError($"{where}: 'prompts' is required (source prompt first, then the edited prompts).");
        if (prompts.Length == 0 || prompts.Any(string.IsNullOrEmpty)) throw new UserError($"{where}: 'prompts' must be non-empty strings.");
        return new EditSpec
        {
            Model = Get<string>(root, "model", where),
            Prompts = prompts,
            Edit = ParseEdit(root, prompts, where),
            Steps = Get<int?>(root, "steps", where) ?? 50,
            GuidanceScale = Get<double?>(root, "guidance_scale", where) ?? 7.5,
            Scheduler = Get<string>(root, "scheduler", where),
            Seed = Get<long?>(root, "seed", where),
            Latent = Get<string>(root, "latent", where),
            Width = Get<int?>(root, "width", where),
            Height = Get<int?>(root, "height", where),
            NegativePrompt = Get<string>(root, "negative_prompt", where) ?? "",
            SizeConditioning = ParseSizeConditioning(root, where),
        };
    }

    static SizeConditioning? ParseSizeConditioning(JsonObject root, string where)
    {
        (int, int)? Pair(string key)
        {
            if (root[key] is null) return null;
            var v = Get<int[]>(root, key, where);
            if (v is not { Length: 2 }) throw new UserError($"{where}: '{key}' must be two integers, [height, width] or [top, left].");
            return (v[0], v[1]);
        }
        var (original, crop, target) = (Pair("original_size"), Pair("crops_coords_top_left"), Pair("target_size"));
        return original is null && crop is null && target is null ? null : new SizeConditioning(original, crop, target);
    }

    static EditDescription ParseEdit(JsonObject o, IReadOnlyList<string> prompts, string where)
    {
        var kindText = Get<string>(o, "edit", where);
        var kind = kindText switch
        {
            null => prompts.Count == 1 ? EditKind.Store : EditDescription.Infer(prompts),
            "store" => EditKind.Store,
            "replace" => EditKind.Replace,
            "refine" => EditKind.Refine,
            "reweight" => EditKind.Reweight,
            _ => throw new UserError($"{where}: edit '{kindText}' is unknown; use replace, refine, reweight or store."),
        };
        var variant = Get<string>(o, "variant", where) switch
        {
            null or "prompt_to_prompt" => ReferenceVariant.PromptToPrompt,
            "null_text" => ReferenceVariant.NullText,
            var v => throw new UserError($"{where}: variant '{v}' is unknown; use prompt_to_prompt or null_text."),
        };
        EditDescription? baseEdit = null;
        if (o["base"] is JsonObject b)
        {
            foreach (var (key, _) in b)
                if (!EditFields.Contains(key)) throw new UserError($"{where}: unknown field '{key}' in 'base'.");
            if (b["local_blend"] is not null || b["equalizer"] is not null || b["base"] is not null)
                throw new UserError($"{where}: put local_blend on the outer edit; a base edit takes only edit, cross_replace_steps and self_replace_steps.");
            baseEdit = ParseEdit(b, prompts, where + " base");
            if (baseEdit.Edit is not (EditKind.Replace or EditKind.Refine))
                throw new UserError($"{where}: the base of a re-weighting must be a 'replace' or 'refine' edit.");
        }
        else if (o["base"] is not null) throw new UserError($"{where}: 'base' must be an object like {{\"edit\": \"refine\"}}.");
        if (baseEdit is not null && kind != EditKind.Reweight)
            throw new UserError($"{where}: only a 'reweight' edit stacks on a base edit.");
        var equalizer = o["equalizer"] is { } eq ? ParseEqualizer(eq, where) : null;
        if (equalizer is not null && kind != EditKind.Reweight)
            throw new UserError($"{where}: an equalizer belongs to a 'reweight' edit. Use \"edit\": \"reweight\" with \"base\": {{\"edit\": \"{kind.ToString().ToLowerInvariant()}\"}}.");
        return new EditDescription
        {
            Edit = kind,
            CrossReplaceSteps = o["cross_replace_steps"] is { } c ? ParseCrossReplace(c, where) : 0.8,
            SelfReplaceSteps = o["self_replace_steps"] is { } s ? ParseWindow(s, where + ": self_replace_steps") : StepWindow.Until(0.4),
            LocalBlend = o["local_blend"] is { } lb ? ParseBlend(lb, variant, where) : null,
            Equalizer = equalizer,
            Base = baseEdit,
            Variant = variant,
            ReferenceMapperDefect = Get<bool?>(o, "reference_mapper_defect", where) ?? false,
        };
    }

    /// <summary><c>cross_replace_steps</c>: a fraction, a [start, end] pair, or per word with an optional <c>default_</c>.</summary>
    public static CrossReplaceSteps ParseCrossReplace(JsonNode node, string where = "spec")
    {
        if (node is not JsonObject perWord) return new CrossReplaceSteps(ParseWindow(node, where + ": cross_replace_steps"));
        var def = perWord["default_"] is { } d ? ParseWindow(d, where + ": cross_replace_steps.default_") : new StepWindow(0, 1);
        var words = perWord.Where(kv => kv.Key != "default_")
            .ToDictionary(kv => kv.Key, kv => ParseWindow(kv.Value, $"{where}: cross_replace_steps.{kv.Key}"));
        return new CrossReplaceSteps(def, words);
    }

    /// <summary>A fraction f (meaning [0, f]) or a [start, end] pair, each in [0, 1].</summary>
    public static StepWindow ParseWindow(JsonNode? node, string what)
    {
        string Expected() => $"{what}: expected a fraction or a [start, end] pair of fractions in [0, 1]; got {node?.ToJsonString() ?? "null"}.";
        var w = node is JsonArray a
            ? a.Count == 2 ? new StepWindow(Number(a[0], Expected), Number(a[1], Expected)) : throw new UserError($"{what}: a window is [start, end]; got {node.ToJsonString()}.")
            : StepWindow.Until(Number(node, Expected));
        return w.Validated(what);
    }

    /// <summary>A JSON number, or the error <paramref name="expected"/> describes (null, text, out of range).</summary>
    static double Number(JsonNode? node, Func<string> expected) =>
        node is JsonValue v && v.TryGetValue<double>(out var d) && double.IsFinite(d) ? d : throw new UserError(expected());

    static List<(string, double)> ParseEqualizer(JsonNode node, string where)
    {
        var words = Get<string[]>(node as JsonObject, "words", where + ": equalizer");
        var values = Get<double[]>(node as JsonObject, "values", where + ": equalizer");
        if (words is null || values is null || words.Length == 0 || words.Length != values.Length)
            throw new UserError($"{where}: equalizer needs \"words\" and \"values\" lists of the same, non-zero length, e.g. {{\"words\": [\"smiling\"], \"values\": [5.0]}}.");
        return words.Zip(values).ToList();
    }

    static LocalBlendOptions ParseBlend(JsonNode node, ReferenceVariant variant, string where)
    {
        var o = node as JsonObject ?? throw new UserError($"{where}: local_blend must be an object like {{\"words\": [[\"cat\"], [\"dog\"]], \"threshold\": 0.3}}.");
        foreach (var (key, _) in o)
            if (key is not ("words" or "threshold" or "start_blend" or "substruct_words"))
                throw new UserError($"{where}: unknown field '{key}' in local_blend (words, threshold, start_blend, substruct_words).");
        var words = Words(o["words"], where + ": local_blend.words") ?? throw new UserError($"{where}: local_blend needs 'words': one list per prompt, e.g. [[\"cat\"], [\"dog\"]].");
        double threshold = 0.3, subtractThreshold = 0.3;
        if (o["threshold"] is JsonArray pair && pair.Count == 2)
        {
            string Expected() => $"{where}: local_blend.threshold: expected a number or a pair of numbers; got {pair.ToJsonString()}.";
            threshold = Number(pair[0], Expected);
            subtractThreshold = Number(pair[1], Expected);
        }
        else if (o["threshold"] is not null) threshold = Get<double?>(o, "threshold", where + ": local_blend") ?? 0.3;
        if (variant == ReferenceVariant.PromptToPrompt && (o["start_blend"] is not null || o["substruct_words"] is not null || o["threshold"] is JsonArray))
            throw new UserError($"{where}: start_blend, substruct_words and a threshold pair belong to the null-text variant; add \"variant\": \"null_text\".");
        return new LocalBlendOptions(words, threshold, Get<double?>(o, "start_blend", where) ?? 0.2,
            Words(o["substruct_words"], where + ": local_blend.substruct_words"), subtractThreshold);
    }

    static IReadOnlyList<IReadOnlyList<string>>? Words(JsonNode? node, string what)
    {
        if (node is null) return null;
        if (node is not JsonArray a) throw new UserError($"{what}: expected one list of words per prompt.");
        return a.Select(x => x switch
        {
            JsonArray inner => (IReadOnlyList<string>)inner.Select(w => w is JsonValue wv && wv.TryGetValue<string>(out var word)
                ? word : throw new UserError($"{what}: expected words (strings); got {w?.ToJsonString() ?? "null"}.")).ToList(),
            JsonValue v when v.TryGetValue<string>(out var s) => [s],
            _ => throw new UserError($"{what}: expected words (strings)."),
        }).ToList();
    }

    static T? Get<T>(JsonObject? o, string key, string where)
    {
        var node = o?[key];
        if (node is null) return default;
        try { return node.Deserialize<T>(); }
        catch (Exception e) when (e is JsonException or InvalidOperationException or FormatException)
        {
            throw new UserError($"{where}: '{key}' has the value {node.ToJsonString()}, which is not a valid {Describe(typeof(T))}.");
        }
    }

    static string Describe(Type t) => (Nullable.GetUnderlyingType(t) ?? t) switch
    {
        var x when x == typeof(int) || x == typeof(long) => "integer",
        var x when x == typeof(double) => "number",
        var x when x == typeof(string) => "string",
        var x when x == typeof(bool) => "boolean",
        var x when x.IsArray => $"list of {Describe(x.GetElementType()!)}s",
        var x => x.Name,
    };

    /// <summary>
    /// The spec of an edit of an inverted photo, which samples exactly as the inversion assumed: DDIM, its steps and
    /// guidance, from its x_T, starting from its prompt. <paramref name="stepsOrGuidanceGiven"/>: the user set steps or
    /// guidance explicitly (then they must equal the inversion's).
    /// </summary>
    public EditSpec ForInversion(string prompt, int steps, double guidance, bool stepsOrGuidanceGiven)
    {
        if (Prompts[0] != prompt)
            throw new UserError($"The inversion was made for the prompt \"{prompt}\"; an edit of it must start from that prompt (got \"{Prompts[0]}\"). Start from its prompt or invert again.");
        if (stepsOrGuidanceGiven && (Steps != steps || GuidanceScale != guidance))
            throw new UserError($"The inversion was made with {steps} steps and guidance {guidance}; the edit must use the same. Drop the steps/guidance or invert again.");
        if (Scheduler is not null and not "ddim")
            throw new UserError($"Edits of inverted photos sample with DDIM, as the inversion does; the scheduler {Scheduler} cannot be used.");
        if (Latent is not null) throw new UserError("A latent cannot be combined with an inversion: x_T comes from the inversion.");
        return this with { Steps = steps, GuidanceScale = guidance, Scheduler = "ddim" };
    }

    /// <summary>The whole spec as JSON, for the PNG metadata of every image it produces.</summary>
    public string ToJson(long? seed)
    {
        var o = Edit.ToJson();
        o["prompts"] = new JsonArray(Prompts.Select(p => (JsonNode)p).ToArray());
        o["steps"] = Steps;
        o["guidance_scale"] = GuidanceScale;
        if (Scheduler is not null) o["scheduler"] = Scheduler;
        if (seed is not null) o["seed"] = seed;
        if (Latent is not null) o["latent"] = Latent;
        if (Width is not null) o["width"] = Width;
        if (Height is not null) o["height"] = Height;
        if (NegativePrompt.Length > 0) o["negative_prompt"] = NegativePrompt;
        if (Model is not null) o["model"] = Model;
        if (SizeConditioning is { } c)
        {
            if (c.OriginalSize is { } os) o["original_size"] = new JsonArray(os.Height, os.Width);
            if (c.CropTopLeft is { } cc) o["crops_coords_top_left"] = new JsonArray(cc.Top, cc.Left);
            if (c.TargetSize is { } ts) o["target_size"] = new JsonArray(ts.Height, ts.Width);
        }
        return o.ToJsonString();
    }
}
