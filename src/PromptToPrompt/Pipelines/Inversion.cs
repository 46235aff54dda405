using System.Diagnostics;
using PromptToPrompt.Imaging;
using PromptToPrompt.Loading;
using PromptToPrompt.Models;
using PromptToPrompt.Schedulers;
using TorchSharp;
using static TorchSharp.torch;

namespace PromptToPrompt.Pipelines;

/// <summary>How a photo is inverted.</summary>
public enum InversionMethod
{
    /// <summary>DDIM inversion only; sampling uses the empty prompt's embedding (reconstruction drifts under guidance).</summary>
    Ddim,
    /// <summary>Mokady et al. 2022: per step, optimise the unconditional embedding so guided sampling retraces the DDIM trajectory.</summary>
    NullText,
    /// <summary>Miyake et al. 2023: no optimisation; the source prompt's embedding serves as the unconditional one.</summary>
    NegativePrompt,
    /// <summary>
    /// Ju et al. 2023 (PnP Inversion, "direct inversion"): no optimisation; the source branch is put back onto the
    /// DDIM-inverted trajectory after every sampling step, so it reconstructs the photo's latent exactly.
    /// </summary>
    Direct,
}

/// <summary>Settings of an inversion (the reference's defaults: 50 steps, 10 inner steps, guidance 7.5, epsilon 1e-5).</summary>
public sealed record InversionSettings(
    InversionMethod Method = InversionMethod.NullText, int Steps = 50, int InnerSteps = 10, double GuidanceScale = 7.5,
    double EarlyStopEpsilon = 1e-5)
{
    public void Validate()
    {
        if (Steps < 1) throw new UserError($"steps must be at least 1; got {Steps}.");
        if (InnerSteps < 1) throw new UserError($"inner steps must be at least 1; got {InnerSteps}.");
        StableDiffusionPipeline.CheckGuidance(GuidanceScale);
        if (EarlyStopEpsilon < 0) throw new UserError($"the early-stop epsilon must not be negative; got {EarlyStopEpsilon}.");
    }
}

/// <summary>Progress of an inversion: phase, outer step, inner iteration and the current loss.</summary>
public readonly record struct InversionProgress(string Phase, int Step, int Total, int Inner, int InnerTotal, double Loss, TimeSpan Elapsed);

/// <summary>
/// The result: x_T [1, C, h, w], the unconditional embedding for each sampling step [steps, 1, L, D], and the DDIM
/// trajectory (index 0 = the encoded photo, index k after k inversion steps; float32, CPU).
/// </summary>
public sealed record InversionResult(Tensor XT, Tensor NullEmbeddings, Tensor DdimLatents, InversionSettings Settings, string Prompt) : IDisposable
{
    public void Dispose()
    {
        XT.Dispose();
        NullEmbeddings.Dispose();
        DdimLatents.Dispose();
    }
}

/// <summary>
/// Inversion of a real image into the diffusion model (the null-text notebook's <c>NullInversion</c>), with the
/// DDIM scheduler of the model's noise schedule.
/// </summary>
public sealed class Inversion(StableDiffusionPipeline pipeline)
{
    StableDiffusionModel Model => pipeline.Model;

    /// <summary>The DDIM scheduler inversion and the edits from it use (the model's betas, DDIM stepping).</summary>
    public DdimScheduler Scheduler(int steps) => (DdimScheduler)Schedulers.Schedulers.Create("ddim", Model.Scheduler, steps);

    public InversionResult Invert(RgbImage image, string prompt, InversionSettings settings, IProgress<InversionProgress>? progress = null,
                                  CancellationToken cancel = default)
    {
        settings.Validate();
        Model.RequireTextToImage();
        var scheduler = Scheduler(settings.Steps);
        int n = scheduler.Timesteps.Count;
        var device = Model.Placement.Device;
        var dtype = Model.Placement.DType;
        var clock = Stopwatch.StartNew();
        using var scope = NewDisposeScope();
        using var image01 = image.ToTensor();
        var latent = pipeline.Encode(image01);
        // The unconditional side is the empty prompt's, as the sampling from the inversion will use (zeros for SDXL models with force_zeros_for_empty_prompt).
        var (condText, emptyText, pooled) = pipeline.Condition([prompt], "", null, image.Width, image.Height);
        var cond = condText.to(dtype).to(device);
        var empty = emptyText.to(dtype).to(device);

        var trajectory = DdimTrajectory(latent, cond, scheduler, null, progress, clock, cancel, pooled: pooled);
        Tensor nullEmbeddings = settings.Method switch
        {
            InversionMethod.Ddim or InversionMethod.Direct => empty.unsqueeze(0).expand(n, -1, -1, -1).contiguous(),
            InversionMethod.NegativePrompt => cond.unsqueeze(0).expand(n, -1, -1, -1).contiguous(),
            _ => OptimizeNullText(trajectory, cond, empty, pooled, scheduler, settings, progress, clock, cancel),
        };
        var ddim = stack(trajectory.Select(t => t.to(ScalarType.Float32).cpu()).ToArray());
        return new InversionResult(trajectory[^1].to(ScalarType.Float32).cpu().MoveToOuterDisposeScope(),
            nullEmbeddings.to(ScalarType.Float32).cpu().MoveToOuterDisposeScope(), ddim.MoveToOuterDisposeScope(), settings, prompt);
    }

    /// <summary>
    /// DDIM inversion of <paramref name="latent"/>: the noise predicted from the conditional embedding only (guidance 1),
    /// optionally changed by <paramref name="regularize"/> (pix2pix-zero's noise regularisation), then x_{t-1} -> x_t.
    /// Index 0 of the result is the latent itself, index k the latent after k inversion steps.
    /// </summary>
    public List<Tensor> DdimTrajectory(Tensor latent, Tensor cond, DdimScheduler scheduler, Func<Tensor, Tensor>? regularize,
                                       IProgress<InversionProgress>? progress, Stopwatch clock, CancellationToken cancel, string phase = "DDIM inversion",
                                       PooledConditioning? pooled = null)
    {
        var added = pooled?.For(guided: false, latent.device);
        int n = scheduler.Timesteps.Count;
        var trajectory = new List<Tensor> { latent };
        using var _ = no_grad();
        var x = latent;
        for (int i = 0; i < n; i++)
        {
            cancel.ThrowIfCancellationRequested();
            using var pause = CollectionPause.Begin();
            int stepIndex = n - 1 - i;
            var eps = Predict(x, scheduler.Timesteps[stepIndex], cond, added);
            if (regularize is not null) eps = regularize(eps);
            x = scheduler.InvertStep(eps, stepIndex, x);
            trajectory.Add(x);
            progress?.Report(new InversionProgress(phase, i + 1, n, 0, 0, double.NaN, clock.Elapsed));
        }
        return trajectory;
    }

    /// <param name="added">SDXL's added conditioning for the rows of <paramref name="x"/> (null for other models).</param>
    Tensor Predict(Tensor x, double t, Tensor context, TextTimeConditioning? added)
    {
        using var timestep = tensor((float)t, ScalarType.Float32, x.device);
        return Model.UNet.forward(x.to(Model.Placement.DType), timestep, context, added).to(ScalarType.Float32);
    }

    /// <summary>
    /// The reference's <c>null_optimization</c>: for each sampling step i, Adam (lr 1e-2 * (1 - i/100)) on a copy of the
    /// current unconditional embedding, minimising the MSE between the guided DDIM step from the current latent and
    /// the DDIM-inverted latent one step earlier; at most <c>InnerSteps</c> iterations, stopping once the loss is
    /// below <c>epsilon + i * 2e-5</c> (after the step is taken). The next step starts from the optimised embedding.
    /// </summary>
    Tensor OptimizeNullText(List<Tensor> trajectory, Tensor cond, Tensor empty, PooledConditioning? pooled, DdimScheduler scheduler, InversionSettings s,
                            IProgress<InversionProgress>? progress, Stopwatch clock, CancellationToken cancel)
    {
        var device = cond.device;
        var (positive, negative, both) = (pooled?.For(false, device), pooled?.Negative(device), pooled?.For(true, device));
        int n = scheduler.Timesteps.Count;
        var result = new List<Tensor>();
        var uncond = empty.detach().clone();
        var current = trajectory[^1];
        for (int i = 0; i < n; i++)
        {
            using var scope = NewDisposeScope();
            double t = scheduler.Timesteps[i];
            var target = trajectory[trajectory.Count - i - 2];
            var param = new TorchSharp.Modules.Parameter(uncond.detach().to(ScalarType.Float32).clone(), requires_grad: true);
            using var optimizer = optim.Adam([param], lr: 1e-2 * (1.0 - i / 100.0));
            Tensor condNoise;
            using (no_grad()) condNoise = Predict(current, t, cond, positive);
            double loss = double.NaN;
            for (int j = 0; j < s.InnerSteps; j++)
            {
                cancel.ThrowIfCancellationRequested();
                using var inner = NewDisposeScope();
                using var pause = CollectionPause.Begin();
                var uncondNoise = Predict(current, t, param.to(Model.Placement.DType), negative);
                var noise = uncondNoise + s.GuidanceScale * (condNoise - uncondNoise);
                var previous = scheduler.Step(noise, i, current);
                var mse = nn.functional.mse_loss(previous, target);
                optimizer.zero_grad();
                mse.backward();
                optimizer.step();
                loss = mse.item<float>();
                progress?.Report(new InversionProgress("null-text optimisation", i + 1, n, j + 1, s.InnerSteps, loss, clock.Elapsed));
                if (loss < s.EarlyStopEpsilon + i * 2e-5) break;
            }
            uncond = param.detach().to(Model.Placement.DType).MoveToOuterDisposeScope();
            result.Add(uncond.to(ScalarType.Float32).clone().MoveToOuterDisposeScope());
            using (no_grad())
            {
                var context = cat([uncond, cond], 0);
                using var timestep = tensor((float)t, ScalarType.Float32, current.device);
                var halves = Model.UNet.forward(cat([current, current], 0).to(Model.Placement.DType), timestep, context, both).to(ScalarType.Float32).chunk(2, 0);
                var noise = halves[0] + s.GuidanceScale * (halves[1] - halves[0]);
                current = scheduler.Step(noise, i, current).MoveToOuterDisposeScope();
            }
        }
        return stack(result.ToArray());
    }

    /// <summary>Samples the inverted image back: its prompt, x_T and per-step null embeddings, DDIM, its steps and guidance.</summary>
    public RgbImage Reconstruct(InversionResult inverted, IProgress<StepProgress>? progress = null, CancellationToken cancel = default)
    {
        // Direct inversion puts the source back onto the trajectory after every step, the last time onto index 0.
        if (inverted.Settings.Method == InversionMethod.Direct) return pipeline.Decode(inverted.DdimLatents[0])[0];
        var result = pipeline.Generate(new GenerationRequest
        {
            Prompts = [inverted.Prompt], Steps = inverted.Settings.Steps, GuidanceScale = inverted.Settings.GuidanceScale, Scheduler = "ddim",
            InitialLatent = inverted.XT, UnconditionalEmbeddings = inverted.NullEmbeddings,
        }, progress, null, cancel);
        result.Latents.Dispose();
        return result.Images[0];
    }

    /// <summary>Peak signal-to-noise ratio (dB) between two images of the same size.</summary>
    public static double Psnr(RgbImage a, RgbImage b)
    {
        if (a.Width != b.Width || a.Height != b.Height) throw new ArgumentException("images differ in size");
        double se = 0;
        for (int i = 0; i < a.Pixels.Length; i++) { double d = a.Pixels[i] - b.Pixels[i]; se += d * d; }
        double mse = se / a.Pixels.Length;
        return mse == 0 ? double.PositiveInfinity : 10 * Math.Log10(255.0 * 255.0 / mse);
    }
}
