using PromptToPrompt.Models;
using static TorchSharp.torch;

namespace PromptToPrompt.Control;

/// <summary>
/// Several controllers on one run, in order: each sees the maps the one before it returned (Directed Diffusion edits
/// a source's maps, then the recorder or store keeps them) and each may replace the latents after a step. They must
/// agree on which rows of the batch they leave alone.
/// </summary>
public sealed class ControllerChain(params IRunController[] controllers) : IRunController
{
    public bool Needs(in AttentionCall call)
    {
        foreach (var c in controllers) if (c.Needs(call)) return true;
        return false;
    }

    public int UntouchedRows(long batch)
    {
        int rows = controllers[0].UntouchedRows(batch);
        if (controllers.Any(c => c.UntouchedRows(batch) != rows))
            throw new InvalidOperationException($"The chained controllers read different rows of a batch of {batch}.");
        return rows;
    }

    public Tensor Edit(in AttentionCall call, Tensor probabilities)
    {
        foreach (var c in controllers)
            if (c.Needs(call)) probabilities = c.Edit(call, probabilities);
        return probabilities;
    }

    public void OnQueryKey(in AttentionCall call, Tensor queries, Tensor keys)
    {
        foreach (var c in controllers) c.OnQueryKey(call, queries, keys);
    }

    public void OnStepStart(int stepIndex, int totalSteps)
    {
        foreach (var c in controllers) c.OnStepStart(stepIndex, totalSteps);
    }

    public Tensor OnPassStart(int stepIndex, Tensor unguided, Tensor latents)
    {
        foreach (var c in controllers) latents = c.OnPassStart(stepIndex, unguided, latents);
        return latents;
    }

    public Tensor OnStepEnd(int stepIndex, Tensor latents)
    {
        foreach (var c in controllers) latents = c.OnStepEnd(stepIndex, latents);
        return latents;
    }
}
