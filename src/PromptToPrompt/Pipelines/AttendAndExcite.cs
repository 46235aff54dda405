using PromptToPrompt.Loading;
using PromptToPrompt.Models;
using PromptToPrompt.Text;
using TorchSharp;
using static TorchSharp.torch;

namespace PromptToPrompt.Pipelines;

/// <summary>
/// Attend-and-Excite settings, with the defaults of the authors' <c>RunConfig</c>. Steps index the denoising loop's
/// UNet evaluations (PNDM's repeated timestep included), as the reference's do.
/// </summary>
public sealed record ExciteSettings
{
    /// <summary>Token positions of the subjects in the tokenized prompt (start token = 0).</summary>
    public required IReadOnlyList<int> TokenIndices { get; init; }
    /// <summary>The latent is updated at steps 0 .. MaxIterToAlter-1 (the reference's <c>max_iter_to_alter</c>).</summary>
    public int MaxIterToAlter { get; init; } = 25;
    /// <summary>Step size alpha_i = ScaleFactor * sqrt(linspace(ScaleStart, ScaleEnd, steps)[i]).</summary>
    public double ScaleFactor { get; init; } = 20;
    public double ScaleStart { get; init; } = 1.0;
    public double ScaleEnd { get; init; } = 0.5;
    /// <summary>Iterative refinement: at step k, until every subject's max attention reaches the value (loss below 1 - value).</summary>
    public IReadOnlyDictionary<int, double> Thresholds { get; init; } = new Dictionary<int, double> { [0] = 0.05, [10] = 0.5, [20] = 0.8 };
    public int MaxRefinementSteps { get; init; } = 20;
    /// <summary>Gaussian smoothing of each subject's map (the reference's sigma 0.5, 3x3).</summary>
    public double Sigma { get; init; } = 0.5;
    public int KernelSize { get; init; } = 3;
    /// <summary>
    /// The softmax over text tokens covers the prompt's own tokens only (end and padding tokens excluded): the reference's
    /// <c>normalize_eot</c>, which it uses for SD 2.1. Off: positions 1..L-2, as for SD 1.x.
    /// </summary>
    public bool NormalizeEot { get; init; }

    public void Validate()
    {
        if (TokenIndices.Count == 0) throw new UserError("Attend-and-Excite needs at least one subject word.");
        if (MaxIterToAlter < 0) throw new UserError($"--excite-steps must not be negative; got {MaxIterToAlter}.");
        if (!double.IsFinite(ScaleFactor) || ScaleFactor < 0) throw new UserError($"--excite-scale must be a finite number of at least 0; got {ScaleFactor}.");
        if (KernelSize < 1 || KernelSize % 2 == 0) throw new UserError($"The smoothing kernel size must be odd; got {KernelSize}.");
        foreach (var (step, value) in Thresholds)
            if (step < 0 || !(value is >= 0 and <= 1))
                throw new UserError($"--excite-thresholds {step}:{value}: steps must be at least 0 and values between 0 and 1.");
    }
}

/// <summary>What Attend-and-Excite did at one step: the first pass's maxima and loss, refinement iterations, the update.</summary>
public sealed record ExciteStep(int Step, double[] InitialMax, double InitialLoss, double StepSize,
                                IReadOnlyList<(double Loss, double[] Max)> Refinement, double? RefinedLoss, bool Updated);

/// <summary>
/// Attend-and-Excite (Chefer et al. 2023) as the authors' code computes it. Before each denoising step's guided pass,
/// a conditional-only UNet pass with gradients captures the cross-attention maps at <see cref="Resolution"/>; their
/// mean over layers and heads, a softmax over the text tokens (x100, without the start token and the last position),
/// Gaussian smoothing and the maximum give each subject's peak m_j; the loss <c>max_j (1 - m_j)</c> moves the latent
/// by <c>-alpha_i dL/dz</c> for the first <c>MaxIterToAlter</c> steps, with iterative refinement at the threshold steps.
/// </summary>
public sealed class AttendAndExcite : ILatentGuidance
{
    readonly StableDiffusionModel _model;
    readonly Tensor _cond;
    readonly TextTimeConditioning? _added;
    readonly ExciteSettings _settings;
    readonly double[] _scales;
    readonly Tensor _kernel;
    readonly Capture _capture;
    readonly List<ExciteStep> _steps = [];

    /// <summary>The query grid of the maps (the reference's <c>attention_res</c>).</summary>
    public int Resolution { get; }
    public IReadOnlyList<ExciteStep> Steps => _steps;
    /// <summary>The aggregated map [res, res, tokens] of step 0's first pass (float32, CPU), for inspection.</summary>
    public Tensor? FirstAggregate { get; private set; }

    /// <param name="cond">The prompt's embedding [1, L, D].</param>
    /// <param name="endToken">Position of the prompt's end token (needed with <see cref="ExciteSettings.NormalizeEot"/>).</param>
    /// <param name="added">SDXL's added conditioning of the prompt's row (null for other models).</param>
    public AttendAndExcite(StableDiffusionModel model, Tensor cond, ExciteSettings settings, int evaluations, int latentHeight, int latentWidth,
                           int? endToken = null, TextTimeConditioning? added = null)
    {
        _added = added is null ? null : new TextTimeConditioning(added.TextEmbeds.detach().DetachFromDisposeScope(), added.TimeIds.detach().DetachFromDisposeScope());
        settings.Validate();
        _model = model;
        _cond = cond.detach().to(model.Placement.DType).to(model.Placement.Device).DetachFromDisposeScope();
        _settings = settings;
        int keys = (int)cond.shape[1];
        foreach (var j in settings.TokenIndices)
            if (j < 1 || j > keys - 2) throw new UserError($"Subject token index {j} is outside the prompt's tokens 1..{keys - 2}.");
        Resolution = ResolutionFor(model.UNet, latentHeight, latentWidth);
        // numpy.linspace(start, end, evaluations)
        double delta = evaluations == 1 ? 0 : (settings.ScaleEnd - settings.ScaleStart) / (evaluations - 1);
        _scales = Enumerable.Range(0, evaluations).Select(i => i == evaluations - 1 && i > 0 ? settings.ScaleEnd : settings.ScaleStart + i * delta).ToArray();
        _kernel = GaussianKernel(settings.KernelSize, settings.Sigma).to(model.Placement.Device).DetachFromDisposeScope();
        _capture = new Capture(Resolution);
        _textEnd = settings.NormalizeEot ? endToken ?? throw new ArgumentException("NormalizeEot needs the end token's position.", nameof(endToken)) : keys - 1;
        if (settings.TokenIndices.Any(j => j >= _textEnd))
            throw new UserError($"A subject token lies at or after the prompt's end token (position {_textEnd}).");
    }

    readonly int _textEnd;

    /// <summary>
    /// Token positions of the subject <paramref name="words"/> in <paramref name="prompt"/>: every token of every occurrence
    /// (a word split into several tokens has each excited). A word not in the prompt is a user error listing its words.
    /// </summary>
    public static int[] SubjectTokens(ClipTokenizer tokenizer, string prompt, IEnumerable<string> words)
    {
        var positions = words.SelectMany(w => PromptWords.RequireTokenPositions(tokenizer, prompt, w)).Distinct().Order().ToArray();
        if (positions.Length == 0) throw new UserError("Attend-and-Excite needs at least one subject word, e.g. --excite cat,frog.");
        return positions;
    }

    /// <summary>
    /// The grid the maps are read at: that of the lowest-resolution down level with cross-attention (16x16 for SD 1.x/2.x at
    /// 512x512, the reference's fixed <c>attention_res</c>; it scales with the image).
    /// </summary>
    public static int ResolutionFor(UNet2DConditionModel unet, int latentHeight, int latentWidth)
    {
        var layer = unet.AttentionLayers.Where(l => l.IsCross && l.Place == UNetPlace.Down).MaxBy(l => l.Level)
                    ?? throw new UserError("This UNet has no cross-attention in its down blocks, which Attend-and-Excite reads.");
        var (h, w) = unet.QueryGrid(layer, latentHeight, latentWidth);
        if (h != w) throw new UserError($"Attend-and-Excite reads square attention maps; this size gives {w}x{h}. Use a square image.");
        return h;
    }

    /// <summary>The reference's GaussianSmoothing kernel: exp(-((x - mean) / (2 sigma))^2) per axis, outer product, normalised.</summary>
    public static Tensor GaussianKernel(int size, double sigma)
    {
        double mean = (size - 1) / 2.0;
        var g = Enumerable.Range(0, size).Select(x => 1 / (sigma * Math.Sqrt(2 * Math.PI)) * Math.Exp(-Math.Pow((x - mean) / (2 * sigma), 2))).ToArray();
        var k = new float[size * size];
        double sum = 0;
        for (int y = 0; y < size; y++) for (int x = 0; x < size; x++) sum += g[y] * g[x];
        for (int y = 0; y < size; y++) for (int x = 0; x < size; x++) k[y * size + x] = (float)(g[y] * g[x] / sum);
        return tensor(k, [1, 1, size, size]);
    }

    /// <summary>Each subject's peak: softmax(100 A[:, :, 1:end]) per subject token (end: the last position, or the end token), reflect-padded, smoothed, max. [subjects] tensor.</summary>
    public Tensor MaxAttention(Tensor aggregate)
    {
        var text = (aggregate[.., .., 1.._textEnd] * 100).softmax(-1);
        int pad = _settings.KernelSize / 2;
        var peaks = new List<Tensor>();
        foreach (var j in _settings.TokenIndices)
        {
            var map = text[.., .., j - 1].unsqueeze(0).unsqueeze(0);
            var padded = nn.functional.pad(map, [pad, pad, pad, pad], PaddingModes.Reflect);
            peaks.Add(nn.functional.conv2d(padded, _kernel.to(padded.dtype)).max());
        }
        return stack(peaks);
    }

    /// <summary>
    /// One conditional pass at <paramref name="z"/> (a leaf requiring grad): the subjects' peaks, the loss, the loss tensor
    /// (null when the loss is 0; it alone keeps the pass's graph) and the aggregated map (detached, CPU).
    /// </summary>
    (double[] Max, double Loss, Tensor? LossTensor, Tensor Aggregate) Pass(Tensor z, double t)
    {
        using var scope = NewDisposeScope();
        _capture.Maps.Clear();
        using (_model.UNet.Hooks.Use(_capture))
        using (var timestep = tensor((float)t, ScalarType.Float32, z.device))
            _model.UNet.forward(z.to(_model.Placement.DType), timestep, _cond, _added).Dispose();
        if (_capture.Maps.Count == 0) throw new InvalidOperationException($"No cross-attention maps at {Resolution}x{Resolution} were seen.");
        // The reference's order: up, down, mid; each map [heads, res, res, tokens].
        var ordered = _capture.Maps.OrderBy(m => m.Place switch { UNetPlace.Up => 0, UNetPlace.Down => 1, _ => 2 })
            .Select(m => m.Probabilities.reshape(-1, Resolution, Resolution, m.Probabilities.shape[^1]).to(ScalarType.Float32)).ToArray();
        var all = cat(ordered, 0);
        foreach (var m in _capture.Maps) m.Probabilities.Dispose(); // the graph keeps what it needs
        _capture.Maps.Clear();
        var aggregate = all.sum([0L]) / all.shape[0];
        var peaks = MaxAttention(aggregate);
        var max = peaks.detach().cpu().data<float>().Select(v => (double)v).ToArray();
        var losses = max.Select(m => Math.Max(0, 1 - m)).ToArray();
        int worst = Array.IndexOf(losses, losses.Max());
        // max(0, 1 - m) is the tensor 1 - m where positive, else the number 0; the loss is the largest (the first on ties).
        var lossTensor = losses[worst] > 0 ? (1 - peaks[worst]).MoveToOuterDisposeScope() : null;
        return (max, losses[worst], lossTensor, aggregate.detach().cpu().MoveToOuterDisposeScope());
    }

    static Tensor Update(Tensor z, Tensor loss, double stepSize)
    {
        using var scope = NewDisposeScope();
        var grad = torch.autograd.grad([loss], [z])[0];
        return (z - stepSize * grad).detach().MoveToOuterDisposeScope();
    }

    public Tensor Guide(int step, Tensor latents, double timestep)
    {
        using var scope = NewDisposeScope();
        using var gradients = enable_grad();
        double stepSize = _settings.ScaleFactor * Math.Sqrt(_scales[step]);
        var z = latents.detach().clone().requires_grad_(true);
        var (max, loss, lossTensor, aggregate) = Pass(z, timestep);
        if (step == 0) FirstAggregate = aggregate.clone().DetachFromDisposeScope();
        var (initialMax, initialLoss) = (max, loss);
        var refinement = new List<(double, double[])>();
        double? refined = null;
        if (_settings.Thresholds.TryGetValue(step, out var threshold) && loss > 1 - threshold)
        {
            double target = Math.Max(0, 1 - threshold);
            while (loss > target)
            {
                lossTensor?.Dispose();
                z = z.detach().clone().requires_grad_(true);
                (max, loss, lossTensor, _) = Pass(z, timestep);
                refinement.Add((loss, max));
                if (lossTensor is not null) z = Update(z, lossTensor, stepSize);
                if (refinement.Count >= _settings.MaxRefinementSteps) break;
            }
            lossTensor?.Dispose();
            z = z.detach().clone().requires_grad_(true);
            (max, loss, lossTensor, _) = Pass(z, timestep);
            refined = loss;
        }
        bool updated = false;
        if (step < _settings.MaxIterToAlter && lossTensor is not null)
        {
            z = Update(z, lossTensor, stepSize);
            updated = true;
        }
        lossTensor?.Dispose();
        _steps.Add(new ExciteStep(step, initialMax, initialLoss, stepSize, refinement, refined, updated));
        return z.detach().MoveToOuterDisposeScope();
    }

    /// <summary>One line: steps updated, where refinement ran (with its iterations), and the loss at the first and last steps.</summary>
    public static string Summary(IReadOnlyList<ExciteStep> steps)
    {
        var inv = System.Globalization.CultureInfo.InvariantCulture;
        var refined = steps.Where(s => s.RefinedLoss is not null).Select(s => $"{s.Step} ({s.Refinement.Count})").ToList();
        return string.Format(inv, "attend-and-excite: latent updated at {0} step(s); refinement at step(s) {1}; loss {2:0.###} at step 0, {3:0.###} at step {4}",
            steps.Count(s => s.Updated), refined.Count > 0 ? string.Join(", ", refined) : "none", steps[0].InitialLoss, steps[^1].InitialLoss, steps[^1].Step);
    }

    /// <summary>Keeps the cross-attention probabilities at the guidance grid of one pass, in the autograd graph.</summary>
    sealed class Capture(int resolution) : IAttentionHook
    {
        public readonly List<(UNetPlace Place, Tensor Probabilities)> Maps = [];
        public bool Needs(in AttentionCall call) => call.Layer.IsCross && call.Height == resolution && call.Width == resolution;
        public Tensor Edit(in AttentionCall call, Tensor probabilities)
        {
            // Kept past the attention layer's dispose scope; Pass disposes the handles once it has aggregated them.
            Maps.Add((call.Layer.Place, probabilities.DetachFromDisposeScope()));
            return probabilities;
        }
    }
}

/// <summary>Moves the latent before a denoising step's guided pass (Attend-and-Excite, ...).</summary>
public interface ILatentGuidance
{
    Tensor Guide(int step, Tensor latents, double timestep);
}
