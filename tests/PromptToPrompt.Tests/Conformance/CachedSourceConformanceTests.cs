using PromptToPrompt.Control;
using PromptToPrompt.Editing;
using PromptToPrompt.Imaging;
using PromptToPrompt.Loading;
using PromptToPrompt.Models;
using PromptToPrompt.Pipelines;
using static TorchSharp.torch;

namespace PromptToPrompt.Tests.Conformance;

/// <summary>
/// The same reference cases as <see cref="PromptToPromptConformanceTests"/> and <see cref="NullTextEditConformanceTests"/>,
/// run through an <see cref="EditSession"/> with a source cache: the source is recorded once (alone), the targets run
/// alone and take the source's maps and latents from the recording. Same bounds as the batched runs: final latents
/// within 1e-4 * max|x|, aggregated 16x16 cross-attention within 1e-5, images at most 2 levels apart on under 1%.
/// The cache is used a second time (from a file) for a second, identical edit, which must equal the first bit for bit.
/// </summary>
[Collection("conformance")]
public class CachedSourceConformanceTests(ConformanceData data, ITestOutputHelper output) : IDisposable
{
    readonly string _dir = Path.Combine(Path.GetTempPath(), $"p2p-cache-conf-{Guid.NewGuid():N}");

    public void Dispose()
    {
        if (Directory.Exists(_dir)) Directory.Delete(_dir, true);
    }

    void AssertLatents(Tensor expected, Tensor actual, string what)
    {
        using var max = expected.abs().max();
        var diff = TensorAssert.Close(expected, actual, 1e-4 * max.item<float>(), what);
        output.WriteLine($"{what}: max |diff| {diff:E2} (max |x| {max.item<float>():G3})");
    }

    [Theory]
    [MemberData(nameof(PromptToPromptConformanceTests.Cases), MemberType = typeof(PromptToPromptConformanceTests))]
    public void Case_matches_the_reference_through_the_cache(string name)
    {
        var manifest = ConformanceData.Manifest($"p2p/{name}.json");
        using var golden = new SafetensorsFile(ConformanceData.Golden($"p2p/{name}.safetensors"));
        var spec = PromptToPromptConformanceTests.SpecOf(manifest);
        using var xT = golden.Read("x_T");
        using var cache = new SourceCache(directory: _dir);
        var session = new EditSession(data.Model, new SourceSettings
        {
            Prompt = spec.Prompts[0], Steps = spec.Steps, GuidanceScale = spec.GuidanceScale, Scheduler = "pndm", InitialLatent = xT,
            Variant = spec.Edit.Variant,
        }, cache);
        var request = new EditRequest(spec.Prompts.Skip(1).ToList(), spec.Edit);
        using var result = session.Edit(request);
        PromptToPromptConformanceTests.CheckControllerState(result.Controller, golden);
        Assert.Equal(manifest.GetProperty("controller_final_cur_step").GetInt32(), result.Controller.StepCount);
        using var expected = golden.Read("latents_final");
        AssertLatents(expected, result.Latents, $"{name} latents_final (cached source)");
        using var expectedMaps = golden.Read("attention_cross_res16_up_down");
        for (int i = 0; i < spec.Prompts.Count; i++)
        {
            using var maps = result.Controller.Aggregate(16, 16, [UNetPlace.Up, UNetPlace.Down], cross: true, select: i);
            var mapDiff = TensorAssert.Close(expectedMaps[i], maps, 1e-5, $"{name} attention of prompt {i} (cached source)");
            output.WriteLine($"{name}: attention[{i}] max |diff| {mapDiff:E2}");
        }
        for (int i = 0; i < spec.Prompts.Count; i++)
            ImageAssert.Close(RgbImage.Load(ConformanceData.Golden($"p2p/images/{name}_{i}.png")), result.Images[i], 2, 0.01);

        // A new cache on the same folder loads the file; the edit is the same to the bit.
        using var reopened = new SourceCache(directory: _dir);
        var again = new EditSession(data.Model, session.Source, reopened);
        using var second = again.Edit(request);
        TensorAssert.Equal(result.Latents, second.Latents, $"{name}: edit from the cache file");
    }

    [Theory]
    [MemberData(nameof(NullTextEditConformanceTests.Edits), MemberType = typeof(NullTextEditConformanceTests))]
    public void Null_text_edit_matches_the_reference_through_the_cache(string name, string edit)
    {
        using var golden = new SafetensorsFile(ConformanceData.Golden("inversion/inv01_red_ball.safetensors"));
        var prompts = NullTextEditConformanceTests.Prompts;
        var spec = NullTextEditConformanceTests.Spec(edit);
        using var ddim = golden.Read("ddim_latents");
        using var nulls = golden.Read("uncond_embeddings");
        using var cache = new SourceCache();
        var session = new EditSession(data.Model, new SourceSettings
        {
            Prompt = prompts[0], Steps = 10, GuidanceScale = 7.5, Scheduler = "ddim", InitialLatent = ddim[-1], NullEmbeddings = nulls,
            Variant = ReferenceVariant.NullText,
        }, cache);
        using var result = session.Edit(new EditRequest([prompts[1]], spec.Edit));
        using var expected = golden.Read($"edit_{name}/latents_final");
        AssertLatents(expected, result.Latents, $"edit_{name}/latents_final (cached source)");
        ImageAssert.Close(RgbImage.Load(ConformanceData.Golden($"inversion/images/inv01_red_ball_edit_{name}_1.png")), result.Images[1], 2, 0.01);
        using var reconstruction = golden.Read("reconstruction/latents_final");
        AssertLatents(reconstruction, result.Latents[..1], "reconstruction/latents_final (the cached source)");
    }
}
