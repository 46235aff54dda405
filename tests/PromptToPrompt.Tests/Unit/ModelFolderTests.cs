using System.Text.Json.Nodes;
using PromptToPrompt.Loading;
using PromptToPrompt.Tests.Conformance;
using static TorchSharp.torch;

namespace PromptToPrompt.Tests.Unit;

/// <summary>Loading diffusers folders: variants, shards, and the errors a user can cause.</summary>
[Collection("conformance")]
public class ModelFolderTests(ConformanceData data)
{
    static TempDir CopyOfTinyModel()
    {
        var dir = new TempDir();
        foreach (var file in Directory.GetFiles(ConformanceData.ModelPath, "*", SearchOption.AllDirectories))
        {
            var target = Path.Combine(dir.Path, Path.GetRelativePath(ConformanceData.ModelPath, file));
            Directory.CreateDirectory(Path.GetDirectoryName(target)!);
            File.Copy(file, target);
            File.SetAttributes(target, FileAttributes.Normal);
        }
        return dir;
    }

    static void AssertSameWeights(TorchSharp.torch.nn.Module expected, TorchSharp.torch.nn.Module actual, double tolerance = 0)
    {
        var e = expected.named_parameters().ToDictionary(p => p.name, p => p.parameter);
        foreach (var (name, p) in actual.named_parameters())
            Assert.True(e[name].allclose(p, 0, tolerance), name);
    }

    [Fact]
    public void Sharded_weights_load_through_their_index()
    {
        using var dir = CopyOfTinyModel();
        var unetDir = Path.Combine(dir.Path, "unet");
        var full = Path.Combine(unetDir, "diffusion_pytorch_model.safetensors");
        var weightMap = new JsonObject();
        using (var file = new SafetensorsFile(full))
        {
            var keys = file.Entries.Keys.OrderBy(k => k).ToList();
            for (int shard = 0; shard < 2; shard++)
            {
                var name = $"diffusion_pytorch_model-0000{shard + 1}-of-00002.safetensors";
                var part = keys.Where((_, i) => i % 2 == shard).ToList();
                SafetensorsFile.Write(Path.Combine(unetDir, name), part.ToDictionary(k => k, file.Read));
                foreach (var k in part) weightMap[k] = name;
            }
        }
        File.Delete(full);
        File.Delete(Path.Combine(unetDir, "diffusion_pytorch_model.fp16.safetensors"));
        File.WriteAllText(Path.Combine(unetDir, "diffusion_pytorch_model.safetensors.index.json"), new JsonObject { ["weight_map"] = weightMap }.ToJsonString());
        using var model = StableDiffusionModel.Load(dir.Path, ModelPlacement.Cpu);
        AssertSameWeights(data.Model.UNet, model.UNet);
    }

    [Fact]
    public void An_fp16_only_folder_loads_its_fp16_variant()
    {
        using var dir = CopyOfTinyModel();
        File.Delete(Path.Combine(dir.Path, "vae", "diffusion_pytorch_model.safetensors"));
        using var model = StableDiffusionModel.Load(dir.Path, ModelPlacement.Cpu);
        // float16 holds ~3 significant digits: the weights agree to half-precision rounding, not exactly.
        AssertSameWeights(data.Model.Vae, model.Vae, 1e-3);
        Assert.Contains("fp16", WeightLoader.ComponentFiles(Path.Combine(dir.Path, "vae"), "diffusion_pytorch_model", preferFp16: false)[0]);
    }

    [Fact]
    public void Half_precision_placement_prefers_the_fp16_variant()
    {
        var files = WeightLoader.ComponentFiles(Path.Combine(ConformanceData.ModelPath, "unet"), "diffusion_pytorch_model", preferFp16: true);
        Assert.EndsWith("diffusion_pytorch_model.fp16.safetensors", files.Single());
    }

    [Fact]
    public void Bfloat16_placement_runs_the_unet_close_to_float32()
    {
        using var model = StableDiffusionModel.Load(ConformanceData.ModelPath, new ModelPlacement(CPU, ScalarType.BFloat16));
        Assert.Equal(ScalarType.BFloat16, model.UNet.parameters().First().dtype);
        using var golden = new SafetensorsFile(ConformanceData.Golden("unet.safetensors"));
        using var _ = no_grad();
        using var output = model.UNet.forward(golden.Read("latent").to(ScalarType.BFloat16), tensor(981L), golden.Read("context").to(ScalarType.BFloat16));
        using var expected = golden.Read("noise_pred_t981");
        // bfloat16 keeps 8 bits of mantissa: errors of a few percent of the output range are expected, gross errors are not.
        double diff = TensorAssert.MaxAbsDiff(expected, output.to(ScalarType.Float32));
        Assert.True(diff < 0.25, $"bfloat16 UNet differs from float32 reference by {diff}");
    }

    [Fact]
    public void Missing_component_folder_names_the_folder()
    {
        using var dir = CopyOfTinyModel();
        Directory.Delete(Path.Combine(dir.Path, "vae"), recursive: true);
        var e = Assert.Throws<UserError>(() => StableDiffusionModel.Load(dir.Path, ModelPlacement.Cpu));
        Assert.Contains(Path.Combine(dir.Path, "vae"), e.Message);
        Assert.Contains("incomplete", e.Message);
    }

    [Fact]
    public void Corrupt_weights_are_reported_not_thrown_as_a_crash()
    {
        using var dir = CopyOfTinyModel();
        var path = Path.Combine(dir.Path, "text_encoder", "model.safetensors");
        File.WriteAllBytes(path, File.ReadAllBytes(path)[..1000]);
        var e = Assert.Throws<UserError>(() => StableDiffusionModel.Load(dir.Path, ModelPlacement.Cpu));
        Assert.Contains("model.safetensors", e.Message);
        Assert.Contains("truncated or corrupt", e.Message);
    }

    [Fact]
    public void Weights_of_another_model_name_the_missing_keys()
    {
        using var dir = CopyOfTinyModel();
        var path = Path.Combine(dir.Path, "vae", "diffusion_pytorch_model.safetensors");
        using (var file = new SafetensorsFile(path))
        {
            var kept = file.Entries.Keys.Where(k => !k.StartsWith("decoder.conv_out")).ToDictionary(k => k, file.Read);
            file.Dispose();
            SafetensorsFile.Write(path, kept);
        }
        var e = Assert.Throws<UserError>(() => StableDiffusionModel.Load(dir.Path, ModelPlacement.Cpu));
        Assert.Contains("decoder.conv_out.", e.Message);
        Assert.Contains("missing", e.Message);
    }

    [Fact]
    public void Unsupported_config_is_refused_by_name()
    {
        using var dir = CopyOfTinyModel();
        var path = Path.Combine(dir.Path, "unet", "config.json");
        var config = JsonNode.Parse(File.ReadAllText(path))!.AsObject();
        // text_time (SDXL) is read; the other added conditionings (Kandinsky's, DeepFloyd's) are not.
        config["addition_embed_type"] = "text_image";
        File.WriteAllText(path, config.ToJsonString());
        var e = Assert.Throws<UserError>(() => StableDiffusionModel.Load(dir.Path, ModelPlacement.Cpu));
        Assert.Contains("addition_embed_type 'text_image' is not supported", e.Message);
    }

    [Fact]
    public void Pickle_weights_are_refused_with_the_fix()
    {
        using var dir = CopyOfTinyModel();
        foreach (var f in Directory.GetFiles(Path.Combine(dir.Path, "unet"), "*.safetensors")) File.Delete(f);
        File.WriteAllText(Path.Combine(dir.Path, "unet", "diffusion_pytorch_model.bin"), "pickle");
        var e = Assert.Throws<UserError>(() => StableDiffusionModel.Load(dir.Path, ModelPlacement.Cpu));
        Assert.Contains("Convert them to .safetensors", e.Message);
    }

    [Fact]
    public void A_folder_without_model_index_is_refused()
    {
        var e = Assert.Throws<UserError>(() => StableDiffusionModel.Load(Path.Combine(ConformanceData.ModelPath, "unet"), ModelPlacement.Cpu));
        Assert.Contains("model_index.json", e.Message);
    }
}
