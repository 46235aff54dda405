using PromptToPrompt.Loading;
using PromptToPrompt.Schedulers;
using static TorchSharp.torch;

namespace PromptToPrompt.Tests.Conformance;

/// <summary>
/// Timesteps must equal the reference exactly; each step's sample must agree to float32 rounding. The reference
/// computes the step coefficients as float32 tensors; we compute the same float32 arithmetic, so differences are
/// a few ulps of values O(1) that accumulate over at most 51 steps: 1e-5 absolute is ample and still catches a
/// wrong coefficient or an off-by-one timestep (which change samples by more than 1e-3).
/// </summary>
[Collection("conformance")]
public class SchedulerConformanceTests
{
    static SchedulerConfig PndmConfig() => SchedulerConfig.From(ConfigJson.Load(Path.Combine(ConformanceData.ModelPath, "scheduler", "scheduler_config.json")));

    // The null-text notebook's DDIM: DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule='scaled_linear',
    // clip_sample=False, set_alpha_to_one=False, steps_offset=1).
    static SchedulerConfig DdimConfig() => new(BetaStart: 0.00085, BetaEnd: 0.012, BetaSchedule: "scaled_linear",
        ClipSample: false, SetAlphaToOne: false, StepsOffset: 1, ClassName: "DDIMScheduler");

    [Fact]
    public void Alphas_cumprod_equal_the_reference()
    {
        using var golden = new SafetensorsFile(ConformanceData.Golden("scheduler_pndm.safetensors"));
        using var expected = golden.Read("alphas_cumprod");
        Assert.Equal(expected.data<float>().ToArray(), new NoiseSchedule(PndmConfig()).AlphasCumprod);
    }

    [Fact]
    public void Alphas_cumprod_agree_with_the_torch_based_reference_to_float32_rounding()
    {
        // diffusers 0.4.0 (the null-text reference) computes the table with torch ops, whose summation order differs
        // from numpy's in the last bits: at most ~1.3e-6 relative.
        using var golden = new SafetensorsFile(ConformanceData.Golden("scheduler_ddim.safetensors"));
        var expected = golden.Read("alphas_cumprod").data<float>().ToArray();
        var ours = new NoiseSchedule(DdimConfig()).AlphasCumprod;
        for (int i = 0; i < expected.Length; i++)
            Assert.True(Math.Abs(expected[i] - ours[i]) <= 3e-6 * expected[i], $"alphas_cumprod[{i}]: {ours[i]} vs {expected[i]}");
    }

    [Theory]
    [InlineData("pndm", 50)]
    [InlineData("pndm", 10)]
    [InlineData("ddim", 50)]
    [InlineData("ddim", 10)]
    public void Steps_equal_the_reference(string name, int steps)
    {
        using var golden = new SafetensorsFile(ConformanceData.Golden($"scheduler_{name}.safetensors"));
        var scheduler = Schedulers.Schedulers.Create(name, name == "pndm" ? PndmConfig() : DdimConfig(), steps);
        using var timesteps = golden.Read($"{name}_{steps}/timesteps");
        Assert.Equal(timesteps.data<long>().ToArray(), scheduler.Timesteps.Select(t => (long)t).ToArray());

        using var outputs = golden.Read($"{name}_{steps}/model_outputs");
        using var expected = golden.Read($"{name}_{steps}/prev_samples");
        var sample = golden.Read($"{name}_{steps}/sample_in");
        for (int i = 0; i < scheduler.Timesteps.Count; i++)
        {
            var next = scheduler.Step(outputs[i], i, sample);
            TensorAssert.Close(expected[i], next, 1e-5, $"{name} {steps} steps, sample after step {i}");
            sample.Dispose();
            // Continue from the reference sample so one step's rounding does not carry into the next comparison.
            sample = expected[i].clone();
        }
        sample.Dispose();
    }

    [Fact]
    public void Ddim_final_alpha_is_alphas_cumprod_0()
    {
        using var golden = new SafetensorsFile(ConformanceData.Golden("scheduler_ddim.safetensors"));
        using var final = golden.Read("final_alpha_cumprod");
        var scheduler = new DdimScheduler(DdimConfig(), 10);
        Assert.Equal(final.data<float>()[0], scheduler.FinalAlphaCumprod);
    }
}
