using PromptToPrompt.Control;
using PromptToPrompt.Imaging;
using PromptToPrompt.Loading;
using PromptToPrompt.Models;
using PromptToPrompt.Pipelines;
using static TorchSharp.torch;

namespace PromptToPrompt.Tests.Conformance;

/// <summary>
/// Whole SDXL runs on tiny-sdxl against diffusers 0.19.3 (golden/sdxl, README 9.5 and 9.6): 1024x1024 from the stored
/// x_T, 10 steps, no negative prompt (zeroed negatives). Bounds from README 9.7 (about 20x the reference's own
/// float64-vs-float32 and thread-count differences): final latents within 2e-4 * max|x|; the float16 trajectories within
/// 5e-2 (half a float16 ulp is 3e-2 at |x| >= 32); 32x32 cross-attention within 1.5e-4; LocalBlend's pooled maps within
/// 6e-4 and its masks exact at every step; images at most 2 levels apart on at most 3% of values; controller state exact.
/// </summary>
[Collection("conformance")]
public class SdxlGenerationConformanceTests(ConformanceData data, ITestOutputHelper output)
{
    sealed class Trajectory : IProgress<StepProgress>, IDisposable
    {
        public List<Tensor> Steps { get; } = [];
        public void Report(StepProgress value) => Steps.Add(value.Latents!.detach().cpu().clone().DetachFromDisposeScope());
        public void Dispose() { foreach (var t in Steps) t.Dispose(); }
    }

    [Theory]
    [InlineData("g01_euler_astronaut", "euler")]
    [InlineData("g02_ddim_astronaut", "ddim")]
    public void Generation_matches_the_reference(string name, string scheduler)
    {
        var manifest = ConformanceData.Manifest($"sdxl/{name}.json");
        using var golden = new SafetensorsFile(ConformanceData.Golden($"sdxl/{name}.safetensors"));
        var call = manifest.GetProperty("call");
        var model = data.SdxlModel;
        Assert.True(model.IsXL);
        Assert.Equal(1024, model.DefaultImageSize);
        using var xT = golden.Read("x_T");
        using var trajectory = new Trajectory();
        var result = new StableDiffusionPipeline(model).Generate(new GenerationRequest
        {
            Prompts = [call.GetProperty("prompt").GetString()!], Steps = call.GetProperty("num_inference_steps").GetInt32(),
            GuidanceScale = call.GetProperty("guidance_scale").GetDouble(), Scheduler = scheduler, InitialLatent = xT,
        }, trajectory);
        using (result.Latents)
        {
            using var expectedSteps = golden.Read("latents_trajectory");
            Assert.Equal(expectedSteps.shape[0], trajectory.Steps.Count);
            for (int i = 0; i < trajectory.Steps.Count; i++)
                TensorAssert.Close(expectedSteps[i], trajectory.Steps[i], 5e-2, $"{name} latents after step {i}");
            using var expected = golden.Read("latents_final");
            using var max = expected.abs().max();
            var diff = TensorAssert.Close(expected, result.Latents, 2e-4 * max.item<float>(), $"{name} latents_final");
            output.WriteLine($"{name}: latents_final max |diff| {diff:E2} (max |x| {max.item<float>():G3})");
            ImageAssert.Close(RgbImage.Load(ConformanceData.Golden($"sdxl/images/{name}.png")), result.Images[0], 2, 0.03);
            Assert.Contains("\"original_size\":[1024,1024]", result.Parameters["prompt-to-prompt"]);
        }
    }

    /// <summary>Runs after an edit on the same run and keeps what its local blend's mask was made of at each step.</summary>
    sealed class BlendProbe(AttentionEdit edit) : IRunController, IDisposable
    {
        public List<(Tensor Pooled, Tensor Mask)> Steps { get; } = [];
        public bool Needs(in AttentionCall call) => false;
        public Tensor Edit(in AttentionCall call, Tensor probabilities) => probabilities;
        public int UntouchedRows(long batch) => edit.UntouchedRows(batch);
        public void OnStepStart(int stepIndex, int totalSteps) { }
        public Tensor OnStepEnd(int stepIndex, Tensor latents)
        {
            var (pooled, mask) = edit.Blend!.Masks(edit, latents);
            Steps.Add((pooled.cpu().DetachFromDisposeScope(), logical_or(mask[..1], mask[1..]).cpu().DetachFromDisposeScope()));
            return latents;
        }
        public void Dispose() { foreach (var (p, m) in Steps) { p.Dispose(); m.Dispose(); } }
    }

    public static IEnumerable<object[]> EditCases() =>
        Directory.GetFiles(Path.Combine(ConformanceData.Require(), "golden", "sdxl"), "p0*.json").Select(f => new object[] { Path.GetFileNameWithoutExtension(f) }).OrderBy(c => c[0]);

    [Theory]
    [MemberData(nameof(EditCases))]
    public void Prompt_to_prompt_matches_the_reference(string name)
    {
        var manifest = ConformanceData.Manifest($"sdxl/{name}.json");
        using var golden = new SafetensorsFile(ConformanceData.Golden($"sdxl/{name}.safetensors"));
        var model = data.SdxlModel;
        var spec = PromptToPromptConformanceTests.SpecOf(manifest);
        using var controller = (AttentionStore)spec.Edit.Build(model.Tokenizer, spec.Prompts, spec.Steps);
        PromptToPromptConformanceTests.CheckControllerState(controller, golden);
        using var xT = golden.Read("x_T");
        using var trajectory = new Trajectory();
        using var probe = controller is AttentionEdit { Blend: not null } edit ? new BlendProbe(edit) : null;
        var result = new StableDiffusionPipeline(model).Generate(new GenerationRequest
        {
            Prompts = spec.Prompts, Steps = spec.Steps, GuidanceScale = spec.GuidanceScale, Scheduler = "euler", InitialLatent = xT,
        }, trajectory, probe is null ? controller : new ControllerChain(controller, probe));
        using (result.Latents)
        {
            Assert.Equal(manifest.GetProperty("controller_final_cur_step").GetInt32(), controller.StepCount);
            // Only the 32x32 level is stored at 1024 px: 4 down, 2 mid, 6 up cross layers.
            Assert.Equal([4, 2, 6], new[] { UNetPlace.Down, UNetPlace.Mid, UNetPlace.Up }.Select(p => controller.Layers.Count(l => l.IsCross && l.Place == p)));
            Assert.All(controller.Layers, l => Assert.Equal((32, 32), controller.SizeOf(l)));
            if (probe is not null)
            {
                Assert.Equal(12, LocalBlend.MaskLayers(controller).Count);
                using var expectedPooled = golden.Read("local_blend/maps_pooled");
                using var expectedMasks = golden.Read("local_blend/mask");
                Assert.Equal(expectedMasks.shape[0], probe.Steps.Count);
                for (int i = 0; i < probe.Steps.Count; i++)
                {
                    TensorAssert.Close(expectedPooled[i], probe.Steps[i].Pooled, 6e-4, $"{name} local blend pooled map at step {i}");
                    TensorAssert.Equal(expectedMasks[i].to(ScalarType.Bool), probe.Steps[i].Mask, $"{name} local blend mask at step {i}");
                }
            }

            using var expectedSteps = golden.Read("latents_trajectory");
            for (int i = 0; i < trajectory.Steps.Count; i++)
                TensorAssert.Close(expectedSteps[i], trajectory.Steps[i][1..2], 5e-2, $"{name} edited latents after step {i}");
            using var expected = golden.Read("latents_final");
            using var max = expected.abs().max();
            var diff = TensorAssert.Close(expected, result.Latents, 2e-4 * max.item<float>(), $"{name} latents_final");
            output.WriteLine($"{name}: latents_final max |diff| {diff:E2} (max |x| {max.item<float>():G3})");
            using var expectedMaps = golden.Read("attention_cross_res32_down_mid_up");
            for (int i = 0; i < spec.Prompts.Count; i++)
            {
                using var maps = controller.Aggregate(32, 32, [UNetPlace.Down, UNetPlace.Mid, UNetPlace.Up], cross: true, select: i);
                TensorAssert.Close(expectedMaps[i], maps, 1.5e-4, $"{name} attention of prompt {i}");
            }
            ImageAssert.Close(RgbImage.Load(ConformanceData.Golden($"sdxl/images/{name}_1.png")), result.Images[1], 2, 0.03);
        }
    }
}
