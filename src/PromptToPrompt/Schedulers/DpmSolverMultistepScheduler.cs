using PromptToPrompt.Loading;
using TorchSharp;
using static TorchSharp.torch;

namespace PromptToPrompt.Schedulers;

/// <summary>
/// DPM-Solver++ (2M): second-order multistep in data (x0) prediction with the midpoint rule, first order on the
/// first and the last step (final sigma 0), as diffusers' DPMSolverMultistepScheduler computes it by default.
/// </summary>
public sealed class DpmSolverMultistepScheduler : IScheduler
{
    readonly SchedulerConfig _config;
    readonly double[] _sigmas;
    readonly List<Tensor> _x0History = [];

    public IReadOnlyList<double> Timesteps { get; }
    public double InitNoiseSigma => 1.0;

    public DpmSolverMultistepScheduler(SchedulerConfig config, int steps)
    {
        _config = config;
        int T = config.NumTrainTimesteps;
        var spacing = config.TimestepSpacing ?? "linspace";
        long[] timesteps = spacing switch
        {
            "linspace" => Enumerable.Range(0, steps + 1).Select(i => (long)Math.Round(i * (T - 1.0) / steps, MidpointRounding.ToEven)).Reverse().Take(steps).ToArray(),
            "leading" => Enumerable.Range(0, steps + 1).Select(i => (long)i * (T / (steps + 1)) + config.StepsOffset).Reverse().Take(steps).ToArray(),
            _ => NoiseSchedule.Spaced(spacing, steps, T, config.StepsOffset).Reverse().ToArray(),
        };
        var trainSigmas = new NoiseSchedule(config).Sigmas();
        _sigmas = timesteps.Select(t => (double)(float)trainSigmas[t]).Append(0.0).ToArray();
        Timesteps = timesteps.Select(t => (double)t).ToArray();
    }

    public Tensor ScaleModelInput(Tensor sample, int stepIndex) => sample;

    static (double Alpha, double Sigma, double Lambda) Coefficients(double sigma)
    {
        double alpha = 1 / Math.Sqrt(sigma * sigma + 1);
        double s = sigma * alpha;
        return (alpha, s, Math.Log(alpha) - Math.Log(s));
    }

    public Tensor Step(Tensor modelOutput, int stepIndex, Tensor sample, Generator? generator = null)
    {
        using var scope = NewDisposeScope();
        int n = Timesteps.Count;
        var x = sample.to(ScalarType.Float32);
        var (alphaS0, sigmaS0, lambdaS0) = Coefficients(_sigmas[stepIndex]);
        var output = modelOutput.to(ScalarType.Float32);
        var x0 = _config.PredictionType == "v_prediction"
            ? alphaS0 * x - sigmaS0 * output
            : (x - sigmaS0 * output) / alphaS0;
        _x0History.Add(x0.detach().clone().DetachFromDisposeScope());
        if (_x0History.Count > 2) { _x0History[0].Dispose(); _x0History.RemoveAt(0); }

        var (alphaT, sigmaT, lambdaT) = Coefficients(_sigmas[stepIndex + 1]);
        double h = lambdaT - lambdaS0;
        double expm = Math.Exp(-h) - 1.0;
        bool lastStep = stepIndex == n - 1;
        Tensor prev;
        if (_x0History.Count < 2 || lastStep)
        {
            prev = (sigmaT / sigmaS0) * x - (alphaT * expm) * x0;
        }
        else
        {
            var (_, _, lambdaS1) = Coefficients(_sigmas[stepIndex - 1]);
            double r0 = (lambdaS0 - lambdaS1) / h;
            var d1 = (1.0 / r0) * (_x0History[1] - _x0History[0]);
            prev = (sigmaT / sigmaS0) * x - (alphaT * expm) * x0 - 0.5 * (alphaT * expm) * d1;
        }
        return prev.to(modelOutput.dtype).MoveToOuterDisposeScope();
    }
}
