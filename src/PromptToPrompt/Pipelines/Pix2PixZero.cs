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

/// <summary>
/// pix2pix-zero settings, with the defaults of the authors' scripts (<c>edit_real.py</c>, <c>ddim_inv.py</c>): 50 DDIM
/// steps, cross-attention guidance 0.1 (<c>xa_guidance</c>), classifier-free guidance 5 against the unedited prompt
/// (<c>negative_guidance_scale</c>), and the inversion's noise regularisation (<c>lambda_ac</c>, <c>lambda_kl</c> 20, 5
/// outer steps of 5 auto-correlation rolls). <see cref="Seed"/> draws the random roll amounts of the auto-correlation term.
/// </summary>
public sealed record ZeroSettings
{
    public int Steps { get; init; } = 50;
    public double GuidanceScale { get; init; } = 5.0;
    public double CrossAttentionGuidance { get; init; } = 0.1;
    public double LambdaAutoCorrelation { get; init; } = 20;
    public double LambdaKl { get; init; } = 20;
    public int RegularizationSteps { get; init; } = 5;
    public int AutoCorrelationRolls { get; init; } = 5;
    public long Seed { get; init; }

    public void Validate()
    {
        if (Steps < 1) throw new UserError($"--steps must be at least 1; got {Steps}.");
        StableDiffusionPipeline.CheckGuidance(GuidanceScale);
        foreach (var (name, value) in new[] { ("--xa-guidance", CrossAttentionGuidance), ("--lambda-ac", LambdaAutoCorrelation), ("--lambda-kl", LambdaKl) })
            if (!double.IsFinite(value) || value < 0)
                throw new UserError($"{name} must be a finite number of at least 0; got {value.ToString(CultureInfo.InvariantCulture)}.");
        if (RegularizationSteps < 0) throw new UserError($"--reg-steps must not be negative; got {RegularizationSteps}.");
        if (AutoCorrelationRolls < 1) throw new UserError($"--ac-rolls must be at least 1; got {AutoCorrelationRolls}.");
    }
}

/// <summary>
/// The noise regularisation of pix2pix-zero's DDIM inversion: gradient steps on each predicted noise that push it
/// towards white Gaussian noise, by an auto-correlation term over a pyramid and a KL term to N(0, 1).
/// </summary>
public static class NoiseRegularization
{
    /// <summary>
    /// The reference's <c>auto_corr_loss</c> of one noise map [1, C, H, W]: per channel, at every pyramid level (halved by
    /// 2x2 average pooling while the height is above 8), the squared means of the map times itself rolled by r along the
    /// height and, separately, along the width; r = 1, or drawn uniformly from 0..H/2-1 per level when <paramref name="rng"/> is given.
    /// </summary>
    public static Tensor AutoCorrelationLoss(Tensor x, Random? rng)
    {
        if (x.dim() != 4 || x.shape[0] != 1) throw new ArgumentException("The auto-correlation loss takes one map [1, C, H, W].", nameof(x));
        Tensor? loss = null;
        for (long c = 0; c < x.shape[1]; c++)
        {
            var noise = x.narrow(1, c, 1);
            while (true)
            {
                long roll = rng is null ? 1 : rng.Next(Math.Max(1, (int)(noise.shape[2] / 2)));
                var term = (noise * noise.roll(roll, 2)).mean().square() + (noise * noise.roll(roll, 3)).mean().square();
                loss = loss is null ? term : loss + term;
                if (noise.shape[2] <= 8) break;
                noise = nn.functional.avg_pool2d(noise, 2);
            }
        }
        return loss!;
    }

    /// <summary>The reference's <c>kl_divergence</c>: var + mean^2 - 1 - log(var + 1e-7), over all elements (unbiased variance).</summary>
    public static Tensor KlDivergence(Tensor x)
    {
        var mean = x.mean();
        var variance = x.var();
        return variance + mean.square() - 1 - (variance + 1e-7).log();
    }

    /// <summary>
    /// The regularised noise: <see cref="ZeroSettings.RegularizationSteps"/> times, <see cref="ZeroSettings.AutoCorrelationRolls"/>
    /// steps <c>e -= lambda_ac * grad(L_ac) / rolls</c>, then one <c>e -= lambda_kl * grad(L_kl)</c> (float32, one map [1, C, H, W]).
    /// </summary>
    public static Tensor Regularize(Tensor eps, ZeroSettings settings, Random rng)
    {
        using var scope = NewDisposeScope();
        using var gradients = enable_grad();
        var e = eps.detach().to(ScalarType.Float32);
        for (int outer = 0; outer < settings.RegularizationSteps; outer++)
        {
            if (settings.LambdaAutoCorrelation > 0)
                for (int inner = 0; inner < settings.AutoCorrelationRolls; inner++)
                    e = e - settings.LambdaAutoCorrelation * Gradient(e, v => AutoCorrelationLoss(v, rng)) / settings.AutoCorrelationRolls;
            if (settings.LambdaKl > 0) e = e - settings.LambdaKl * Gradient(e, KlDivergence);
        }
        return e.detach().MoveToOuterDisposeScope();
    }

    static Tensor Gradient(Tensor at, Func<Tensor, Tensor> loss)
    {
        var v = at.detach().clone().requires_grad_(true);
        return torch.autograd.grad([loss(v)], [v])[0].detach();
    }
}

/// <summary>An edit direction in text-embedding space and the sentences it was computed from.</summary>
public sealed record EditDirection(Tensor Embedding, string From, string To, int FromSentences, int ToSentences, string Source) : IDisposable
{
    /// <summary>A direction is a mean: with fewer sentences per side it is dominated by what else they say.</summary>
    public const int MinimumSentences = 10;

    /// <summary>The reference's <c>construct_direction</c>: mean of the target sentences' embeddings minus mean of the source ones ([n, L, D] each) as [1, L, D].</summary>
    public static Tensor Between(Tensor from, Tensor to) => (to.mean([0L]) - from.mean([0L])).unsqueeze(0);

    /// <summary>Sentences of a direction file, one a line (blank lines skipped); fewer than <see cref="MinimumSentences"/> is a user error.</summary>
    public static List<string> ReadSentences(string path)
    {
        if (!File.Exists(path))
            throw new UserError($"The sentence file {path} does not exist. --directions DIR holds WORD.txt for each word of the edit, one sentence a line.");
        List<string> lines;
        try { lines = File.ReadAllLines(path).Select(l => l.Trim()).Where(l => l.Length > 0).ToList(); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { throw new UserError($"The sentence file {path} cannot be read ({e.Message})."); }
        if (lines.Count < MinimumSentences)
            throw new UserError($"{path} has {lines.Count} sentence{(lines.Count == 1 ? "" : "s")}; an edit direction needs at least {MinimumSentences} (one a line; the authors used about 1000).");
        return lines;
    }

    public void Dispose() => Embedding.Dispose();
}

/// <summary>
/// A pix2pix-zero edit: the reconstruction (the inversion sampled without the direction), the edit, its final latents, and
/// each step's cross-attention loss (the distance of the edit's maps to the reference's after that step's guidance).
/// </summary>
public sealed record ZeroResult(RgbImage Reconstruction, RgbImage Edit, Tensor Latents, IReadOnlyList<double> Losses, IReadOnlyDictionary<string, string> Parameters) : IDisposable
{
    public void Dispose() => Latents.Dispose();
}

/// <summary>
/// pix2pix-zero (Parmar et al. 2023) as the authors' code computes it: a DDIM inversion whose noise predictions are
/// regularised (<see cref="NoiseRegularization"/>), then two samplings from the inverted x_T. The reference sampling uses
/// the prompt and keeps every cross-attention map; the edit adds the direction to the conditional embedding (the
/// unconditional one is the unedited prompt, guidance <see cref="ZeroSettings.GuidanceScale"/>) and, before each step,
/// moves both halves of its batch by one SGD step (lr <see cref="ZeroSettings.CrossAttentionGuidance"/>) on
/// <c>sum over layers of mean over samples and heads of sum over queries and keys of (A - A_ref)^2</c>, predicts the noise
/// again from the moved halves and steps from the unconditional half. The two samplings run in lockstep, so one step's
/// reference maps are held at a time instead of the reference's whole run.
/// </summary>
public sealed class Pix2PixZero(StableDiffusionPipeline pipeline)
{
    StableDiffusionModel Model => pipeline.Model;

    /// <summary>The direction between two sets of sentences (text embeddings encoded 16 at a time).</summary>
    void RequireNotXL()
    {
        if (Model.IsXL)
            throw new UserError($"{Model.Name} is an SDXL model; p2p zero works with SD 1.x/2.x models so far. Edit SDXL images with p2p edit.");
    }

    public EditDirection Direction(string from, string to, IReadOnlyList<string> fromSentences, IReadOnlyList<string> toSentences, string source)
    {
        using var scope = NewDisposeScope();
        var direction = EditDirection.Between(Encode(fromSentences), Encode(toSentences));
        return new EditDirection(direction.to(ScalarType.Float32).MoveToOuterDisposeScope(), from, to, fromSentences.Count, toSentences.Count, source);
    }

    Tensor Encode(IReadOnlyList<string> sentences) =>
        cat(sentences.Chunk(16).Select(c => pipeline.EncodePrompts(c).to(ScalarType.Float32)).ToArray(), 0);

    /// <summary>x_T [1, C, h, w] of <paramref name="image"/> by the regularised DDIM inversion (prompt only, guidance 1).</summary>
    public Tensor Invert(RgbImage image, string prompt, ZeroSettings settings, IProgress<InversionProgress>? progress = null, CancellationToken cancel = default)
    {
        settings.Validate();
        Model.RequireTextToImage();
        RequireNotXL();
        var inversion = new Inversion(pipeline);
        using var scope = NewDisposeScope();
        using var image01 = image.ToTensor();
        var latent = pipeline.Encode(image01);
        var cond = pipeline.EncodePrompts([prompt]).to(Model.Placement.DType);
        var rng = new Random((int)(settings.Seed & int.MaxValue));
        var trajectory = inversion.DdimTrajectory(latent, cond, inversion.Scheduler(settings.Steps), e => NoiseRegularization.Regularize(e, settings, rng),
            progress, Stopwatch.StartNew(), cancel, "DDIM inversion (regularised)");
        return trajectory[^1].cpu().MoveToOuterDisposeScope();
    }

    /// <summary>Samples the reconstruction and the edit of <paramref name="xT"/> along <paramref name="direction"/>.</summary>
    public ZeroResult Edit(Tensor xT, string prompt, EditDirection direction, ZeroSettings settings, IProgress<InversionProgress>? progress = null,
                           CancellationToken cancel = default)
    {
        settings.Validate();
        Model.RequireTextToImage();
        RequireNotXL();
        var device = Model.Placement.Device;
        var dtype = Model.Placement.DType;
        var scheduler = new Inversion(pipeline).Scheduler(settings.Steps);
        int n = scheduler.Timesteps.Count;
        using var scope = NewDisposeScope();
        var cond = pipeline.EncodePrompts([prompt]).to(ScalarType.Float32);
        if (!direction.Embedding.shape[1..].SequenceEqual(cond.shape[1..]))
            throw new UserError($"The edit direction has shape [{string.Join(", ", direction.Embedding.shape)}] but this model's prompts are [1, {cond.shape[1]}, {cond.shape[2]}].");
        var context = cat([cond, cond + direction.Embedding.to(device)], 0).to(dtype);
        cond = cond.to(dtype);
        var reference = xT.to(ScalarType.Float32).to(device);
        var x = reference;
        var tape = new CrossAttentionTape();
        var losses = new List<double>();
        var clock = Stopwatch.StartNew();
        try
        {
            for (int i = 0; i < n; i++)
            {
                cancel.ThrowIfCancellationRequested();
                using var step = NewDisposeScope();
                using var pause = CollectionPause.Begin();
                using var t = tensor((float)scheduler.Timesteps[i], ScalarType.Float32, device);
                // The reference sampling: its unconditional prompt is the prompt itself, so guidance leaves its noise unchanged.
                using (no_grad())
                using (Model.UNet.Hooks.Use(tape.Recording()))
                    reference = scheduler.Step(Model.UNet.forward(reference.to(dtype), t, cond).to(ScalarType.Float32), i, reference).MoveToOuterDisposeScope();

                var moved = cat([x, x], 0);
                if (settings.CrossAttentionGuidance > 0)
                {
                    using var gradients = enable_grad();
                    var leaf = moved.detach().clone().requires_grad_(true);
                    using (Model.UNet.Hooks.Use(tape.Comparing()))
                        Model.UNet.forward(leaf.to(dtype), t, context).Dispose();
                    using var distance = tape.TakeLoss();
                    moved = (leaf - settings.CrossAttentionGuidance * torch.autograd.grad([distance], [leaf])[0]).detach();
                }
                // The noise from the moved halves; the distance to the reference maps there is the step's loss.
                double loss;
                using (no_grad())
                {
                    Tensor[] halves;
                    using (Model.UNet.Hooks.Use(tape.Comparing()))
                        halves = Model.UNet.forward(moved.to(dtype), t, context).to(ScalarType.Float32).chunk(2, 0);
                    using (var distance = tape.TakeLoss()) loss = distance.item<float>();
                    var noise = halves[0] + settings.GuidanceScale * (halves[1] - halves[0]);
                    x = scheduler.Step(noise, i, moved[..1]).MoveToOuterDisposeScope();
                }
                tape.Clear();
                losses.Add(loss);
                progress?.Report(new InversionProgress("pix2pix-zero editing", i + 1, n, 0, 0, loss, clock.Elapsed));
            }
        }
        finally { tape.Clear(); }
        var images = pipeline.Decode(cat([reference, x], 0));
        return new ZeroResult(images[0], images[1], x.cpu().MoveToOuterDisposeScope(), losses, Parameters(prompt, direction, settings));
    }

    IReadOnlyDictionary<string, string> Parameters(string prompt, EditDirection d, ZeroSettings s)
    {
        var inv = CultureInfo.InvariantCulture;
        var summary = $"{prompt}\n" + string.Format(inv,
            "pix2pix-zero: {0} -> {1} ({2}), Steps: {3}, Sampler: ddim, CFG scale: {4}, Cross-attention guidance: {5}, Model: {6}",
            d.From, d.To, d.Source, s.Steps, s.GuidanceScale, s.CrossAttentionGuidance, Model.Name);
        var json = JsonSerializer.Serialize(new Dictionary<string, object?>
        {
            ["prompt"] = prompt, ["method"] = "pix2pix-zero", ["from"] = d.From, ["to"] = d.To, ["sentences"] = d.Source,
            ["from_sentences"] = d.FromSentences, ["to_sentences"] = d.ToSentences, ["steps"] = s.Steps, ["scheduler"] = "ddim",
            ["negative_guidance_scale"] = s.GuidanceScale, ["xa_guidance"] = s.CrossAttentionGuidance, ["lambda_ac"] = s.LambdaAutoCorrelation,
            ["lambda_kl"] = s.LambdaKl, ["num_reg_steps"] = s.RegularizationSteps, ["num_ac_rolls"] = s.AutoCorrelationRolls, ["seed"] = s.Seed,
            ["model"] = Model.Name, ["dtype"] = Model.Placement.DType.ToString().ToLowerInvariant(),
        });
        return new Dictionary<string, string> { ["parameters"] = summary, ["prompt-to-prompt"] = json };
    }

    /// <summary>
    /// Every cross-attention map of a UNet pass (all samples and heads): recorded from the reference sampling, then compared
    /// with the edit's maps of the same step, keeping the squared distance in the autograd graph.
    /// </summary>
    sealed class CrossAttentionTape : IAttentionHook
    {
        readonly Dictionary<string, Tensor> _reference = new();
        bool _recording;
        Tensor? _loss;

        public CrossAttentionTape Recording() { Clear(); _recording = true; return this; }
        public CrossAttentionTape Comparing() { _recording = false; return this; }

        public bool Needs(in AttentionCall call) => call.Layer.IsCross;

        public Tensor Edit(in AttentionCall call, Tensor probabilities)
        {
            var path = call.Layer.Path;
            if (_recording)
            {
                _reference[path] = probabilities.detach().to(ScalarType.Float32).clone().DetachFromDisposeScope();
                return probabilities;
            }
            var reference = _reference[path];
            // [samples * heads, q, k] against the reference's [heads, q, k], the same for both halves (its prompts are equal).
            var current = probabilities.to(ScalarType.Float32).view(-1, reference.shape[0], reference.shape[1], reference.shape[2]);
            var term = (current - reference.unsqueeze(0)).square().sum([2L, 3L]).mean();
            var sum = (_loss is null ? term : _loss + term).DetachFromDisposeScope();
            _loss?.Dispose();
            _loss = sum;
            return probabilities;
        }

        public Tensor TakeLoss()
        {
            var loss = _loss ?? throw new InvalidOperationException("The UNet pass saw no cross-attention layer.");
            _loss = null;
            return loss;
        }

        public void Clear()
        {
            foreach (var t in _reference.Values) t.Dispose();
            _reference.Clear();
            _loss?.Dispose();
            _loss = null;
        }
    }
}
