using PromptToPrompt.Loading;
using TorchSharp;
using static TorchSharp.torch;

namespace PromptToPrompt.Schedulers;

/// <summary>
/// DDIM (Song et al. 2021) as diffusers computes it, with eta (0 = deterministic) and the inversion step used by
/// DDIM / null-text inversion.
/// </summary>
public sealed class DdimScheduler : IScheduler
{
    readonly NoiseSchedule _schedule;
    readonly SchedulerConfig _config;
    readonly int _stepRatio;

    public IReadOnlyList<double> Timesteps { get; }
    public double InitNoiseSigma => 1.0;
    public double Eta { get; init; }
    public float FinalAlphaCumprod { get; }

    public DdimScheduler(SchedulerConfig config, int steps)
    {
        _config = config;
        _schedule = new NoiseSchedule(config);
        _stepRatio = config.NumTrainTimesteps / steps;
        FinalAlphaCumprod = config.SetAlphaToOne ? 1f : _schedule.AlphasCumprod[0];
        Timesteps = NoiseSchedule.Spaced(config.TimestepSpacing ?? "leading", steps, config.NumTrainTimesteps, config.StepsOffset)
            .Reverse().Select(x => (double)x).ToArray();
    }

    public Tensor ScaleModelInput(Tensor sample, int stepIndex) => sample;

    float AlphaAt(int t) => t >= 0 ? _schedule.AlphasCumprod[t] : FinalAlphaCumprod;

    /// <summary>Epsilon and x0 predicted from the model output (epsilon or v).</summary>
    (Tensor Eps, Tensor X0) Predict(Tensor modelOutput, Tensor sample, float aT)
    {
        float bT = 1 - aT;
        if (_config.PredictionType == "v_prediction")
            return (MathF.Sqrt(aT) * modelOutput + MathF.Sqrt(bT) * sample, MathF.Sqrt(aT) * sample - MathF.Sqrt(bT) * modelOutput);
        return (modelOutput, (sample - MathF.Sqrt(bT) * modelOutput) / MathF.Sqrt(aT));
    }

    public Tensor Step(Tensor modelOutput, int stepIndex, Tensor sample, Generator? generator = null)
    {
        using var scope = NewDisposeScope();
        int t = (int)Timesteps[stepIndex];
        int prevT = t - _stepRatio;
        float aT = AlphaAt(t), aPrev = AlphaAt(prevT);
        float bT = 1 - aT, bPrev = 1 - aPrev;
        var (eps, x0) = Predict(modelOutput, sample, aT);
        if (_config.ClipSample) x0 = x0.clamp(-1.0, 1.0);
        float variance = bPrev / bT * (1 - aT / aPrev);
        float std = (float)Eta * MathF.Sqrt(variance);
        var direction = MathF.Sqrt(1 - aPrev - std * std) * eps;
        var prev = MathF.Sqrt(aPrev) * x0 + direction;
        if (Eta > 0)
        {
            var noise = randn(sample.shape, ScalarType.Float32, CPU, generator: generator).to(sample.dtype).to(sample.device);
            prev = prev + std * noise;
        }
        return prev.MoveToOuterDisposeScope();
    }

    /// <summary>
    /// The deterministic DDIM step run backwards (x_{t-1} -> x_t), as DDIM inversion uses it: from the sample at the
    /// previous timestep to the one at <c>Timesteps[stepIndex]</c>, given the model output there.
    /// </summary>
    public Tensor InvertStep(Tensor modelOutput, int stepIndex, Tensor sample)
    {
        using var scope = NewDisposeScope();
        int next = (int)Timesteps[stepIndex];
        int cur = Math.Min(next - _stepRatio, _config.NumTrainTimesteps - 1);
        float aCur = AlphaAt(cur), aNext = AlphaAt(next);
        var (eps, x0) = Predict(modelOutput, sample, aCur);
        return (MathF.Sqrt(aNext) * x0 + MathF.Sqrt(1 - aNext) * eps).MoveToOuterDisposeScope();
    }
}
