using System.Text.Json;
using PromptToPrompt.Loading;
using PromptToPrompt.Text;

namespace PromptToPrompt.Tests.Conformance;

/// <summary>Token ids, decoded tokens and word positions must equal the reference tokenizer's exactly:
/// tokenizer_text_utils (plain prompts) and tokenizer_ftfy (prompts whose ids depend on ftfy's fix_text).</summary>
[Collection("conformance")]
public class TokenizerConformanceTests(ConformanceData data)
{
    static readonly JsonElement Manifest = ConformanceData.Manifest("tokenizer_text_utils.json");
    static readonly Dictionary<string, JsonElement> Manifests = new()
    {
        ["tokenizer_text_utils"] = Manifest, ["tokenizer_ftfy"] = ConformanceData.Manifest("tokenizer_ftfy.json"),
    };
    ClipTokenizer Tokenizer => data.Model.Tokenizer;

    public static IEnumerable<object[]> Prompts() => Manifests.SelectMany(m =>
        Enumerable.Range(0, m.Value.GetProperty("prompts").GetArrayLength()).Select(i => new object[] { m.Key, i }));

    public static IEnumerable<object[]> Files() => Manifests.Keys.Select(k => new object[] { k });

    [Theory]
    [MemberData(nameof(Prompts))]
    public void Ids_equal_the_reference(string file, int index)
    {
        var p = Manifests[file].GetProperty("prompts")[index];
        var prompt = p.GetProperty("prompt").GetString()!;
        var expected77 = p.GetProperty("input_ids_77").EnumerateArray().Select(e => e.GetInt64()).ToArray();
        var expectedEncode = p.GetProperty("encode_ids").EnumerateArray().Select(e => e.GetInt64()).ToArray();
        Assert.Equal(expectedEncode, Tokenizer.Encode(prompt));
        var tokenized = Tokenizer.Tokenize(prompt);
        Assert.Equal(expected77, tokenized.Ids);
        Assert.Equal(expectedEncode.Length > 77, tokenized.Truncated);
    }

    [Theory]
    [MemberData(nameof(Prompts))]
    public void Decoded_tokens_equal_the_reference(string file, int index)
    {
        var p = Manifests[file].GetProperty("prompts")[index];
        var ids = p.GetProperty("encode_ids").EnumerateArray().Select(e => e.GetInt64()).ToArray();
        var expected = p.GetProperty("tokens").EnumerateArray().Select(e => e.GetString()).ToArray();
        Assert.Equal(expected, ids.Select(id => Tokenizer.Decode([id])).ToArray());
    }

    [Theory]
    [MemberData(nameof(Files))]
    public void Stacked_ids_tensor_matches_the_manifest(string name)
    {
        using var file = new SafetensorsFile(ConformanceData.Golden(name + ".safetensors"));
        using var ids = file.Read("tokenizer/input_ids_77");
        var prompts = Manifests[name].GetProperty("prompts").EnumerateArray().Select(p => p.GetProperty("prompt").GetString()!).ToArray();
        var ours = prompts.SelectMany(p => Tokenizer.Tokenize(p).Ids).ToArray();
        Assert.Equal(ids.data<long>().ToArray(), ours);
    }

    [Fact]
    public void Word_positions_equal_get_word_inds()
    {
        foreach (var c in Manifest.GetProperty("get_word_inds").EnumerateArray())
        {
            var text = c.GetProperty("text").GetString()!;
            var place = c.GetProperty("word_place");
            var expected = c.GetProperty("inds").EnumerateArray().Select(e => e.GetInt32()).ToArray();
            var actual = place.ValueKind == JsonValueKind.Number
                ? PromptWords.TokenPositions(Tokenizer, text, place.GetInt32())
                : PromptWords.TokenPositions(Tokenizer, text, place.GetString()!);
            Assert.True(expected.SequenceEqual(actual), $"'{text}' / {place}: expected [{string.Join(",", expected)}], got [{string.Join(",", actual)}]");
        }
    }
}
