using System.Text.Json;
using System.Text.Json.Nodes;
using PromptToPrompt.Control;
using PromptToPrompt.Loading;
using PromptToPrompt.Pipelines;
using static TorchSharp.torch;

namespace PromptToPrompt.Tests.Conformance;

/// <summary>The reference's text utilities (seq_aligner, get_time_words_attention_alpha) must be reproduced exactly.</summary>
[Collection("conformance")]
public class TextUtilsConformanceTests(ConformanceData data)
{
    static readonly JsonElement Manifest = ConformanceData.Manifest("tokenizer_text_utils.json");
    static SafetensorsFile Golden() => new(ConformanceData.Golden("tokenizer_text_utils.safetensors"));
    static string[] Prompts(JsonElement e) => e.GetProperty("prompts").EnumerateArray().Select(p => p.GetString()!).ToArray();

    [Fact]
    public void Replacement_mappers_equal_the_reference()
    {
        using var golden = Golden();
        foreach (var c in Manifest.GetProperty("replacement_mappers").EnumerateArray())
        {
            var prompts = Prompts(c);
            using var expected = golden.Read(c.GetProperty("mapper").GetString()!);
            for (int t = 1; t < prompts.Length; t++)
            {
                var m = SequenceAligner.Replacement(data.Model.Tokenizer, prompts[0], prompts[t], referenceDefect: true);
                using var actual = tensor(m.Cast<float>().ToArray(), [77, 77]);
                TensorAssert.Equal(expected[t - 1], actual, $"replacement mapper {string.Join(" -> ", prompts)}");
            }
        }
    }

    [Fact]
    public void Corrected_replacement_mapper_keeps_tokens_after_a_longer_word_aligned()
    {
        // "burger" (1 token) -> "lasagne" (2 tokens): the reference maps source position i to target i from then on;
        // the corrected mapper maps the source's end token (position 9) to the target's (position 10).
        var tok = data.Model.Tokenizer;
        var reference = SequenceAligner.Replacement(tok, "a painting of a squirrel eating a burger", "a painting of a squirrel eating a lasagne", referenceDefect: true);
        var corrected = SequenceAligner.Replacement(tok, "a painting of a squirrel eating a burger", "a painting of a squirrel eating a lasagne");
        Assert.Equal(1f, corrected[9, 10]);
        Assert.Equal(0f, corrected[9, 9]);
        Assert.Equal(1f, reference[10, 10]);
        Assert.Equal((0.5f, 0.5f), (corrected[8, 8], corrected[8, 9]));
    }

    [Fact]
    public void Refinement_mappers_and_alphas_equal_the_reference()
    {
        using var golden = Golden();
        foreach (var c in Manifest.GetProperty("refinement_mappers").EnumerateArray())
        {
            var prompts = Prompts(c);
            using var mapper = golden.Read(c.GetProperty("mapper").GetString()!);
            using var alphas = golden.Read(c.GetProperty("alphas").GetString()!);
            for (int t = 1; t < prompts.Length; t++)
            {
                var (m, a) = SequenceAligner.Refinement(data.Model.Tokenizer, prompts[0], prompts[t]);
                Assert.Equal(mapper[t - 1].data<long>().ToArray(), m);
                Assert.Equal(alphas[t - 1].data<float>().ToArray(), a);
            }
        }
    }

    [Fact]
    public void Time_word_alphas_equal_the_reference()
    {
        using var golden = Golden();
        foreach (var c in Manifest.GetProperty("time_words_attention_alpha").EnumerateArray())
        {
            var prompts = Prompts(c);
            var steps = EditSpec.ParseCrossReplace(JsonNode.Parse(c.GetProperty("cross_replace_steps").GetRawText())!);
            var alpha = InjectionSchedule.CrossAlpha(data.Model.Tokenizer, prompts, c.GetProperty("num_steps").GetInt32(), steps);
            using var expected = golden.Read(c.GetProperty("tensor").GetString()!);
            Assert.True(expected.data<float>().ToArray().SequenceEqual(alpha), $"alpha for {c.GetProperty("cross_replace_steps")}, {c.GetProperty("num_steps")} steps");
        }
    }

    [Fact]
    public void A_per_word_window_for_a_word_in_no_target_is_an_error()
    {
        var steps = EditSpec.ParseCrossReplace(JsonNode.Parse("{\"default_\": 0.8, \"truck\": 0.2}")!);
        var e = Assert.Throws<UserError>(() => InjectionSchedule.CrossAlpha(data.Model.Tokenizer, ["a cat riding a bicycle", "a cat riding a car"], 10, steps));
        Assert.Contains("'truck'", e.Message);
    }
}
