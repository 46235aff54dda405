using System.Globalization;

namespace PromptToPrompt;

/// <summary>Numbers typed by a user (option lists, word=value pairs, form fields): invariant culture, finite only.</summary>
public static class Numbers
{
    /// <summary>Parses "0.8", "-1e-3" ...; NaN, infinity and anything else give false.</summary>
    public static bool TryParseFinite(string text, out double value) =>
        double.TryParse(text, NumberStyles.Float, CultureInfo.InvariantCulture, out value) && double.IsFinite(value);
}
