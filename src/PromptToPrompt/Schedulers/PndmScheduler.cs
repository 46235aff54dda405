using PromptToPrompt.Loading;
using TorchSharp;
using static TorchSharp.torch;

namespace PromptToPrompt.Schedulers;

/// <summary>
/// PNDM with skip_prk_steps (pseudo linear multistep, PLMS), as diffusers computes it. The schedule has n + 1
/// entries (the second timestep repeats: the first two evaluations form one warm-up step), e.g. for n = 10
/// <c>[901, 801, 801, 701, ..., 1]</c>; the sample update uses Adams–Bashforth combinations of up to four outputs.
/// </summary>
public sealed class PndmScheduler : IScheduler
{
    readonly NoiseSchedule _schedule;
    readonly SchedulerConfig _config;
    readonly int _stepRatio;
    readonly float _finalAlphaCumprod;
    readonly List<Tensor> _ets = [];
    Tensor? _curSample;
    int _counter;

    public IReadOnlyList<double> Timesteps { get; }
    public double InitNoiseSigma => 1.0;

    public PndmScheduler(SchedulerConfig config, int steps)
    {
        if (!config.SkipPrkSteps)
            throw new UserError("PNDM with Runge-Kutta warm-up (skip_prk_steps = false) is not implemented; use --scheduler ddim, or set skip_prk_steps to true as Stable Diffusion does.");
        _config = config;
        _schedule = new NoiseSchedule(config);
        _stepRatio = config.NumTrainTimesteps / steps;
        _finalAlphaCumprod = config.SetAlphaToOne ? 1f : _schedule.AlphasCumprod[0];
        var t = NoiseSchedule.Spaced(config.TimestepSpacing ?? "leading", steps, config.NumTrainTimesteps, config.StepsOffset);
        var plms = steps == 1 ? t : t[..^1].Append(t[^2]).Append(t[^1]).ToArray();
        Timesteps = plms.Reverse().Select(x => (double)x).ToArray();
    }

    public Tensor ScaleModelInput(Tensor sample, int stepIndex) => sample;

    public Tensor Step(Tensor modelOutput, int stepIndex, Tensor sample, Generator? generator = null)
    {
        int timestep = (int)Timesteps[stepIndex];
        int prevTimestep = timestep - _stepRatio;
        if (_counter != 1)
        {
            if (_ets.Count > 3) { _ets[0].Dispose(); _ets.RemoveAt(0); }
            _ets.Add(modelOutput.detach().clone().DetachFromDisposeScope());
        }
        else
        {
            prevTimestep = timestep;
            timestep += _stepRatio;
        }

        using var scope = NewDisposeScope();
        Tensor e;
        var ets = _ets;
        if (ets.Count == 1 && _counter == 0)
        {
            e = modelOutput;
            _curSample?.Dispose();
            _curSample = sample.detach().clone().DetachFromDisposeScope();
        }
        else if (ets.Count == 1 && _counter == 1)
        {
            e = (modelOutput + ets[^1]) / 2;
            sample = _curSample!;
        }
        else if (ets.Count == 2) e = (3 * ets[^1] - ets[^2]) / 2;
        else if (ets.Count == 3) e = (23 * ets[^1] - 16 * ets[^2] + 5 * ets[^3]) / 12;
        else e = (1.0 / 24) * (55 * ets[^1] - 59 * ets[^2] + 37 * ets[^3] - 9 * ets[^4]);

        var prev = PrevSample(sample, timestep, prevTimestep, e);
        if (_counter == 1) { _curSample!.Dispose(); _curSample = null; }
        _counter++;
        return prev.MoveToOuterDisposeScope();
    }

    Tensor PrevSample(Tensor sample, int timestep, int prevTimestep, Tensor modelOutput)
    {
        float aT = _schedule.AlphasCumprod[timestep];
        float aPrev = prevTimestep >= 0 ? _schedule.AlphasCumprod[prevTimestep] : _finalAlphaCumprod;
        float bT = 1 - aT, bPrev = 1 - aPrev;
        if (_config.PredictionType == "v_prediction")
            modelOutput = MathF.Sqrt(aT) * modelOutput + MathF.Sqrt(bT) * sample;
        float sampleCoeff = MathF.Sqrt(aPrev / aT);
        float denom = aT * MathF.Sqrt(bPrev) + MathF.Sqrt(aT * bT * aPrev);
        return sampleCoeff * sample - (aPrev - aT) * modelOutput / denom;
    }
}
