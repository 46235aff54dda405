using PromptToPrompt.Loading;
using TorchSharp;
using static TorchSharp.torch;

namespace PromptToPrompt.Tests.Unit;

/// <summary>The --device and --dtype options: what they accept and what they tell a user who asks for too much.</summary>
public class ModelPlacementTests
{
    [Theory]
    [InlineData("cpu", "float32", ScalarType.Float32)]
    [InlineData("CPU", "fp16", ScalarType.Float16)]
    [InlineData(" cpu ", "bf16", ScalarType.BFloat16)]
    public void Cpu_placements_parse(string device, string dtype, ScalarType expected)
    {
        var placement = ModelPlacement.Parse(device, dtype);
        Assert.Equal(DeviceType.CPU, placement.Device.type);
        Assert.Equal(expected, placement.DType);
    }

    [Theory]
    [InlineData("gpu", "float32", "Unknown device 'gpu'. Use cpu, cuda or cuda:N.")]
    [InlineData("cpu:1", "float32", "Unknown device 'cpu:1'. Use cpu, cuda or cuda:N.")]
    [InlineData("cuda:x", "float32", "Unknown device 'cuda:x'. Use cpu, cuda or cuda:N.")]
    [InlineData("cpu", "float8", "Unknown dtype 'float8'. Use float32, float16 or bfloat16.")]
    public void Unknown_devices_and_dtypes_are_refused_by_name(string device, string dtype, string message) =>
        Assert.Equal(message, Assert.Throws<UserError>(() => ModelPlacement.Parse(device, dtype)).Message);

    [Fact]
    public void Cuda_without_a_cuda_build_names_the_package_to_install()
    {
        if (cuda.is_available())
        {
            Assert.Equal(DeviceType.CUDA, ModelPlacement.Parse("cuda", "float16").Device.type);
            var count = cuda.device_count();
            Assert.StartsWith($"Device 'cuda:{count}' does not exist: this machine has {count} CUDA device(s)",
                Assert.Throws<UserError>(() => ModelPlacement.Parse($"cuda:{count}", "float16")).Message);
        }
        else
            foreach (var device in new[] { "cuda", "cuda:1" })
                Assert.Equal($"Device '{device}' was requested but CUDA is not available here: build with -p:TorchBackend=cuda (TorchSharp's CUDA " +
                             "packages instead of TorchSharp-cpu; see Set-up in the README) on a machine with an NVIDIA driver, or use --device cpu.",
                    Assert.Throws<UserError>(() => ModelPlacement.Parse(device, "float32")).Message);
    }

    /// <summary>
    /// The GPU build cannot run here (no CUDA packages or driver), so what is tested is its effect on what restore
    /// fetches: the package references MSBuild evaluates with and without -p:TorchBackend=cuda.
    /// </summary>
    [Fact]
    public void TorchBackend_cuda_swaps_the_libtorch_package()
    {
        var project = Path.GetFullPath(Path.Combine(ShippedModelTests.Folder, "..", "..", "src", "PromptToPrompt", "PromptToPrompt.csproj"));
        static (int Code, string Output) MsBuild(params string[] args)
        {
            var psi = new System.Diagnostics.ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true };
            foreach (var a in args.Prepend("msbuild")) psi.ArgumentList.Add(a);
            using var p = System.Diagnostics.Process.Start(psi)!;
            var output = p.StandardOutput.ReadToEndAsync();
            var error = p.StandardError.ReadToEndAsync();
            p.WaitForExit();
            return (p.ExitCode, output.Result + error.Result);
        }
        List<string> Packages(params string[] properties)
        {
            var (code, output) = MsBuild([project, "-getItem:PackageReference", .. properties]);
            Assert.True(code == 0, output);
            return System.Text.Json.Nodes.JsonNode.Parse(output)!["Items"]!["PackageReference"]!.AsArray().Select(i => i!["Identity"]!.GetValue<string>()).ToList();
        }
        Assert.Contains("TorchSharp-cpu", Packages());
        var cuda = Packages("-p:TorchBackend=cuda");
        Assert.DoesNotContain("TorchSharp-cpu", cuda);
        Assert.Contains(OperatingSystem.IsWindows() ? "TorchSharp-cuda-windows" : "TorchSharp-cuda-linux", cuda);
        var (badCode, badOutput) = MsBuild(project, "-t:P2PCheckTorchBackend", "-p:TorchBackend=rocm");
        Assert.NotEqual(0, badCode);
        Assert.Contains("TorchBackend 'rocm' is unknown: use cpu (the default) or cuda.", badOutput);
    }
}
