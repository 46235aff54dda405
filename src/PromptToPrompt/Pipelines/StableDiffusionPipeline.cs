using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using PromptToPrompt.Control;
using PromptToPrompt.Imaging;
using PromptToPrompt.Loading;
using PromptToPrompt.Models;
using PromptToPrompt.Schedulers;
using TorchSharp;
using static TorchSharp.torch;

namespace PromptToPrompt.Pipelines;

/// <summary>
/// Progress of a denoising loop: <see cref="Step"/> of <see cref="Total"/> UNet evaluations done. <see cref="Latents"/>
/// ([N, C, h, w] after the step, float32) is valid only while the report is handled (for previews).
/// </summary>
public readonly record struct StepProgress(int Step, int Total, TimeSpan Elapsed, Tensor? Latents = null)
{
    public double StepsPerSecond => Elapsed.TotalSeconds > 0 ? Step / Elapsed.TotalSeconds : 0;
    public TimeSpan Remaining => Step > 0 ? TimeSpan.FromSeconds(Elapsed.TotalSeconds / Step * (Total - Step)) : TimeSpan.Zero;
}

/// <summary>What to generate. Width and height default to the model's size (or the initial latent's).</summary>
public sealed record GenerationRequest
{
    public required IReadOnlyList<string> Prompts { get; init; }
    public string NegativePrompt { get; init; } = "";
    public int Steps { get; init; } = 50;
    public double GuidanceScale { get; init; } = 7.5;
    /// <summary>pndm, ddim, euler or dpmpp-2m; null = the model's own scheduler.</summary>
    public string? Scheduler { get; init; }
    public long Seed { get; init; }
    /// <summary>x_T [1 or N, C, H/8, W/8]; when given, the seed is not used for the initial noise.</summary>
    public Tensor? InitialLatent { get; init; }
    public int? Width { get; init; }
    public int? Height { get; init; }
    /// <summary>Attend-and-Excite on the (single) prompt; null = plain generation.</summary>
    public ExciteSettings? Excite { get; init; }
    /// <summary>Directed Diffusion: objects of the (single) prompt placed in boxes; null = none.</summary>
    public DirectedSettings? Boxes { get; init; }
    /// <summary>
    /// Per-step unconditional embeddings [steps, 1, L, D] (from null-text inversion), used at step i instead of the
    /// negative prompt's embedding, broadcast to every prompt.
    /// </summary>
    public Tensor? UnconditionalEmbeddings { get; init; }
    /// <summary>SDXL's micro-conditioning (time ids); null = diffusers' defaults. Other models ignore it.</summary>
    public SizeConditioning? SizeConditioning { get; init; }
}

/// <summary>
/// SDXL's micro-conditioning: the original image size, the crop's top-left corner and the target size the time ids
/// describe (heights first). Parts left null take diffusers' defaults: both sizes the generated image's, crop (0, 0).
/// </summary>
public sealed record SizeConditioning((int Height, int Width)? OriginalSize = null, (int Top, int Left)? CropTopLeft = null, (int Height, int Width)? TargetSize = null)
{
    /// <summary>The three settings for an image of <paramref name="width"/> x <paramref name="height"/>, defaults filled in; refuses sizes that are not positive.</summary>
    public ((int Height, int Width) Original, (int Top, int Left) Crop, (int Height, int Width) Target) Resolve(int width, int height)
    {
        var (original, crop, target) = (OriginalSize ?? (height, width), CropTopLeft ?? (0, 0), TargetSize ?? (height, width));
        foreach (var (name, (h, w)) in new[] { ("original size", original), ("target size", target) })
            if (h <= 0 || w <= 0) throw new UserError($"The {name} must be a positive height,width; got {h},{w}.");
        if (crop.Top < 0 || crop.Left < 0) throw new UserError($"The crop coordinates must be a top,left of at least 0; got {crop.Top},{crop.Left}.");
        return (original, crop, target);
    }

    /// <summary>The time ids [1, 6] (<see cref="TextTimeConditioning.TimeIdsOf"/>) for an image of <paramref name="width"/> x <paramref name="height"/>.</summary>
    public Tensor TimeIds(int width, int height)
    {
        var (original, crop, target) = Resolve(width, height);
        return TextTimeConditioning.TimeIdsOf(original, crop, target);
    }

    /// <summary>Readable form for the PNG summary and the cache key: <c>original 1024x1024, crop 0,0, target 1024x1024</c>.</summary>
    public string Describe(int width, int height)
    {
        var (o, c, t) = Resolve(width, height);
        return $"original {o.Height}x{o.Width}, crop {c.Top},{c.Left}, target {t.Height}x{t.Width}";
    }
}

/// <summary>
/// SDXL's added conditioning of a run: the prompts' pooled embeddings and the negative side's [N, P], and the time
/// ids [1, 6] every row shares.
/// </summary>
public sealed record PooledConditioning(Tensor Pooled, Tensor NegativePooled, Tensor TimeIds)
{
    /// <summary>The UNet's added conditioning for its batch: <c>[negative, positive]</c> with guidance, the positive rows alone without.</summary>
    public TextTimeConditioning For(bool guided, Device device) => Of(guided ? cat([NegativePooled, Pooled], 0) : Pooled, device);

    /// <summary>The negative rows alone.</summary>
    public TextTimeConditioning Negative(Device device) => Of(NegativePooled, device);

    TextTimeConditioning Of(Tensor pooled, Device device) => new(pooled.to(device), TimeIds.to(device).expand(pooled.shape[0], -1));
}

/// <summary>Final latents (before VAE decoding, [N, C, h, w], float32 on the CPU) and the decoded images.</summary>
/// <see cref="Excite"/> is what Attend-and-Excite did at each step, when it ran.
public sealed record GenerationResult(Tensor Latents, RgbImage[] Images, IReadOnlyDictionary<string, string> Parameters,
                                      IReadOnlyList<ExciteStep>? Excite = null);

/// <summary>
/// Text-to-image with classifier-free guidance, following the reference: text batch
/// <c>[uncond_0..uncond_{N-1}, cond_0..cond_{N-1}]</c>, <c>noise = e_u + g (e_c - e_u)</c>, scheduler step, then
/// the observer's step callback. Latents are kept in float32; the models run in the placement's dtype.
/// </summary>
public sealed class StableDiffusionPipeline(StableDiffusionModel model, Action<string>? log = null)
{
    public StableDiffusionModel Model => model;
    Device Device => model.Placement.Device;
    ScalarType DType => model.Placement.DType;

    /// <summary>Text embeddings [N, L, D] of the prompts; warns when a prompt is longer than the encoder reads.</summary>
    public Tensor EncodePrompts(IReadOnlyList<string> prompts)
    {
        var (context, pooled) = EncodeText(prompts);
        pooled?.Dispose();
        return context;
    }

    /// <summary>
    /// The prompts' text conditioning: token embeddings [N, L, D] and, for SDXL, the pooled embeddings [N, P] (both
    /// encoders as <see cref="SdxlTextEncoders"/>; null otherwise). Warns when a prompt is longer than the encoder reads.
    /// </summary>
    public (Tensor Context, Tensor? Pooled) EncodeText(IReadOnlyList<string> prompts)
    {
        foreach (var p in prompts)
            if (model.Tokenizer.Tokenize(p).Truncated)
                log?.Invoke($"warning: the prompt \"{Shorten(p)}\" is longer than the {model.Tokenizer.MaxLength - 2} tokens the text encoder reads; the rest is ignored.");
        if (model.IsXL)
        {
            var (embeds, pooled) = new SdxlTextEncoders(model.Tokenizer, model.TextEncoder, model.Tokenizer2!, model.TextEncoder2!).Encode(prompts);
            return (embeds, pooled);
        }
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        var input = tensor(prompts.SelectMany(p => model.Tokenizer.Tokenize(p).Ids).ToArray(), [prompts.Count, model.Tokenizer.MaxLength]).to(Device);
        return (model.TextEncoder.forward(input).MoveToOuterDisposeScope(), null);
    }

    /// <summary>
    /// A run's text conditioning: the prompts' embeddings [N, L, D], the negative side's (<see cref="EncodeNegative"/>)
    /// and, for SDXL, the pooled conditioning with the time ids of <paramref name="sizes"/> for a
    /// <paramref name="width"/> x <paramref name="height"/> image (null for other models).
    /// </summary>
    public (Tensor Cond, Tensor Uncond, PooledConditioning? Pooled) Condition(IReadOnlyList<string> prompts, string negative, SizeConditioning? sizes, int width, int height)
    {
        var (cond, pooledCond) = EncodeText(prompts);
        var (uncond, pooledUncond) = EncodeNegative(negative, prompts.Count, cond, pooledCond);
        return (cond, uncond, model.IsXL ? new PooledConditioning(pooledCond!, pooledUncond!, (sizes ?? new()).TimeIds(width, height)) : null);
    }

    /// <summary>
    /// The negative side of SDXL's text conditioning for <paramref name="n"/> images: zeros when there is no negative
    /// prompt and the model has <c>force_zeros_for_empty_prompt</c> (an empty negative prompt counts as none), else the
    /// encoded negative prompt.
    /// </summary>
    (Tensor Context, Tensor? Pooled) EncodeNegative(string negative, int n, Tensor cond, Tensor? pooled) =>
        model.IsXL && model.ForceZerosForEmptyPrompt && negative.Length == 0
            ? (zeros_like(cond), zeros_like(pooled!))
            : EncodeText(Enumerable.Repeat(negative, n).ToList());

    static string Shorten(string s) => s.Length <= 60 ? s : s[..57] + "...";

    /// <summary>Checks a width/height pair and returns the latent size.</summary>
    public (int Width, int Height) ResolveSize(int? width, int? height, Tensor? latent)
    {
        int f = model.VaeScale;
        int w = width ?? (latent is null ? model.DefaultImageSize : (int)latent.shape[3] * f);
        int h = height ?? (latent is null ? model.DefaultImageSize : (int)latent.shape[2] * f);
        foreach (var (name, v) in new[] { ("width", w), ("height", h) })
            if (v <= 0 || v % f != 0)
                throw new UserError($"{name} {v} is not a positive multiple of {f}. Use a {name} divisible by {f}, e.g. {Math.Max(f, (v + f / 2) / f * f)}.");
        return (w, h);
    }

    /// <summary>UNet evaluations of a run with <paramref name="scheduler"/> (null: the model's own) and <paramref name="steps"/> steps (PNDM makes one more).</summary>
    public int Evaluations(string? scheduler, int steps) =>
        Schedulers.Schedulers.Create(scheduler ?? Schedulers.Schedulers.DefaultFor(model.Scheduler), model.Scheduler, steps).Timesteps.Count;

    /// <summary>
    /// Initial noise: <c>torch.randn([count, C, h, w], generator=torch.Generator().manual_seed(seed))</c> on the CPU
    /// (bit-identical to PyTorch's CPU generator), then moved to the device.
    /// </summary>
    public Tensor InitialNoise(long seed, int count, int width, int height)
    {
        using var generator = new Generator((ulong)seed, CPU);
        return InitialNoise(generator, count, width, height);
    }

    /// <summary>Initial noise drawn from <paramref name="generator"/> (a CPU generator), which later draws continue.</summary>
    public Tensor InitialNoise(Generator generator, int count, int width, int height)
    {
        int f = model.VaeScale;
        return randn([count, model.LatentChannels, height / f, width / f], ScalarType.Float32, CPU, generator: generator);
    }

    /// <summary>Validates a user-supplied x_T against the model and size.</summary>
    public void CheckLatent(Tensor latent, int width, int height, int batch)
    {
        int f = model.VaeScale;
        long[] expected = [1, model.LatentChannels, height / f, width / f];
        bool ok = latent.dim() == 4 && (latent.shape[0] == 1 || latent.shape[0] == batch) && latent.shape[1..].SequenceEqual(expected[1..]);
        if (!ok)
            throw new UserError($"The initial latent has shape [{string.Join(", ", latent.shape)}] but this model and size need " +
                                $"[1, {expected[1]}, {expected[2]}, {expected[3]}] (or {batch} in the first dimension). Use a latent saved for this model and size.");
    }

    /// <summary>
    /// The denoising loop. <paramref name="latents"/> [N, C, h, w] (already scaled by the scheduler's init sigma);
    /// <paramref name="cond"/> [N, L, D]; <paramref name="uncond"/> [N, L, D], or [steps, 1, L, D] for a different
    /// unconditional embedding at each step (null-text inversion). Returns the final latents (float32).
    /// </summary>
    public Tensor Denoise(Tensor latents, Tensor uncond, Tensor cond, IScheduler scheduler, double guidance,
                          IDenoisingObserver? observer = null, IProgress<StepProgress>? progress = null, CancellationToken cancel = default,
                          Generator? generator = null, ILatentGuidance? latentGuidance = null, PooledConditioning? pooled = null)
    {
        using var _ = no_grad();
        bool perStep = uncond.dim() == 4;
        bool cfg = guidance != 1.0 || perStep;
        if (model.IsXL != pooled is not null)
            throw new InvalidOperationException(model.IsXL ? "An SDXL model's denoising needs the pooled conditioning." : "Only SDXL models take pooled conditioning.");
        using var fixedContext = (cfg && !perStep ? cat([uncond, cond], 0) : cond).to(DType).to(Device);
        var added = pooled?.For(cfg, Device);
        var x = latents.to(ScalarType.Float32).to(Device);
        int total = scheduler.Timesteps.Count;
        var clock = Stopwatch.StartNew();
        for (int i = 0; i < total; i++)
        {
            cancel.ThrowIfCancellationRequested();
            using var scope = NewDisposeScope();
            using var pause = CollectionPause.Begin();
            observer?.OnStepStart(i, total);
            var current = latentGuidance?.Guide(i, x, scheduler.Timesteps[i]) ?? x;
            if (observer is not null) current = observer.OnPassStart(i, x, current);
            var input = scheduler.ScaleModelInput(cfg ? cat([current, current], 0) : current, i);
            var context = perStep ? cat([uncond[i].expand(cond.shape).to(DType).to(Device), fixedContext], 0) : fixedContext;
            using var t = tensor((float)scheduler.Timesteps[i], ScalarType.Float32, Device);
            var output = model.UNet.forward(input.to(DType), t, context, added).to(ScalarType.Float32);
            Tensor noise;
            if (cfg)
            {
                var halves = output.chunk(2, 0);
                noise = halves[0] + guidance * (halves[1] - halves[0]);
            }
            else noise = output;
            var next = scheduler.Step(noise, i, current, generator);
            if (observer is not null) next = observer.OnStepEnd(i, next);
            next.MoveToOuterDisposeScope();
            if (!ReferenceEquals(x, latents)) x.Dispose();
            x = next;
            progress?.Report(new StepProgress(i + 1, total, clock.Elapsed, x));
        }
        return x;
    }

    /// <summary>Refuses a guidance scale that is not a finite number (NaN would sample a whole run, then fail).</summary>
    public static void CheckGuidance(double guidance)
    {
        if (!double.IsFinite(guidance)) throw new UserError($"The guidance scale must be a finite number; got {guidance.ToString(System.Globalization.CultureInfo.InvariantCulture)}.");
    }

    /// <summary>
    /// Refuses an ancestral scheduler where branches must share one trajectory: its fresh noise at every step would
    /// differ between a recorded source and a later edit, and inversion needs a deterministic sampler.
    /// </summary>
    public static void CheckDeterministic(string scheduler)
    {
        if (Schedulers.Schedulers.IsAncestral(scheduler))
            throw new UserError($"{scheduler} adds fresh noise at every step, so a source and its edits would not share a trajectory; " +
                                "Prompt-to-Prompt edits and inversions use a deterministic scheduler: pndm, ddim, euler or dpmpp-2m.");
    }

    /// <summary>Decodes diffusion latents [N, C, h, w] to images, one at a time to bound memory.</summary>
    /// <param name="round">Round to uint8 as diffusers' numpy_to_pil does (InstructPix2Pix, Attend-and-Excite and SDXL references); else truncate as the Prompt-to-Prompt code does.</param>
    public RgbImage[] Decode(Tensor latents, bool round = false)
    {
        using var _ = no_grad();
        var images = new List<RgbImage>();
        for (int i = 0; i < latents.shape[0]; i++)
        {
            using var scope = NewDisposeScope();
            var z = (latents[i..(i + 1)].to(ScalarType.Float32) / model.Vae.Config.ScalingFactor).to(model.VaeDType).to(Device);
            images.AddRange(RgbImage.FromDecoded(model.Vae.Decode(z), round));
        }
        return images.ToArray();
    }

    /// <summary>Encodes an image batch [N, 3, H, W] in [-1, 1] to diffusion latents (posterior mean times the scaling factor).</summary>
    public Tensor Encode(Tensor image)
    {
        using var _ = no_grad();
        using var scope = NewDisposeScope();
        var (mean, _) = model.Vae.Encode(image.to(model.VaeDType).to(Device));
        return (mean.to(ScalarType.Float32) * model.Vae.Config.ScalingFactor).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// Text-to-image generation, optionally under an attention controller (Prompt-to-Prompt). Without a controller
    /// each prompt gets its own noise (as diffusers draws it); with one, all prompts share one x_T
    /// (<c>[1, C, h, w]</c>, broadcast), as the reference's <c>text2image_ldm_stable</c> does.
    /// </summary>
    public GenerationResult Generate(GenerationRequest request, IProgress<StepProgress>? progress = null, IRunController? controller = null,
                                     CancellationToken cancel = default)
    {
        if (request.Prompts.Count == 0) throw new UserError("Give at least one prompt.");
        model.RequireTextToImage();
        CheckGuidance(request.GuidanceScale);
        var schedulerName = request.Scheduler ?? Schedulers.Schedulers.DefaultFor(model.Scheduler);
        if (controller is not null) CheckDeterministic(schedulerName);
        if (request.Excite is not null && request.Prompts.Count != 1)
            throw new UserError("Attend-and-Excite guides one prompt at a time: give a single --prompt.");
        if (request.Boxes is not null && request.Prompts.Count != 1)
            throw new UserError("Directed Diffusion places the objects of one prompt at a time: give a single --prompt.");
        if (request.SizeConditioning is not null && !model.IsXL)
            throw new UserError($"Original size, crop coordinates and target size are SDXL's micro-conditioning; {model.Name} has none. Drop them.");
        var scheduler = Schedulers.Schedulers.Create(schedulerName, model.Scheduler, request.Steps);
        var (width, height) = ResolveSize(request.Width, request.Height, request.InitialLatent);
        int n = request.Prompts.Count;
        using var scope = NewDisposeScope();
        // One CPU generator for the initial noise and, with an ancestral scheduler, every step's noise (as diffusers).
        using var generator = new Generator((ulong)request.Seed, CPU);
        Tensor latents;
        if (request.InitialLatent is { } given)
        {
            CheckLatent(given, width, height, n);
            latents = given.to(ScalarType.Float32).expand(n, -1, -1, -1).contiguous();
        }
        else latents = InitialNoise(generator, controller is null ? n : 1, width, height).expand(n, -1, -1, -1);
        latents = latents * scheduler.InitNoiseSigma;

        var (cond, uncond, pooled) = Condition(request.Prompts, request.NegativePrompt, request.SizeConditioning, width, height);
        if (request.UnconditionalEmbeddings is { } nullText)
        {
            if (nullText.dim() != 4 || nullText.shape[0] != scheduler.Timesteps.Count || nullText.shape[1] != 1 || !nullText.shape[2..].SequenceEqual(cond.shape[1..]))
                throw new UserError($"The null-text embeddings have shape [{string.Join(", ", nullText.shape)}] but this run needs " +
                                    $"[{scheduler.Timesteps.Count}, 1, {cond.shape[1]}, {cond.shape[2]}] (one per step, same steps and scheduler as the inversion).");
            uncond = nullText;
        }
        var excite = request.Excite is { } settings
            ? new AttendAndExcite(model, cond, settings, scheduler.Timesteps.Count, height / model.VaeScale, width / model.VaeScale,
                                  model.Tokenizer.Tokenize(request.Prompts[0]).TokenCount - 1, pooled?.For(guided: false, Device)) : null;
        using var directed = request.Boxes is { } boxes ? DirectedDiffusion.For(model.Tokenizer, request.Prompts[0], boxes) : null;
        // Directed Diffusion edits the maps first; a controller of the same run (a recorder, a store) sees the edited ones.
        IRunController? run = directed is null ? controller : controller is null ? directed : new ControllerChain(directed, controller);
        Tensor final;
        using (model.UNet.Hooks.Use(run))
            final = Denoise(latents, uncond, cond, scheduler, request.GuidanceScale, run, progress, cancel, generator, excite, pooled);
        var images = Decode(final, round: model.IsXL);
        var parameters = Parameters(request, schedulerName, width, height);
        return new GenerationResult(final.cpu().MoveToOuterDisposeScope(), images, parameters, excite?.Steps);
    }

    /// <summary>PNG text entries that reproduce a generation: a readable summary and a JSON record.</summary>
    public Dictionary<string, string> Parameters(GenerationRequest r, string scheduler, int width, int height)
    {
        var inv = CultureInfo.InvariantCulture;
        var seed = r.InitialLatent is null ? r.Seed.ToString(inv) : "(initial latent)";
        var summary = $"{string.Join(" | ", r.Prompts)}\nNegative prompt: {r.NegativePrompt}\n" +
                      string.Format(inv, "Steps: {0}, Sampler: {1}, CFG scale: {2}, Seed: {3}, Size: {4}x{5}, Model: {6}, Dtype: {7}",
                          r.Steps, scheduler, r.GuidanceScale, seed, width, height, model.Name, DType.ToString().ToLowerInvariant());
        var record = new Dictionary<string, object?>
        {
            ["prompts"] = r.Prompts, ["negative_prompt"] = r.NegativePrompt, ["seed"] = r.InitialLatent is null ? r.Seed : null,
            ["steps"] = r.Steps, ["guidance_scale"] = r.GuidanceScale, ["scheduler"] = scheduler, ["width"] = width, ["height"] = height,
            ["model"] = model.Name, ["dtype"] = DType.ToString().ToLowerInvariant(), ["device"] = Device.ToString(),
        };
        foreach (var (key, value) in GuidanceRecord(r.Excite, r.Boxes)) record[key] = value;
        if (model.IsXL)
        {
            var sizes = r.SizeConditioning ?? new();
            var (o, c, t) = sizes.Resolve(width, height);
            record["original_size"] = new[] { o.Height, o.Width };
            record["crops_coords_top_left"] = new[] { c.Top, c.Left };
            record["target_size"] = new[] { t.Height, t.Width };
            summary += $", SDXL {sizes.Describe(width, height)}";
        }
        var json = JsonSerializer.Serialize(record);
        return new Dictionary<string, string> { ["parameters"] = summary + GuidanceSummary(r.Excite, r.Boxes), ["prompt-to-prompt"] = json };
    }

    /// <summary>The JSON record of a run's attention guidance: <c>attend_and_excite</c> and <c>directed_diffusion</c> (null when not used).</summary>
    public static Dictionary<string, object?> GuidanceRecord(ExciteSettings? excite, DirectedSettings? boxes) => new()
    {
        ["attend_and_excite"] = excite is { } e ? new Dictionary<string, object>
        {
            ["token_indices"] = e.TokenIndices, ["max_iter_to_alter"] = e.MaxIterToAlter, ["scale_factor"] = e.ScaleFactor,
            ["thresholds"] = e.Thresholds.OrderBy(p => p.Key).ToDictionary(p => p.Key.ToString(CultureInfo.InvariantCulture), p => p.Value),
        } : null,
        ["directed_diffusion"] = boxes is { } b ? new Dictionary<string, object>
        {
            ["regions"] = b.Regions.Select(g => new Dictionary<string, object> { ["token_indices"] = g.Tokens, ["box"] = g.Box.ToString() }).ToList(),
            ["num_affected_steps"] = b.Steps, ["num_trailing_attn"] = b.Trailing, ["noise_scale"] = b.Strength,
        } : null,
    };

    /// <summary>The guidance's part of the readable summary (empty without guidance).</summary>
    public static string GuidanceSummary(ExciteSettings? excite, DirectedSettings? boxes) =>
        (boxes is null ? "" : ", Directed Diffusion boxes: " + string.Join(" ", boxes.Regions.Select(g => $"{string.Join("+", g.Tokens)}={g.Box}"))) +
        (excite is null ? "" : ", Attend-and-Excite tokens: " + string.Join(" ", excite.TokenIndices));
}
