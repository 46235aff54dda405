using PromptToPrompt.Loading;
using TorchSharp;
using static TorchSharp.torch;

namespace PromptToPrompt.Schedulers;

/// <summary>
/// Euler (Karras et al. 2022, Algorithm 2 without churn) on sigmas interpolated at the chosen timesteps, as
/// diffusers' EulerDiscreteScheduler computes it. Timesteps are floats (linspace spacing by default).
/// </summary>
public sealed class EulerDiscreteScheduler : ISigmaScheduler
{
    readonly SchedulerConfig _config;
    readonly double[] _sigmas;

    public IReadOnlyList<double> Timesteps { get; }
    public double InitNoiseSigma { get; }
    /// <summary>The sigma of each step, plus a trailing 0 (float32 values).</summary>
    public IReadOnlyList<double> Sigmas => _sigmas;

    public EulerDiscreteScheduler(SchedulerConfig config, int steps)
    {
        _config = config;
        var (timesteps, sigmas) = SigmaSchedule(config, steps);
        Timesteps = timesteps;
        _sigmas = sigmas;
        double max = _sigmas.Max();
        InitNoiseSigma = (config.TimestepSpacing ?? "linspace") is "linspace" or "trailing" ? max : Math.Sqrt(max * max + 1);
    }

    /// <summary>
    /// Timesteps (descending floats) and their sigmas: <c>interp(t, arange(T), sqrt((1 - acp) / acp))</c> in float64
    /// over the float32 training sigmas, a trailing 0, cast to float32.
    /// </summary>
    internal static (double[] Timesteps, double[] Sigmas) SigmaSchedule(SchedulerConfig config, int steps)
    {
        int T = config.NumTrainTimesteps;
        var spacing = config.TimestepSpacing ?? "linspace";
        double[] timesteps = spacing == "linspace"
            ? Enumerable.Range(0, steps).Select(i => steps == 1 ? 0 : i == steps - 1 ? T - 1.0 : i * ((T - 1.0) / (steps - 1))).Reverse().ToArray() // numpy.linspace
            : NoiseSchedule.Spaced(spacing, steps, T, config.StepsOffset).Reverse().Select(x => (double)x).ToArray();
        // diffusers' Euler schedulers (0.10 and later) compute the table with torch ops.
        var trainSigmas = new NoiseSchedule(config, torchArithmetic: true).Sigmas();
        return (timesteps, timesteps.Select(t => (double)(float)NoiseSchedule.Interp(t, trainSigmas)).Append(0.0).ToArray());
    }

    public Tensor ScaleModelInput(Tensor sample, int stepIndex) => sample / Math.Sqrt(_sigmas[stepIndex] * _sigmas[stepIndex] + 1);

    /// <summary>x0 = x - sigma e (epsilon) or the v-prediction form.</summary>
    internal static Tensor PredictOriginal(SchedulerConfig config, double sigma, Tensor output, Tensor x) => config.PredictionType == "v_prediction"
        ? output * (-sigma / Math.Sqrt(sigma * sigma + 1)) + x / (sigma * sigma + 1)
        : x - sigma * output;

    public Tensor Step(Tensor modelOutput, int stepIndex, Tensor sample, Generator? generator = null)
    {
        using var scope = NewDisposeScope();
        double sigma = _sigmas[stepIndex];
        var x = sample.to(ScalarType.Float32);
        var x0 = PredictOriginal(_config, sigma, modelOutput.to(ScalarType.Float32), x);
        var derivative = (x - x0) / sigma;
        var prev = x + derivative * (_sigmas[stepIndex + 1] - sigma);
        return prev.to(modelOutput.dtype).MoveToOuterDisposeScope();
    }
}

/// <summary>
/// Euler ancestral (diffusers' EulerAncestralDiscreteScheduler, the InstructPix2Pix model's own): an Euler step down
/// to <c>sigma_down</c>, then fresh noise of strength <c>sigma_up</c>, drawn from the given generator on the CPU (as
/// PyTorch's CPU generator draws it) and moved to the sample's device, so a seed gives the same run on every device.
/// The draw is made at every step, the last one included (where <c>sigma_up</c> is 0), as the reference does.
/// </summary>
public sealed class EulerAncestralDiscreteScheduler : ISigmaScheduler
{
    readonly SchedulerConfig _config;
    readonly double[] _sigmas;

    public IReadOnlyList<double> Timesteps { get; }
    public double InitNoiseSigma { get; }
    public IReadOnlyList<double> Sigmas => _sigmas;

    public EulerAncestralDiscreteScheduler(SchedulerConfig config, int steps)
    {
        _config = config;
        var (timesteps, sigmas) = EulerDiscreteScheduler.SigmaSchedule(config, steps);
        Timesteps = timesteps;
        _sigmas = sigmas;
        InitNoiseSigma = _sigmas.Max();
    }

    public Tensor ScaleModelInput(Tensor sample, int stepIndex) => sample / Math.Sqrt(_sigmas[stepIndex] * _sigmas[stepIndex] + 1);

    /// <summary>x0 = x - sigma e (epsilon) or the v-prediction form.</summary>
    public Tensor PredictOriginal(Tensor modelOutput, int stepIndex, Tensor sample) =>
        EulerDiscreteScheduler.PredictOriginal(_config, _sigmas[stepIndex], modelOutput, sample);

    public Tensor Step(Tensor modelOutput, int stepIndex, Tensor sample, Generator? generator = null)
    {
        if (generator is null)
            throw new ArgumentException("The Euler-ancestral scheduler draws noise at every step and needs the run's generator.", nameof(generator));
        using var scope = NewDisposeScope();
        // float32 arithmetic, as the reference computes these from its float32 sigma tensor.
        float from = (float)_sigmas[stepIndex], to = (float)_sigmas[stepIndex + 1];
        float up = MathF.Sqrt(to * to * (from * from - to * to) / (from * from));
        float down = MathF.Sqrt(to * to - up * up);
        var x = sample.to(ScalarType.Float32);
        var x0 = PredictOriginal(modelOutput.to(ScalarType.Float32), stepIndex, x);
        var derivative = (x - x0) / from;
        var noise = randn(modelOutput.shape, ScalarType.Float32, CPU, generator: generator).to(x.device);
        var prev = x + derivative * (down - from) + noise * up;
        return prev.to(modelOutput.dtype).MoveToOuterDisposeScope();
    }
}
