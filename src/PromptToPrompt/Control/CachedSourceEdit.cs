using PromptToPrompt.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace PromptToPrompt.Control;

/// <summary>
/// Runs edits with the source taken from a <see cref="SourceTrajectory"/>: the batch holds the targets only
/// (<c>[uncond_targets, cond_targets]</c>), and each edit's controller — built for <c>[source, its targets]</c> as in a
/// batched run — sees the source's cached maps and latents in row 0. Several edits (each with its own schedule,
/// mappers and blend) share one batch: edit g owns <see cref="Group.Targets"/> consecutive rows. When latent guidance
/// moved the source (Attend-and-Excite), every target is moved by the same amount before each pass, so the targets keep
/// sharing the source's noise as in a Prompt-to-Prompt batch.
/// </summary>
public sealed class CachedSourceEdit(SourceTrajectory source, IReadOnlyList<CachedSourceEdit.Group> groups) : IRunController
{
    /// <summary>An edit's controller (over its source and targets) and how many batch rows (targets) it owns.</summary>
    public sealed record Group(AttentionController Controller, int Targets);

    readonly int _targets = groups.Sum(g => g.Targets);
    int _step;

    public bool Needs(in AttentionCall call)
    {
        foreach (var g in groups)
            if (g.Controller.Needs(call)) return true;
        return false;
    }

    public int UntouchedRows(long batch) => batch == 2L * _targets ? _targets : 0;

    public Tensor Edit(in AttentionCall call, Tensor cond)
    {
        int heads = call.Layer.Heads;
        long rows = cond.shape[0];
        if (rows != (long)_targets * heads)
            throw new InvalidOperationException($"Attention batch of {rows / heads} does not match the {_targets} cached-source targets.");
        var sourceMaps = source.Maps(_step, call.Layer, cond.dtype);
        var parts = new List<Tensor>();
        int offset = 0;
        foreach (var g in groups)
        {
            var own = cond[(offset * heads)..((offset + g.Targets) * heads)];
            offset += g.Targets;
            if (!g.Controller.Needs(call)) { parts.Add(own); continue; }
            var edited = g.Controller.Edit(call, cat([sourceMaps, own], 0));
            parts.Add(edited[heads..]);
        }
        return cat(parts, 0);
    }

    public void OnStepStart(int stepIndex, int totalSteps)
    {
        _step = stepIndex;
        foreach (var g in groups) g.Controller.OnStepStart(stepIndex, totalSteps);
    }

    public Tensor OnPassStart(int stepIndex, Tensor unguided, Tensor latents) =>
        source.Shifts is { } shifts ? latents + shifts[stepIndex].to(latents.device).unsqueeze(0) : latents;

    public Tensor OnStepEnd(int stepIndex, Tensor latents)
    {
        var src = source.Latents[stepIndex..(stepIndex + 1)].to(latents.device);
        var parts = new List<Tensor>();
        int offset = 0;
        foreach (var g in groups)
        {
            var own = latents[offset..(offset + g.Targets)];
            offset += g.Targets;
            parts.Add(g.Controller.OnStepEnd(stepIndex, cat([src, own], 0))[1..]);
        }
        return cat(parts, 0);
    }
}
