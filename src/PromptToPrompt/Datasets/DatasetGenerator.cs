using System.Diagnostics;
using System.Globalization;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using PromptToPrompt.Control;
using PromptToPrompt.Editing;
using PromptToPrompt.Imaging;
using PromptToPrompt.Loading;
using PromptToPrompt.Pipelines;
using PromptToPrompt.Training;

namespace PromptToPrompt.Datasets;

/// <summary>
/// How the pair of a sample is made. <see cref="InstructPix2Pix"/>: the authors' dataset script — self-attention of the
/// edited branch replaced by the source's for the first fraction p ~ U(self range) of the steps, no cross-attention
/// injection, guidance ~ U(guidance range). <see cref="PromptToPrompt"/>: the Prompt-to-Prompt paper's edit — word swap
/// (same word count) or refinement, cross-attention injected for a fraction ~ U(cross range) and self-attention for
/// ~ U(self range) of the steps.
/// </summary>
public enum PairSchedule { InstructPix2Pix, PromptToPrompt }

/// <summary>
/// Where a pair's input image comes from. <see cref="Model"/>: generated from the input caption (the paper's pairs, both
/// sides generated). <see cref="Drawn"/>: the input caption drawn by the scene generator (<see cref="Scenes.Draw"/>;
/// captions of its grammar only), inverted with direct inversion and edited from there, so the pair's input is the
/// drawn scene itself — what an instruction model is given at use on photos rather than generations.
/// </summary>
public enum PairSource { Model, Drawn }

/// <summary>The settings of a dataset run. Every field that changes the output is recorded in the run's dataset.json.</summary>
public sealed record DatasetSettings
{
    public int SamplesPerPrompt { get; init; } = 100;
    public int Keep { get; init; } = 4;
    public int Steps { get; init; } = 50;
    /// <summary>Image size (null: the model's).</summary>
    public int? Size { get; init; }
    public long Seed { get; init; }
    public PairSchedule Schedule { get; init; } = PairSchedule.InstructPix2Pix;
    public PairSource Source { get; init; } = PairSource.Model;
    public (double Min, double Max) SelfRange { get; init; } = (0.1, 0.9);
    public (double Min, double Max) CrossRange { get; init; } = (0.6, 0.9);
    public (double Min, double Max) GuidanceRange { get; init; } = (7.5, 15);
    /// <summary>shapes, clip (with a <see cref="ClipPairFilter"/> given to the generator) or none.</summary>
    public string Filter { get; init; } = "shapes";
    /// <summary>The shapes filter's least instructed-change measure and kept-object IoU (<see cref="ShapesPairFilter.MinIoU"/> by default).</summary>
    public double ShapesMinIoU { get; init; } = ShapesPairFilter.MinIoU;
    public string? Scheduler { get; init; }
    /// <summary>Also write the pairs the filter rejected, under rejected/{index:07d}/ (for inspecting the filter; not part of the dataset).</summary>
    public bool SaveRejected { get; init; }

    public void Validate()
    {
        if (SamplesPerPrompt < 1) throw new UserError($"--samples-per-prompt must be at least 1; got {SamplesPerPrompt}.");
        if (Keep < 1) throw new UserError($"--keep must be at least 1; got {Keep}.");
        if (Steps < 1) throw new UserError($"--steps must be at least 1; got {Steps}.");
        if (Filter is not ("shapes" or "clip" or "none")) throw new UserError($"Unknown --filter '{Filter}'. Use shapes, clip or none.");
        if (!(ShapesMinIoU is >= 0 and <= 1)) throw new UserError($"--shapes-min-iou must be between 0 and 1; got {ShapesMinIoU}.");
        if (Source == PairSource.Drawn && Scheduler is not (null or "ddim"))
            throw new UserError($"--source drawn edits from a direct inversion, which samples with DDIM; drop --scheduler {Scheduler}.");
        if (ShapesMinIoU != ShapesPairFilter.MinIoU && Filter != "shapes") throw new UserError("--shapes-min-iou sets the shapes filter's threshold; it needs --filter shapes.");
        foreach (var (name, (lo, hi), max) in new[] { ("--self-range", SelfRange, 1.0), ("--cross-range", CrossRange, 1.0), ("--guidance-range", GuidanceRange, 100.0) })
            if (!(lo >= 0 && lo <= hi && hi <= max)) throw new UserError($"{name} {lo},{hi}: give MIN,MAX with 0 <= MIN <= MAX <= {max}.");
    }
}

/// <summary>Which records a worker does: record i belongs to shard i mod Count.</summary>
public readonly record struct Shard(int Index, int Count)
{
    public bool Owns(int record) => record % Count == Index;

    /// <summary>
    /// The shard from the options, else from the environment: Slurm job arrays (SLURM_ARRAY_TASK_ID minus
    /// SLURM_ARRAY_TASK_MIN, of SLURM_ARRAY_TASK_COUNT), Kubernetes Indexed Jobs (JOB_COMPLETION_INDEX, with the count from
    /// P2P_SHARD_COUNT), else the whole run.
    /// </summary>
    public static Shard Resolve(int? index, int? count, Func<string, string?>? env = null)
    {
        env ??= Environment.GetEnvironmentVariable;
        int? Env(string name) => int.TryParse(env(name), out var v) ? v : null;
        if (index is null && count is null)
        {
            if (Env("SLURM_ARRAY_TASK_ID") is { } task)
                (index, count) = (task - (Env("SLURM_ARRAY_TASK_MIN") ?? 0), Env("SLURM_ARRAY_TASK_COUNT"));
            else if (Env("JOB_COMPLETION_INDEX") is { } completion)
                (index, count) = (completion, Env("P2P_SHARD_COUNT") ?? throw new UserError(
                    "JOB_COMPLETION_INDEX is set (a Kubernetes Indexed Job) but the shard count is not: set P2P_SHARD_COUNT to the Job's completions, or pass --shard-count."));
        }
        var shard = new Shard(index ?? 0, count ?? 1);
        if (shard.Count < 1 || shard.Index < 0 || shard.Index >= shard.Count)
            throw new UserError($"Shard {shard.Index} of {shard.Count} does not exist: give --shard-index K --shard-count N with 0 <= K < N.");
        return shard;
    }
}

/// <summary>Progress of a dataset worker.</summary>
/// <see cref="Samples"/> counts the samples made in this run, <see cref="InRecord"/> those of the record under way.
public readonly record struct DatasetProgress(int RecordsDone, int RecordsTotal, int PairsKept, int Samples, int InRecord, int SamplesPerRecord, TimeSpan Elapsed)
{
    /// <summary>From this run's rate of samples.</summary>
    public TimeSpan Remaining => Samples == 0 ? TimeSpan.Zero
        : TimeSpan.FromSeconds(Elapsed.TotalSeconds / Samples * ((double)(RecordsTotal - RecordsDone) * SamplesPerRecord - InRecord));
}

/// <summary>
/// Makes InstructPix2Pix training pairs: for each triplet of this worker's shard, <see cref="DatasetSettings.SamplesPerPrompt"/>
/// Prompt-to-Prompt pairs (input caption -> output caption), each with its own seed and parameters drawn from (run seed,
/// record, sample) — so a record's output never depends on the sharding — filtered, the best kept, written in the
/// authors' layout (<c>{index:07d}/prompt.json</c>, <c>{seed}_0.jpg</c>, <c>{seed}_1.jpg</c>, <c>metadata.jsonl</c>).
/// A record is committed atomically (a temporary folder renamed into place); a rerun skips committed records.
/// </summary>
public sealed class DatasetGenerator(StableDiffusionModel model, DatasetSettings settings, Action<string>? log = null, ClipPairFilter? clip = null)
{
    public const string ManifestName = "dataset.json";
    public const int Format = 1;

    /// <summary>The seed of sample <paramref name="sample"/> of record <paramref name="record"/>.</summary>
    public static int SampleSeed(long runSeed, int record, int sample) => Scenes.StableSeed(Scenes.StableSeed(runSeed, record), sample);

    /// <summary>The run's identity: everything that changes its output.</summary>
    JsonObject Manifest(string promptsHash, int records) => new()
    {
        ["format"] = Format, ["model"] = model.Fingerprint, ["dtype"] = model.Placement.DType.ToString().ToLowerInvariant(),
        ["prompts_sha256"] = promptsHash, ["records"] = records, ["seed"] = settings.Seed,
        ["samples_per_prompt"] = settings.SamplesPerPrompt, ["keep"] = settings.Keep, ["steps"] = settings.Steps,
        ["size"] = settings.Size ?? model.DefaultImageSize, ["schedule"] = settings.Schedule == PairSchedule.InstructPix2Pix ? "ip2p" : "p2p",
        ["self_range"] = new JsonArray(settings.SelfRange.Min, settings.SelfRange.Max),
        ["cross_range"] = new JsonArray(settings.CrossRange.Min, settings.CrossRange.Max),
        ["guidance_range"] = new JsonArray(settings.GuidanceRange.Min, settings.GuidanceRange.Max),
        ["filter"] = settings.Filter, ["scheduler"] = settings.Scheduler ?? Schedulers.Schedulers.DefaultFor(model.Scheduler),
        // null at the default, which compares equal to the key's absence in the folders of earlier runs.
        ["shapes_min_iou"] = settings.ShapesMinIoU == ShapesPairFilter.MinIoU ? null : settings.ShapesMinIoU,
        ["source"] = settings.Source == PairSource.Model ? null : "drawn",
        ["clip"] = clip is null ? null : new JsonObject
        {
            ["vision"] = JsonSerializer.SerializeToNode(clip.Model.VisionConfig), ["thresholds"] = JsonSerializer.SerializeToNode(clip.Thresholds),
        },
    };

    /// <summary>Writes the run's dataset.json, or checks that the folder's earlier run had the same settings.</summary>
    public static void CheckOrWriteManifest(string dir, JsonObject manifest)
    {
        Directory.CreateDirectory(dir);
        var path = Path.Combine(dir, ManifestName);
        if (File.Exists(path))
        {
            var earlier = JsonNode.Parse(File.ReadAllText(path)) as JsonObject ?? new JsonObject();
            var differing = manifest.Select(p => p.Key).Where(k => earlier[k]?.ToJsonString() != manifest[k]?.ToJsonString()).ToList();
            if (differing.Count > 0)
                throw new UserError($"{dir} holds a run with other settings ({string.Join(", ", differing.Select(k => $"{k}: {earlier[k]?.ToJsonString() ?? "absent"} there, {manifest[k]?.ToJsonString()} now"))}). " +
                                    "Use another --out folder, or the same settings to resume it.");
            return;
        }
        AtomicFile.Write(path, s => s.Write(Encoding.UTF8.GetBytes(manifest.ToJsonString(new JsonSerializerOptions { WriteIndented = true }) + "\n")));
    }

    public static string RecordName(int index) => index.ToString("D7", CultureInfo.InvariantCulture);
    static string FailedPath(string dir, int index) => Path.Combine(dir, "failed", RecordName(index) + ".json");
    public static bool IsDone(string dir, int index) => Directory.Exists(Path.Combine(dir, RecordName(index))) || File.Exists(FailedPath(dir, index));

    /// <summary>Runs this worker's records of <paramref name="promptsPath"/> into <paramref name="dir"/>; returns the pairs kept.</summary>
    public int Run(string promptsPath, string dir, Shard shard, bool skipBadLines = false, IProgress<DatasetProgress>? progress = null, CancellationToken cancel = default)
    {
        settings.Validate();
        model.RequireTextToImage();
        if (settings.Filter == "clip" && clip is null) throw new UserError("--filter clip needs --clip-model DIR (a Hugging Face CLIP folder such as openai/clip-vit-large-patch14).");
        var records = TripletFile.Read(promptsPath, skipBadLines, log);
        var hash = Convert.ToHexString(SHA256.HashData(File.ReadAllBytes(promptsPath))).ToLowerInvariant();
        CheckOrWriteManifest(dir, Manifest(hash, records.Count == 0 ? 0 : records[^1].Index + 1));
        var mine = records.Where(r => shard.Owns(r.Index)).ToList();
        int done = mine.Count(r => IsDone(dir, r.Index)), kept = 0, samples = 0, inRecord = 0;
        int n = settings.SamplesPerPrompt;
        if (done > 0) log?.Invoke($"resuming: {done} of this shard's {mine.Count} records are already done");
        var clock = Stopwatch.StartNew();
        foreach (var (index, triplet) in mine)
        {
            if (IsDone(dir, index)) continue;
            cancel.ThrowIfCancellationRequested();
            inRecord = 0;
            kept += Record(dir, index, triplet, () => progress?.Report(new DatasetProgress(done, mine.Count, kept, ++samples, ++inRecord, n, clock.Elapsed)), cancel);
            progress?.Report(new DatasetProgress(++done, mine.Count, kept, samples, 0, n, clock.Elapsed));
        }
        return kept;
    }

    /// <summary>All samples of one record, filtered, the best committed; a record whose captions make no edit is recorded as failed.</summary>
    int Record(string dir, int index, Triplet triplet, Action sampleDone, CancellationToken cancel)
    {
        var results = new List<(int Seed, int Sample, RgbImage Source, RgbImage Edit, JsonObject Metadata, PairScore Score)>();
        try
        {
            if (triplet.Input.Trim() == triplet.Output.Trim()) throw new UserError("the input and output captions are the same, so there is nothing to edit.");
            for (int s = 0; s < settings.SamplesPerPrompt; s++)
            {
                cancel.ThrowIfCancellationRequested();
                results.Add(Sample(index, s, triplet, cancel));
                sampleDone();
            }
        }
        catch (UserError e)
        {
            Directory.CreateDirectory(Path.Combine(dir, "failed"));
            AtomicFile.Write(FailedPath(dir, index), st => st.Write(Encoding.UTF8.GetBytes(JsonSerializer.Serialize(new { index, reason = e.Message, record = triplet.Json }) + "\n")));
            log?.Invoke($"record {index}: skipped ({e.Message})");
            return 0;
        }
        var best = results.Where(r => r.Score.Keep).OrderByDescending(r => r.Score.Score).ThenBy(r => r.Sample).Take(settings.Keep).ToList();
        string Temporary() => Path.Combine(dir, $".tmp-{RecordName(index)}-{Environment.ProcessId}-{Guid.NewGuid():N}");
        void Commit(string tmp, string target)
        {
            try { Directory.Move(tmp, target); }
            catch (IOException) when (Directory.Exists(target))
            {
                Directory.Delete(tmp, true); // another worker committed the same record first: its output is the same
            }
        }
        void WritePairs(string folder, IEnumerable<(int Seed, int Sample, RgbImage Source, RgbImage Edit, JsonObject Metadata, PairScore Score)> pairs)
        {
            Directory.CreateDirectory(folder);
            File.WriteAllText(Path.Combine(folder, "prompt.json"), triplet.Json);
            var lines = new StringBuilder();
            foreach (var r in pairs)
            {
                File.WriteAllBytes(Path.Combine(folder, $"{r.Seed}_0.jpg"), Jpeg.Encode(r.Source));
                File.WriteAllBytes(Path.Combine(folder, $"{r.Seed}_1.jpg"), Jpeg.Encode(r.Edit));
                lines.Append(r.Metadata.ToJsonString()).Append('\n');
            }
            File.WriteAllText(Path.Combine(folder, "metadata.jsonl"), lines.ToString());
        }
        if (settings.SaveRejected)
        {
            var rejected = Path.Combine(dir, "rejected", RecordName(index));
            if (Directory.Exists(rejected)) Directory.Delete(rejected, true); // from a run killed before its record was committed
            var tmpRejected = Temporary();
            WritePairs(tmpRejected, results.Where(r => !best.Contains(r)).OrderBy(r => r.Sample)
                .Select(r => r with { Metadata = new JsonObject(r.Metadata.Select(p => KeyValuePair.Create(p.Key, p.Value?.DeepClone())).Append(KeyValuePair.Create("passed", (JsonNode?)r.Score.Keep))) }));
            Directory.CreateDirectory(Path.Combine(dir, "rejected"));
            Commit(tmpRejected, rejected);
        }
        var tmp = Temporary();
        WritePairs(tmp, best);
        Commit(tmp, Path.Combine(dir, RecordName(index)));
        return best.Count;
    }

    (int Seed, int Sample, RgbImage Source, RgbImage Edit, JsonObject Metadata, PairScore Score) Sample(int index, int sample, Triplet triplet, CancellationToken cancel)
    {
        int seed = SampleSeed(settings.Seed, index, sample);
        var rng = new Random(seed);
        double Uniform((double Min, double Max) range) => range.Min + rng.NextDouble() * (range.Max - range.Min);
        double self = Uniform(settings.SelfRange), guidance = Uniform(settings.GuidanceRange);
        double cross = settings.Schedule == PairSchedule.PromptToPrompt ? Uniform(settings.CrossRange) : 0;
        // A word swap where the captions have the same words count and cross-attention is injected; else a refinement
        // (with self-attention alone the word alignment plays no part).
        bool sameLength = triplet.Input.Split(' ', StringSplitOptions.RemoveEmptyEntries).Length == triplet.Output.Split(' ', StringSplitOptions.RemoveEmptyEntries).Length;
        var edit = new EditDescription
        {
            Edit = sameLength && cross > 0 ? EditKind.Replace : EditKind.Refine, CrossReplaceSteps = cross, SelfReplaceSteps = StepWindow.Until(self),
        };
        int size = settings.Size ?? model.DefaultImageSize;
        // --source drawn: the caption drawn, inverted, and the edit made from the inversion.
        var drawn = settings.Source == PairSource.Drawn ? Draw(triplet.Input, size, rng) : null;
        using var inverted = drawn is null ? null : new InvertedImageSession(model, drawn, triplet.Input,
            new InversionSettings(InversionMethod.Direct, settings.Steps, GuidanceScale: guidance), "drawn scene", cancel, log);
        var session = inverted?.Session ?? new EditSession(model, new SourceSettings
        {
            Prompt = triplet.Input, Seed = seed, Steps = settings.Steps, GuidanceScale = guidance, Scheduler = settings.Scheduler, Width = size, Height = size,
        }, log: log);
        using var result = session.Edit(new EditRequest([triplet.Output], edit), cancel: cancel);
        // A drawn pair's input is the drawn scene (its source branch is the scene's VAE round trip).
        var input = drawn ?? result.Images[0];
        var score = settings.Filter switch
        {
            "shapes" => ShapesPairFilter.Score(triplet, input, result.Images[1], settings.ShapesMinIoU),
            "clip" => clip!.Score(triplet, input, result.Images[1]),
            _ => new PairScore(true, 0, new Dictionary<string, double>()),
        };
        var metadata = new JsonObject { ["seed"] = seed, ["p2p_threshold"] = Math.Round(self, 6), ["cfg_scale"] = Math.Round(guidance, 6) };
        if (settings.Schedule == PairSchedule.PromptToPrompt)
        {
            metadata["cross_replace_steps"] = Math.Round(cross, 6);
            metadata["edit"] = edit.Edit.ToString().ToLowerInvariant();
        }
        foreach (var (k, v) in score.Measures) metadata[k] = v;
        return (seed, sample, input, result.Images[1], metadata, score);
    }

    static RgbImage Draw(string caption, int size, Random rng)
    {
        var scene = Scenes.ParseCaption(caption) ?? throw new UserError(
            $"--source drawn draws the input caption with the scene generator, and '{caption}' is not a caption of its grammar (p2p dataset prompts writes such captions).");
        return new Scenes(size).Draw(scene.Objects, scene.Background, scene.Striped, rng).Image;
    }
}
