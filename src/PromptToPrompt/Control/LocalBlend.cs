using PromptToPrompt.Models;
using PromptToPrompt.Text;
using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace PromptToPrompt.Control;

/// <summary>Local blending settings, named as in the reference.</summary>
/// <param name="Words">Per prompt (source first), the words whose attention marks the edited region.</param>
/// <param name="Threshold">Mask threshold on the max-normalised map (the null-text variant's <c>th[0]</c>).</param>
/// <param name="StartBlend">Null-text variant: blending starts after <c>int(StartBlend * steps)</c> steps.</param>
/// <param name="SubtractWords">Null-text variant: per prompt, words whose region is excluded from the mask.</param>
/// <param name="SubtractThreshold">Null-text variant: threshold of the subtracted mask (<c>th[1]</c>, no pooling).</param>
public sealed record LocalBlendOptions(
    IReadOnlyList<IReadOnlyList<string>> Words, double Threshold = 0.3, double StartBlend = 0.2,
    IReadOnlyList<IReadOnlyList<string>>? SubtractWords = null, double SubtractThreshold = 0.3);

/// <summary>
/// Keeps everything outside the edited object from the source: after each step, a mask is built from the running
/// sum of the cross-attention maps of the chosen words (the layers of <see cref="MaskLayers"/>: 16x16 for SD at 512 px,
/// 32x32 for SDXL at 1024 px, derived from the UNet and the latent size),
/// averaged over layers and heads, max-pooled 3x3, resized to the latent (nearest), normalised by its maximum and
/// thresholded; then <c>x_t = x_source + mask * (x_t - x_source)</c>.
/// </summary>
public sealed class LocalBlend
{
    readonly Tensor _alphaLayers;     // [N, 1, 1, L]
    readonly Tensor? _subtractLayers; // [N, 1, 1, L]
    readonly LocalBlendOptions _options;
    readonly ReferenceVariant _variant;
    readonly int _startBlend;
    int _counter;

    public LocalBlend(ClipTokenizer tokenizer, IReadOnlyList<string> prompts, LocalBlendOptions options, int numSteps,
                      ReferenceVariant variant = ReferenceVariant.PromptToPrompt)
    {
        if (!(options.Threshold is >= 0 and <= 1) || !(options.SubtractThreshold is >= 0 and <= 1))
            throw new UserError($"local_blend threshold must be in [0, 1]; got {options.Threshold}.");
        if (!(options.StartBlend is >= 0 and <= 1))
            throw new UserError($"local_blend start_blend must be a fraction of the steps in [0, 1]; got {options.StartBlend}.");
        if (variant == ReferenceVariant.PromptToPrompt && prompts.Count != 2)
            throw new UserError($"Local blending (Prompt-to-Prompt notebook variant) works on exactly one target prompt; got {prompts.Count - 1}. " +
                                "Run one edit per target, or use the null-text variant, whose mask has a row per prompt.");
        if (variant == ReferenceVariant.PromptToPrompt && options.SubtractWords is not null)
            throw new UserError("local_blend subtract words exist only in the null-text variant (\"variant\": \"null_text\").");
        _options = options;
        _variant = variant;
        _startBlend = (int)(options.StartBlend * numSteps);
        _alphaLayers = WordLayers(tokenizer, prompts, options.Words, "local_blend words");
        if (options.SubtractWords is { } sub) _subtractLayers = WordLayers(tokenizer, prompts, sub, "local_blend subtract words");
    }

    /// <summary>[N, 1, 1, L]: 1 at the tokens of each prompt's blend words (the reference's <c>alpha_layers</c>).</summary>
    public Tensor AlphaLayers => _alphaLayers;

    static Tensor WordLayers(ClipTokenizer tokenizer, IReadOnlyList<string> prompts, IReadOnlyList<IReadOnlyList<string>> words, string what)
    {
        if (words.Count != prompts.Count)
            throw new UserError($"{what}: give one list of words per prompt ({prompts.Count}, source first); got {words.Count}.");
        int len = tokenizer.MaxLength;
        var values = new float[prompts.Count * len];
        for (int i = 0; i < prompts.Count; i++)
            foreach (var word in words[i])
                foreach (var p in PromptWords.RequireTokenPositions(tokenizer, prompts[i], word))
                    values[i * len + p] = 1f;
        return tensor(values, [prompts.Count, 1, 1, len]).DetachFromDisposeScope();
    }

    /// <summary>
    /// The layers the mask is built from: the cross-attention of the down and up blocks at their coarsest stored
    /// resolution, and the middle block's when it works at that resolution too (SD at 512 px: the 16x16 down and up
    /// layers, its 8x8 middle block left out; SDXL at 1024 px: every 32x32 layer, the middle block's included).
    /// </summary>
    public static List<AttentionLayer> MaskLayers(AttentionStore store)
    {
        var cross = store.Layers.Where(l => l.IsCross).ToList();
        int Pixels(AttentionLayer l) => store.SizeOf(l).Height * store.SizeOf(l).Width;
        var outer = cross.Where(l => l.Place != UNetPlace.Mid).ToList();
        if (outer.Count == 0)
            throw new UserError("Local blending needs cross-attention maps from the UNet's down and up blocks, and none were stored.");
        int coarsest = outer.Min(Pixels);
        return cross.Where(l => Pixels(l) == coarsest).OrderBy(l => l.Place).ToList();
    }

    public Tensor Apply(Tensor latents, AttentionStore store)
    {
        _counter++;
        if (_variant == ReferenceVariant.NullText && _counter <= _startBlend) return latents;
        using var scope = NewDisposeScope();
        var (maps, pooled) = WordMaps(store, latents.shape[0]);
        var mask = Threshold(pooled, _options.Threshold, latents);
        if (_variant == ReferenceVariant.PromptToPrompt)
            mask = logical_or(mask[..1], mask[1..]);
        else
        {
            mask = logical_or(mask[..1], mask);
            if (_subtractLayers is not null)
            {
                var subtract = Threshold(WordMap(maps, _subtractLayers, pool: false), _options.SubtractThreshold, latents);
                mask = logical_and(mask, logical_not(logical_or(subtract[..1], subtract)));
            }
        }
        var m = mask.to(latents.dtype);
        var source = latents[..1];
        return (source + m * (latents - source)).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// What the mask is made of at this point of a run, for the latents <paramref name="latents"/>: the max-pooled map
    /// of each prompt's blend words [N, 1, h, w] and the thresholded mask at the latent size [N, 1, H, W] (before the
    /// rows are combined).
    /// </summary>
    public (Tensor Pooled, Tensor Mask) Masks(AttentionStore store, Tensor latents)
    {
        using var scope = NewDisposeScope();
        var (_, pooled) = WordMaps(store, latents.shape[0]);
        return (pooled.MoveToOuterDisposeScope(), Threshold(pooled, _options.Threshold, latents).MoveToOuterDisposeScope());
    }

    /// <summary>The stored maps of <see cref="MaskLayers"/> [N, layers*heads, h, w, L] and the blend words' pooled map.</summary>
    (Tensor Maps, Tensor Pooled) WordMaps(AttentionStore store, long n)
    {
        var layers = MaskLayers(store);
        var (h, w) = store.SizeOf(layers[0]);
        var maps = cat(layers.Select(l => store.Sum(l).reshape(n, -1, h, w, store.Sum(l).shape[3])).ToArray(), 1);
        return (maps, WordMap(maps, _alphaLayers, pool: true));
    }

    /// <summary><c>(maps * alpha).sum(-1).mean(1)</c>, [N, 1, h, w], max-pooled 3x3 when <paramref name="pool"/>.</summary>
    static Tensor WordMap(Tensor maps, Tensor wordLayers, bool pool)
    {
        var m = (maps * wordLayers.to(maps.device).unsqueeze(1)).sum(-1).mean([1], keepdim: true);
        return pool ? F.max_pool2d(m, [3, 3], [1, 1], [1, 1]) : m;
    }

    /// <summary>Resized to the latent (nearest), normalised by its maximum, thresholded.</summary>
    static Tensor Threshold(Tensor map, double threshold, Tensor latents)
    {
        var m = F.interpolate(map, [latents.shape[2], latents.shape[3]], mode: InterpolationMode.Nearest);
        m = m / m.amax([2, 3], keepdim: true);
        return m.gt(threshold);
    }
}
