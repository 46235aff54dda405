using PromptToPrompt.Models;
using PromptToPrompt.Text;
using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace PromptToPrompt.Training;

/// <summary>
/// A training-time attention hook that teaches the cross-attention maps to bind each caption word to its region,
/// the property Prompt-to-Prompt relies on and that Stable Diffusion learns from its sheer scale. For every
/// cross-attention call it adds <c>1 - (attention mass inside the word's region) / (total attention mass)</c>,
/// averaged over heads and the supervised words (the token loss of TokenCompose, Wang et al. 2024). An object's
/// size, colour and shape words own its mask; the background words (<c>striped</c>, its colour, <c>background</c>)
/// own everything outside the objects; the other tokens are free. Regions are max-pooled to each layer's resolution,
/// so a word whose attention lies on any cell its region touches costs nothing.
/// </summary>
public sealed class AttentionLocalisationLoss : IAttentionHook, IDisposable
{
    readonly Tensor _regions;    // [B, K, S, S]: 1 where token k of sample b should attend
    readonly Tensor _supervised; // [B, K]: 1 for supervised tokens
    readonly List<Tensor> _terms = [];
    readonly Dictionary<(int, int), Tensor> _pooled = []; // [B, HW, K] regions per layer resolution

    /// <param name="scenes">The batch's scenes; a null entry (a dropped caption) supervises nothing.</param>
    public AttentionLocalisationLoss(ClipTokenizer tokenizer, IReadOnlyList<Scene?> scenes, Device device)
    {
        int k = tokenizer.MaxLength;
        int size = scenes.FirstOrDefault(s => s is not null)?.Image.Width ?? 1;
        var regions = new float[scenes.Count * k * size * size];
        var supervised = new float[scenes.Count * k];
        for (int b = 0; b < scenes.Count; b++)
        {
            if (scenes[b] is not { } scene) continue;
            foreach (var (position, mask) in WordRegions(tokenizer, scene))
            {
                if (position >= k) break;
                supervised[b * k + position] = 1;
                int offset = (b * k + position) * size * size;
                for (int i = 0; i < mask.Length; i++) if (mask[i]) regions[offset + i] = 1;
            }
        }
        _regions = tensor(regions, [scenes.Count, k, size, size], device: device);
        _supervised = tensor(supervised, [scenes.Count, k], device: device);
    }

    /// <summary>Token position (BOS = 0) and target region of every supervised word of the scene's caption.</summary>
    public static IEnumerable<(int Position, bool[] Region)> WordRegions(ClipTokenizer tokenizer, Scene scene)
    {
        var background = new bool[scene.Image.Width * scene.Image.Height];
        for (int i = 0; i < background.Length; i++) background[i] = !scene.Objects.Any(o => o.Mask[i]);
        int position = 1, objectIndex = 0;
        bool inBackground = false;
        foreach (var word in scene.Caption.Split(' '))
        {
            if (word == "on") inBackground = true;
            else if (word == "and") objectIndex++;
            else if (word != "a")
                yield return (position, inBackground ? background : scene.Objects[objectIndex].Mask);
            position += tokenizer.EncodeWithoutSpecials(word).Count;
        }
    }

    public bool Needs(in AttentionCall call) => call.Layer.IsCross;

    public Tensor Edit(in AttentionCall call, Tensor probabilities)
    {
        using var scope = NewDisposeScope();
        long b = _supervised.shape[0], k = _supervised.shape[1], pixels = call.QueryLength;
        var maps = probabilities.reshape(b, -1, pixels, k).mean([1]);                                 // [B, HW, K]
        if (!_pooled.TryGetValue((call.Height, call.Width), out var region))
            _pooled[(call.Height, call.Width)] = region = F.adaptive_max_pool2d(_regions, [call.Height, call.Width])
                .reshape(b, k, pixels).transpose(1, 2).contiguous().DetachFromDisposeScope();
        var inside = (maps * region).sum([1]);
        var total = maps.sum([1]);
        var term = ((1 - inside / (total + 1e-6)) * _supervised).sum() / _supervised.sum().clamp_min(1);
        _terms.Add(term.DetachFromDisposeScope());
        return probabilities;
    }

    /// <summary>The mean term over the cross-attention calls since construction (0 when there were none).</summary>
    public Tensor Loss() => _terms.Count == 0 ? zeros(1) : stack(_terms).mean();

    public void Dispose()
    {
        _regions.Dispose();
        _supervised.Dispose();
        foreach (var t in _terms.Concat(_pooled.Values)) t.Dispose();
    }
}
