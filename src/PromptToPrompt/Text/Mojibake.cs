using System.Text;
using System.Text.RegularExpressions;

namespace PromptToPrompt.Text;

/// <summary>
/// ftfy 6.1.1's mojibake repair (<c>fix_encoding</c>): text that its badness heuristic flags is re-encoded in
/// each single-byte encoding that can represent it (Latin-1, the "sloppy" Windows-1252/1251/1250/1253/1254,
/// ISO-8859-2, MacRoman, CP437) and decoded as UTF-8 (or CESU-8 / Java's modified UTF-8), with ftfy's repairs
/// of a lost 0xA0 byte and of lossy sequences; failing that, embedded runs of UTF-8-looking mojibake are fixed
/// on their own, and stray C1 controls are read as Windows-1252. Repeated until the text stops changing.
/// </summary>
public static class Mojibake
{
    // ftfy's character categories of the badness heuristic (ftfy/badness.py), as regex class contents.
    const string Common = @"\u00A0\u00AD\u00B7\u00B4\u2013\u2014\u2015\u2026\u2019";
    const string C1 = @"\u0080-\u009F";
    const string Bad = @"\u00A6\u00A4\u00A8\u00AC\u00AF\u00B6\u00A7\u00B8\u0192\u02C6\u02C7\u02D8\u02DB\u02DC\u2020\u2021\u2030\u2310\u25CA\uFFFD\u00AA\u00BA";
    const string Currency = @"\u00A2\u00A3\u00A5\u20A7\u20AC";
    const string StartPunct = @"\u00A1\u00AB\u00BF\u00A9\u0384\u0385\u2018\u201A\u201C\u201E\u2022\u2039\uF8FF";
    const string EndPunct = @"\u00AE\u00BB\u02DD\u201D\u203A\u2122";
    const string Numeric = @"\u00B2\u00B3\u00B9\u00B1\u00BC\u00BD\u00BE\u00D7\u00B5\u00F7\u2044\u2202\u2206\u220F\u2211\u221A\u221E\u2229\u222B\u2248\u2260\u2261\u2264\u2265\u2116";
    const string Kaomoji = @"\u00D2-\u00D6\u00D9-\u00DC\u00F2-\u00F6\u00F8-\u00FC\u0150\u00B0";
    const string UpperAccented = @"\u00C0-\u00D1\u00D8\u00DC\u00DD\u0102\u0104\u0106\u010C\u010E\u0110\u0118\u011A\u011E\u0130\u0139\u013D\u0141\u0143\u0147\u0152\u0158\u015A\u015E\u0160\u0162\u0164\u016E\u0170\u0178\u0179\u017B\u017D\u0490";
    const string LowerAccented = @"\u00DF\u00E0-\u00F1\u0103\u0105\u0107\u010D\u010F\u0111\u0119\u011B\u011F\u013A\u013E\u0142\u0153\u0155\u015B\u015F\u0161\u0165\u00FC\u017A\u017C\u017E\u0491\uFB01\uFB02";
    const string UpperCommon = @"\u00DE\u0391-\u03A9\u0386\u0388\u0389\u038A\u038C\u038E\u038F\u03AA\u03AB\u0401-\u042F";
    const string LowerCommon = @"\u03B1-\u03C9\u03AC\u03AD\u03AE\u03AF\u03B0\u0430-\u045F";
    const string Box = @"\u2502\u250C\u2510\u2518\u251C\u2524\u252C\u253C\u2550-\u256C\u2580\u2584\u2588\u258C\u2590\u2591\u2592\u2593";

    // Sequences far more likely to be mojibake than intended text (ftfy's BADNESS_RE, clause by clause).
    static readonly Regex Badness = new(string.Join("|",
        $"[{C1}]",
        $"[{Bad}{LowerAccented}{UpperAccented}{Box}{StartPunct}{EndPunct}{Currency}{Numeric}][{Bad}]",
        $"[a-zA-Z][{LowerCommon}{UpperCommon}][{Bad}]",
        $"[{Bad}][{LowerAccented}{UpperAccented}{Box}{StartPunct}{EndPunct}{Currency}{Numeric}]",
        $"[{LowerAccented}{LowerCommon}{Box}{EndPunct}{Currency}{Numeric}][{UpperAccented}]",
        $"[{Box}{EndPunct}{Currency}{Numeric}][{LowerAccented}]",
        $"[{LowerAccented}{Box}{EndPunct}][{Currency}]",
        $@"\s[{UpperAccented}][{Currency}]",
        $"[{UpperAccented}{Box}][{Numeric}]",
        $"[{LowerAccented}{UpperAccented}{Box}{Currency}{EndPunct}][{StartPunct}][{Numeric}]",
        $"[{LowerAccented}{UpperAccented}{Currency}{Numeric}{Box}][{EndPunct}][{StartPunct}]",
        $"[{Currency}{Numeric}{Box}][{StartPunct}]",
        $"[a-z][{UpperAccented}][{StartPunct}{Currency}]",
        $"[{Box}][{Kaomoji}]",
        $"[{LowerAccented}{UpperAccented}{Currency}{Numeric}{StartPunct}{EndPunct}][{Box}]",
        $"[{Box}][{EndPunct}]",
        $@"[{LowerAccented}{UpperAccented}][{EndPunct}]\w",
        "[Œœ][^A-Za-z]",
        $@"[ÂÃÎÐ][€Šš¢£Ÿž\u00A0\u00AD®©°·»{StartPunct}{EndPunct}–—´]",
        "×[²³]",
        $"[ØÙ][{Common}{Currency}{Bad}{Numeric}{StartPunct}ŸŠ®°µ»][ØÙ][{Common}{Currency}{Bad}{Numeric}{StartPunct}ŸŠ®°µ»]",
        "à[²µ¹¼½¾]",
        "√[±∂†≠®™´≤≥¥µø]",
        "≈[°¢]",
        "‚Ä[ìîïòôúùû†°¢π]",
        "‚[âó][àä°ê]",
        "вЂ",
        $"[ВГРС][{C1}{Bad}{StartPunct}{EndPunct}{Currency}°µ][ВГРС]",
        "ГўВЂВ.[A-Za-z ]",
        @"Ã[\u00A0¡]",
        "[a-z]\\s?[ÃÂ][ ]",
        "^[ÃÂ][ ]",
        $"[a-z.,?!{EndPunct}]Â[ {StartPunct}{EndPunct}]",
        @"β€[™\u00A0Ά\u00AD®°]",
        $"[ΒΓΞΟ][{C1}{Bad}{StartPunct}{EndPunct}{Currency}°][ΒΓΞΟ]"), RegexOptions.Compiled);

    // Characters that UTF-8 lead and continuation bytes become in Latin-1-like encodings (ftfy's UTF8_CLUES).
    const string FirstOf2 = @"\u00C2-\u00DF\u0102\u0106\u010C\u010E\u0110\u0118\u011A\u011E\u0130\u0139\u0143\u0147\u0150\u0158\u015E\u0162\u016E\u0170\u0392-\u03A1\u03A3-\u03AF\u0412-\u042F";
    const string FirstOf3 = @"\u00E0-\u00EF\u0103\u0107\u010D\u010F\u0119\u011B\u013A\u0155\u03B0-\u03BF\u0430-\u043F";
    const string FirstOf4 = @"\u00F0\u00F3\u0111\u011F\u03C0\u03C3\u0440\u0443";
    const string ContinuationStrict = @"\u0080-\u00BF\u0104\u0105\u013D\u013E\u0141\u0142\u0152\u0153\u015A\u015B\u015E\u015F\u0160\u0161\u0164\u0165\u0178-\u017E\u0192\u02C6\u02C7\u02D8\u02DB\u02DC\u02DD\u0384\u0385\u0386\u0388\u0389\u038A\u038C\u038E\u038F\u0401-\u040C\u040E\u040F\u0451-\u045C\u045E\u045F\u0490\u0491\u2020\u2021\u2022\u2030\u2039\u203A\u20AC\u2116\u2122";
    const string Continuation = ContinuationStrict + @"\u2013\u2014\u2015\u2018\u2019\u201A\u201C\u201D\u201E\u2026 ";

    static readonly Regex Utf8Detector = new(
        $"(?<![{ContinuationStrict}])([{FirstOf2}][{Continuation}]|[{FirstOf3}][{Continuation}]{{2}}|[{FirstOf4}][{Continuation}]{{3}})+",
        RegexOptions.Compiled);

    // Byte patterns, matched on bytes held one per char (Latin-1).
    static readonly Regex AlteredUtf8 = new(
        @"[\xc2\xc3\xc5\xce\xd0\xd9][ ]|[\xe2\xe3][ ][\x80-\x84\x86-\x9f\xa1-\xbf]|[\xe0-\xe3][\x80-\x84\x86-\x9f\xa1-\xbf][ ]"
        + @"|[\xf0][ ][\x80-\xbf][\x80-\xbf]|[\xf0][\x80-\xbf][ ][\x80-\xbf]|[\xf0][\x80-\xbf][\x80-\xbf][ ]",
        RegexOptions.Compiled);
    static readonly Regex AGraveWord = new(@"\xc3 (?! |quele|quela|quilo|s )", RegexOptions.Compiled);
    static readonly Regex LossyUtf8 = new(
        @"[\xc2-\xdf][\x1a]|[\xc2-\xc3][?]|\xed[\xa0-\xaf][\x1a?]\xed[\xb0-\xbf][\x1a?\x80-\xbf]"
        + @"|\xed[\xa0-\xaf][\x1a?\x80-\xbf]\xed[\xb0-\xbf][\x1a?]|[\xe0-\xef][\x1a?][\x1a\x80-\xbf]"
        + @"|[\xe0-\xef][\x1a\x80-\xbf][\x1a?]|[\xf0-\xf4][\x1a?][\x1a\x80-\xbf][\x1a\x80-\xbf]"
        + @"|[\xf0-\xf4][\x1a\x80-\xbf][\x1a?][\x1a\x80-\xbf]|[\xf0-\xf4][\x1a\x80-\xbf][\x1a\x80-\xbf][\x1a?]|\x1a",
        RegexOptions.Compiled);

    static readonly Regex C1Control = new("[\u0080-\u009f]", RegexOptions.Compiled);
    static readonly UTF8Encoding StrictUtf8 = new(false, throwOnInvalidBytes: true);
    static readonly Codec[] Codecs = BuildCodecs();
    static readonly Codec SloppyWindows1252 = Codecs.Single(c => c.Name == "sloppy-windows-1252");

    /// <summary>True when the text contains a sequence ftfy's heuristic takes for mojibake.</summary>
    public static bool IsBad(string text) => Badness.IsMatch(text);

    /// <summary><c>ftfy.fix_encoding(text)</c>.</summary>
    public static string FixEncoding(string text)
    {
        while (true)
        {
            string fixedText = FixOneStep(text);
            if (fixedText == text) return text;
            text = fixedText;
        }
    }

    /// <summary>ftfy's <c>fix_c1_controls</c>: C1 controls (U+0080–U+009F) read as the Windows-1252 characters
    /// their bytes are, as browsers do.</summary>
    public static string FixC1Controls(string text) => C1Control.Replace(text, m => SloppyWindows1252.Decode(m.Value));

    static string FixOneStep(string text)
    {
        if (text.Length == 0 || text.All(c => c < 0x80) || !IsBad(text)) return text;
        var possible = new List<string>();
        foreach (var codec in Codecs)
        {
            if (codec.Encode(text) is not { } bytes) continue;
            possible.Add(codec.Name);
            if (AlteredUtf8.IsMatch(bytes)) bytes = RestoreByteA0(bytes);
            if (codec.Sloppy) bytes = LossyUtf8.Replace(bytes, "\xef\xbf\xbd");
            var decoded = bytes.Contains('\xed') || bytes.Contains('\xc0') ? DecodeUtf8Variants(bytes) : DecodeUtf8(bytes);
            if (decoded is not null) return decoded;
        }
        if (Utf8Detector.IsMatch(text))
        {
            string fixedText = Utf8Detector.Replace(text,
                m => m.Length < text.Length && IsBad(m.Value) ? FixEncoding(m.Value) : m.Value);
            if (fixedText != text) return fixedText;
        }
        // Text that is Latin-1 and Windows-1252 at once is probably meant; otherwise its C1 controls were meant
        // to be Windows-1252.
        return possible.Contains("latin-1") && possible.Contains("sloppy-windows-1252") ? text : FixC1Controls(text);
    }

    static string RestoreByteA0(string bytes)
    {
        bytes = AGraveWord.Replace(bytes, "\xc3\xa0 ");
        return AlteredUtf8.Replace(bytes, m => m.Value.Replace(' ', '\xa0'));
    }

    static string? DecodeUtf8(string bytes)
    {
        try { return StrictUtf8.GetString(Encoding.Latin1.GetBytes(bytes)); }
        catch (DecoderFallbackException) { return null; }
    }

    /// <summary>ftfy's "utf-8-variants": UTF-8 that may also hold CESU-8 surrogate pairs and Java's C0 80 for
    /// U+0000; anything else invalid fails as in strict UTF-8.</summary>
    static string? DecodeUtf8Variants(string bytes)
    {
        var text = new StringBuilder(bytes.Length);
        int run = 0;
        for (int i = 0; i < bytes.Length;)
        {
            string? special = null;
            int length = 0;
            if (bytes[i] == '\xc0' && i + 1 < bytes.Length && bytes[i + 1] == '\x80') (special, length) = ("\0", 2);
            else if (i + 5 < bytes.Length && bytes[i] == '\xed' && bytes[i + 1] is >= '\xa0' and <= '\xaf'
                     && bytes[i + 2] is >= '\x80' and <= '\xbf' && bytes[i + 3] == '\xed'
                     && bytes[i + 4] is >= '\xb0' and <= '\xbf' && bytes[i + 5] is >= '\x80' and <= '\xbf')
            {
                int high = ((bytes[i + 1] & 0x0f) << 6) | (bytes[i + 2] & 0x3f);
                int low = ((bytes[i + 4] & 0x0f) << 6) | (bytes[i + 5] & 0x3f);
                (special, length) = (char.ConvertFromUtf32(0x10000 + (high << 10) + low), 6);
            }
            if (special is null) { i++; continue; }
            if (DecodeUtf8(bytes[run..i]) is not { } before) return null;
            text.Append(before).Append(special);
            i += length;
            run = i;
        }
        if (DecodeUtf8(bytes[run..]) is not { } rest) return null;
        return text.Append(rest).ToString();
    }


    /// <summary>One of ftfy's single-byte encodings: the character of every byte, and back.</summary>
    sealed class Codec(string name, bool sloppy, char[] table)
    {
        readonly Dictionary<char, char> _encode = BuildEncode(table);
        public string Name => name;
        public bool Sloppy => sloppy;

        /// <summary>The text's bytes (held one per char) when every character is in this encoding, else null.</summary>
        public string? Encode(string text)
        {
            var bytes = new char[text.Length];
            for (int i = 0; i < text.Length; i++)
            {
                char c = text[i];
                if (c < 0x80 && !(c == '\x1a' && sloppy)) bytes[i] = c;
                else if (_encode.TryGetValue(c, out var b)) bytes[i] = b;
                else return null;
            }
            return new string(bytes);
        }

        public string Decode(string bytes) => string.Concat(bytes.Select(b => table[b]));

        static Dictionary<char, char> BuildEncode(char[] table)
        {
            var encode = new Dictionary<char, char>();
            for (int b = 0xff; b >= 0x80; b--) encode[table[b]] = (char)b;
            encode.TryAdd(table[0x1a], '\x1a');
            return encode;
        }
    }

    static Codec[] BuildCodecs()
    {
        Encoding.RegisterProvider(CodePagesEncodingProvider.Instance);
        var allBytes = Enumerable.Range(0, 256).Select(b => (byte)b).ToArray();
        Codec Make(string name, int codePage, bool sloppy)
        {
            var table = Encoding.GetEncoding(codePage).GetString(allBytes).ToCharArray();
            for (int b = 0; b < 256; b++)
            {
                // .NET gives the Windows code pages' unassigned bytes as C1 or private-use characters; Python
                // refuses them, and ftfy's sloppy codecs pass them through as Latin-1.
                if (sloppy && table[b] is >= '\ue000' and <= '\uf8ff') table[b] = (char)b;
                if (codePage == 10000 && table[b] == '\u2126') table[b] = '\u03a9';  // Python's MacRoman: Ω
            }
            if (sloppy) table[0x1a] = '\ufffd';
            return new Codec(name, sloppy, table);
        }
        return
        [
            Make("latin-1", 28591, false), Make("sloppy-windows-1252", 1252, true),
            Make("sloppy-windows-1251", 1251, true), Make("sloppy-windows-1250", 1250, true),
            Make("sloppy-windows-1253", 1253, true), Make("sloppy-windows-1254", 1254, true),
            Make("iso-8859-2", 28592, false), Make("macroman", 10000, false), Make("cp437", 437, false),
        ];
    }
}
