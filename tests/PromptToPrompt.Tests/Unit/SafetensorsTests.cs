using System.Text;
using PromptToPrompt.Loading;
using static TorchSharp.torch;

namespace PromptToPrompt.Tests.Unit;

public class SafetensorsTests
{
    [Fact]
    public void Round_trip_keeps_dtypes_shapes_values_and_metadata()
    {
        using var dir = new TempDir();
        var path = dir.File("t.safetensors");
        var tensors = new Dictionary<string, Tensor>
        {
            ["f32"] = arange(12, ScalarType.Float32).reshape(3, 4) / 7,
            ["f16"] = (arange(6, ScalarType.Float32) / 3).to(ScalarType.Float16),
            ["bf16"] = (arange(5, ScalarType.Float32) - 2.5).to(ScalarType.BFloat16),
            ["i64"] = arange(4, ScalarType.Int64).reshape(1, 4),
            ["empty"] = zeros(0, 3),
        };
        SafetensorsFile.Write(path, tensors, new Dictionary<string, string> { ["seed"] = "8888" });
        using var file = new SafetensorsFile(path);
        Assert.Equal("8888", file.Metadata["seed"]);
        Assert.Equal(new[] { "F32", "F16", "BF16", "I64", "F32" }, new[] { "f32", "f16", "bf16", "i64", "empty" }.Select(k => file.Entries[k].DType));
        foreach (var (name, expected) in tensors)
        {
            using var actual = file.Read(name);
            Assert.Equal(expected.dtype, actual.dtype);
            Assert.Equal(expected.shape, actual.shape);
            if (expected.numel() > 0) // (TorchSharp cannot enumerate an empty tensor; its shape was checked above)
                Assert.Equal(expected.to(ScalarType.Float64).data<double>().ToArray(), actual.to(ScalarType.Float64).data<double>().ToArray());
        }
    }

    [Fact]
    public void Truncated_file_is_refused_with_a_message()
    {
        using var dir = new TempDir();
        var path = dir.File("t.safetensors");
        SafetensorsFile.Write(path, new Dictionary<string, Tensor> { ["w"] = ones(100) });
        var bytes = File.ReadAllBytes(path);
        File.WriteAllBytes(path, bytes[..^10]);
        var e = Assert.Throws<UserError>(() => new SafetensorsFile(path));
        Assert.Contains("truncated or corrupt", e.Message);
        Assert.Contains("'w'", e.Message);
    }

    [Theory]
    [InlineData("not json at all")]
    [InlineData("{\"w\": {\"dtype\": \"F32\", \"shape\": [4], \"data_offsets\": [0, 8]}}")]
    [InlineData("{\"w\": {\"dtype\": \"Q4\", \"shape\": [4], \"data_offsets\": [0, 16]}}")]
    // Names given twice (found by FuzzTests, seed ajqn9mqF-6w3): a tensor, a metadata key, a field of a tensor.
    [InlineData("{\"w\": {\"dtype\": \"F32\", \"shape\": [4], \"data_offsets\": [0, 16]}, \"w\": {\"dtype\": \"F32\", \"shape\": [4], \"data_offsets\": [0, 16]}}")]
    [InlineData("{\"__metadata__\": {\"k\": \"a\", \"k\": \"b\"}, \"w\": {\"dtype\": \"F32\", \"shape\": [4], \"data_offsets\": [0, 16]}}")]
    [InlineData("{\"w\": {\"dtype\": \"F32\", \"dtype\": \"F16\", \"shape\": [4], \"data_offsets\": [0, 16]}}")]
    public void Corrupt_header_is_refused_with_a_message(string header)
    {
        using var dir = new TempDir();
        var path = dir.File("bad.safetensors");
        var json = Encoding.UTF8.GetBytes(header);
        using (var fs = File.Create(path))
        {
            fs.Write(BitConverter.GetBytes((long)json.Length));
            fs.Write(json);
            fs.Write(new byte[16]);
        }
        var e = Assert.Throws<UserError>(() => new SafetensorsFile(path));
        Assert.Contains(path, e.Message);
    }

    [Fact]
    public void Absurd_header_length_is_refused()
    {
        using var dir = new TempDir();
        var path = dir.File("bad.safetensors");
        File.WriteAllBytes(path, BitConverter.GetBytes(long.MaxValue).Concat(new byte[8]).ToArray());
        Assert.Contains("header length", Assert.Throws<UserError>(() => new SafetensorsFile(path)).Message);
    }

    [Fact]
    public void A_failed_write_leaves_the_existing_file_untouched()
    {
        using var dir = new TempDir();
        var path = dir.File("keep.txt");
        File.WriteAllText(path, "precious");
        Assert.Throws<InvalidOperationException>(() => AtomicFile.Write(path, s => { s.WriteByte(1); throw new InvalidOperationException("boom"); }));
        Assert.Equal("precious", File.ReadAllText(path));
        Assert.Single(Directory.GetFiles(dir.Path));
    }
}
