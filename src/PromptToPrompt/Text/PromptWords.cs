namespace PromptToPrompt.Text;

/// <summary>
/// Maps words of a prompt to the positions of their tokens in the encoded sequence (BOS = position 0), as the
/// reference's <c>ptp_utils.get_word_inds</c> does: words are the prompt split on single spaces, and a word's
/// tokens are the consecutive decoded tokens whose lengths add up to the word's length.
/// </summary>
public static class PromptWords
{
    /// <summary>Token positions of every occurrence of <paramref name="word"/> (compared exactly, case included).</summary>
    public static int[] TokenPositions(ClipTokenizer tokenizer, string prompt, string word)
    {
        var words = prompt.Split(' ');
        var places = Enumerable.Range(0, words.Length).Where(i => words[i] == word).ToHashSet();
        return TokenPositions(tokenizer, prompt, places);
    }

    /// <summary>Token positions of the word with index <paramref name="wordIndex"/> in <c>prompt.Split(' ')</c>.</summary>
    public static int[] TokenPositions(ClipTokenizer tokenizer, string prompt, int wordIndex) =>
        TokenPositions(tokenizer, prompt, new HashSet<int> { wordIndex });

    static int[] TokenPositions(ClipTokenizer tokenizer, string prompt, HashSet<int> places)
    {
        var result = new List<int>();
        if (places.Count == 0) return [];
        var words = prompt.Split(' ');
        var pieces = tokenizer.EncodeWithoutSpecials(prompt).Select(id => tokenizer.Decode([id]).Trim('#')).ToList();
        int length = 0, ptr = 0;
        for (int i = 0; i < pieces.Count; i++)
        {
            length += pieces[i].Length;
            if (places.Contains(ptr)) result.Add(i + 1);
            if (ptr < words.Length && length >= words[ptr].Length)
            {
                ptr++;
                length = 0;
            }
        }
        return result.ToArray();
    }

    /// <summary>
    /// Like <see cref="TokenPositions(ClipTokenizer,string,string)"/>, but a word that is not in the prompt, or whose
    /// tokens were cut off by truncation, is a user error naming the words the prompt has.
    /// </summary>
    public static int[] RequireTokenPositions(ClipTokenizer tokenizer, string prompt, string word)
    {
        var positions = TokenPositions(tokenizer, prompt, word);
        if (positions.Length == 0)
            throw new UserError($"The word '{word}' is not in the prompt \"{prompt}\" (words are split on spaces and compared exactly; " +
                                $"the prompt's words are: {string.Join(", ", prompt.Split(' ', StringSplitOptions.RemoveEmptyEntries).Select(w => $"'{w}'"))}).");
        if (positions.Any(p => p >= tokenizer.MaxLength - 1))
            throw new UserError($"The word '{word}' lies beyond the {tokenizer.MaxLength - 2} tokens the text encoder reads in \"{prompt}\". Shorten the prompt.");
        return positions;
    }
}
