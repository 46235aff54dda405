using System.Text.Json;
using PromptToPrompt.Text;

namespace PromptToPrompt.Tests.Unit;

/// <summary>TextFixer against ftfy 6.1.1 itself: Data/ftfy_fix_text.json holds ftfy.fix_text of 2,000 seeded
/// strings (mojibake in every single-byte encoding ftfy tries, pasted-prompt artefacts, random mixtures of the
/// characters its heuristic weighs) and CLIPTokenizer's normalisation of the result.</summary>
public class TextFixerTests
{
    static readonly JsonElement Reference = JsonDocument.Parse(
        File.ReadAllText(Path.Combine(AppContext.BaseDirectory, "Data", "ftfy_fix_text.json"))).RootElement;

    [Fact]
    public void Fix_text_equals_ftfy_on_every_reference_case()
    {
        var cases = Reference.GetProperty("cases").EnumerateArray().ToArray();
        Assert.Equal(2000, cases.Length);
        var wrong = cases.Select(c => (text: c.GetProperty("text").GetString()!, expected: c.GetProperty("fixed").GetString()!))
            .Select(c => (c.text, c.expected, actual: TextFixer.FixText(c.text)))
            .Where(c => c.actual != c.expected).ToArray();
        Assert.True(wrong.Length == 0, $"{wrong.Length} of {cases.Length} differ from ftfy, e.g. " + string.Join("; ",
            wrong.Take(5).Select(w => $"{JsonSerializer.Serialize(w.text)}: ftfy {JsonSerializer.Serialize(w.expected)}, ours {JsonSerializer.Serialize(w.actual)}")));
    }

    [Fact]
    public void Clip_normalisation_equals_whitespace_clean_then_python_lower()
    {
        var wrong = Reference.GetProperty("cases").EnumerateArray()
            .Where(c => ClipTokenizer.Normalize(c.GetProperty("text").GetString()!) != c.GetProperty("normalized").GetString())
            .Select(c => JsonSerializer.Serialize(c.GetProperty("text").GetString())).ToArray();
        Assert.True(wrong.Length == 0, $"{wrong.Length} differ, e.g. {string.Join("; ", wrong.Take(5))}");
    }

    [Theory]  // examples from ftfy's documentation
    [InlineData("sÃ³", "só")]
    [InlineData("voilÃ le travail", "voilà le travail")]
    [InlineData("P&EACUTE;REZ", "PÉREZ")]
    [InlineData("<tag>&amp;", "<tag>&amp;")]
    [InlineData("\u001b[36;44mI'm blue, da ba dee\u001b[0m", "I'm blue, da ba dee")]
    [InlineData("ＬＯＵＤ　ＮＯＩＳＥＳ", "LOUD NOISES")]
    [InlineData("ﬂuﬃest", "fluffiest")]
    [InlineData("â€œ like this â€\ufffd", "\" like this \ufffd")]
    [InlineData("&NTILDE; &nTILDE;", "Ñ &nTILDE;")]
    public void Documented_examples(string text, string expected) => Assert.Equal(expected, TextFixer.FixText(text));
}
