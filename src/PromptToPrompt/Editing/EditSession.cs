using PromptToPrompt.Control;
using PromptToPrompt.Imaging;
using PromptToPrompt.Loading;
using PromptToPrompt.Pipelines;
using TorchSharp;
using static TorchSharp.torch;

namespace PromptToPrompt.Editing;

/// <summary>
/// The source of an editing session: a prompt with a seed (or x_T), or an inverted photo (x_T with its per-step null
/// embeddings, or its DDIM trajectory for direct inversion), and the sampling settings every edit of it shares.
/// </summary>
public sealed record SourceSettings
{
    public required string Prompt { get; init; }
    public string NegativePrompt { get; init; } = "";
    public long Seed { get; init; }
    /// <summary>x_T [1, C, h, w]; when given, the seed is not used.</summary>
    public Tensor? InitialLatent { get; init; }
    public int Steps { get; init; } = 50;
    public double GuidanceScale { get; init; } = 7.5;
    /// <summary>pndm, ddim, euler or dpmpp-2m; null = the model's own.</summary>
    public string? Scheduler { get; init; }
    public int? Width { get; init; }
    public int? Height { get; init; }
    /// <summary>The reference variant of the edits: it sets which self-attention layers an edit replaces, hence what is recorded.</summary>
    public ReferenceVariant Variant { get; init; } = ReferenceVariant.PromptToPrompt;
    /// <summary>Also record self-attention maps up to this many queries (for self-attention views of the source).</summary>
    public int ExtraSelfPixels { get; init; }
    /// <summary>Per-step unconditional embeddings [steps, 1, L, D] (null-text or negative-prompt inversion).</summary>
    public Tensor? NullEmbeddings { get; init; }
    /// <summary>
    /// Direct inversion (Ju et al. 2023): the DDIM-inverted latents [steps + 1, C, h, w] (index 0 the photo's latent,
    /// the last x_T); after every step the source latent is put back onto them.
    /// </summary>
    public Tensor? DirectTrajectory { get; init; }
    /// <summary>Storage of the recorded attention (null: the model's dtype).</summary>
    public ScalarType? CacheStorage { get; init; }
    /// <summary>Where the source came from (an inversion file, a photo), for the PNG metadata.</summary>
    public string? Origin { get; init; }
    /// <summary>
    /// Attend-and-Excite on the source (a generated one): its latent is moved at the first steps so every subject gets
    /// an attention peak; the edits take that source's maps and latents from the recording.
    /// </summary>
    public ExciteSettings? Excite { get; init; }
    /// <summary>Directed Diffusion on the source (a generated one): its objects placed in boxes; the edits inject the placed maps.</summary>
    public DirectedSettings? Boxes { get; init; }
    /// <summary>SDXL micro-conditioning of the source and its edits; null = diffusers' defaults.</summary>
    public SizeConditioning? SizeConditioning { get; init; }

    public bool Guided => Excite is not null || Boxes is not null;

    /// <summary>The error for guidance asked of an inverted photo's source.</summary>
    public static UserError GuidedInversionError() =>
        new("Attend-and-Excite and Directed Diffusion guide a generated source; an inverted photo's source is fixed by its inversion. Drop --excite/--box.");

    /// <summary>The source of a spec's prompts: its first prompt, seed (or x_T) and generation settings.</summary>
    public static SourceSettings FromSpec(EditSpec s, Tensor? initialLatent, long seed) => new()
    {
        Prompt = s.Prompts[0], NegativePrompt = s.NegativePrompt, Seed = seed, InitialLatent = initialLatent, Steps = s.Steps,
        GuidanceScale = s.GuidanceScale, Scheduler = s.Scheduler, Width = s.Width, Height = s.Height, Variant = s.Edit.Variant,
        SizeConditioning = s.SizeConditioning,
    };
}

/// <summary>One edit of the session's source: its target prompts and the edit (one controller over source + targets).</summary>
public sealed record EditRequest(IReadOnlyList<string> Targets, EditDescription Edit);

/// <summary>
/// An edit's outcome: prompts and images (source first), final latents [N, C, h, w] (float32, CPU), the controller
/// (with what it stored for attention views), and the PNG metadata that reproduces it.
/// </summary>
public sealed record EditResult(IReadOnlyList<string> Prompts, RgbImage[] Images, Tensor Latents, AttentionStore Controller,
                                IReadOnlyDictionary<string, string> Metadata, EditSpec Spec) : IDisposable
{
    /// <summary>File names of an edit's images in its folder: <c>prompt_0.png</c> (the source), <c>prompt_1.png</c>, ..., <c>grid.png</c>.</summary>
    public static IReadOnlyList<string> FileNames(int prompts) => [.. Enumerable.Range(0, prompts).Select(i => $"prompt_{i}.png"), "grid.png"];

    /// <summary>
    /// Writes <see cref="FileNames"/> into <paramref name="folder"/> (each atomically, with the metadata that reproduces
    /// it); the grid is captioned with the prompts and starts with <paramref name="photo"/> (an inverted photo as fitted)
    /// when given. Returns the paths.
    /// </summary>
    public IReadOnlyList<string> Save(string folder, RgbImage? photo = null)
    {
        var names = FileNames(Prompts.Count);
        var paths = names.Select(n => Path.Combine(folder, n)).ToList();
        for (int i = 0; i < Prompts.Count; i++)
            Png.Save(paths[i], Images[i], new Dictionary<string, string>(Metadata) { ["prompt"] = Prompts[i], ["role"] = i == 0 ? "source" : $"target {i}" });
        Png.Save(paths[^1], photo is null ? Grid.WithCaptions(Images, Prompts) : Grid.WithCaptions([photo, .. Images], ["input photo", .. Prompts]), Metadata);
        return paths;
    }

    /// <summary>
    /// Writes the attention views of every prompt (<see cref="AttentionReport.Images"/>, named <c>attention_I_...png</c>)
    /// into <paramref name="folder"/>, each with the edit's metadata; <paramref name="views"/> as the edit ran with them.
    /// Returns (prompt index, file name) in order.
    /// </summary>
    public List<(int Prompt, string Name)> SaveAttention(string folder, Text.ClipTokenizer tokenizer, AttentionViewOptions views)
    {
        var files = new List<(int, string)>();
        for (int i = 0; i < Prompts.Count; i++)
            foreach (var (name, picture) in AttentionReport.Images(Controller, tokenizer, Prompts[i], i, Images[i], views, $"attention_{i}_"))
            {
                Png.Save(Path.Combine(folder, name), picture, new Dictionary<string, string>(Metadata) { ["prompt"] = Prompts[i] });
                files.Add((i, name));
            }
        return files;
    }

    public void Dispose()
    {
        Latents.Dispose();
        Controller.Dispose();
    }
}

/// <summary>
/// The editing layer every front end calls. Opened on a model and a source; runs the source, edits of it, sweeps and
/// attention views, with progress and cancellation. With a <see cref="SourceCache"/> the source is recorded once
/// (<see cref="SourceTrajectory"/>) and every edit runs its target prompts alone, taking the source's side from the
/// recording; without one, each edit runs source and targets in one batch, as the reference does.
/// </summary>
public sealed class EditSession
{
    readonly StableDiffusionModel _model;
    readonly StableDiffusionPipeline _pipeline;
    readonly Action<string>? _log;
    SourceKey? _key;
    TrajectoryPlan? _plan;

    public SourceSettings Source { get; }
    public SourceCache? Cache { get; }
    public string SchedulerName { get; }
    public int Width { get; }
    public int Height { get; }
    /// <summary>UNet evaluations per run (PNDM makes one more than the steps).</summary>
    public int Evaluations { get; }
    public StableDiffusionModel Model => _model;
    public StableDiffusionPipeline Pipeline => _pipeline;

    public EditSession(StableDiffusionModel model, SourceSettings source, SourceCache? cache = null, Action<string>? log = null)
    {
        _model = model;
        _pipeline = new StableDiffusionPipeline(model, log);
        _log = log;
        Source = source;
        Cache = cache;
        model.RequireTextToImage();
        if (source.Steps < 1) throw new UserError($"steps must be at least 1; got {source.Steps}.");
        StableDiffusionPipeline.CheckGuidance(source.GuidanceScale);
        Schedulers.Schedulers.CheckName(source.Scheduler);
        SchedulerName = source.Scheduler ?? Schedulers.Schedulers.DefaultFor(model.Scheduler);
        StableDiffusionPipeline.CheckDeterministic(SchedulerName);
        (Width, Height) = _pipeline.ResolveSize(source.Width, source.Height, source.InitialLatent);
        if (source.InitialLatent is { } x) _pipeline.CheckLatent(x, Width, Height, 1);
        Evaluations = _pipeline.Evaluations(SchedulerName, source.Steps);
        if (source.Guided && (source.NullEmbeddings is not null || source.DirectTrajectory is not null))
            throw SourceSettings.GuidedInversionError();
        if (source.DirectTrajectory is { } d)
        {
            if (SchedulerName != "ddim") throw new UserError($"Direct inversion samples with DDIM; --scheduler {SchedulerName} cannot be used.");
            if (d.dim() != 4 || d.shape[0] != Evaluations + 1 || d.shape[2] != Height / model.VaeScale || d.shape[3] != Width / model.VaeScale)
                throw new UserError($"The direct-inversion trajectory has shape [{string.Join(", ", d.shape)}] but {source.Steps} steps at {Width}x{Height} need " +
                                    $"[{Evaluations + 1}, {model.LatentChannels}, {Height / model.VaeScale}, {Width / model.VaeScale}]. Invert the photo again.");
        }
    }

    ScalarType Storage => Source.CacheStorage ?? _model.Placement.DType;

    /// <summary>The self-attention the source keeps: what its edits replace (<see cref="EditSchedule.ReplacesSelf"/>), or more when an attention view asks.</summary>
    int SelfMaxPixels => Math.Max(EditSchedule.SelfReplaceMaxPixels(Source.Variant, _model.UNet, Height / _model.VaeScale, Width / _model.VaeScale), Source.ExtraSelfPixels);

    /// <summary>What the recorded source holds and costs (see <see cref="TrajectoryPlan.Bytes"/>).</summary>
    public TrajectoryPlan Plan => _plan ??= TrajectoryPlan.For(_model.UNet, Height / _model.VaeScale, Width / _model.VaeScale, _model.Tokenizer.MaxLength,
        Evaluations, SelfMaxPixels, Storage,
        crossMaps: Source.Boxes is not null, shifted: Source.Excite is not null);

    /// <summary>The key of this source in a <see cref="SourceCache"/>.</summary>
    public SourceKey Key => _key ??= SourceKey.Of(KeyFields());

    Dictionary<string, object?> KeyFields()
    {
        var fields = new Dictionary<string, object?>
        {
            ["format"] = SourceCache.Format,
            ["model"] = _model.Fingerprint,
            ["dtype"] = _model.Placement.DType.ToString().ToLowerInvariant(),
            ["device"] = _model.Placement.Device.type.ToString().ToLowerInvariant(),
            ["prompt"] = Source.Prompt,
            ["negative_prompt"] = Source.NullEmbeddings is null ? Source.NegativePrompt : null,
            ["seed"] = Source.InitialLatent is null ? Source.Seed : null,
            ["x_T"] = SourceKey.TensorHash(Source.InitialLatent),
            ["steps"] = Source.Steps,
            ["guidance_scale"] = Source.GuidanceScale,
            ["scheduler"] = SchedulerName,
            ["width"] = Width,
            ["height"] = Height,
            ["self_max_pixels"] = SelfMaxPixels,
            ["storage"] = Storage.ToString().ToLowerInvariant(),
            ["null_embeddings"] = SourceKey.TensorHash(Source.NullEmbeddings),
            ["direct_trajectory"] = SourceKey.TensorHash(Source.DirectTrajectory),
        };
        // Only guided sources name their guidance, so the keys of plain sources stay what they were.
        if (Source.Excite is not null) fields["attend_and_excite"] = Source.Excite;
        if (Source.Boxes is not null) fields["directed_diffusion"] = Source.Boxes;
        if (Source.SizeConditioning is { } sizes) fields["size_conditioning"] = sizes.Describe(Width, Height);
        return fields;
    }

    /// <summary>The run of <paramref name="prompts"/> from this source; <paramref name="source"/>: the source prompt's own run, which the source's guidance steers.</summary>
    GenerationRequest Request(IReadOnlyList<string> prompts, bool source = false) => new()
    {
        Prompts = prompts, NegativePrompt = Source.NegativePrompt, Steps = Source.Steps, GuidanceScale = Source.GuidanceScale,
        Scheduler = SchedulerName, Seed = Source.Seed, InitialLatent = Source.InitialLatent, Width = Width, Height = Height,
        UnconditionalEmbeddings = Source.NullEmbeddings, Excite = source ? Source.Excite : null, Boxes = source ? Source.Boxes : null,
        SizeConditioning = Source.SizeConditioning,
    };

    /// <summary>The spec that reproduces an edit of this source (its PNG metadata).</summary>
    public EditSpec SpecOf(EditRequest request) => new()
    {
        Prompts = [Source.Prompt, .. request.Targets], Edit = request.Edit, Steps = Source.Steps, GuidanceScale = Source.GuidanceScale,
        Scheduler = SchedulerName, Seed = Source.InitialLatent is null ? Source.Seed : null, Width = Width, Height = Height,
        NegativePrompt = Source.NegativePrompt, Model = _model.Location, SizeConditioning = Source.SizeConditioning,
    };

    Dictionary<string, string> Metadata(EditSpec spec)
    {
        var text = _pipeline.Parameters(Request(spec.Prompts, source: true), SchedulerName, Width, Height);
        text["prompt-to-prompt"] = spec.ToJson(Source.InitialLatent is null ? Source.Seed : null);
        if (Source.Guided) text["source-guidance"] = System.Text.Json.JsonSerializer.Serialize(StableDiffusionPipeline.GuidanceRecord(Source.Excite, Source.Boxes));
        if (Source.Origin is not null) text["inversion"] = Source.Origin;
        return text;
    }

    /// <summary>
    /// The recorded source (from the cache, or computed now and kept there). Needs a cache; the first call costs one
    /// generation of the source prompt, later ones nothing.
    /// </summary>
    public CachedSource Recorded(IProgress<StepProgress>? progress = null, CancellationToken cancel = default)
    {
        var cache = Cache ?? throw new InvalidOperationException("This session has no source cache.");
        var plan = Plan;
        return cache.GetOrCompute(Key, plan, _model.Placement.Device, () =>
        {
            var trajectory = SourceTrajectory.Allocate(plan, _model.Placement.Device);
            try
            {
                using var direct = Source.DirectTrajectory?.to(ScalarType.Float32).to(_model.Placement.Device);
                var recorder = new SourceRecorder(trajectory, direct);
                var result = _pipeline.Generate(Request([Source.Prompt], source: true), progress, recorder, cancel);
                result.Latents.Dispose();
                if (result.Excite is { Count: > 0 } excited) _log?.Invoke(AttendAndExcite.Summary(excited));
                _log?.Invoke($"cache: recorded the source ({TrajectoryPlan.Megabytes(plan.Bytes)})");
                return new CachedSource(trajectory, result.Images[0]);
            }
            catch
            {
                trajectory.Dispose();
                throw;
            }
        });
    }

    /// <summary>
    /// Resolves attention views against this source (grid, steps) and returns the session that records what they
    /// need: this one, or one that also keeps the self-attention maps the views' components read.
    /// </summary>
    public (EditSession Session, AttentionViewOptions Views) ForViews(AttentionViewOptions views)
    {
        var resolved = views.ForRun(_model, Width, Height, Evaluations);
        int self = resolved.StoreSettings.SelfMaxPixels;
        return (self <= SelfMaxPixels ? this : new EditSession(_model, Source with { ExtraSelfPixels = self }, Cache, _log), resolved);
    }

    /// <summary>
    /// Runs one edit. <paramref name="views"/> (resolved with <see cref="AttentionViewOptions.ForRun"/>): also keep what
    /// these attention views need. A request without targets and a 'store' edit gives the source with its attention.
    /// </summary>
    public EditResult Edit(EditRequest request, AttentionViewOptions? views = null, IProgress<StepProgress>? progress = null, CancellationToken cancel = default) =>
        Cache is null ? Batched(request, views, progress, cancel) : EditAll([request], int.MaxValue, views, progress, cancel)[0];

    EditResult Batched(EditRequest request, AttentionViewOptions? views, IProgress<StepProgress>? progress, CancellationToken cancel)
    {
        if (Source.DirectTrajectory is not null) throw new UserError("Edits of a direct inversion take the source from the recorded inversion trajectory: open the session with a source cache.");
        bool alone = request.Targets.Count == 0;
        if (Source.Guided && !alone)
            throw new UserError("Edits of an Attend-and-Excite or Directed Diffusion source take it from its recording: open the session with a source cache.");
        var spec = SpecOf(request);
        var controller = request.Edit.Build(_model.Tokenizer, spec.Prompts, Source.Steps, views);
        try
        {
            var result = _pipeline.Generate(Request(spec.Prompts, source: alone), progress, controller, cancel);
            if (result.Excite is { Count: > 0 } excited) _log?.Invoke(AttendAndExcite.Summary(excited));
            return new EditResult(spec.Prompts, result.Images, result.Latents, controller, Metadata(spec), spec);
        }
        catch
        {
            controller.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Runs several edits of the source, taking the source from the cache: targets of up to <paramref name="batch"/>
    /// rows share one UNet batch, each edit with its own controller (schedules, mappers, blends may differ).
    /// </summary>
    public IReadOnlyList<EditResult> EditAll(IReadOnlyList<EditRequest> requests, int batch, AttentionViewOptions? views = null,
                                             IProgress<StepProgress>? progress = null, CancellationToken cancel = default)
    {
        if (Cache is null) return requests.Select(r => Batched(r, views, progress, cancel)).ToList();
        if (batch < 1) throw new UserError($"The batch size must be at least 1; got {batch}.");
        // Building every edit's controller checks it (words, windows, blends), and the budget is checked, before anything runs.
        var edits = new List<(EditRequest Request, EditSpec Spec, AttentionStore Controller)>();
        var results = new List<EditResult>();
        try
        {
            foreach (var r in requests)
            {
                var spec = SpecOf(r);
                edits.Add((r, spec, r.Edit.Build(_model.Tokenizer, spec.Prompts, Source.Steps, views)));
            }
            Cache.CheckFits(Plan);
            var source = Recorded(progress, cancel);
            using var sourceLatent = source.Trajectory.Latents[^1..].cpu();
            int next = 0;
            while (next < edits.Count)
            {
                // Fill one batch with whole edits (an edit's targets never split).
                int first = next, rows = edits[next++].Request.Targets.Count;
                while (next < edits.Count && rows + edits[next].Request.Targets.Count <= batch) rows += edits[next++].Request.Targets.Count;
                results.AddRange(RunCached(edits.GetRange(first, next - first), source, sourceLatent, progress, cancel));
            }
            return results;
        }
        catch
        {
            // Controllers already handed to results are disposed with them.
            foreach (var e in edits.Skip(results.Count)) e.Controller.Dispose();
            foreach (var r in results) r.Dispose();
            throw;
        }
    }

    List<EditResult> RunCached(List<(EditRequest Request, EditSpec Spec, AttentionStore Controller)> chunk, CachedSource source, Tensor sourceLatent,
                               IProgress<StepProgress>? progress, CancellationToken cancel)
    {
        var targets = chunk.SelectMany(e => e.Request.Targets).ToList();
        RgbImage[] images = [];
        Tensor? latents = null;
        if (targets.Count > 0)
        {
            var groups = chunk.Where(e => e.Request.Targets.Count > 0).Select(e => new CachedSourceEdit.Group(e.Controller, e.Request.Targets.Count)).ToList();
            var run = _pipeline.Generate(Request(targets), progress, new CachedSourceEdit(source.Trajectory, groups), cancel);
            (images, latents) = (run.Images, run.Latents);
        }
        // Edits without targets (attention views of the source) replay the recording.
        foreach (var e in chunk)
            if (e.Request.Targets.Count == 0) source.Trajectory.Replay(e.Controller);
        var results = new List<EditResult>();
        int offset = 0;
        using (latents)
            foreach (var (request, spec, controller) in chunk)
            {
                int n = request.Targets.Count;
                var own = n == 0 ? sourceLatent.clone() : cat([sourceLatent, latents![offset..(offset + n)]], 0);
                results.Add(new EditResult(spec.Prompts, [source.Image, .. images[offset..(offset + n)]], own, controller, Metadata(spec), spec));
                offset += n;
            }
        return results;
    }

    /// <summary>A source from an inversion file: its prompt, x_T, steps, guidance, DDIM, and null embeddings or direct trajectory.</summary>
    public static SourceSettings FromInversion(InversionFile file, ReferenceVariant variant, string origin) => new()
    {
        Prompt = file.Prompt, InitialLatent = file.XT, Steps = file.Steps, GuidanceScale = file.GuidanceScale, Scheduler = "ddim",
        Variant = variant, NullEmbeddings = file.PerStepUnconditional, DirectTrajectory = file.DdimLatents, Origin = origin,
    };

    /// <summary>A source from a fresh inversion (see <see cref="FromInversion(InversionFile, ReferenceVariant, string)"/>).</summary>
    public static SourceSettings FromInversion(InversionResult inversion, ReferenceVariant variant, string origin) => new()
    {
        Prompt = inversion.Prompt, InitialLatent = inversion.XT, Steps = inversion.Settings.Steps, GuidanceScale = inversion.Settings.GuidanceScale,
        Scheduler = "ddim", Variant = variant, NullEmbeddings = inversion.NullEmbeddings,
        DirectTrajectory = inversion.Settings.Method == InversionMethod.Direct ? inversion.DdimLatents.squeeze(1) : null, Origin = origin,
    };

    /// <summary>
    /// Inverts a photo: loads and fits it to the size (default: the model's), inverts it with its prompt, and samples
    /// the reconstruction (for direct inversion, the trajectory's end, which its source reproduces exactly).
    /// </summary>
    public static PhotoInversion InvertPhoto(StableDiffusionModel model, string imagePath, string prompt, InversionSettings settings, FitMode fit,
                                             int? width, int? height, IProgress<InversionProgress>? progress = null,
                                             IProgress<StepProgress>? reconstructionProgress = null, CancellationToken cancel = default)
    {
        settings.Validate();
        var pipeline = new StableDiffusionPipeline(model);
        var (w, h) = pipeline.ResolveSize(width, height, null);
        var fitted = ImageInput.Load(imagePath, w, h, fit);
        var inversion = new Inversion(pipeline);
        var result = inversion.Invert(fitted, prompt, settings, progress, cancel);
        var reconstruction = inversion.Reconstruct(result, reconstructionProgress, cancel);
        return new PhotoInversion(result, fitted, reconstruction);
    }
}

/// <summary>
/// An edit session on an image held in memory (a drawn scene), inverted here with its prompt: it owns the inversion and
/// the in-memory source cache its edits run through (a direct inversion's edits need one).
/// </summary>
public sealed class InvertedImageSession : IDisposable
{
    readonly InversionResult? _inversion;
    readonly SourceCache _cache = new();

    public InvertedImageSession(StableDiffusionModel model, RgbImage image, string prompt, InversionSettings settings, string origin,
                                CancellationToken cancel = default, Action<string>? log = null)
    {
        try
        {
            _inversion = new Inversion(new StableDiffusionPipeline(model, log)).Invert(image, prompt, settings, cancel: cancel);
            Session = new EditSession(model, EditSession.FromInversion(_inversion, ReferenceVariant.PromptToPrompt, origin), _cache);
        }
        catch
        {
            Dispose(); // a cancelled or refused inversion leaves nothing behind
            throw;
        }
    }

    public EditSession Session { get; }

    public void Dispose()
    {
        _cache.Dispose();
        _inversion?.Dispose();
    }
}

/// <summary>An inverted photo: the inversion, the photo as fitted, and what sampling from the inversion reproduces.</summary>
public sealed record PhotoInversion(InversionResult Result, RgbImage Fitted, RgbImage Reconstruction) : IDisposable
{
    public double Psnr => Inversion.Psnr(Fitted, Reconstruction);
    public void Dispose() => Result.Dispose();
}
