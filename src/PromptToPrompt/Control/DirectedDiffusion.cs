using System.Globalization;
using PromptToPrompt.Models;
using PromptToPrompt.Text;
using static TorchSharp.torch;

namespace PromptToPrompt.Control;

/// <summary>A box as fractions of the image: left, right, top, bottom, each in [0, 1].</summary>
public readonly record struct Box(double Left, double Right, double Top, double Bottom)
{
    /// <summary>Parses <c>left,right,top,bottom</c>; a user error when it is not four numbers in [0, 1] with left &lt; right and top &lt; bottom.</summary>
    public static Box Parse(string text, string what)
    {
        var parts = text.Split(',');
        var values = new double[parts.Length];
        if (parts.Length != 4 || parts.Where((p, i) => !Numbers.TryParseFinite(p.Trim(), out values[i])).Any())
            throw new UserError($"{what}: '{text}' is not four numbers left,right,top,bottom (fractions of the image, e.g. 0,0.5,0,1).");
        var box = new Box(values[0], values[1], values[2], values[3]);
        if (values.Any(v => v is < 0 or > 1))
            throw new UserError($"{what}: '{text}' has a value outside [0, 1]; a box is given as fractions of the image.");
        if (box.Left >= box.Right || box.Top >= box.Bottom)
            throw new UserError($"{what}: '{text}' is empty; give left < right and top < bottom.");
        return box;
    }

    public override string ToString() => string.Create(CultureInfo.InvariantCulture, $"{Left},{Right},{Top},{Bottom}");
}

/// <summary>One object placed by Directed Diffusion: the token positions of its words and its box.</summary>
public sealed record DirectedRegion(IReadOnlyList<int> Tokens, Box Box)
{
    /// <summary>The region of <paramref name="word"/>'s tokens in <paramref name="prompt"/> (a user error listing the prompt's words when it is not there).</summary>
    public static DirectedRegion ForWord(ClipTokenizer tokenizer, string prompt, string word, Box box) =>
        new(PromptWords.RequireTokenPositions(tokenizer, prompt, word), box);

    /// <summary>Parses <c>word=left,right,top,bottom</c> (the CLI's <c>--box</c>) for <paramref name="prompt"/>.</summary>
    public static DirectedRegion Parse(ClipTokenizer tokenizer, string prompt, string text, string what)
    {
        int eq = text.IndexOf('=');
        if (eq <= 0) throw new UserError($"{what}: write word=left,right,top,bottom, e.g. \"cat=0,0.5,0,1\".");
        return ForWord(tokenizer, prompt, text[..eq].Trim(), Box.Parse(text[(eq + 1)..], what));
    }
}

/// <summary>
/// Directed Diffusion settings, with the defaults of the authors' example run (<c>bin/DDCmdMain.py</c>): 10 edited
/// steps, 10 trailing maps, strength 1.
/// </summary>
public sealed record DirectedSettings
{
    public required IReadOnlyList<DirectedRegion> Regions { get; init; }
    /// <summary>The cross-attention is edited during the first Steps UNet evaluations (the reference's <c>num_affected_steps</c>).</summary>
    public int Steps { get; init; } = 10;
    /// <summary>Trailing maps edited with each object's words: the end token and the padding after it (<c>num_trailing_attn</c>).</summary>
    public int Trailing { get; init; } = 10;
    /// <summary>How strongly the existing attention inside a box is amplified (<c>noise_scale</c>).</summary>
    public double Strength { get; init; } = 1.0;

    public void Validate()
    {
        if (Regions.Count == 0) throw new UserError("Directed Diffusion needs at least one --box word=left,right,top,bottom.");
        if (Steps < 0) throw new UserError($"--box-steps must not be negative; got {Steps}.");
        if (Trailing < 0) throw new UserError($"--box-trailing must not be negative; got {Trailing}.");
        if (!double.IsFinite(Strength) || Strength < 0) throw new UserError($"--box-strength must be a finite number of at least 0; got {Strength}.");
    }
}

/// <summary>
/// Directed Diffusion (Ma et al. 2023), following the authors' released code (the AAAI version's learned part was
/// never released). During the first <see cref="DirectedSettings.Steps"/> steps, every cross-attention layer of the
/// conditional pass edits its probabilities: for each box, the maps of the object's words and of the trailing tokens
/// (the end token and the padding after the prompt) become, inside the box, <c>a * strength * level_i + g</c>, with
/// <c>g</c> a Gaussian centred on the box (sigma half its size, scaled <c>1 / (2 pi sx sy)</c>) and <c>level_i</c>
/// falling linearly from 9 to 0 over the edited steps (the reference takes it from a 10-step LMS schedule); then
/// those maps are multiplied by 0.01 outside their boxes, and every other token's map by 0.01 everywhere. The maps
/// are not renormalised, as in the reference. Boxes map onto each layer's grid by truncation.
/// </summary>
public sealed class DirectedDiffusion : AttentionController
{
    const float Outside = 0.01f;
    readonly DirectedSettings _settings;
    readonly int[][] _tokens;
    readonly Dictionary<(int, int), Layout> _layouts = [];

    /// <summary>Per layer grid, what does not change from step to step: each box's cells x tokens, its Gaussian, and the
    /// final factor (1 where a box keeps a token's map, 0.01 elsewhere).</summary>
    sealed record Layout(Tensor[] Selected, Tensor[] Gaussian, Tensor Factor);

    /// <param name="promptTokens">The prompt's token count without the start and end tokens: the trailing maps start after it.</param>
    /// <param name="maxLength">The text encoder's sequence length: trailing maps stop at its last position.</param>
    public DirectedDiffusion(DirectedSettings settings, int promptTokens, int maxLength) : base(1)
    {
        settings.Validate();
        _settings = settings;
        var trailing = Enumerable.Range(promptTokens + 1, settings.Trailing).Where(j => j <= maxLength - 1);
        _tokens = settings.Regions.Select(r => r.Tokens.Concat(trailing).Distinct().Order().ToArray()).ToArray();
    }

    /// <summary>Directed Diffusion for <paramref name="prompt"/> as <paramref name="tokenizer"/> encodes it.</summary>
    public static DirectedDiffusion For(ClipTokenizer tokenizer, string prompt, DirectedSettings settings) =>
        new(settings, tokenizer.EncodeWithoutSpecials(prompt).Count, tokenizer.MaxLength);

    /// <summary>The amplification of step <paramref name="step"/>: <c>linspace(0, 9, Steps)</c> reversed.</summary>
    public double Level(int step) => _settings.Steps <= 1 ? 0 : 9.0 * (_settings.Steps - 1 - step) / (_settings.Steps - 1);

    public override bool Needs(in AttentionCall call) => call.Layer.IsCross && CurrentStep < _settings.Steps;

    protected override Tensor OnConditionalMaps(in AttentionCall call, Tensor maps)
    {
        int h = call.Height, w = call.Width;
        var layout = LayoutFor(h, w, maps);
        using var scope = NewDisposeScope();
        var grid = maps.reshape(maps.shape[0], maps.shape[1], h, w, maps.shape[^1]);
        double scale = _settings.Strength * Level(CurrentStep);
        // Box after box, as the reference assigns its slices: a later box amplifies what an earlier one left.
        for (int i = 0; i < _tokens.Length; i++)
            grid = where(layout.Selected[i], grid * scale + layout.Gaussian[i], grid);
        return (grid * layout.Factor).reshape(maps.shape).MoveToOuterDisposeScope();
    }

    Layout LayoutFor(int h, int w, Tensor maps)
    {
        if (_layouts.TryGetValue((h, w), out var cached)) return cached;
        long k = maps.shape[^1];
        var device = maps.device;
        using var scope = NewDisposeScope();
        var rows = arange(h, device: device).reshape(h, 1);
        var columns = arange(w, device: device).reshape(1, w);
        var kept = zeros([h, w, k], ScalarType.Bool, device);
        var selected = new Tensor[_tokens.Length];
        var gaussian = new Tensor[_tokens.Length];
        for (int i = 0; i < _tokens.Length; i++)
        {
            var box = _settings.Regions[i].Box;
            int left = (int)(w * box.Left), right = (int)(w * box.Right), top = (int)(h * box.Top), bottom = (int)(h * box.Bottom);
            var chosen = new bool[k];
            foreach (var t in _tokens[i]) chosen[t] = true;
            var tokens = tensor(chosen, device: device);
            var inRows = (rows >= top).logical_and(rows < bottom);
            var inColumns = (columns >= left).logical_and(columns < right);
            var inside = inRows.logical_and(inColumns).unsqueeze(-1);
            selected[i] = inside.logical_and(tokens).DetachFromDisposeScope();
            gaussian[i] = Gaussian(h, w, top, bottom, left, right, device).to(maps.dtype).unsqueeze(-1).DetachFromDisposeScope();
            // The reference: the kept mask of the box's tokens is OR-ed with the box, then AND-ed with its rows-or-columns cross.
            kept = where(tokens, kept.logical_or(inside).logical_and(inRows.logical_or(inColumns).unsqueeze(-1)), kept);
        }
        var factor = where(kept, tensor(1f, device: device), tensor(Outside, device: device)).to(maps.dtype).DetachFromDisposeScope();
        return _layouts[(h, w)] = new Layout(selected, gaussian, factor);
    }

    public override void Dispose()
    {
        foreach (var layout in _layouts.Values)
            foreach (var t in layout.Selected.Concat(layout.Gaussian).Append(layout.Factor)) t.Dispose();
        _layouts.Clear();
        base.Dispose();
    }

    /// <summary>
    /// The reference's weight over a box of bh x bw cells, placed on the h x w grid (zero elsewhere):
    /// <c>1 / (2 pi sx sy) exp(-((x - mx)^2 / (2 sx^2) + (y - my)^2 / (2 sy^2)))</c> with x = linspace(0, bh, bh) down the
    /// rows, y = linspace(0, bw, bw) across, mx = floor(bh / 2), sx = bh / 2 (likewise for y).
    /// </summary>
    public static Tensor Gaussian(int h, int w, int top, int bottom, int left, int right, Device? device = null)
    {
        var g = new float[h * w];
        int bh = bottom - top, bw = right - left;
        double sx = bh / 2.0, sy = bw / 2.0, mx = bh / 2, my = bw / 2;
        for (int r = 0; r < bh; r++)
            for (int c = 0; c < bw; c++)
            {
                double x = bh == 1 ? 0 : r * (double)bh / (bh - 1), y = bw == 1 ? 0 : c * (double)bw / (bw - 1);
                g[(top + r) * w + left + c] = (float)(1 / (2 * Math.PI * sx * sy) *
                    Math.Exp(-((x - mx) * (x - mx) / (2 * sx * sx) + (y - my) * (y - my) / (2 * sy * sy))));
            }
        return tensor(g, [h, w], device: device);
    }
}
