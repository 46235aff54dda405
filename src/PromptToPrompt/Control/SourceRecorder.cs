using PromptToPrompt.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace PromptToPrompt.Control;

/// <summary>
/// Records a source run (one prompt, batch <c>[uncond, cond]</c> or <c>[cond]</c> without guidance) into a
/// <see cref="SourceTrajectory"/>: the conditional maps of the layers kept as maps, the conditional queries (and keys)
/// of the others, the latents after each step and, when latent guidance moves the source (Attend-and-Excite), each
/// step's move. It changes nothing in the run, except for direct inversion:
/// given the DDIM-inverted trajectory, it puts the source latent back onto it after every step (Ju et al. 2023).
/// </summary>
public sealed class SourceRecorder(SourceTrajectory trajectory, Tensor? putBack = null) : IRunController
{
    int _step;

    public bool Needs(in AttentionCall call) =>
        trajectory.Has(call.Layer) && trajectory.Entry(call.Layer).Record.Kind == SourceRecordKind.Maps;

    public int UntouchedRows(long batch) => batch == 2 ? 1 : 0;

    public Tensor Edit(in AttentionCall call, Tensor probabilities)
    {
        trajectory.Entry(call.Layer).Data[_step].copy_(probabilities);
        return probabilities;
    }

    public void OnQueryKey(in AttentionCall call, Tensor queries, Tensor keys)
    {
        if (!trajectory.Has(call.Layer)) return;
        var (record, data, kept) = trajectory.Entry(call.Layer);
        switch (record.Kind)
        {
            case SourceRecordKind.Queries:
                data[_step].copy_(queries[^1]);
                if (_step == 0) kept![0].copy_(keys[^1]);
                break;
            case SourceRecordKind.QueriesAndKeys:
                data[_step].copy_(queries[^1]);
                kept![_step].copy_(keys[^1]);
                break;
        }
    }

    public void OnStepStart(int stepIndex, int totalSteps) => _step = stepIndex;

    public Tensor OnPassStart(int stepIndex, Tensor unguided, Tensor latents)
    {
        if (trajectory.Shifts is { } shifts) shifts[stepIndex].copy_((latents - unguided)[0]);
        return latents;
    }

    /// <param name="latents">[1, C, h, w] after the scheduler step.</param>
    public Tensor OnStepEnd(int stepIndex, Tensor latents)
    {
        if (putBack is not null) latents = putBack[putBack.shape[0] - 2 - stepIndex].unsqueeze(0).to(latents.dtype).to(latents.device);
        trajectory.Latents[stepIndex].copy_(latents[0]);
        trajectory.Recorded = stepIndex + 1;
        return latents;
    }
}
