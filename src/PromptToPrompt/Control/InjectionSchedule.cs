using PromptToPrompt.Text;

namespace PromptToPrompt.Control;

/// <summary>A window of the denoising process as fractions of the steps: attention is injected on [Start, End).</summary>
public sealed record StepWindow(double Start, double End)
{
    public static StepWindow Until(double end) => new(0, end);

    public StepWindow Validated(string what)
    {
        if (!(Start >= 0 && Start <= 1 && End >= 0 && End <= 1))
            throw new UserError($"{what} must be fractions of the steps in [0, 1]; got {Describe()}.");
        if (Start > End) throw new UserError($"{what}: the start {Start} is after the end {End}.");
        return this;
    }

    public string Describe() => Start == 0 ? $"{End}" : $"[{Start}, {End}]";

    /// <summary>The reference's rounding: <c>int(fraction * count)</c> on the double product (truncation).</summary>
    public (int Start, int End) Steps(int count) => ((int)(Start * count), (int)(End * count));
}

/// <summary>
/// <c>cross_replace_steps</c>: one window for all tokens (<see cref="Default"/>) and optional per-word windows that
/// override it for the tokens of those words in each target prompt that contains them.
/// </summary>
public sealed record CrossReplaceSteps(StepWindow Default, IReadOnlyDictionary<string, StepWindow>? PerWord = null)
{
    public static implicit operator CrossReplaceSteps(double fraction) => new(StepWindow.Until(fraction));
}

/// <summary>When, and for which tokens, the source's attention is injected into each target prompt.</summary>
public static class InjectionSchedule
{
    /// <summary>
    /// The reference's <c>get_time_words_attention_alpha</c>: a [numSteps + 1, targets, maxLen] table of 0/1 (flattened
    /// row-major); window bounds are <c>int(fraction * (numSteps + 1))</c>. A per-word entry whose word is in no
    /// target prompt is an error (the reference silently ignores it) unless <paramref name="ignoreMissingWords"/>.
    /// </summary>
    public static float[] CrossAlpha(ClipTokenizer tokenizer, IReadOnlyList<string> prompts, int numSteps, CrossReplaceSteps steps, bool ignoreMissingWords = false)
    {
        int rows = numSteps + 1, targets = prompts.Count - 1, len = tokenizer.MaxLength;
        var alpha = new float[rows * targets * len];
        void Set(StepWindow w, int target, IEnumerable<int> tokens)
        {
            var (start, end) = w.Steps(rows);
            foreach (var token in tokens)
                for (int s = 0; s < rows; s++)
                    alpha[(s * targets + target) * len + token] = s >= start && s < end ? 1f : 0f;
        }
        steps.Default.Validated("cross_replace_steps");
        for (int t = 0; t < targets; t++) Set(steps.Default, t, Enumerable.Range(0, len));
        foreach (var (word, window) in steps.PerWord ?? new Dictionary<string, StepWindow>())
        {
            window.Validated($"cross_replace_steps for '{word}'");
            bool found = false;
            for (int t = 0; t < targets; t++)
            {
                var tokens = PromptWords.TokenPositions(tokenizer, prompts[t + 1], word).Where(p => p < len).ToArray();
                if (tokens.Length == 0) continue;
                found = true;
                Set(window, t, tokens);
            }
            if (!found && !ignoreMissingWords)
                throw new UserError($"cross_replace_steps names the word '{word}', which is in no target prompt " +
                                    $"({string.Join("; ", prompts.Skip(1).Select(p => $"\"{p}\""))}). Words are split on spaces and compared exactly.");
        }
        return alpha;
    }

    /// <summary>The reference's <c>num_self_replace</c>: steps [int(numSteps * start), int(numSteps * end)).</summary>
    public static (int Start, int End) SelfSteps(StepWindow window, int numSteps) =>
        window.Validated("self_replace_steps").Steps(numSteps);
}
