using PromptToPrompt.Control;
using PromptToPrompt.Editing;
using PromptToPrompt.Loading;
using PromptToPrompt.Pipelines;
using static TorchSharp.torch;

namespace PromptToPrompt.Tests.Unit;

/// <summary>
/// Attend-and-Excite and Directed Diffusion as the source of a Prompt-to-Prompt edit, on the shipped model: the recorded
/// source is the guided generation, and an edit that changes nothing follows it (the source's latent moves and its
/// placed maps reach the target).
/// </summary>
public sealed class GuidedSourceTests(ITestOutputHelper output) : IDisposable
{
    const string Prompt = "a large red circle and a large blue square on a white background";
    readonly StableDiffusionModel _model = StableDiffusionModel.Load(ShippedModelTests.Folder, ModelPlacement.Cpu);

    public void Dispose() => _model.Dispose();

    SourceSettings Source => new() { Prompt = Prompt, Seed = 3, Steps = 10, Scheduler = "ddim" };

    float Distance(Tensor a, Tensor b)
    {
        using var d = (a - b).abs().max();
        return d.item<float>();
    }

    /// <summary>The guided generation, the plain one, and an edit of the guided source whose target is the source prompt.</summary>
    void Check(SourceSettings guided, string what)
    {
        var pipeline = new StableDiffusionPipeline(_model);
        GenerationRequest Request(SourceSettings s) => new()
        {
            Prompts = [Prompt], Seed = s.Seed, Steps = s.Steps, Scheduler = s.Scheduler, Excite = s.Excite, Boxes = s.Boxes,
        };
        using var alone = pipeline.Generate(Request(guided)).Latents;
        using var plain = pipeline.Generate(Request(Source)).Latents;
        using var cache = new SourceCache();
        using var edit = new EditSession(_model, guided, cache).Edit(new EditRequest([Prompt], new EditDescription { Edit = EditKind.Replace }));
        float moved = Distance(alone, plain), source = Distance(edit.Latents[..1], alone), target = Distance(edit.Latents[1..], edit.Latents[..1]);
        output.WriteLine($"{what}: guided vs plain {moved:E2}; recorded source vs guided {source:E2}; unchanged target vs source {target:E2}");
        Assert.True(moved > 0.1, $"{what} barely changes the generation ({moved:E2}), so the test would not see it lost");
        Assert.True(source < 1e-4, $"the recorded source differs from the {what} generation by {source:E2}");
        Assert.True(target < 1e-3, $"an edit that changes no word drifts from the {what} source by {target:E2}");
        Assert.Contains(what == "Attend-and-Excite" ? "\"attend_and_excite\":{\"token_indices\":[4,9]" : "\"directed_diffusion\":{\"regions\":[{\"token_indices\":[4]",
                        edit.Metadata["source-guidance"]);
    }

    [Fact]
    public void An_excited_source_is_the_excited_generation_and_an_unchanged_target_follows_its_latent_moves()
    {
        var excite = new ExciteSettings { TokenIndices = AttendAndExcite.SubjectTokens(_model.Tokenizer, Prompt, ["circle", "square"]), MaxIterToAlter = 5, ScaleFactor = 3 };
        Check(Source with { Excite = excite }, "Attend-and-Excite");
    }

    [Fact]
    public void A_directed_source_is_the_directed_generation_and_an_unchanged_target_gets_its_placed_maps()
    {
        // The shipped model's heads are 16 wide, so its cross-attention would be kept as queries and recomputed without
        // the boxes' edit; a directed source keeps the maps themselves.
        var boxes = new DirectedSettings { Regions = [DirectedRegion.ForWord(_model.Tokenizer, Prompt, "circle", new Box(0, 0.5, 0, 0.5))], Steps = 5 };
        Check(Source with { Boxes = boxes }, "Directed Diffusion");
    }

    [Fact]
    public void An_inverted_photo_cannot_be_a_guided_source()
    {
        using var nulls = zeros(10, 1, _model.Tokenizer.MaxLength, _model.TextEncoder.Config.HiddenSize);
        var excite = new ExciteSettings { TokenIndices = [4] };
        var error = Assert.Throws<UserError>(() => new EditSession(_model, Source with { Excite = excite, NullEmbeddings = nulls }));
        Assert.Equal(SourceSettings.GuidedInversionError().Message, error.Message);
        Assert.StartsWith("Attend-and-Excite and Directed Diffusion guide a generated source", error.Message);
        var batched = Assert.Throws<UserError>(() => new EditSession(_model, Source with { Excite = excite }).Edit(new EditRequest([Prompt], new EditDescription { Edit = EditKind.Replace })));
        Assert.Contains("open the session with a source cache", batched.Message);
    }
}
