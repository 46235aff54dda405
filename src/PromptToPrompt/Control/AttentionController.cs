using PromptToPrompt.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace PromptToPrompt.Control;

/// <summary>
/// Observes (and may change) a denoising run: sees each step begin, and may replace the latents after each
/// scheduler step. Attention controllers implement it together with <see cref="Models.IAttentionHook"/>.
/// </summary>
public interface IDenoisingObserver
{
    void OnStepStart(int stepIndex, int totalSteps);

    /// <summary>
    /// The latents the step's UNet pass and scheduler step will use: <paramref name="latents"/>, which latent guidance
    /// (Attend-and-Excite) may have moved from <paramref name="unguided"/>; may replace them. Default: unchanged.
    /// </summary>
    Tensor OnPassStart(int stepIndex, Tensor unguided, Tensor latents) => latents;

    Tensor OnStepEnd(int stepIndex, Tensor latents);
}

/// <summary>What a pipeline run is controlled by: an attention hook that also observes the denoising steps.</summary>
public interface IRunController : IAttentionHook, IDenoisingObserver;

/// <summary>
/// Base of every attention controller: a per-run object installed as the UNet's attention hook and as the
/// pipeline's step observer. It sees the probabilities of the conditional half of the classifier-free-guidance
/// batch <c>[uncond_0..uncond_{N-1}, cond_0..cond_{N-1}]</c> only, reshaped to <c>[N, heads, queries, keys]</c> with
/// prompt 0 the source; the unconditional half is never touched (it stays on the fused kernel).
/// </summary>
public abstract class AttentionController(int promptCount) : IRunController, IDisposable
{
    /// <summary>Number of prompts in the batch (source plus targets).</summary>
    public int PromptCount { get; } = promptCount;
    /// <summary>Index of the current UNet evaluation (the reference's <c>cur_step</c>).</summary>
    public int CurrentStep { get; private set; }

    public abstract bool Needs(in AttentionCall call);

    /// <summary>Edits (or just observes) the conditional maps [N, heads, q, k]; returns the maps to use.</summary>
    protected abstract Tensor OnConditionalMaps(in AttentionCall call, Tensor maps);

    public int UntouchedRows(long batch) => batch == 2L * PromptCount ? PromptCount : 0;

    public Tensor Edit(in AttentionCall call, Tensor probabilities)
    {
        int heads = call.Layer.Heads, n = PromptCount;
        long rows = probabilities.shape[0], q = probabilities.shape[1], k = probabilities.shape[2];
        if (rows != (long)n * heads)
            throw new InvalidOperationException($"Attention batch of {rows / heads} does not match the controller's {n} prompts.");
        return OnConditionalMaps(call, probabilities.reshape(n, heads, q, k)).reshape(rows, q, k);
    }

    public virtual void OnStepStart(int stepIndex, int totalSteps) => CurrentStep = stepIndex;

    public virtual Tensor OnStepEnd(int stepIndex, Tensor latents) => latents;

    /// <summary>Releases the tensors the controller holds (stored maps, schedules).</summary>
    public virtual void Dispose() => GC.SuppressFinalize(this);
}
