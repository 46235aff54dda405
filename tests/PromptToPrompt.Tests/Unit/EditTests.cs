using System.Text.Json.Nodes;
using PromptToPrompt.Control;
using PromptToPrompt.Imaging;
using PromptToPrompt.Loading;
using PromptToPrompt.Models;
using PromptToPrompt.Pipelines;
using PromptToPrompt.Tests.Conformance;
using static TorchSharp.torch;

namespace PromptToPrompt.Tests.Unit;

[Collection("conformance")]
public class EditTests(ConformanceData data)
{
    static EditSpec Spec(string json) => EditSpec.Parse(JsonNode.Parse(json)!.AsObject());
    AttentionController Build(string json) { var s = Spec(json); return s.Edit.Build(data.Model.Tokenizer, s.Prompts, s.Steps); }

    [Theory]
    [InlineData("{\"prompts\": [\"a cat\", \"a dog\"], \"edits\": \"replace\"}", "unknown field 'edits'")]
    [InlineData("{\"prompts\": [\"a cat riding a bicycle\", \"a cat riding a red car\"], \"edit\": \"replace\"}", "same number of words")]
    [InlineData("{\"prompts\": [\"a cat\", \"a dog\"], \"cross_replace_steps\": 1.5}", "in [0, 1]")]
    [InlineData("{\"prompts\": [\"a cat\", \"a dog\"], \"self_replace_steps\": [0.6, 0.2]}", "after the end")]
    [InlineData("{\"prompts\": [\"a cat\"], \"edit\": \"replace\"}", "at least one target prompt")]
    [InlineData("{\"prompts\": [\"a cat\", \"a dog\"], \"local_blend\": {\"words\": [[\"cow\"], [\"dog\"]]}}", "'cow' is not in the prompt \"a cat\"")]
    [InlineData("{\"prompts\": [\"a smiling bunny\", \"a smiling bunny\"], \"edit\": \"reweight\", \"equalizer\": {\"words\": [\"happy\"], \"values\": [2]}}", "'happy' is not in the prompt")]
    [InlineData("{\"prompts\": [\"a cat\", \"a dog\"], \"edit\": \"replace\", \"equalizer\": {\"words\": [\"dog\"], \"values\": [2]}}", "\"edit\": \"reweight\" with \"base\"")]
    [InlineData("{\"prompts\": [\"a cat\", \"a dog\"], \"local_blend\": {\"words\": [[\"cat\"], [\"dog\"]], \"start_blend\": 0.2}}", "null-text variant")]
    [InlineData("{\"prompts\": [\"a cat\", \"a dog\"], \"edit\": \"swap\"}", "edit 'swap' is unknown")]
    public void Bad_specs_are_user_errors_that_name_the_fix(string json, string expected)
    {
        var e = Assert.Throws<UserError>(() => Build(json));
        Assert.Contains(expected, e.Message);
    }

    [Fact]
    public void Replace_materialises_only_what_it_edits_or_stores()
    {
        using var c = (AttentionEdit)Build("{\"prompts\": [\"a cat riding a bicycle\", \"a cat riding a car\"], \"steps\": 10}");
        AttentionCall Call(bool cross, int res) => new(new AttentionLayer("x", UNetPlace.Down, cross, 0, 2), res, res, cross ? 77 : res * res);
        c.OnStepStart(0, 11);
        Assert.False(c.Needs(Call(false, 64)));   // 4096x4096 self-attention: always fused
        Assert.False(c.Needs(Call(false, 32)));   // replaced only up to 16x16 (Prompt-to-Prompt notebook)
        Assert.True(c.Needs(Call(false, 16)));
        Assert.True(c.Needs(Call(true, 64)));     // cross-attention edited at every resolution during the window
        c.OnStepStart(4, 11);                      // self window .4 of 10 steps = steps 0..3
        Assert.False(c.Needs(Call(false, 16)));
        c.OnStepStart(9, 11);                      // cross window int(0.8 * 11) = 8: steps 0..7
        Assert.False(c.Needs(Call(true, 64)));
        Assert.True(c.Needs(Call(true, 16)));     // still stored (<= 32x32) for the attention maps and local blend
    }

    [Fact]
    public void An_edit_with_empty_windows_is_a_plain_generation_of_each_prompt()
    {
        // No injection: the target must come out as if generated alone from the same x_T; only the attention path
        // (explicit softmax for the stored layers vs fused) differs, i.e. float rounding.
        var pipeline = new StableDiffusionPipeline(data.Model);
        using var xT = pipeline.InitialNoise(5, 1, 128, 128);
        using var c = Build("{\"prompts\": [\"a cat riding a bicycle\", \"a cat riding a car\"], \"steps\": 4, \"cross_replace_steps\": 0.0, \"self_replace_steps\": 0.0}");
        var request = new GenerationRequest { Prompts = ["a cat riding a bicycle", "a cat riding a car"], Steps = 4, InitialLatent = xT, Scheduler = "ddim" };
        var edited = pipeline.Generate(request, null, c);
        var plain = pipeline.Generate(request with { Prompts = ["a cat riding a car"] });
        TensorAssert.Close(plain.Latents[0], edited.Latents[1], 1e-3, "target without injection vs plain generation");
        using var withInjection = Build("{\"prompts\": [\"a cat riding a bicycle\", \"a cat riding a car\"], \"steps\": 4}");
        var injected = pipeline.Generate(request, null, withInjection);
        Assert.True(TensorAssert.MaxAbsDiff(plain.Latents[0], injected.Latents[1]) > 1e-2, "injection must change the target");
    }

    [Fact]
    public void Flags_build_the_reference_controllers()
    {
        var s = PromptToPrompt.Cli.EditCommand.FromFlags("a smiling bunny doll", [], null, null, null, null, null, ["smiling=5"], null);
        Assert.Equal(EditKind.Reweight, s.Edit.Edit);
        Assert.Equal(["a smiling bunny doll", "a smiling bunny doll"], s.Prompts);
        Assert.Null(s.Edit.Base);
        var stacked = PromptToPrompt.Cli.EditCommand.FromFlags("a castle next to a river", ["children drawing of a castle next to a river"], null, "0.6", null, null, null, ["drawing=2"], null);
        Assert.Equal((EditKind.Reweight, EditKind.Refine), (stacked.Edit.Edit, stacked.Edit.Base!.Edit));
        Assert.Equal(0.6, stacked.Edit.Base.CrossReplaceSteps.Default.End);
        var perWord = PromptToPrompt.Cli.EditCommand.FromFlags("a cat riding a bicycle", ["a cat riding a car"], null, "default=1,car=0.2:0.5", null, "bicycle;car", 0.5, [], null);
        Assert.Equal(new StepWindow(0.2, 0.5), perWord.Edit.CrossReplaceSteps.PerWord!["car"]);
        Assert.Equal(0.5, perWord.Edit.LocalBlend!.Threshold);
    }
}
