using System.Text;
using System.Text.Json;
using PromptToPrompt.Text;

namespace PromptToPrompt.Training;

/// <summary>
/// Learns a CLIP-format byte-level BPE (vocab.json + merges.txt) for a closed word list: merges are learned by
/// frequency until every word is one token, so the standard CLIP tokenizer encodes each caption word as one id.
/// The vocabulary also holds every byte (with and without <c>&lt;/w&gt;</c>), so any text still tokenizes.
/// </summary>
public static class BpeTrainer
{
    public static (Dictionary<string, int> Vocab, List<(string, string)> Merges) Train(IEnumerable<string> words)
    {
        var vocab = new Dictionary<string, int>();
        for (int b = 0; b < 256; b++) vocab[ClipTokenizer.ByteCharacter((byte)b).ToString()] = vocab.Count;
        for (int b = 0; b < 256; b++) vocab[ClipTokenizer.ByteCharacter((byte)b) + "</w>"] = vocab.Count;
        var segmented = words.Distinct().Select(w =>
        {
            var symbols = Encoding.UTF8.GetBytes(w.ToLowerInvariant()).Select(b => ClipTokenizer.ByteCharacter(b).ToString()).ToList();
            symbols[^1] += "</w>";
            return symbols;
        }).ToList();
        var merges = new List<(string, string)>();
        while (true)
        {
            var counts = new Dictionary<(string, string), int>();
            foreach (var s in segmented)
                for (int i = 0; i + 1 < s.Count; i++)
                    counts[(s[i], s[i + 1])] = counts.GetValueOrDefault((s[i], s[i + 1])) + 1;
            if (counts.Count == 0) break;
            // Most frequent pair; ties broken by the pair's text so the result is deterministic.
            var best = counts.OrderByDescending(kv => kv.Value).ThenBy(kv => kv.Key.Item1 + " " + kv.Key.Item2, StringComparer.Ordinal).First().Key;
            merges.Add(best);
            vocab.TryAdd(best.Item1 + best.Item2, vocab.Count);
            foreach (var s in segmented)
                for (int i = 0; i + 1 < s.Count; i++)
                    if (s[i] == best.Item1 && s[i + 1] == best.Item2)
                    {
                        s[i] += s[i + 1];
                        s.RemoveAt(i + 1);
                    }
        }
        vocab["<|startoftext|>"] = vocab.Count;
        vocab["<|endoftext|>"] = vocab.Count;
        return (vocab, merges);
    }

    /// <summary>Writes a transformers-style tokenizer folder (vocab.json, merges.txt, tokenizer_config.json, special_tokens_map.json).</summary>
    public static void Save(string folder, Dictionary<string, int> vocab, List<(string, string)> merges, int maxLength)
    {
        Directory.CreateDirectory(folder);
        File.WriteAllText(Path.Combine(folder, "vocab.json"), JsonSerializer.Serialize(vocab));
        File.WriteAllLines(Path.Combine(folder, "merges.txt"), merges.Select(m => $"{m.Item1} {m.Item2}").Prepend("#version: 0.2"));
        File.WriteAllText(Path.Combine(folder, "tokenizer_config.json"), JsonSerializer.Serialize(new Dictionary<string, object>
        {
            ["tokenizer_class"] = "CLIPTokenizer", ["model_max_length"] = maxLength, ["do_lower_case"] = true,
            ["bos_token"] = "<|startoftext|>", ["eos_token"] = "<|endoftext|>", ["pad_token"] = "<|endoftext|>", ["unk_token"] = "<|endoftext|>",
        }));
        File.WriteAllText(Path.Combine(folder, "special_tokens_map.json"), JsonSerializer.Serialize(new Dictionary<string, string>
        {
            ["bos_token"] = "<|startoftext|>", ["eos_token"] = "<|endoftext|>", ["pad_token"] = "<|endoftext|>", ["unk_token"] = "<|endoftext|>",
        }));
    }
}
