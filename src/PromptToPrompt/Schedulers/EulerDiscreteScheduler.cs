using PromptToPrompt.Loading;
using TorchSharp;
using static TorchSharp.torch;

namespace PromptToPrompt.Schedulers;

/// <summary>
/// Euler (Karras et al. 2022, Algorithm 2 without churn) on sigmas interpolated at the chosen timesteps, as
/// diffusers' EulerDiscreteScheduler computes it. Timesteps are floats (linspace spacing by default).
/// </summary>
public sealed class EulerDiscreteScheduler : IScheduler
{
    readonly SchedulerConfig _config;
    readonly double[] _sigmas;

    public IReadOnlyList<double> Timesteps { get; }
    public double InitNoiseSigma { get; }

    public EulerDiscreteScheduler(SchedulerConfig config, int steps)
    {
        _config = config;
        var schedule = new NoiseSchedule(config);
        int T = config.NumTrainTimesteps;
        var spacing = config.TimestepSpacing ?? "linspace";
        double[] timesteps = spacing == "linspace"
            ? Enumerable.Range(0, steps).Select(i => steps == 1 ? 0 : i * (T - 1.0) / (steps - 1)).Reverse().ToArray()
            : NoiseSchedule.Spaced(spacing, steps, T, config.StepsOffset).Reverse().Select(x => (double)x).ToArray();
        var trainSigmas = schedule.Sigmas();
        _sigmas = timesteps.Select(t => (double)(float)NoiseSchedule.Interp(t, trainSigmas)).Append(0.0).ToArray();
        Timesteps = timesteps;
        double max = _sigmas.Max();
        InitNoiseSigma = spacing is "linspace" or "trailing" ? max : Math.Sqrt(max * max + 1);
    }

    public Tensor ScaleModelInput(Tensor sample, int stepIndex) => sample / Math.Sqrt(_sigmas[stepIndex] * _sigmas[stepIndex] + 1);

    public Tensor Step(Tensor modelOutput, int stepIndex, Tensor sample, Generator? generator = null)
    {
        using var scope = NewDisposeScope();
        double sigma = _sigmas[stepIndex];
        var x = sample.to(ScalarType.Float32);
        var output = modelOutput.to(ScalarType.Float32);
        var x0 = _config.PredictionType == "v_prediction"
            ? output * (-sigma / Math.Sqrt(sigma * sigma + 1)) + x / (sigma * sigma + 1)
            : x - sigma * output;
        var derivative = (x - x0) / sigma;
        var prev = x + derivative * (_sigmas[stepIndex + 1] - sigma);
        return prev.to(modelOutput.dtype).MoveToOuterDisposeScope();
    }
}
