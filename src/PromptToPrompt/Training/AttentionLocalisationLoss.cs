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
/// so a word whose attention lies on any cell its region touches costs nothing. (The regions are kept per object,
/// at the latent's resolution, so a batch allocates little: a garbage-collected heap under pressure finalises
/// TorchSharp's implicit scalars more often.)
/// </summary>
public sealed class AttentionLocalisationLoss : IAttentionHook, IDisposable
{
    readonly Tensor _regions;    // [B, R, S, S]: 1 inside region r (the objects, then the background) of sample b
    readonly Tensor _owners;     // [B, R, K]: 1 where token k's region is r
    readonly Tensor _supervised; // [B, K]: 1 for supervised tokens
    readonly List<Tensor> _terms = [];
    readonly Dictionary<(int, int), Tensor> _pooled = []; // [B, HW, K] regions per layer resolution

    /// <param name="scenes">The batch's scenes with the captions they were trained with; a null entry (a dropped caption) supervises nothing.</param>
    /// <param name="resolution">Side of the largest attention grid (the latent's): regions are max-pooled to it.</param>
    public AttentionLocalisationLoss(ClipTokenizer tokenizer, IReadOnlyList<(Scene Scene, CaptionWords Caption)?> scenes, int resolution, Device device)
    {
        int k = tokenizer.MaxLength, s = resolution, n = scenes.Count;
        int r = scenes.Max(entry => entry?.Scene.Objects.Count ?? 0) + 1;
        var regions = new float[n * r * s * s];
        var owners = new float[n * r * k];
        var supervised = new float[n * k];
        for (int b = 0; b < n; b++)
        {
            if (scenes[b] is not var (scene, caption)) continue;
            var masks = scene.Objects.Select(o => o.Mask).ToList();
            foreach (var (position, mask) in WordRegions(tokenizer, scene, caption))
            {
                if (position >= k) break;
                int index = masks.IndexOf(mask);
                if (index < 0) { index = masks.Count; masks.Add(mask); }
                supervised[b * k + position] = 1;
                owners[(b * r + index) * k + position] = 1;
            }
            for (int index = 0; index < masks.Count; index++)
                MaxPool(masks[index], scene.Image.Width, s, regions.AsSpan((b * r + index) * s * s, s * s));
        }
        _regions = tensor(regions, [n, r, s, s], device: device);
        _owners = tensor(owners, [n, r, k], device: device);
        _supervised = tensor(supervised, [n, k], device: device);
    }

    /// <summary>A cell of the s x s grid is in the region when any pixel of its block is.</summary>
    static void MaxPool(bool[] mask, int size, int s, Span<float> cells)
    {
        if (size % s != 0) throw new ArgumentException($"image size {size} is not a multiple of the attention grid {s}");
        int block = size / s;
        for (int y = 0; y < size; y++)
            for (int x = 0; x < size; x++)
                if (mask[y * size + x]) cells[y / block * s + x / block] = 1;
    }

    /// <summary>Token position (BOS = 0) and target region of every supervised word of a caption of the scene.</summary>
    public static IEnumerable<(int Position, bool[] Region)> WordRegions(ClipTokenizer tokenizer, Scene scene, CaptionWords caption)
    {
        var background = new bool[scene.Image.Width * scene.Image.Height];
        for (int i = 0; i < background.Length; i++) background[i] = !scene.Objects.Any(o => o.Mask[i]);
        int position = 1;
        foreach (var (word, owner) in caption.Words)
        {
            if (owner != CaptionWords.Free)
                yield return (position, owner == CaptionWords.Background ? background : scene.Objects[owner].Mask);
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
            _pooled[(call.Height, call.Width)] = region = matmul(
                F.adaptive_max_pool2d(_regions, [call.Height, call.Width]).flatten(2).transpose(1, 2), _owners).DetachFromDisposeScope();
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
        _owners.Dispose();
        _supervised.Dispose();
        foreach (var t in _terms.Concat(_pooled.Values)) t.Dispose();
    }
}
