using PromptToPrompt.Text;

namespace PromptToPrompt.Control;

/// <summary>
/// Token correspondences between a source prompt and an edited prompt, as the reference's <c>seq_aligner</c>
/// computes them: a replacement mapper for word swaps and a refinement mapper (global alignment) for added words.
/// </summary>
public static class SequenceAligner
{
    /// <summary>
    /// Refinement: for each target token position, the source position it aligns to (global alignment of the
    /// encoded token ids with gap 0, match 1, mismatch -1), and alpha = 1 where it aligns, 0 for new tokens.
    /// Positions past the target's tokens map to themselves (padding).
    /// </summary>
    public static (long[] Mapper, float[] Alphas) Refinement(ClipTokenizer tokenizer, string source, string target)
    {
        int maxLen = tokenizer.MaxLength;
        var x = tokenizer.Encode(source);
        var y = tokenizer.Encode(target);
        if (x.Length > maxLen || y.Length > maxLen)
            throw new UserError($"A refinement needs both prompts within the text encoder's {maxLen - 2} tokens. Shorten \"{(x.Length > maxLen ? source : target)}\".");
        var trace = GlobalAlign(x, y);
        var pairs = new List<(int Y, int X)>();
        int i = x.Length, j = y.Length;
        while (i > 0 || j > 0)
        {
            int t = trace[i, j];
            if (t == 3) { i--; j--; pairs.Add((j, i)); }
            else if (t == 1) { j--; pairs.Add((j, -1)); }
            else if (t == 2) i--;
            else break;
        }
        pairs.Reverse();
        var mapper = new long[maxLen];
        var alphas = Enumerable.Repeat(1f, maxLen).ToArray();
        for (int k = 0; k < pairs.Count; k++)
        {
            mapper[k] = pairs[k].X;
            alphas[k] = pairs[k].X != -1 ? 1f : 0f;
        }
        for (int k = pairs.Count; k < maxLen; k++) mapper[k] = y.Length + (k - pairs.Count);
        return (mapper, alphas);
    }

    /// <summary>Needleman–Wunsch traceback (1 = left, 2 = up, 3 = diagonal, 4 = origin), ties resolved as the reference does.</summary>
    static int[,] GlobalAlign(long[] x, long[] y)
    {
        const int gap = 0, match = 1, mismatch = -1;
        var score = new int[x.Length + 1, y.Length + 1];
        var trace = new int[x.Length + 1, y.Length + 1];
        for (int j = 1; j <= y.Length; j++) { score[0, j] = j * gap; trace[0, j] = 1; }
        for (int i = 1; i <= x.Length; i++) { score[i, 0] = i * gap; trace[i, 0] = 2; }
        trace[0, 0] = 4;
        for (int i = 1; i <= x.Length; i++)
            for (int j = 1; j <= y.Length; j++)
            {
                int left = score[i, j - 1] + gap, up = score[i - 1, j] + gap;
                int diag = score[i - 1, j - 1] + (x[i - 1] == y[j - 1] ? match : mismatch);
                int best = Math.Max(left, Math.Max(up, diag));
                score[i, j] = best;
                trace[i, j] = best == left ? 1 : best == up ? 2 : 3;
            }
        return trace;
    }

    /// <summary>
    /// Word swap: a [maxLen, maxLen] matrix M with M[source token, target token] = 1 for corresponding tokens; a
    /// swapped word whose token counts differ spreads each source token evenly over the target's tokens. The prompts
    /// must have the same number of space-separated words.
    /// </summary>
    /// <param name="referenceDefect">
    /// Reproduce the reference's defect: after the last swapped word it writes <c>M[j, j]</c> instead of
    /// <c>M[i, j]</c>, misaligning the following tokens when the swapped words have different token counts.
    /// Only for reproducing the reference's numbers; the default is the corrected mapper.
    /// </param>
    public static float[,] Replacement(ClipTokenizer tokenizer, string source, string target, bool referenceDefect = false)
    {
        int maxLen = tokenizer.MaxLength;
        var wx = source.Split(' ');
        var wy = target.Split(' ');
        if (wx.Length != wy.Length)
            throw new UserError($"A word swap (replace) needs prompts with the same number of words, but \"{source}\" has {wx.Length} and \"{target}\" has {wy.Length}. " +
                                "Use a refinement (--edit refine, or \"edit\": \"refine\" in a spec file) to add or remove words.");
        var swapped = Enumerable.Range(0, wy.Length).Where(k => wx[k] != wy[k]).ToList();
        var src = swapped.Select(k => PromptWords.TokenPositions(tokenizer, source, k)).ToList();
        var tgt = swapped.Select(k => PromptWords.TokenPositions(tokenizer, target, k)).ToList();
        for (int k = 0; k < swapped.Count; k++)
            if (src[k].Length == 0 || tgt[k].Length == 0)
                throw new UserError($"The swapped word '{(src[k].Length == 0 ? wx[swapped[k]] : wy[swapped[k]])}' has no tokens within the text encoder's {maxLen - 2} tokens " +
                                    "(an empty word from doubled spaces, or past the end). Remove extra spaces or shorten the prompt.");
        var m = new float[maxLen, maxLen];
        int i = 0, j = 0, cur = 0;
        while (i < maxLen && j < maxLen)
        {
            if (cur < src.Count && src[cur][0] == i)
            {
                var (s, t) = (src[cur], tgt[cur]);
                if (s.Length == t.Length)
                    for (int k = 0; k < s.Length; k++) m[s[k], t[k]] = 1;
                else
                    foreach (var tt in t)
                        foreach (var ss in s)
                            if (ss < maxLen && tt < maxLen) m[ss, tt] = 1f / t.Length;
                cur++;
                i += s.Length;
                j += t.Length;
            }
            else
            {
                if (cur < src.Count || !referenceDefect) m[i, j] = 1;
                else m[j, j] = 1;
                i++;
                j++;
            }
        }
        return m;
    }
}
