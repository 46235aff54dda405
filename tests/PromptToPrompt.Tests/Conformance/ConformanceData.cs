using System.Text.Json;
using PromptToPrompt.Loading;
using TorchSharp;
using static TorchSharp.torch;

namespace PromptToPrompt.Tests.Conformance;

/// <summary>
/// Locates the reference data (../shared/conformance beside the repository, or P2P_CONFORMANCE_DIR) and loads the
/// tiny model once per test run. When the data is absent every conformance test fails with a message saying so.
/// </summary>
public sealed class ConformanceData : IDisposable
{
    public static string? Directory { get; } = Locate();

    static string? Locate()
    {
        var env = Environment.GetEnvironmentVariable("P2P_CONFORMANCE_DIR");
        if (!string.IsNullOrEmpty(env)) return System.IO.Directory.Exists(env) ? env : null;
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            var candidate = Path.Combine(dir.FullName, "..", "shared", "conformance");
            if (File.Exists(Path.Combine(dir.FullName, "PromptToPrompt.slnx")))
                return System.IO.Directory.Exists(candidate) ? Path.GetFullPath(candidate) : null;
        }
        return null;
    }

    public static string Require()
    {
        if (Directory is null)
            throw new InvalidOperationException(
                "Conformance data is absent: expected ../shared/conformance beside the repository, or a folder named by " +
                "the P2P_CONFORMANCE_DIR environment variable. These tests compare against the reference implementation and cannot run without it.");
        return Directory;
    }

    public static string Golden(string name) => Path.Combine(Require(), "golden", name);
    public static string ModelPath => Path.Combine(Require(), "tiny-sd");

    readonly Lazy<StableDiffusionModel> _model = new(() => StableDiffusionModel.Load(ModelPath, ModelPlacement.Cpu));
    public StableDiffusionModel Model => _model.Value;

    public static string Ip2pPath => Path.Combine(Require(), "tiny-ip2p");
    public static string SdxlPath => Path.Combine(Require(), "tiny-sdxl");
    readonly Lazy<StableDiffusionModel> _ip2p = new(() => StableDiffusionModel.Load(Ip2pPath, ModelPlacement.Cpu));
    /// <summary>The tiny InstructPix2Pix model (README section 7.1).</summary>
    public StableDiffusionModel Ip2pModel => _ip2p.Value;
    readonly Lazy<StableDiffusionModel> _sdxl = new(() => StableDiffusionModel.Load(SdxlPath, ModelPlacement.Cpu));
    /// <summary>The tiny SDXL model (README section 9.1).</summary>
    public StableDiffusionModel SdxlModel => _sdxl.Value;

    public static JsonElement Manifest(string relativeJson) =>
        JsonDocument.Parse(File.ReadAllText(Golden(relativeJson))).RootElement;

    public void Dispose()
    {
        if (_model.IsValueCreated) _model.Value.Dispose();
        if (_ip2p.IsValueCreated) _ip2p.Value.Dispose();
        if (_sdxl.IsValueCreated) _sdxl.Value.Dispose();
    }
}

[CollectionDefinition("conformance")]
public sealed class ConformanceCollection : ICollectionFixture<ConformanceData>;

/// <summary>Tensor comparisons with messages that say how far apart the values are.</summary>
public static class TensorAssert
{
    public static double MaxAbsDiff(Tensor expected, Tensor actual)
    {
        Assert.True(expected.shape.SequenceEqual(actual.shape), $"shape [{string.Join(",", expected.shape)}] expected, got [{string.Join(",", actual.shape)}]");
        using var d = (expected.to(ScalarType.Float64) - actual.to(ScalarType.Float64)).abs().max();
        return d.item<double>();
    }

    /// <summary>Asserts max |expected - actual| &lt;= maxAbs and returns the difference.</summary>
    public static double Close(Tensor expected, Tensor actual, double maxAbs, string what)
    {
        double diff = MaxAbsDiff(expected, actual);
        using var m = expected.to(ScalarType.Float64).abs().max();
        Assert.True(diff <= maxAbs, $"{what}: max |diff| = {diff:E3} exceeds {maxAbs:E1} (reference max |x| = {m.item<double>():G4})");
        return diff;
    }

    /// <summary>Asserts |expected - actual| &lt;= relative * |expected| element by element.</summary>
    public static void RelativelyClose(float[] expected, IEnumerable<double> actual, double relative, string what)
    {
        var ours = actual.ToArray();
        Assert.Equal(expected.Length, ours.Length);
        for (int i = 0; i < expected.Length; i++)
            Assert.True(Math.Abs(expected[i] - ours[i]) <= relative * Math.Abs(expected[i]), $"{what}[{i}]: {ours[i]:R} vs {expected[i]:R}");
    }

    public static void Equal(Tensor expected, Tensor actual, string what)
    {
        Assert.Equal(expected.shape, actual.shape);
        Assert.True(MaxAbsDiff(expected, actual) == 0, $"{what}: tensors differ (max |diff| {MaxAbsDiff(expected, actual):E3})");
    }
}
