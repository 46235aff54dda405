using PromptToPrompt.Control;
using PromptToPrompt.Imaging;
using PromptToPrompt.Loading;
using PromptToPrompt.Pipelines;
using PromptToPrompt.Text;
using static TorchSharp.torch;

namespace PromptToPrompt.Editing;

/// <summary>Limits of an interactive editor: queued jobs, uploads, image size, kept results and the source cache.</summary>
public sealed record EditorLimits(int QueueCapacity = 8, long MaxUploadBytes = 20L << 20, long MaxPixels = 4096L * 4096, int KeptResults = 32,
                                  long CacheBudgetMb = SourceCache.DefaultBudgetMb);

/// <summary>How a target prompt differs from the source, word by word, and the edit that implies.</summary>
/// <param name="Words">The target's words with what each is: <c>same</c>, <c>swapped</c> (replace) or <c>added</c> (refine).</param>
/// <param name="Removed">Source words a refinement drops.</param>
public sealed record PromptDiff(EditKind Edit, IReadOnlyList<(string Word, string Change)> Words, IReadOnlyList<string> Removed, string Note);

/// <summary>One token of a prompt: its position in the encoded sequence (0 is the start token), its text and word.</summary>
public sealed record PromptToken(int Position, string Text, int Word);

/// <summary>
/// The application service of an interactive front end (the web editor): one model, one memory source cache, an
/// output folder and a job queue. Every operation is checked before it is queued (a <see cref="UserError"/> for bad
/// input) and then runs as a job writing into its own folder. Edits of one source share its recorded trajectory, so
/// the first generation records the source and every later edit runs its targets alone.
/// </summary>
public sealed class Editor : IDisposable
{
    readonly StableDiffusionModel _model;
    readonly SourceCache _cache;
    readonly Action<string>? _log;
    readonly object _gate = new();
    readonly Dictionary<string, EditResult> _results = new();
    readonly Queue<string> _resultOrder = new();
    readonly Dictionary<string, PhotoInversion> _photos = new();
    readonly LatentPreview _preview = new();

    /// <summary>
    /// An editor of the model <paramref name="load"/> makes, loaded on the job thread so that one thread does all the
    /// model's work (see <see cref="JobQueue"/>); the editor disposes it.
    /// </summary>
    public Editor(Func<StableDiffusionModel> load, string outputFolder, EditorLimits? limits = null, Action<string>? log = null)
    {
        Limits = limits ?? new EditorLimits();
        _log = log;
        OutputFolder = outputFolder;
        try { Directory.CreateDirectory(outputFolder); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new UserError($"The output folder {outputFolder} cannot be created ({e.Message}). Give a writable folder with --output.");
        }
        Jobs = new JobQueue(outputFolder, Limits.QueueCapacity, log);
        try
        {
            _model = Jobs.Invoke(load);
            _model.RequireTextToImage();
        }
        catch
        {
            _model?.Dispose();
            Jobs.Dispose();
            throw;
        }
        _cache = new SourceCache(Limits.CacheBudgetMb, null, log);
    }

    public string ModelName => _model.Name;
    public string OutputFolder { get; }
    public EditorLimits Limits { get; }
    public JobQueue Jobs { get; }
    public StableDiffusionModel Model => _model;

    /// <summary>
    /// Queues an edit (or, with one prompt, a generation) of <paramref name="spec"/>. <paramref name="photo"/>: the id of an
    /// inversion job whose photo is the source; <paramref name="samplingGiven"/>: the request set steps or guidance.
    /// </summary>
    public Job Edit(EditSpec spec, string? photo = null, bool samplingGiven = false)
    {
        var (session, source, fitted) = Open(ref spec, photo, samplingGiven);
        var views = new AttentionViewOptions(PerStep: Enumerable.Range(0, session.Evaluations).ToList()).ForRun(_model, session.Width, session.Height, session.Evaluations);
        var request = new EditRequest(spec.Prompts.Skip(1).ToList(), spec.Edit);
        // Building the controller checks the edit (words, windows, blends) now, so a bad request is refused, not queued.
        request.Edit.Build(_model.Tokenizer, [source.Prompt, .. request.Targets], source.Steps).Dispose();
        return Jobs.Enqueue(request.Targets.Count == 0 ? "generate" : "edit", ctx =>
        {
            bool cached = _cache.Contains(session.Key);
            ctx.Previewer = _preview.Render;
            var result = session.EditAll([request], int.MaxValue, views, ctx, ctx.Cancel)[0];
            try
            {
                _preview.Learn(result.Latents, result.Images);
                result.Save(ctx.Folder, fitted);
            }
            catch
            {
                result.Dispose();
                throw;
            }
            Keep(ctx.JobId, result);
            var names = EditResult.FileNames(result.Prompts.Count);
            var files = names.Select((n, i) => new JobFile(n, i < result.Prompts.Count ? result.Prompts[i] : "grid")).ToList();
            var details = Details(session, source, photo, cached, result.Prompts, result.Metadata["prompt-to-prompt"]);
            // The grids a token's map can be viewed at (the up and down blocks', by their shorter side), and the default one.
            details["attention_grids"] = result.Controller.Layers.Where(l => l.IsCross && l.Place != Models.UNetPlace.Mid).Select(l => result.Controller.SizeOf(l))
                .Distinct().OrderByDescending(g => g.Height * g.Width).Select(g => Math.Min(g.Height, g.Width)).ToList();
            details["attention_grid"] = Math.Min(views.GridSize.Height, views.GridSize.Width);
            return new JobOutcome(files, details);
        });
    }

    /// <summary>
    /// Queues a sweep of one source into one target over one or two edit parameters (<see cref="Sweep"/>): every cell
    /// takes the source from the cache; up to <paramref name="batch"/> cells share a UNet batch.
    /// </summary>
    public Job Sweep(EditSpec spec, IReadOnlyList<SweepAxis> axes, string? photo = null, bool samplingGiven = false, int batch = 4)
    {
        if (spec.Prompts.Count != 2) throw new UserError($"A sweep edits one source into one target; the request has {spec.Prompts.Count} prompts.");
        if (batch < 1) throw new UserError($"The batch size must be at least 1; got {batch}.");
        var (session, source, _) = Open(ref spec, photo, samplingGiven);
        var sweep = Editing.Sweep.Create(spec.Prompts[0], spec.Prompts[1], spec.Edit, axes);
        var cells = sweep.Cells(spec.Prompts[0]);
        foreach (var cell in cells) cell.Request.Edit.Build(_model.Tokenizer, [source.Prompt, .. cell.Request.Targets], source.Steps).Dispose();
        var prompts = spec.Prompts;
        return Jobs.Enqueue("sweep", ctx =>
        {
            bool cached = _cache.Contains(session.Key);
            ctx.Previewer = _preview.Render;
            var results = session.EditAll(cells.Select(c => c.Request).ToList(), batch, null, ctx, ctx.Cancel);
            try
            {
                sweep.Save(ctx.Folder, prompts[0], cells, results);
                var names = Editing.Sweep.FileNames(cells);
                var labels = cells.Select(c => c.Label).Append(prompts[0]).Append("grid").ToList();
                return new JobOutcome(names.Select((n, i) => new JobFile(n, labels[i])).ToList(),
                    Details(session, source, photo, cached, prompts, results[0].Metadata["prompt-to-prompt"]));
            }
            finally
            {
                foreach (var r in results) r.Dispose();
            }
        });
    }

    /// <summary>
    /// Queues attention views of a finished edit (or generation) <paramref name="job"/>: it runs again with what the views
    /// need kept (self-attention components, another grid) and writes <c>p2p attention</c>'s images for every prompt.
    /// </summary>
    public Job Views(string job, AttentionViewOptions options)
    {
        var done = Jobs.Find(job);
        if (done is not { Kind: "edit" or "generate", Outcome.Details: var d } || d["spec"] is not string specJson)
            throw new UserError($"Job '{job}' is not a finished edit or generation; views are made of those.");
        var spec = EditSpec.Parse((System.Text.Json.Nodes.JsonObject)System.Text.Json.Nodes.JsonNode.Parse(specJson)!, $"job {job}");
        var (session, _, _) = Open(ref spec, d["photo"] as string, true);
        var (viewSession, views) = session.ForViews(options.ForRun(_model, session.Width, session.Height, session.Evaluations));
        _cache.CheckFits(viewSession.Plan);
        return Jobs.Enqueue("attention", ctx =>
        {
            using var result = viewSession.EditAll([new EditRequest(spec.Prompts.Skip(1).ToList(), spec.Edit)], int.MaxValue, views, ctx, ctx.Cancel)[0];
            var files = result.SaveAttention(ctx.Folder, _model.Tokenizer, views)
                .Select(f => new JobFile(f.Name, $"{result.Prompts[f.Prompt]}: {f.Name[$"attention_{f.Prompt}_".Length..^4].Replace('_', ' ')}")).ToList();
            return new JobOutcome(files, new Dictionary<string, object?> { ["of_job"] = job, ["prompts"] = result.Prompts });
        });
    }

    /// <summary>The session of a request's source (a prompt and seed, or an inverted photo), checked before anything is queued.</summary>
    (EditSession Session, SourceSettings Source, RgbImage? Fitted) Open(ref EditSpec spec, string? photo, bool samplingGiven)
    {
        if (spec.Model is not null && spec.Model != ModelName && spec.Model != _model.Location)
            throw new UserError($"This server edits with its model '{ModelName}'; drop \"model\" from the request (models are chosen when the server starts).");
        if (spec.Latent is not null) throw new UserError("\"latent\" names a file, which a request may not do; give a seed instead.");
        CheckSize(spec.Width, spec.Height);
        SourceSettings source;
        RgbImage? fitted = null;
        if (photo is not null)
        {
            var inverted = Photo(photo);
            spec = spec.ForInversion(inverted.Result.Prompt, inverted.Result.Settings.Steps, inverted.Result.Settings.GuidanceScale, samplingGiven);
            source = EditSession.FromInversion(inverted.Result, spec.Edit.Variant, $"photo of job {photo}");
            fitted = inverted.Fitted;
        }
        else source = SourceSettings.FromSpec(spec, null, spec.Seed ?? Random.Shared.NextInt64(0, 1L << 32));
        var session = new EditSession(_model, source, _cache, _log);
        _cache.CheckFits(session.Plan);
        return (session, source, fitted);
    }

    static Dictionary<string, object?> Details(EditSession session, SourceSettings source, string? photo, bool cached, IReadOnlyList<string> prompts, string spec) => new()
    {
        ["prompts"] = prompts, ["seed"] = source.InitialLatent is null ? source.Seed : null, ["source_cached"] = cached, ["spec"] = spec,
        ["steps"] = session.Evaluations, ["photo"] = photo,
    };

    /// <summary>Queues the inversion of an uploaded photo (PNG or JPEG bytes) described by <paramref name="prompt"/>.</summary>
    public Job Invert(byte[] image, string prompt, InversionSettings settings, FitMode fit = FitMode.Crop, int? width = null, int? height = null)
    {
        if (image.Length == 0) throw new UserError("The photo is empty. Upload a PNG or JPEG file.");
        if (image.Length > Limits.MaxUploadBytes)
            throw new UserError($"The photo has {image.Length} bytes; this server takes at most {Limits.MaxUploadBytes}.");
        if (string.IsNullOrWhiteSpace(prompt)) throw new UserError("Describe the photo: an inversion needs the prompt it is inverted with.");
        settings.Validate();
        CheckSize(width, height);
        // Decode checks the structure and the size in the header before decoding anything.
        RgbImage.Decode(new MemoryStream(image), "The photo", Limits.MaxPixels);
        return Jobs.Enqueue("invert", ctx =>
        {
            var path = Path.Combine(ctx.Folder, "photo" + (image is [0x89, ..] ? ".png" : ".jpg"));
            AtomicFile.Write(path, s => s.Write(image));
            var inverted = EditSession.InvertPhoto(_model, path, prompt, settings, fit, width, height, ctx, ctx, ctx.Cancel);
            lock (_gate) _photos[ctx.JobId] = inverted;
            var text = new Dictionary<string, string> { ["prompt"] = prompt, ["inversion"] = settings.Method.ToString().ToLowerInvariant(), ["psnr"] = $"{inverted.Psnr:F2}" };
            Png.Save(Path.Combine(ctx.Folder, "input.png"), inverted.Fitted, text);
            Png.Save(Path.Combine(ctx.Folder, "reconstruction.png"), inverted.Reconstruction, text);
            return new JobOutcome([new("input.png", "input photo"), new("reconstruction.png", "reconstruction")], new Dictionary<string, object?>
            {
                ["prompt"] = prompt, ["psnr"] = Math.Round(inverted.Psnr, 2), ["method"] = settings.Method.ToString().ToLowerInvariant(),
                ["steps"] = settings.Steps, ["guidance_scale"] = settings.GuidanceScale,
            });
        });
    }

    PhotoInversion Photo(string job)
    {
        lock (_gate)
            return _photos.GetValueOrDefault(job) ?? throw new UserError($"No inverted photo has the job id '{job}'. Invert the photo first (its job must be done).");
    }

    void Keep(string job, EditResult result)
    {
        lock (_gate)
        {
            _results[job] = result;
            _resultOrder.Enqueue(job);
            while (_resultOrder.Count > Limits.KeptResults && _results.Remove(_resultOrder.Dequeue(), out var old)) old.Dispose();
        }
    }

    void CheckSize(int? width, int? height)
    {
        long w = width ?? _model.DefaultImageSize, h = height ?? _model.DefaultImageSize;
        if (w * h > Limits.MaxPixels) throw new UserError($"{w}x{h} is larger than this server makes ({Limits.MaxPixels} pixels at most).");
    }

    /// <summary>How <paramref name="target"/> differs from <paramref name="source"/> and which edit that implies.</summary>
    public static PromptDiff Diff(string source, string target)
    {
        var a = source.Split(' ');
        var b = target.Split(' ');
        if (a.Length == b.Length)
        {
            var same = b.Select((w, i) => (w, w == a[i] ? "same" : "swapped")).ToList();
            var swapped = same.Count(x => x.Item2 == "swapped");
            return new PromptDiff(EditKind.Replace, same, [], swapped == 0
                ? "The prompts are equal: re-weight words, or change one."
                : $"replace: {swapped} word{(swapped == 1 ? "" : "s")} swapped, the rest of the image kept.");
        }
        // Longest common subsequence of words, as the refinement's alignment keeps the common words.
        var lcs = new int[a.Length + 1, b.Length + 1];
        for (int i = a.Length - 1; i >= 0; i--)
            for (int j = b.Length - 1; j >= 0; j--)
                lcs[i, j] = a[i] == b[j] ? lcs[i + 1, j + 1] + 1 : Math.Max(lcs[i + 1, j], lcs[i, j + 1]);
        var words = new List<(string, string)>();
        var removed = new List<string>();
        int x = 0, y = 0;
        while (x < a.Length || y < b.Length)
        {
            if (x < a.Length && y < b.Length && a[x] == b[y]) { words.Add((b[y++], "same")); x++; }
            else if (y < b.Length && (x == a.Length || lcs[x, y + 1] >= lcs[x + 1, y])) words.Add((b[y++], "added"));
            else removed.Add(a[x++]);
        }
        return new PromptDiff(EditKind.Refine, words, removed,
            $"refine: {a.Length} words become {b.Length}, so this is a refinement (a word swap needs the same number of words).");
    }

    /// <summary>The tokens of a prompt that carry attention maps (the start token excluded), with their words.</summary>
    public List<PromptToken> Tokens(string prompt)
    {
        var tokenizer = _model.Tokenizer;
        var words = prompt.Split(' ');
        var tokens = new List<PromptToken>();
        for (int w = 0; w < words.Length; w++)
            foreach (var position in PromptWords.TokenPositions(tokenizer, prompt, w))
                if (position < tokenizer.MaxLength)
                    tokens.Add(new PromptToken(position, tokenizer.Decode([tokenizer.Encode(prompt)[position]]), w));
        return tokens;
    }

    /// <summary>
    /// A token's cross-attention over prompt <paramref name="prompt"/>'s image of edit job <paramref name="job"/>, on the
    /// grid with <paramref name="resolution"/> on its shorter side (default: the reference's, as <c>p2p attention</c>),
    /// averaged over layers and heads, and over all steps or at one UNet evaluation.
    /// </summary>
    public byte[] AttentionMap(string job, int prompt, int token, int? step = null, int? resolution = null, int size = 256) => Jobs.Invoke(() =>
    {
        lock (_gate)
        {
            var result = _results.GetValueOrDefault(job)
                ?? throw new UserError($"No attention is kept for job '{job}' (only the last {Limits.KeptResults} edits keep theirs). Run the edit again.");
            if (prompt < 0 || prompt >= result.Prompts.Count) throw new UserError($"The job has prompts 0..{result.Prompts.Count - 1}; got {prompt}.");
            if (token < 1 || token >= _model.Tokenizer.MaxLength) throw new UserError($"Token positions run from 1 to {_model.Tokenizer.MaxLength - 1}; got {token}.");
            var store = result.Controller;
            if (step is int s && (s < 0 || s >= store.StepCount)) throw new UserError($"The run has UNet evaluations 0..{store.StepCount - 1}; got step {s}.");
            var image = result.Images[prompt];
            var grid = new AttentionViewOptions(resolution).ForRun(_model, image.Width, image.Height, store.StepCount).GridSize;
            using var maps = store.Aggregate(grid.Height, grid.Width, [Models.UNetPlace.Up, Models.UNetPlace.Down], cross: true, prompt, step is int t ? [t] : null);
            using var map = maps[.., .., token];
            var back = image.Resize(size, size * image.Height / image.Width);
            return Png.Encode(HeatMap.Overlay(back, map));
        }
    });

    public void Dispose()
    {
        Jobs.Dispose();
        lock (_gate)
        {
            foreach (var r in _results.Values) r.Dispose();
            foreach (var p in _photos.Values) p.Dispose();
            _results.Clear();
            _photos.Clear();
        }
        _cache.Dispose();
        _model.Dispose();
    }
}
