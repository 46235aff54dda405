using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using PromptToPrompt.Imaging;
using PromptToPrompt.Loading;
using PromptToPrompt.Models;
using PromptToPrompt.Schedulers;
using TorchSharp;
using static TorchSharp.torch;

namespace PromptToPrompt.Pipelines;

/// <summary>An instruction edit. <see cref="Image"/> is edited at its own size, which must be a multiple of the VAE factor.</summary>
public sealed record InstructRequest
{
    public required RgbImage Image { get; init; }
    public required string Instruction { get; init; }
    public string NegativePrompt { get; init; } = "";
    /// <summary>diffusers' default.</summary>
    public int Steps { get; init; } = 100;
    /// <summary>Text guidance s_T.</summary>
    public double GuidanceScale { get; init; } = 7.5;
    /// <summary>Image guidance s_I.</summary>
    public double ImageGuidanceScale { get; init; } = 1.5;
    /// <summary>null = the model's own scheduler (Euler ancestral for InstructPix2Pix).</summary>
    public string? Scheduler { get; init; }
    public long Seed { get; init; }
    /// <summary>Image latents [1, C, h, w] to use instead of encoding <see cref="Image"/> (the reference's, in conformance tests).</summary>
    public Tensor? ImageLatents { get; init; }
}

/// <summary>The final latents ([1, C, h, w], float32, CPU), the edited image and its PNG metadata.</summary>
public sealed record InstructResult(Tensor Latents, RgbImage Image, IReadOnlyDictionary<string, string> Parameters) : IDisposable
{
    public void Dispose() => Latents.Dispose();
}

/// <summary>
/// InstructPix2Pix (Brooks et al. 2023) as diffusers' <c>StableDiffusionInstructPix2PixPipeline</c> computes it: the input
/// image's VAE posterior mean (unscaled) is concatenated to the scaled noisy latent on the channel axis; three branches
/// in the batch order <c>[text + image, negative + image, negative + zero image]</c>, combined as
/// <c>e = e(∅,∅) + s_I (e(c_I,∅) − e(∅,∅)) + s_T (e(c_I,c_T) − e(c_I,∅))</c> — on the x0 predictions for sigma-space
/// schedulers, as the reference rounds it. One CPU generator seeded with the seed draws the initial noise and every
/// ancestral step's noise, so a seed gives the reference's run.
/// </summary>
public sealed class InstructPix2PixPipeline
{
    readonly StableDiffusionModel _model;
    readonly StableDiffusionPipeline _text;

    public InstructPix2PixPipeline(StableDiffusionModel model, Action<string>? log = null)
    {
        model.RequireInstructPix2Pix();
        _model = model;
        _text = new StableDiffusionPipeline(model, log);
    }

    public StableDiffusionModel Model => _model;

    Device Device => _model.Placement.Device;
    ScalarType DType => _model.Placement.DType;

    /// <summary>The largest size at most the image's that the VAE can encode (each side rounded down to a multiple of its factor).</summary>
    public (int Width, int Height) EditSize(int width, int height)
    {
        int f = _model.VaeScale;
        int w = width - width % f, h = height - height % f;
        if (w == 0 || h == 0)
            throw new UserError($"The image is {width}x{height}; an edit needs at least {f}x{f} pixels. Give a larger image or --width/--height.");
        return (w, h);
    }

    /// <summary>
    /// The image as the model will edit it. Without a size or fit: its own size, each side rounded down to a multiple of
    /// the VAE factor with PIL's Lanczos filter, as diffusers' preprocessing does. With one side given, the other keeps
    /// the aspect ratio; with both (or only <paramref name="fit"/>: the model's size), the photo is fitted by cropping
    /// (default) or padding.
    /// </summary>
    public RgbImage PrepareImage(RgbImage image, int? width = null, int? height = null, FitMode? fit = null)
    {
        if (width is null && height is null && fit is null)
        {
            var (w, h) = EditSize(image.Width, image.Height);
            return w == image.Width && h == image.Height ? image : ImageInput.Lanczos(image, w, h);
        }
        int f = _model.VaeScale;
        int Other(int side, int from, int to) => Math.Max(f, (int)Math.Round((double)side * to / from / f) * f);
        var (tw, th) = (width, height) switch
        {
            ({ } w, { } h) => (w, h),
            ({ } w, null) => (w, Other(image.Height, image.Width, w)),
            (null, { } h) => (Other(image.Width, image.Height, h), h),
            _ => (_model.DefaultImageSize, _model.DefaultImageSize),
        };
        (tw, th) = _text.ResolveSize(tw, th, null);
        return ImageInput.Fit(image, tw, th, fit ?? FitMode.Crop);
    }

    /// <summary>
    /// The image latents: <c>vae.encode(2 (u8 / 255) - 1).latent_dist.mode()</c>, without the scaling factor, [1, C, h, w] float32
    /// on the model's device.
    /// </summary>
    public Tensor EncodeImage(RgbImage image)
    {
        using var _ = no_grad();
        using var scope = NewDisposeScope();
        var pixels = tensor(image.Pixels, [image.Height, image.Width, 3]).to(ScalarType.Float32) / 255f * 2f - 1f;
        var input = pixels.permute(2, 0, 1).unsqueeze(0).contiguous();
        var (mean, _) = _model.Vae.Encode(input.to(DType).to(Device));
        return mean.to(ScalarType.Float32).MoveToOuterDisposeScope();
    }

    public static void Validate(InstructRequest r)
    {
        if (string.IsNullOrWhiteSpace(r.Instruction))
            throw new UserError("The instruction is empty. Say what to change, e.g. --instruction \"make the circle blue\".");
        if (r.Steps < 1) throw new UserError($"steps must be at least 1; got {r.Steps}.");
        Schedulers.Schedulers.CheckName(r.Scheduler);
        foreach (var (name, value) in new[] { ("guidance scale", r.GuidanceScale), ("image guidance scale", r.ImageGuidanceScale) })
            if (!double.IsFinite(value) || value < 0)
                throw new UserError($"The {name} must be a finite number of at least 0 (1 = no guidance); got {value.ToString(CultureInfo.InvariantCulture)}.");
    }

    public InstructResult Edit(InstructRequest request, IProgress<StepProgress>? progress = null, CancellationToken cancel = default)
    {
        Validate(request);
        int f = _model.VaeScale;
        if (request.Image.Width % f != 0 || request.Image.Height % f != 0)
            throw new UserError($"The image is {request.Image.Width}x{request.Image.Height}; InstructPix2Pix edits sizes that are multiples of {f}. Resize it first (p2p instruct does).");
        var schedulerName = request.Scheduler ?? Schedulers.Schedulers.DefaultFor(_model.Scheduler);
        var scheduler = Schedulers.Schedulers.Create(schedulerName, _model.Scheduler, request.Steps);
        double g = request.GuidanceScale, s = request.ImageGuidanceScale;
        bool guided = g != 1 || s != 1;

        using var scope = NewDisposeScope();
        using var _ = no_grad();
        var latentShape = new long[] { 1, _model.LatentChannels, request.Image.Height / f, request.Image.Width / f };
        var imageLatents = request.ImageLatents is { } given ? given.to(ScalarType.Float32).to(Device) : EncodeImage(request.Image);
        if (!imageLatents.shape.SequenceEqual(latentShape))
            throw new UserError($"The image latents have shape [{string.Join(", ", imageLatents.shape)}]; this image needs [{string.Join(", ", latentShape)}].");

        // Text: the instruction and the negative prompt in two encoder calls; the negative serves both unguided branches.
        var text = _text.EncodePrompts([request.Instruction]);
        var negative = _text.EncodePrompts([request.NegativePrompt]);
        var context = (guided ? cat([text, negative, negative], 0) : text).to(DType).to(Device);
        var imageInput = (guided ? cat([imageLatents, imageLatents, zeros_like(imageLatents)], 0) : imageLatents).to(DType);

        using var generator = new Generator((ulong)request.Seed, CPU);
        var x = (randn(latentShape, ScalarType.Float32, CPU, generator: generator) * scheduler.InitNoiseSigma).to(Device);
        int total = scheduler.Timesteps.Count;
        var clock = Stopwatch.StartNew();
        for (int i = 0; i < total; i++)
        {
            cancel.ThrowIfCancellationRequested();
            using var step = NewDisposeScope();
            using var pause = CollectionPause.Begin();
            var latentInput = guided ? cat([x, x, x], 0) : x;
            var unetInput = cat([scheduler.ScaleModelInput(latentInput, i).to(DType), imageInput], 1);
            using var t = tensor((float)scheduler.Timesteps[i], ScalarType.Float32, Device);
            var e = _model.UNet.forward(unetInput, t, context).to(ScalarType.Float32);
            var modelOutput = guided ? Guide(e, latentInput, x, scheduler, i, g, s) : e;
            var next = scheduler.Step(modelOutput, i, x, generator).MoveToOuterDisposeScope();
            x.Dispose();
            x = next;
            progress?.Report(new StepProgress(i + 1, total, clock.Elapsed, x));
        }
        var image = _text.Decode(x, round: true)[0];
        return new InstructResult(x.cpu().MoveToOuterDisposeScope(), image, Parameters(request, schedulerName));
    }

    /// <summary>
    /// The paper's Figure 4: the same edit (same seed) for every pair of image guidance (rows) and text guidance (columns)
    /// scales, as a labelled grid. <paramref name="progress"/> gives the progress sink of each cell (index, s_I, s_T).
    /// </summary>
    public (RgbImage Grid, InstructResult[] Cells) Grid(InstructRequest request, IReadOnlyList<double> imageScales, IReadOnlyList<double> textScales,
                                                        Func<int, double, double, IProgress<StepProgress>?>? progress = null, CancellationToken cancel = default)
    {
        if (imageScales.Count == 0 || textScales.Count == 0) throw new UserError("Give at least one image guidance and one text guidance scale.");
        var pairs = imageScales.SelectMany(si => textScales.Select(st => (si, st))).ToList();
        foreach (var (si, st) in pairs) Validate(request with { ImageGuidanceScale = si, GuidanceScale = st });
        var cells = new List<InstructResult>();
        try
        {
            foreach (var (si, st) in pairs)
            {
                cells.Add(Edit(request with { ImageGuidanceScale = si, GuidanceScale = st }, progress?.Invoke(cells.Count, si, st), cancel));
            }
        }
        catch
        {
            foreach (var c in cells) c.Dispose();
            throw;
        }
        var inv = CultureInfo.InvariantCulture;
        var captions = pairs.Select(p => string.Format(inv, "image {0:0.##}, text {1:0.##}", p.si, p.st)).ToList();
        return (Imaging.Grid.WithCaptions(cells.Select(c => c.Image).ToList(), captions, textScales.Count), cells.ToArray());
    }

    /// <summary>
    /// The guided model output. Sigma-space schedulers: guidance on x0 = latent - sigma e of each branch, then back to
    /// an epsilon for the scheduler (the reference's order of rounding); others: on e directly (the same value).
    /// </summary>
    public static Tensor Guide(Tensor e, Tensor latentInput, Tensor x, IScheduler scheduler, int i, double g, double s)
    {
        if (scheduler is ISigmaScheduler sigmaScheduler)
        {
            float sigma = (float)sigmaScheduler.Sigmas[i];
            var x0 = latentInput - sigma * e;
            var c = x0.chunk(3, 0);
            var x0Guided = c[2] + g * (c[0] - c[1]) + s * (c[1] - c[2]);
            return (x0Guided - x) / (-sigma);
        }
        var b = e.chunk(3, 0);
        return b[2] + g * (b[0] - b[1]) + s * (b[1] - b[2]);
    }

    /// <summary>PNG text entries: a readable summary and a JSON record of the edit.</summary>
    public Dictionary<string, string> Parameters(InstructRequest r, string scheduler)
    {
        var inv = CultureInfo.InvariantCulture;
        var summary = $"{r.Instruction}\nNegative prompt: {r.NegativePrompt}\n" +
                      string.Format(inv, "Steps: {0}, Sampler: {1}, CFG scale: {2}, Image CFG scale: {3}, Seed: {4}, Size: {5}x{6}, Model: {7}, Dtype: {8}",
                          r.Steps, scheduler, r.GuidanceScale, r.ImageGuidanceScale, r.Seed, r.Image.Width, r.Image.Height, _model.Name,
                          DType.ToString().ToLowerInvariant());
        var json = JsonSerializer.Serialize(new Dictionary<string, object?>
        {
            ["instruction"] = r.Instruction, ["negative_prompt"] = r.NegativePrompt, ["seed"] = r.Seed, ["steps"] = r.Steps,
            ["guidance_scale"] = r.GuidanceScale, ["image_guidance_scale"] = r.ImageGuidanceScale, ["scheduler"] = scheduler,
            ["width"] = r.Image.Width, ["height"] = r.Image.Height, ["model"] = _model.Name,
            ["dtype"] = DType.ToString().ToLowerInvariant(), ["device"] = Device.ToString(),
        });
        return new Dictionary<string, string> { ["parameters"] = summary, ["instruct-pix2pix"] = json };
    }
}
