using TorchSharp.Modules;
using static TorchSharp.torch;

namespace PromptToPrompt.Training;

/// <summary>
/// An exponential moving average of trained weights, as diffusers' <c>EMAModel</c> keeps it (InstructPix2Pix and Stable
/// Diffusion were trained with one): after the n-th optimizer step every average moves to
/// <c>d·average + (1 − d)·weight</c> with <c>d = min(decay, (1 + n) / (10 + n))</c>, so the first steps average over few
/// steps. The model is saved with the averages (<see cref="Swap"/> exchanges them with the live weights and back).
/// </summary>
public sealed class WeightAverage : IDisposable
{
    readonly List<Parameter> live;
    readonly List<Tensor> average;
    readonly double decay;

    /// <summary>Starts every average at its weight's value.</summary>
    public WeightAverage(IEnumerable<Parameter> parameters, double decay)
    {
        live = parameters.ToList();
        this.decay = decay;
        using var _ = no_grad();
        average = live.Select(p => p.detach().clone()).ToList();
    }

    /// <summary>The decay of update <paramref name="n"/> (0-based).</summary>
    public double Decay(int n) => Math.Min(decay, (1.0 + n) / (10.0 + n));

    public void Update(int n)
    {
        double d = Decay(n);
        using var _ = no_grad();
        for (int i = 0; i < live.Count; i++) average[i].mul_(d).add_(live[i], alpha: 1 - d);
    }

    /// <summary>Exchanges the averages and the live weights (twice restores both).</summary>
    public void Swap()
    {
        using var _ = no_grad();
        for (int i = 0; i < live.Count; i++)
        {
            using var kept = live[i].detach().clone();
            live[i].copy_(average[i]);
            average[i].copy_(kept);
        }
    }

    public void Dispose()
    {
        foreach (var a in average) a.Dispose();
    }
}
