using PromptToPrompt.Loading;
using PromptToPrompt.Schedulers;
using static TorchSharp.torch;

namespace PromptToPrompt.Tests.Unit;

public class SchedulerTests
{
    static SchedulerConfig Sd(string prediction = "epsilon", bool alphaToOne = false) => new(BetaStart: 0.00085, BetaEnd: 0.012, BetaSchedule: "scaled_linear",
        SkipPrkSteps: true, StepsOffset: 1, SetAlphaToOne: alphaToOne, ClipSample: false, PredictionType: prediction);

    [Fact]
    public void Euler_and_dpm_timesteps_follow_diffusers_linspace_spacing()
    {
        Assert.Equal(new double[] { 999, 888, 777, 666, 555, 444, 333, 222, 111, 0 }, Schedulers.Schedulers.Create("euler", Sd(), 10).Timesteps);
        Assert.Equal(new double[] { 999, 899, 799, 699, 599, 500, 400, 300, 200, 100 }, Schedulers.Schedulers.Create("dpmpp-2m", Sd(), 10).Timesteps);
        Assert.Equal(new double[] { 901, 801, 701, 601, 501, 401, 301, 201, 101, 1 }, Schedulers.Schedulers.Create("ddim", Sd(), 10).Timesteps);
    }

    /// <summary>
    /// Given the exact noise (or v) that produced a sample from a known clean image x0, every deterministic sampler
    /// must walk back to x0: the model output is then constant along the DDIM/ODE trajectory, which each update
    /// rule (including multistep combinations) integrates exactly. The ancestral sampler's fresh noise moves the
    /// trajectory, but the oracle predicts x0 exactly from wherever it is, and the last step (sigma_up = 0) lands on it.
    /// </summary>
    [Theory]
    [InlineData("pndm", "epsilon")]
    [InlineData("ddim", "epsilon")]
    [InlineData("euler", "epsilon")]
    [InlineData("euler-a", "epsilon")]
    [InlineData("dpmpp-2m", "epsilon")]
    [InlineData("pndm", "v_prediction")]
    [InlineData("ddim", "v_prediction")]
    [InlineData("euler", "v_prediction")]
    [InlineData("euler-a", "v_prediction")]
    [InlineData("dpmpp-2m", "v_prediction")]
    public void Oracle_model_output_recovers_the_clean_sample(string name, string prediction)
    {
        // set_alpha_to_one makes the DDPM-form schedulers end at t = 0 exactly (x0), as the sigma-form ones do.
        var config = Sd(prediction, alphaToOne: true);
        var scheduler = Schedulers.Schedulers.Create(name, config, 20);
        var alphas = new NoiseSchedule(config).AlphasCumprod;
        using var generator = new Generator(7);
        var x0 = randn([1, 4, 8, 8], generator: generator).clamp(-2, 2);
        var eps = randn([1, 4, 8, 8], generator: generator);
        var x = eps * scheduler.InitNoiseSigma;
        using var stepNoise = new Generator(8);
        for (int i = 0; i < scheduler.Timesteps.Count; i++)
        {
            double t = scheduler.Timesteps[i];
            // alpha at a possibly fractional timestep, through the sigma interpolation the Euler scheduler uses.
            double sigma = NoiseSchedule.Interp(t, alphas.Select(a => Math.Sqrt((1 - (double)a) / a)).ToArray());
            double a = 1 / (1 + sigma * sigma);
            var input = scheduler.ScaleModelInput(x, i);
            // The input is sqrt(a) x0 + sqrt(1-a) e for the DDPM-form schedulers; recover e from it.
            var e = (input - Math.Sqrt(a) * x0) / Math.Sqrt(1 - a);
            var output = prediction == "epsilon" ? e : Math.Sqrt(a) * e - Math.Sqrt(1 - a) * x0;
            x = scheduler.Step(output, i, x, stepNoise);
        }
        double err = (x - x0).abs().max().item<float>();
        // PLMS combines raw model outputs of different timesteps; v (unlike epsilon) changes along the trajectory, so
        // diffusers' PNDM is only approximately exact for v-prediction.
        double bound = name == "pndm" && prediction == "v_prediction" ? 2e-2 : 2e-3;
        Assert.True(err < bound, $"{name}/{prediction}: final sample differs from x0 by {err}");
    }

    [Fact]
    public void Unknown_scheduler_and_bad_step_counts_are_user_errors()
    {
        Assert.Contains("pndm, ddim, euler, euler-a, dpmpp-2m", Assert.Throws<UserError>(() => Schedulers.Schedulers.Create("lms", Sd(), 10)).Message);
        Assert.Contains("steps must be between 1 and 1000", Assert.Throws<UserError>(() => Schedulers.Schedulers.Create("ddim", Sd(), 0)).Message);
        // Leading spacing with steps_offset 1: 1000 steps would start at timestep 1000, past the last trained one (999).
        Assert.Contains("ddim with this model's timestep spacing takes at most 999 steps; got 1000",
            Assert.Throws<UserError>(() => Schedulers.Schedulers.Create("ddim", Sd(), 1000)).Message);
        Assert.Equal(999.0, Schedulers.Schedulers.Create("ddim", Sd(), 999).Timesteps[0]);
    }
}
