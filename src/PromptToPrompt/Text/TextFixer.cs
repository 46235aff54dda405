using System.Globalization;
using System.Reflection;
using System.Text;
using System.Text.RegularExpressions;

namespace PromptToPrompt.Text;

/// <summary>
/// ftfy 6.1.1's <c>fix_text</c> with its default configuration, which Hugging Face's CLIPTokenizer applies to
/// every prompt when ftfy is installed: per line, repeated until nothing changes — HTML entities decoded (only
/// while no line so far contained a literal <c>&lt;</c>), mojibake repaired (<see cref="Mojibake"/>), C1
/// controls read as Windows-1252, Latin ligatures split, full-width and half-width forms made normal width,
/// curly quotes straightened, line breaks made <c>\n</c>, lone surrogates replaced, terminal escapes and
/// control characters removed, NFC normalisation.
/// </summary>
public static class TextFixer
{
    static readonly Regex HtmlEntity = new("&#?[0-9A-Za-z]{1,24};", RegexOptions.Compiled);
    static readonly Regex TerminalEscape = new("\u001b\\[((?:\\d|;)*)([a-zA-Z])", RegexOptions.Compiled);
    static readonly Regex SingleQuote = new("[\u02bc\u2018-\u201b]", RegexOptions.Compiled);
    static readonly Regex DoubleQuote = new("[\u201c-\u201f]", RegexOptions.Compiled);
    static readonly Lazy<Dictionary<string, string>> Entities = new(LoadEntities);

    static readonly Dictionary<char, string> Ligatures = new()
    {
        ['Ĳ'] = "IJ", ['ĳ'] = "ij", ['ŉ'] = "ʼn", ['Ǳ'] = "DZ", ['ǲ'] = "Dz", ['ǳ'] = "dz", ['Ǆ'] = "DŽ",
        ['ǅ'] = "Dž", ['ǆ'] = "dž", ['Ǉ'] = "LJ", ['ǈ'] = "Lj", ['ǉ'] = "lj", ['Ǌ'] = "NJ", ['ǋ'] = "Nj",
        ['ǌ'] = "nj", ['ﬀ'] = "ff", ['ﬁ'] = "fi", ['ﬂ'] = "fl", ['ﬃ'] = "ffi", ['ﬄ'] = "ffl", ['ﬅ'] = "ſt",
        ['ﬆ'] = "st",
    };

    /// <summary><c>ftfy.fix_text(text)</c>.</summary>
    public static string FixText(string text)
    {
        var output = new StringBuilder(text.Length);
        bool unescapeHtml = true;
        for (int pos = 0; pos < text.Length;)
        {
            int lineEnd = text.IndexOf('\n', pos) + 1;
            if (lineEnd == 0) lineEnd = text.Length;
            string segment = text[pos..lineEnd];
            if (segment.Contains('<')) unescapeHtml = false;  // as ftfy: once off, off for the rest of the text
            output.Append(FixSegment(segment, unescapeHtml));
            pos = lineEnd;
        }
        return output.ToString();
    }

    static string FixSegment(string text, bool unescapeHtml)
    {
        while (true)
        {
            string original = text;
            if (unescapeHtml) text = UnescapeHtml(text);
            text = Mojibake.FixEncoding(text);
            text = Mojibake.FixC1Controls(text);
            text = Translate(text, c => Ligatures.GetValueOrDefault(c));
            text = Translate(text, WidthForm);
            text = SingleQuote.Replace(DoubleQuote.Replace(text, "\""), "'");
            text = text.Replace("\r\n", "\n").Replace('\r', '\n').Replace('\u2028', '\n').Replace('\u2029', '\n')
                .Replace('\u0085', '\n');
            text = FixSurrogates(text);
            text = TerminalEscape.Replace(text, "");
            text = Translate(text, c => IsControl(c) ? "" : null);
            text = text.Normalize(NormalizationForm.FormC);
            if (text == original) return text;
        }
    }

    /// <summary>Python's <c>str.lower()</c>: .NET's invariant lower case plus the two full mappings it lacks
    /// (İ → i̇, and a final capital sigma → ς).</summary>
    public static string PythonLower(string text)
    {
        var lower = new StringBuilder(text.Length);
        for (int i = 0; i < text.Length; i++)
        {
            char c = text[i];
            if (c == '\u0130') lower.Append("i\u0307");
            else if (c == 'Σ') lower.Append(IsFinalSigma(text, i) ? 'ς' : 'σ');
            else lower.Append(char.ToLowerInvariant(c));
        }
        return lower.ToString();
    }

    static bool IsFinalSigma(string text, int i)
    {
        static bool Ignorable(char c) => CharUnicodeInfo.GetUnicodeCategory(c) is UnicodeCategory.NonSpacingMark
            or UnicodeCategory.EnclosingMark or UnicodeCategory.Format or UnicodeCategory.ModifierLetter
            or UnicodeCategory.ModifierSymbol || c is '\'' or '.' or ':' or '\u00b7' or '\u2019';
        static bool Cased(char c) => char.IsUpper(c) || char.IsLower(c)
            || CharUnicodeInfo.GetUnicodeCategory(c) == UnicodeCategory.TitlecaseLetter;
        int before = i - 1, after = i + 1;
        while (before >= 0 && Ignorable(text[before])) before--;
        while (after < text.Length && Ignorable(text[after])) after++;
        return before >= 0 && Cased(text[before]) && !(after < text.Length && Cased(text[after]));
    }

    static string UnescapeHtml(string text) => HtmlEntity.Replace(text, m =>
    {
        string entity = m.Value;
        if (Entities.Value.TryGetValue(entity[1..^1], out var named)) return named;
        return entity.StartsWith("&#") ? NumericReference(entity) ?? entity : entity;
    });

    /// <summary>A numeric character reference as Python's <c>html.unescape</c> decodes it, or null where
    /// that would not consume the whole reference (ftfy then leaves it alone).</summary>
    static string? NumericReference(string entity)
    {
        string digits = entity[2..^1];
        bool hex = digits.Length > 1 && digits[0] is 'x' or 'X';
        if (hex) digits = digits[1..];
        if (digits.Length == 0 || !digits.All(c => hex ? Uri.IsHexDigit(c) : char.IsAsciiDigit(c))) return null;
        digits = digits.TrimStart('0');
        if (digits.Length > 8) return "\ufffd";
        long n = digits.Length == 0 ? 0 : long.Parse(digits, hex ? NumberStyles.HexNumber : NumberStyles.None);
        if (n == 0) return "\ufffd";
        if (n == 0x0d) return "\r";
        if (n is >= 0x80 and <= 0x9f) return Mojibake.FixC1Controls(((char)n).ToString());
        if (n is >= 0xD800 and <= 0xDFFF || n > 0x10FFFF) return "\ufffd";
        if (n is >= 0x1 and <= 0x8 or >= 0xe and <= 0x1f or >= 0x7f and <= 0x9f or >= 0xfdd0 and <= 0xfdef
            or 0xb || (n & 0xFFFF) >= 0xFFFE) return "";
        return char.ConvertFromUtf32((int)n);
    }

    static Dictionary<string, string> LoadEntities()
    {
        // ftfy's table: every HTML5 entity with a semicolon, and upper-case forms of the lower-case ones that
        // are not entities themselves (generated with Python 3.11's html.entities.html5, as ftfy builds it).
        using var stream = Assembly.GetExecutingAssembly().GetManifestResourceStream("html-entities.tsv")!;
        using var reader = new StreamReader(stream);
        var table = new Dictionary<string, string>(StringComparer.Ordinal);
        while (reader.ReadLine() is { Length: > 0 } line)
        {
            var (name, codes) = (line[..line.IndexOf('\t')], line[(line.IndexOf('\t') + 1)..]);
            table[name] = string.Concat(codes.Split(' ').Select(h => char.ConvertFromUtf32(Convert.ToInt32(h, 16))));
        }
        return table;
    }

    static string? WidthForm(char c)
    {
        if (c == '\u3000') return " ";
        if (c < '\uff01' || c >= '\ufff0') return null;
        string normal = c.ToString().Normalize(NormalizationForm.FormKC);
        return normal == c.ToString() ? null : normal;
    }

    static bool IsControl(char c) => c is <= '\u0008' or '\u000b' or >= '\u000e' and <= '\u001f' or '\u007f'
        or >= '\u206a' and <= '\u206f' or '\ufeff' or >= '\ufff9' and <= '\ufffc';

    static string FixSurrogates(string text)
    {
        if (!text.Any(char.IsSurrogate)) return text;
        var fixedText = new StringBuilder(text.Length);
        for (int i = 0; i < text.Length; i++)
        {
            if (char.IsHighSurrogate(text[i]) && i + 1 < text.Length && char.IsLowSurrogate(text[i + 1]))
                fixedText.Append(text, i++, 2);
            else fixedText.Append(char.IsSurrogate(text[i]) ? '\ufffd' : text[i]);
        }
        return fixedText.ToString();
    }

    static string Translate(string text, Func<char, string?> map)
    {
        StringBuilder? result = null;
        for (int i = 0; i < text.Length; i++)
        {
            var replacement = map(text[i]);
            if (replacement is null) { result?.Append(text[i]); continue; }
            result ??= new StringBuilder(text, 0, i, text.Length);
            result.Append(replacement);
        }
        return result?.ToString() ?? text;
    }
}
