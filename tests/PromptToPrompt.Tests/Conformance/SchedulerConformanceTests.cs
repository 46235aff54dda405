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

/// <summary>
/// Euler ancestral against diffusers 0.12.0 on the InstructPix2Pix scheduler config (conformance README 7.2):
/// timesteps exactly; the training table and the sigmas to 5e-7 relative (diffusers 0.12 builds the table with
/// torch.linspace and torch.cumprod, and PyTorch 1.13's linspace kernel rounds some betas one ulp away from today's
/// libtorch: we measured 2.4e-7 at most, from timestep 273 on); the noise drawn inside each step exactly (PyTorch's CPU
/// generator, seeded as the reference seeds it); each step's sample to 3e-5 (8 float32 ulps of values up to ~50,
/// continuing from the reference sample at every step; a wrong coefficient moves it by more than 1e-3).
/// </summary>
[Collection("conformance")]
public class EulerAncestralConformanceTests
{
    static SchedulerConfig Config() => SchedulerConfig.From(ConfigJson.Load(Path.Combine(ConformanceData.Ip2pPath, "scheduler", "scheduler_config.json")));

    [Fact]
    public void The_model_config_selects_euler_ancestral_and_its_training_table_agrees()
    {
        Assert.Equal("euler-a", Schedulers.Schedulers.DefaultFor(Config()));
        using var golden = new SafetensorsFile(ConformanceData.Golden("scheduler_euler_ancestral.safetensors"));
        var schedule = new NoiseSchedule(Config(), torchArithmetic: true);
        TensorAssert.RelativelyClose(golden.Read("alphas_cumprod").data<float>().ToArray(), schedule.AlphasCumprod.Select(a => (double)a), 5e-7, "alphas_cumprod");
        TensorAssert.RelativelyClose(golden.Read("train_sigmas").data<float>().ToArray(), schedule.Sigmas().Reverse().Append(0), 5e-7, "training sigmas");
    }

    [Theory]
    [InlineData(10)]
    [InlineData(50)]
    public void Steps_and_their_noise_equal_the_reference(int steps)
    {
        using var golden = new SafetensorsFile(ConformanceData.Golden("scheduler_euler_ancestral.safetensors"));
        var scheduler = (EulerAncestralDiscreteScheduler)Schedulers.Schedulers.Create("euler-a", Config(), steps);
        string run = $"euler_a_{steps}";
        Assert.Equal(golden.Read($"{run}/timesteps").data<double>().ToArray(), scheduler.Timesteps);
        var sigmas = golden.Read($"{run}/sigmas").data<float>().ToArray();
        TensorAssert.RelativelyClose(sigmas, scheduler.Sigmas, 5e-7, "sigmas");
        TensorAssert.RelativelyClose(sigmas[..1], [scheduler.InitNoiseSigma], 5e-7, "init_noise_sigma");

        using var outputs = golden.Read($"{run}/model_outputs");
        using var scaled = golden.Read($"{run}/scaled_model_inputs");
        using var noises = golden.Read($"{run}/noises");
        using var expected = golden.Read($"{run}/prev_samples");
        using var generator = new TorchSharp.torch.Generator((ulong)(600 + steps), CPU);
        using var check = new TorchSharp.torch.Generator((ulong)(600 + steps), CPU);
        var sample = golden.Read($"{run}/sample_in");
        for (int i = 0; i < steps; i++)
        {
            TensorAssert.Close(scaled[i], scheduler.ScaleModelInput(sample, i), 1e-5, $"{steps} steps, scaled input {i}");
            // The same generator state the step draws from: its noise equals the reference's draw bit for bit.
            TensorAssert.Equal(noises[i], randn([1, 4, 8, 8], ScalarType.Float32, CPU, generator: check), $"{steps} steps, noise of step {i}");
            var next = scheduler.Step(outputs[i], i, sample, generator);
            TensorAssert.Close(expected[i], next, 3e-5, $"{steps} steps, sample after step {i}");
            sample.Dispose();
            sample = expected[i].clone();
        }
        sample.Dispose();
    }
}
