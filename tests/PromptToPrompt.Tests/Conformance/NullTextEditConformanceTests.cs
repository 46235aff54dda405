using System.Text.Json.Nodes;
using PromptToPrompt.Control;
using PromptToPrompt.Imaging;
using PromptToPrompt.Loading;
using PromptToPrompt.Models;
using PromptToPrompt.Pipelines;
using static TorchSharp.torch;

namespace PromptToPrompt.Tests.Conformance;

/// <summary>
/// The null-text notebook's controllers (self-attention replaced up to 32x32, LocalBlend starting after
/// int(0.2 * steps) steps with a mask row per prompt, reweight stacked on replace) and its sampling with per-step
/// null-text embeddings, checked on the stored inversion result (x_t and the optimised embeddings): 10 DDIM steps,
/// guidance 7.5. Given the same x_t and embeddings this is a plain 10-step run, so the P2P bounds apply
/// (1e-4 * max|x| for the latents, 1e-5 for attention maps).
/// </summary>
[Collection("conformance")]
public class NullTextEditConformanceTests(ConformanceData data, ITestOutputHelper output)
{
    const string Case = "inversion/inv01_red_ball";
    public static readonly string[] Prompts = ["a red ball next to a blue ball", "a red cube next to a blue ball"];

    GenerationResult Run(SafetensorsFile golden, IReadOnlyList<string> prompts, AttentionController controller, bool nullText = true)
    {
        using var ddim = golden.Read("ddim_latents");
        var pipeline = new StableDiffusionPipeline(data.Model);
        return pipeline.Generate(new GenerationRequest
        {
            Prompts = prompts, Steps = 10, GuidanceScale = 7.5, Scheduler = "ddim", InitialLatent = ddim[-1],
            UnconditionalEmbeddings = nullText ? golden.Read("uncond_embeddings") : null,
        }, null, controller);
    }

    void AssertLatents(SafetensorsFile golden, string key, Tensor actual)
    {
        using var expected = golden.Read(key);
        using var max = expected.abs().max();
        var diff = TensorAssert.Close(expected, actual, 1e-4 * max.item<float>(), key);
        output.WriteLine($"{key}: max |diff| {diff:E2} (max |x| {max.item<float>():G3})");
    }

    [Fact]
    public void Reconstruction_with_and_without_null_text()
    {
        using var golden = new SafetensorsFile(ConformanceData.Golden($"{Case}.safetensors"));
        using var store = new AttentionStore(1);
        var result = Run(golden, [Prompts[0]], store);
        AssertLatents(golden, "reconstruction/latents_final", result.Latents);
        using var maps = store.Aggregate(16, 16, [UNetPlace.Up, UNetPlace.Down], true, 0);
        using var expectedMaps = golden.Read("reconstruction/attention_cross_res16_up_down");
        TensorAssert.Close(expectedMaps, maps, 1e-5, "reconstruction attention");
        ImageAssert.Close(RgbImage.Load(ConformanceData.Golden($"{Case.Replace("inversion/", "inversion/images/")}_reconstruction.png")), result.Images[0], 2, 0.01);

        using var plainStore = new AttentionStore(1);
        var plain = Run(golden, [Prompts[0]], plainStore, nullText: false);
        AssertLatents(golden, "reconstruction_without_null_text/latents_final", plain.Latents);
    }

    /// <summary>The reference's two edits of the case, as spec JSON (without prompts, variant and steps).</summary>
    public static TheoryData<string, string> Edits => new()
    {
        { "replace", "{\"edit\": \"replace\", \"cross_replace_steps\": {\"default_\": 0.8}, \"self_replace_steps\": 0.5}" },
        { "replace_blend_reweight", "{\"edit\": \"reweight\", \"equalizer\": {\"words\": [\"cube\"], \"values\": [2]}, " +
            "\"base\": {\"edit\": \"replace\", \"cross_replace_steps\": {\"default_\": 0.8}, \"self_replace_steps\": 0.5}, " +
            "\"local_blend\": {\"words\": [[\"ball\"], [\"cube\"]], \"threshold\": [0.3, 0.3], \"start_blend\": 0.2}, " +
            "\"cross_replace_steps\": {\"default_\": 0.8}, \"self_replace_steps\": 0.5}" },
    };

    /// <summary>The spec of one of <see cref="Edits"/> on the case's prompts.</summary>
    public static EditSpec Spec(string edit)
    {
        var root = JsonNode.Parse(edit)!.AsObject();
        root["prompts"] = new JsonArray(Prompts.Select(p => (JsonNode)p).ToArray());
        root["variant"] = "null_text";
        root["steps"] = 10;
        return EditSpec.Parse(root);
    }

    [Theory]
    [MemberData(nameof(Edits))]
    public void Edit_matches_the_reference(string name, string edit)
    {
        using var golden = new SafetensorsFile(ConformanceData.Golden($"{Case}.safetensors"));
        var spec = Spec(edit);
        using var controller = (AttentionEdit)spec.Edit.Build(data.Model.Tokenizer, spec.Prompts, 10);
        TensorAssert.Equal(golden.Read($"edit_{name}/controller/cross_replace_alpha"), controller.CrossReplaceAlpha, "cross_replace_alpha");
        if (controller is AttentionReweight r)
        {
            TensorAssert.Equal(golden.Read($"edit_{name}/controller/equalizer"), r.Equalizer, "equalizer");
            TensorAssert.Equal(golden.Read($"edit_{name}/controller/local_blend/alpha_layers").reshape(r.Blend!.AlphaLayers.shape), r.Blend.AlphaLayers, "alpha_layers");
        }
        var result = Run(golden, spec.Prompts, controller);
        AssertLatents(golden, $"edit_{name}/latents_final", result.Latents);
        ImageAssert.Close(RgbImage.Load(ConformanceData.Golden($"inversion/images/inv01_red_ball_edit_{name}_1.png")), result.Images[1], 2, 0.01);
    }
}
