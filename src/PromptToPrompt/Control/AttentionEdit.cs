using PromptToPrompt.Models;
using PromptToPrompt.Text;
using TorchSharp;
using static TorchSharp.torch;

namespace PromptToPrompt.Control;

/// <summary>
/// Which published version of the authors' controllers to follow where they differ. <see cref="PromptToPrompt"/>:
/// the Prompt-to-Prompt Stable Diffusion notebook (self-attention replaced for maps of at most 16x16). <see cref="NullText"/>:
/// the null-text inversion notebook (self-attention replaced up to 32x32; LocalBlend with start_blend, a threshold
/// pair and subtracted words, and a mask row for the source too).
/// </summary>
public enum ReferenceVariant { PromptToPrompt, NullText }

/// <summary>Shared settings of the edit controllers.</summary>
public sealed record EditSchedule(CrossReplaceSteps CrossReplace, StepWindow SelfReplace, ReferenceVariant Variant = ReferenceVariant.PromptToPrompt)
{
    /// <summary>
    /// Whether the edit replaces a self-attention layer's maps. The references replace the coarse levels: a quarter of
    /// the latent side and coarser (16x16 for SD at 512 px, 32x32 for SDXL at 1024 px, whose finest attention level is
    /// already half the latent), or half the side and coarser in the null-text notebook (32x32 at 512 px). Their bound
    /// is written as a pixel count (16², 32²), which also covers every layer of a small model at a small size; both
    /// rules are kept, so a layer is replaced when either holds.
    /// </summary>
    public bool ReplacesSelf(in AttentionCall call) => call.Layer.Level >= SelfLevel(Variant) || call.QueryLength <= SelfPixels(Variant);

    static int SelfLevel(ReferenceVariant variant) => variant == ReferenceVariant.NullText ? 1 : 2;
    static int SelfPixels(ReferenceVariant variant) => variant == ReferenceVariant.NullText ? 32 * 32 : 16 * 16;

    /// <summary>The largest self-attention map (queries) <see cref="ReplacesSelf"/> replaces on <paramref name="unet"/> for latents of <paramref name="latentHeight"/> x <paramref name="latentWidth"/>.</summary>
    public static int SelfReplaceMaxPixels(ReferenceVariant variant, UNet2DConditionModel unet, int latentHeight, int latentWidth)
    {
        var (h, w) = unet.QueryGrid(SelfLevel(variant), latentHeight, latentWidth);
        return Math.Max(SelfPixels(variant), h * w);
    }
}

/// <summary>
/// The reference's <c>AttentionControlEdit</c>: during every step the targets' cross-attention becomes
/// <c>alpha * ReplaceCross(source, target) + (1 - alpha) * target</c> with the per-step, per-token alpha of
/// <c>cross_replace_steps</c>; within <c>self_replace_steps</c> the targets' small self-attention maps are replaced by
/// the source's. After each step the optional <see cref="LocalBlend"/> mixes the latents.
/// </summary>
public abstract class AttentionEdit : AttentionStore
{
    readonly Tensor _crossAlpha; // [steps + 1, N-1, 1, 1, L]
    readonly bool[] _crossActive; // whether any alpha of a step is non-zero
    readonly (int Start, int End) _selfSteps;

    public LocalBlend? Blend { get; }
    public EditSchedule Schedule { get; }
    public IReadOnlyList<string> Prompts { get; }

    protected AttentionEdit(ClipTokenizer tokenizer, IReadOnlyList<string> prompts, int numSteps, EditSchedule schedule, LocalBlend? blend, StoreSettings? store)
        : base(prompts.Count, store)
    {
        if (prompts.Count < 2) throw new UserError("An edit needs a source prompt and at least one target prompt.");
        Prompts = prompts;
        Schedule = schedule;
        int len = tokenizer.MaxLength;
        var alpha = InjectionSchedule.CrossAlpha(tokenizer, prompts, numSteps, schedule.CrossReplace);
        _crossAlpha = tensor(alpha, [numSteps + 1, prompts.Count - 1, 1, 1, len]).DetachFromDisposeScope();
        int perStep = (prompts.Count - 1) * len;
        _crossActive = Enumerable.Range(0, numSteps + 1).Select(s => alpha.AsSpan(s * perStep, perStep).ContainsAnyExcept(0f)).ToArray();
        _selfSteps = InjectionSchedule.SelfSteps(schedule.SelfReplace, numSteps);
        Blend = blend;
    }

    /// <summary>The cross-attention alpha table [steps + 1, N-1, 1, 1, L] (the reference's <c>cross_replace_alpha</c>).</summary>
    public Tensor CrossReplaceAlpha => _crossAlpha;
    /// <summary>The self-attention window in UNet evaluations (the reference's <c>num_self_replace</c>).</summary>
    public (int Start, int End) SelfReplaceSteps => _selfSteps;

    bool CrossActive => CurrentStep < _crossActive.Length && _crossActive[CurrentStep];
    bool SelfActive(in AttentionCall call) =>
        _selfSteps.Start <= CurrentStep && CurrentStep < _selfSteps.End && Schedule.ReplacesSelf(call);

    public override bool Needs(in AttentionCall call) =>
        base.Needs(call) || (call.Layer.IsCross ? CrossActive : SelfActive(call));

    /// <summary>The edited target maps [N-1, heads, q, L] from the source's [heads, q, L] and the targets' own.</summary>
    public abstract Tensor ReplaceCross(Tensor source, Tensor targets);

    protected override Tensor OnConditionalMaps(in AttentionCall call, Tensor maps)
    {
        Tensor result = maps;
        if (call.Layer.IsCross ? CrossActive : SelfActive(call))
        {
            var source = maps[0];
            var targets = maps[1..];
            Tensor edited;
            if (call.Layer.IsCross)
            {
                var a = _crossAlpha[CurrentStep].to(maps.dtype).to(maps.device);
                edited = ReplaceCross(source, targets) * a + (1 - a) * targets;
                edited = edited.expand(targets.shape);
            }
            else edited = source.unsqueeze(0).expand(targets.shape);
            result = cat([source.unsqueeze(0), edited], 0);
        }
        return base.OnConditionalMaps(call, result);
    }

    public override Tensor OnStepEnd(int stepIndex, Tensor latents)
    {
        latents = base.OnStepEnd(stepIndex, latents);
        return Blend is null ? latents : Blend.Apply(latents, this);
    }

    public override void Dispose()
    {
        _crossAlpha.Dispose();
        base.Dispose();
    }
}

/// <summary>Word swap: target token n takes <c>sum_w source[w] * M[w, n]</c> with the replacement mapper M.</summary>
public sealed class AttentionReplace : AttentionEdit
{
    /// <summary>[N-1, L, L] replacement mappers.</summary>
    public Tensor Mapper { get; }

    public AttentionReplace(ClipTokenizer tokenizer, IReadOnlyList<string> prompts, int numSteps, EditSchedule schedule, LocalBlend? blend = null,
                            bool referenceMapperDefect = false, StoreSettings? store = null)
        : base(tokenizer, prompts, numSteps, schedule, blend, store)
    {
        int len = tokenizer.MaxLength;
        var mappers = prompts.Skip(1).Select(p => SequenceAligner.Replacement(tokenizer, prompts[0], p, referenceMapperDefect));
        Mapper = stack(mappers.Select(m => tensor(m.Cast<float>().ToArray(), [len, len])).ToArray()).DetachFromDisposeScope();
    }

    public override Tensor ReplaceCross(Tensor source, Tensor targets) =>
        matmul(source.unsqueeze(0), Mapper.to(source.dtype).to(source.device).unsqueeze(1));
}

/// <summary>Refinement: aligned tokens take the source's maps, new tokens keep their own.</summary>
public sealed class AttentionRefine : AttentionEdit
{
    /// <summary>[N-1, L] source position of each target token.</summary>
    public Tensor Mapper { get; }
    /// <summary>[N-1, L] 1 for aligned tokens, 0 for new ones.</summary>
    public Tensor Alphas { get; }

    public AttentionRefine(ClipTokenizer tokenizer, IReadOnlyList<string> prompts, int numSteps, EditSchedule schedule, LocalBlend? blend = null,
                           StoreSettings? store = null)
        : base(tokenizer, prompts, numSteps, schedule, blend, store)
    {
        var maps = prompts.Skip(1).Select(p => SequenceAligner.Refinement(tokenizer, prompts[0], p)).ToList();
        Mapper = stack(maps.Select(m => tensor(m.Mapper)).ToArray()).DetachFromDisposeScope();
        Alphas = stack(maps.Select(m => tensor(m.Alphas)).ToArray()).DetachFromDisposeScope();
    }

    public override Tensor ReplaceCross(Tensor source, Tensor targets)
    {
        // New tokens have mapper -1, which torch indexing reads as the last position; their alpha is 0.
        var mapper = Mapper.to(source.device).remainder(source.shape[2]);
        var aligned = stack(Enumerable.Range(0, (int)mapper.shape[0]).Select(b => source.index_select(2, mapper[b])).ToArray());
        var a = Alphas.to(source.dtype).to(source.device).unsqueeze(1).unsqueeze(1);
        return aligned * a + targets * (1 - a);
    }
}

/// <summary>
/// Re-weighting: the (optionally already replaced or refined, by <see cref="Previous"/>) source maps scaled per
/// token by the equalizer. Values may be negative; nothing is renormalised, as in the reference.
/// </summary>
public sealed class AttentionReweight : AttentionEdit
{
    /// <summary>[1, L] scale per token.</summary>
    public Tensor Equalizer { get; }
    public AttentionEdit? Previous { get; }

    public AttentionReweight(ClipTokenizer tokenizer, IReadOnlyList<string> prompts, int numSteps, EditSchedule schedule,
                             IReadOnlyList<(string Word, double Value)> equalizer, LocalBlend? blend = null, AttentionEdit? previous = null,
                             StoreSettings? store = null)
        : base(tokenizer, prompts, numSteps, schedule, blend, store)
    {
        Equalizer = BuildEqualizer(tokenizer, prompts[1], equalizer);
        Previous = previous;
    }

    /// <summary>
    /// The reference's <c>get_equalizer</c> on the first target prompt: ones, with each word's token columns set to
    /// its value. A word not in the prompt is an error naming the prompt's words.
    /// </summary>
    public static Tensor BuildEqualizer(ClipTokenizer tokenizer, string prompt, IReadOnlyList<(string Word, double Value)> words)
    {
        if (words.Count == 0) throw new UserError("A re-weighting needs at least one word and value (equalizer).");
        var values = Enumerable.Repeat(1f, tokenizer.MaxLength).ToArray();
        foreach (var (word, value) in words)
            foreach (var p in PromptWords.RequireTokenPositions(tokenizer, prompt, word))
                values[p] = (float)value;
        return tensor(values, [1, tokenizer.MaxLength]).DetachFromDisposeScope();
    }

    public override Tensor ReplaceCross(Tensor source, Tensor targets)
    {
        var baseMaps = Previous?.ReplaceCross(source, targets) ?? source.unsqueeze(0);
        return baseMaps * Equalizer.to(source.dtype).to(source.device).reshape(-1, 1, 1, Equalizer.shape[1]);
    }
}
