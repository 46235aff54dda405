using PromptToPrompt.Loading;
using TorchSharp;
using static TorchSharp.torch;

namespace PromptToPrompt.Schedulers;

/// <summary>
/// A noise scheduler for one sampling run: the timesteps at which the UNet is evaluated and the update rule.
/// A scheduler keeps per-run state (multistep history), so make a new one per run with <see cref="Schedulers.Create"/>.
/// Steps are addressed by index into <see cref="Timesteps"/> because some schedules repeat a timestep (PLMS).
/// </summary>
public interface IScheduler
{
    /// <summary>Timesteps, one per UNet evaluation, in sampling order.</summary>
    IReadOnlyList<double> Timesteps { get; }
    /// <summary>Factor for the initial noise (1 for DDPM-style schedulers, the largest sigma for Euler).</summary>
    double InitNoiseSigma { get; }
    /// <summary>Input scaling before the UNet call (identity except for sigma-based schedulers).</summary>
    Tensor ScaleModelInput(Tensor sample, int stepIndex);
    /// <summary>The sample after step <paramref name="stepIndex"/> given the model output at that step.</summary>
    Tensor Step(Tensor modelOutput, int stepIndex, Tensor sample, Generator? generator = null);
}

/// <summary>A scheduler in sigma space (Euler, Euler ancestral): the noise level of each step, plus a trailing 0.</summary>
public interface ISigmaScheduler : IScheduler
{
    IReadOnlyList<double> Sigmas { get; }
}

/// <summary>The scheduler names users choose from, and the factory.</summary>
public static class Schedulers
{
    public static readonly string[] Names = ["pndm", "ddim", "euler", "euler-a", "dpmpp-2m"];

    /// <summary>Schedulers that draw fresh noise at every step (so a run depends on the generator, not only on x_T).</summary>
    public static bool IsAncestral(string name) => name.ToLowerInvariant() is "euler-a" or "euler_a" or "euler-ancestral";

    /// <summary>The scheduler the model's scheduler_config.json names (its _class_name), else PNDM.</summary>
    public static string DefaultFor(SchedulerConfig config) => config.ClassName switch
    {
        "DDIMScheduler" => "ddim",
        "EulerDiscreteScheduler" => "euler",
        "EulerAncestralDiscreteScheduler" => "euler-a",
        "DPMSolverMultistepScheduler" => "dpmpp-2m",
        _ => "pndm",
    };

    /// <summary>Refuses a name that is not one of <see cref="Names"/> (null, the model's own, passes).</summary>
    public static void CheckName(string? name)
    {
        if (name is not null && !Names.Contains(name)) throw Unknown(name);
    }

    static UserError Unknown(string name) => new($"Unknown scheduler '{name}'. Choose one of: {string.Join(", ", Names)}.");

    public static IScheduler Create(string name, SchedulerConfig config, int steps)
    {
        if (steps < 1 || steps > config.NumTrainTimesteps)
            throw new UserError($"steps must be between 1 and {config.NumTrainTimesteps}; got {steps}.");
        IScheduler Make(int n) => name.ToLowerInvariant() switch
        {
            "pndm" or "plms" => new PndmScheduler(config, n),
            "ddim" => new DdimScheduler(config, n),
            "euler" => new EulerDiscreteScheduler(config, n),
            "euler-a" or "euler_a" or "euler-ancestral" => new EulerAncestralDiscreteScheduler(config, n),
            "dpmpp-2m" or "dpm++2m" or "dpmsolver++" => new DpmSolverMultistepScheduler(config, n),
            _ => throw Unknown(name),
        };
        // With "leading" spacing and steps_offset 1, very many steps put the first timestep past the last trained one
        // (diffusers then fails with an index error); name the largest count that works instead.
        bool Fits(IScheduler x) => x.Timesteps.Count == 0 || x.Timesteps.Max() < config.NumTrainTimesteps;
        var scheduler = Make(steps);
        if (Fits(scheduler)) return scheduler;
        int most = steps - 1;
        while (most > 1 && !Fits(Make(most))) most--;
        throw new UserError($"{name} with this model's timestep spacing takes at most {most} steps; got {steps}.");
    }
}

/// <summary>
/// The training noise schedule: betas and cumulative alpha products, in float32 exactly as diffusers computes them —
/// with numpy as the Prompt-to-Prompt reference's diffusers 0.3.0 does, or with torch ops (<c>torch.linspace</c>,
/// <c>torch.cumprod</c>, which differ in the last bits) as later versions do.
/// </summary>
public sealed class NoiseSchedule
{
    public float[] AlphasCumprod { get; }
    public int NumTrainTimesteps => AlphasCumprod.Length;

    public NoiseSchedule(SchedulerConfig c, bool torchArithmetic = false)
    {
        int n = c.NumTrainTimesteps;
        if (torchArithmetic)
        {
            AlphasCumprod = TorchAlphasCumprod(c);
            return;
        }
        float[] betas = c.TrainedBetas is { } trained
            ? trained.Select(b => (float)b).ToArray()
            : c.BetaSchedule switch
            {
                "linear" => LinspaceFloat32(c.BetaStart, c.BetaEnd, n),
                "scaled_linear" => LinspaceFloat32(Math.Sqrt(c.BetaStart), Math.Sqrt(c.BetaEnd), n).Select(b => b * b).ToArray(),
                "squaredcos_cap_v2" => CosineBetas(n).Select(b => (float)b).ToArray(),
                _ => throw new UserError($"beta_schedule '{c.BetaSchedule}' is not supported."),
            };
        if (betas.Length != n)
            throw new UserError($"trained_betas has {betas.Length} values but num_train_timesteps is {n}. Fix the scheduler config.");
        // float32 throughout, as diffusers' numpy code (0.3.0, the Prompt-to-Prompt reference) computes it; later
        // torch-based versions differ by at most ~1e-6 relative.
        AlphasCumprod = new float[n];
        float product = 1f;
        for (int i = 0; i < n; i++) AlphasCumprod[i] = product *= 1f - betas[i];
    }

    static float[] TorchAlphasCumprod(SchedulerConfig c)
    {
        using var scope = NewDisposeScope();
        int n = c.NumTrainTimesteps;
        var betas = c.TrainedBetas is { } trained ? tensor(trained.Select(b => (float)b).ToArray())
            : c.BetaSchedule switch
            {
                "linear" => linspace(c.BetaStart, c.BetaEnd, n, ScalarType.Float32),
                "scaled_linear" => linspace(Math.Sqrt(c.BetaStart), Math.Sqrt(c.BetaEnd), n, ScalarType.Float32).square(),
                "squaredcos_cap_v2" => tensor(CosineBetas(n).Select(b => (float)b).ToArray()),
                _ => throw new UserError($"beta_schedule '{c.BetaSchedule}' is not supported."),
            };
        if (betas.shape[0] != n)
            throw new UserError($"trained_betas has {betas.shape[0]} values but num_train_timesteps is {n}. Fix the scheduler config.");
        // PyTorch's CPU cumprod accumulates a float32 input in float64 and rounds each output.
        var alphas = (1.0f - betas).data<float>().ToArray();
        var result = new float[n];
        double product = 1;
        for (int i = 0; i < n; i++) result[i] = (float)(product *= alphas[i]);
        return result;
    }

    /// <summary>numpy.linspace(start, end, n, dtype=float32): computed in float64, rounded to float32, end exact.</summary>
    static float[] LinspaceFloat32(double start, double end, int n)
    {
        double step = n > 1 ? (end - start) / (n - 1) : 0;
        var values = Enumerable.Range(0, n).Select(i => (float)(i * step + start)).ToArray();
        if (n > 1) values[^1] = (float)end;
        return values;
    }

    static IEnumerable<double> CosineBetas(int n)
    {
        static double AlphaBar(double t) => Math.Pow(Math.Cos((t + 0.008) / 1.008 * Math.PI / 2), 2);
        for (int i = 0; i < n; i++)
            yield return Math.Min(1 - AlphaBar((i + 1.0) / n) / AlphaBar((double)i / n), 0.999);
    }

    /// <summary>
    /// Sigma of the variance-exploding form, sqrt((1 - a) / a), per training timestep, in float32 arithmetic as
    /// diffusers computes it from its float32 table.
    /// </summary>
    public double[] Sigmas() => AlphasCumprod.Select(a => (double)MathF.Sqrt((1f - a) / a)).ToArray();

    /// <summary>
    /// Timesteps for <paramref name="steps"/> inference steps, ascending, with diffusers' spacing rules:
    /// leading (multiples of T/n plus steps_offset), linspace (evenly from 0 to T-1) or trailing (ending at T-1).
    /// </summary>
    public static long[] Spaced(string spacing, int steps, int numTrain, int stepsOffset) => spacing switch
    {
        "leading" => Enumerable.Range(0, steps).Select(i => (long)i * (numTrain / steps) + stepsOffset).ToArray(),
        "linspace" => Enumerable.Range(0, steps).Select(i => (long)Math.Round(steps == 1 ? 0 : i * (numTrain - 1.0) / (steps - 1), MidpointRounding.ToEven)).ToArray(),
        "trailing" => Enumerable.Range(0, steps).Select(i => (long)Math.Round(numTrain - i * ((double)numTrain / steps), MidpointRounding.ToEven) - 1).Reverse().ToArray(),
        _ => throw new UserError($"timestep_spacing '{spacing}' is not supported (leading, linspace, trailing)."),
    };

    /// <summary>Linear interpolation of <paramref name="values"/> (defined at 0..N-1) at <paramref name="x"/> (numpy.interp).</summary>
    public static double Interp(double x, double[] values)
    {
        if (x <= 0) return values[0];
        if (x >= values.Length - 1) return values[^1];
        int i = (int)Math.Floor(x);
        double f = x - i;
        return values[i] + (values[i + 1] - values[i]) * f;
    }
}
