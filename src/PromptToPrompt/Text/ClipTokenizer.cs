using System.Text;
using System.Text.Json;
using System.Text.RegularExpressions;

namespace PromptToPrompt.Text;

/// <summary>Token ids of one prompt, padded to the model length, and whether the prompt had to be cut.</summary>
public sealed record TokenizedPrompt(string Prompt, long[] Ids, int TokenCount, bool Truncated);

/// <summary>
/// The CLIP byte-level BPE tokenizer, equal to transformers' CLIPTokenizer with ftfy installed (as the official
/// requirements install it): ftfy's <c>fix_text</c> (<see cref="TextFixer"/>), whitespace clean-up, lower-casing, the CLIP pre-tokeniser pattern, BPE with the `&lt;/w&gt;` end-of-word marker,
/// BOS/EOS, truncation to the model length and right padding.
/// </summary>
public sealed class ClipTokenizer
{
    const string EndOfWord = "</w>";
    static readonly Regex Pattern = new(
        @"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+",
        RegexOptions.IgnoreCase | RegexOptions.Compiled);
    static readonly Regex Whitespace = new(@"\s+", RegexOptions.Compiled);

    readonly Dictionary<string, int> _encoder;
    readonly string[] _decoder;
    readonly Dictionary<(string, string), int> _ranks;
    readonly Dictionary<string, string[]> _cache = new();
    static readonly char[] ByteToChar = BuildByteToChar();
    static readonly Dictionary<char, byte> CharToByte = ByteToChar.Select((c, b) => (c, b)).ToDictionary(x => x.c, x => (byte)x.b);

    public int BosId { get; }
    public int EosId { get; }
    public int PadId { get; }
    /// <summary>Sequence length the text encoder expects (model_max_length), BOS and EOS included.</summary>
    public int MaxLength { get; }
    public int VocabSize => _decoder.Length;

    public ClipTokenizer(Dictionary<string, int> vocab, IEnumerable<(string, string)> merges, int maxLength,
                         string bos = "<|startoftext|>", string eos = "<|endoftext|>", string? pad = null)
    {
        _encoder = vocab;
        _decoder = new string[vocab.Values.Max() + 1];
        foreach (var (k, v) in vocab) _decoder[v] = k;
        _ranks = new();
        int rank = 0;
        foreach (var m in merges) _ranks.TryAdd(m, rank++);
        MaxLength = maxLength;
        BosId = Id(bos);
        EosId = Id(eos);
        PadId = Id(pad ?? eos);
        int Id(string token) => vocab.TryGetValue(token, out var id)
            ? id : throw new UserError($"The tokenizer vocabulary has no token '{token}'. vocab.json is not a CLIP vocabulary.");
    }

    /// <summary>Loads vocab.json, merges.txt and (if present) tokenizer_config.json / special_tokens_map.json.</summary>
    /// <param name="padOverride">The pad token to use whatever the folder says (SDXL's second tokenizer pads with "!").</param>
    public static ClipTokenizer Load(string folder, int? maxLength = null, string? padOverride = null)
    {
        var vocabPath = Path.Combine(folder, "vocab.json");
        var mergesPath = Path.Combine(folder, "merges.txt");
        foreach (var p in new[] { vocabPath, mergesPath })
            if (!File.Exists(p)) throw new UserError($"Tokenizer file missing: {p}. The model folder is incomplete: copy the tokenizer folder again.");
        Dictionary<string, int> vocab;
        try { vocab = JsonSerializer.Deserialize<Dictionary<string, int>>(File.ReadAllText(vocabPath))!; }
        catch (JsonException e) { throw new UserError($"{vocabPath} is not valid JSON ({e.Message}). Replace the file."); }
        var merges = new List<(string, string)>();
        foreach (var line in File.ReadLines(mergesPath))
        {
            if (line.StartsWith("#version") || line.Length == 0) continue;
            var parts = line.Split(' ');
            if (parts.Length != 2) throw new UserError($"{mergesPath}: malformed merge line '{line}'. Replace the file.");
            merges.Add((parts[0], parts[1]));
        }
        int length = maxLength ?? 77;
        string bos = "<|startoftext|>", eos = "<|endoftext|>";
        string? pad = null;
        var configPath = Path.Combine(folder, "tokenizer_config.json");
        if (maxLength is null && File.Exists(configPath))
        {
            var config = Loading.ConfigJson.Load(configPath);
            var l = config.Get<long>("model_max_length", 77);
            length = l is > 0 and < 100_000 ? (int)l : 77;
        }
        var specialPath = Path.Combine(folder, "special_tokens_map.json");
        if (File.Exists(specialPath))
        {
            using var doc = JsonDocument.Parse(File.ReadAllText(specialPath));
            string? Token(string key) => doc.RootElement.TryGetProperty(key, out var e)
                ? e.ValueKind == JsonValueKind.String ? e.GetString() : e.TryGetProperty("content", out var c) ? c.GetString() : null
                : null;
            bos = Token("bos_token") ?? bos;
            eos = Token("eos_token") ?? eos;
            pad = Token("pad_token");
        }
        return new ClipTokenizer(vocab, merges, length, bos, eos, padOverride ?? pad);
    }

    /// <summary>The text normalisation CLIPTokenizer applies before splitting:
    /// <c>whitespace_clean(ftfy.fix_text(text)).lower()</c>.</summary>
    public static string Normalize(string text) =>
        TextFixer.PythonLower(Whitespace.Replace(TextFixer.FixText(text), " ").Trim());

    /// <summary>Token ids without BOS/EOS, never truncated.</summary>
    public List<int> EncodeWithoutSpecials(string text)
    {
        var ids = new List<int>();
        foreach (Match m in Pattern.Matches(Normalize(text)))
            foreach (var token in Bpe(m.Value))
                ids.Add(_encoder.TryGetValue(token, out var id) ? id : EosId);
        return ids;
    }

    /// <summary>The id of a vocabulary entry (such as <c>circle&lt;/w&gt;</c>), or null when the vocabulary has none.</summary>
    public int? IdOf(string token) => _encoder.TryGetValue(token, out var id) ? id : null;

    /// <summary>`tokenizer.encode(text)`: BOS + ids + EOS, not truncated.</summary>
    public long[] Encode(string text) =>
        EncodeWithoutSpecials(text).Select(i => (long)i).Prepend(BosId).Append(EosId).ToArray();

    /// <summary>`tokenizer(text, padding="max_length", max_length=MaxLength, truncation=True)`.</summary>
    public TokenizedPrompt Tokenize(string text)
    {
        var body = EncodeWithoutSpecials(text);
        bool truncated = body.Count > MaxLength - 2;
        if (truncated) body = body.Take(MaxLength - 2).ToList();
        var ids = new long[MaxLength];
        ids[0] = BosId;
        for (int i = 0; i < body.Count; i++) ids[i + 1] = body[i];
        ids[body.Count + 1] = EosId;
        for (int i = body.Count + 2; i < MaxLength; i++) ids[i] = PadId;
        return new TokenizedPrompt(text, ids, body.Count + 2, truncated);
    }

    /// <summary>The vocabulary string of one token id (with `&lt;/w&gt;`, in the byte alphabet).</summary>
    public string TokenString(long id) => id >= 0 && id < _decoder.Length && _decoder[id] is { } s ? s : "";

    /// <summary>`tokenizer.decode(ids)` with transformers' default clean-up of spaces before punctuation.</summary>
    public string Decode(IEnumerable<long> ids)
    {
        var joined = string.Concat(ids.Select(TokenString));
        var bytes = joined.Select(c => CharToByte.TryGetValue(c, out var b) ? b : (byte)'?').ToArray();
        var text = Encoding.UTF8.GetString(bytes).Replace(EndOfWord, " ").Trim();
        return text.Replace(" .", ".").Replace(" ?", "?").Replace(" !", "!").Replace(" ,", ",").Replace(" ' ", "'")
            .Replace(" n't", "n't").Replace(" 'm", "'m").Replace(" 's", "'s").Replace(" 've", "'ve").Replace(" 're", "'re");
    }

    string[] Bpe(string piece)
    {
        if (_cache.TryGetValue(piece, out var cached)) return cached;
        if (piece is "<|startoftext|>" or "<|endoftext|>") return _cache[piece] = [piece];
        var chars = Encoding.UTF8.GetBytes(piece).Select(b => ByteToChar[b].ToString()).ToList();
        chars[^1] += EndOfWord;
        while (chars.Count > 1)
        {
            int best = -1, bestRank = int.MaxValue;
            for (int i = 0; i + 1 < chars.Count; i++)
                if (_ranks.TryGetValue((chars[i], chars[i + 1]), out var r) && r < bestRank) { bestRank = r; best = i; }
            if (best < 0) break;
            var (first, second) = (chars[best], chars[best + 1]);
            var merged = new List<string>(chars.Count);
            for (int i = 0; i < chars.Count; i++)
            {
                if (i + 1 < chars.Count && chars[i] == first && chars[i + 1] == second) { merged.Add(first + second); i++; }
                else merged.Add(chars[i]);
            }
            chars = merged;
        }
        return _cache[piece] = chars.ToArray();
    }

    /// <summary>The printable character GPT-2's byte alphabet uses for <paramref name="b"/>.</summary>
    public static char ByteCharacter(byte b) => ByteToChar[b];

    /// <summary>GPT-2's reversible map from bytes to printable unicode characters.</summary>
    static char[] BuildByteToChar()
    {
        var map = new char[256];
        var direct = new bool[256];
        foreach (var (lo, hi) in new[] { ('!', '~'), ('¡', '¬'), ('®', 'ÿ') })
            for (int b = lo; b <= hi; b++) { direct[b] = true; map[b] = (char)b; }
        int n = 0;
        for (int b = 0; b < 256; b++)
            if (!direct[b]) map[b] = (char)(256 + n++);
        return map;
    }
}
