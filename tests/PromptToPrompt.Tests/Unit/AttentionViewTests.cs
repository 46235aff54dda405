using System.Text.Json;
using PromptToPrompt.Control;
using PromptToPrompt.Imaging;
using PromptToPrompt.Loading;
using PromptToPrompt.Models;
using PromptToPrompt.Pipelines;
using PromptToPrompt.Tests.Conformance;
using static TorchSharp.torch;

namespace PromptToPrompt.Tests.Unit;

[Collection("conformance")]
public class AttentionViewTests(ConformanceData data)
{
    (AttentionStore Store, GenerationResult Result) Run(AttentionViewOptions views, int steps = 4, int width = 256, int height = 256)
    {
        var store = new AttentionStore(1, views.ForRun(data.Model, width, height, steps).StoreSettings);
        var pipeline = new StableDiffusionPipeline(data.Model);
        var result = pipeline.Generate(new GenerationRequest
        {
            Prompts = ["a painting of a squirrel eating a burger"], Steps = steps, Seed = 3, Width = width, Height = height, Scheduler = "ddim",
        }, null, store);
        return (store, result);
    }

    /// <summary>Records the query grid of every attention call; never asks for probabilities.</summary>
    sealed class GridRecorder : IAttentionHook
    {
        public Dictionary<AttentionLayer, (int Height, int Width)> Seen { get; } = [];
        public bool Needs(in AttentionCall call) { Seen[call.Layer] = (call.Height, call.Width); return false; }
        public Tensor Edit(in AttentionCall call, Tensor probabilities) => probabilities;
    }

    [Theory]
    [InlineData(64, 64)]
    [InlineData(13, 10)]
    public void Query_grids_are_known_before_the_run(int latentHeight, int latentWidth)
    {
        var unet = data.Model.UNet;
        var recorder = new GridRecorder();
        using (no_grad())
        using (unet.Hooks.Use(recorder))
        using (var latents = randn(1, 4, latentHeight, latentWidth))
        using (var context = zeros(1, 77, 32))
            unet.forward(latents, tensor(500), context).Dispose();
        Assert.Equal(unet.AttentionLayers.Count, recorder.Seen.Count);
        foreach (var layer in unet.AttentionLayers)
            Assert.Equal(recorder.Seen[layer], unet.QueryGrid(layer, latentHeight, latentWidth));
    }

    [Fact]
    public void The_grid_follows_the_image_size_and_defaults_to_the_local_blend_grid()
    {
        var square = new AttentionViewOptions();
        Assert.Equal((16, 16), square.ForRun(data.Model, 512, 512, 10).Grid);          // the reference's res 16 at 512x512
        Assert.Equal((32, 32), (square with { Resolution = 32 }).ForRun(data.Model, 512, 512, 10).Grid);
        Assert.Equal((8, 12), square.ForRun(data.Model, 384, 256, 10).Grid);          // 256 high, 384 wide
        Assert.Equal((16, 24), (square with { Resolution = 16 }).ForRun(data.Model, 384, 256, 10).Grid);
        Assert.Equal((4, 6), (square with { From = [UNetPlace.Mid] }).ForRun(data.Model, 384, 256, 10).Grid);
        var error = Assert.Throws<UserError>(() => (square with { Resolution = 12 }).ForRun(data.Model, 384, 256, 10));
        Assert.Equal("--res 12: no cross-attention layer in up, down has a query grid with 12 on its shorter side at 384x256 pixels. " +
                     "Use one of: --res 32 (32x48), --res 16 (16x24), --res 8 (8x12).", error.Message);
    }

    [Fact]
    public void Views_of_a_wide_image_have_its_shape()
    {
        var views = new AttentionViewOptions(PerStep: [1], SelfComponents: 2, CellSize: 32);
        var (store, result) = Run(views, steps: 2, width: 192, height: 128);
        using (store)
        {
            var resolved = views.ForRun(data.Model, 192, 128, 2);
            Assert.Equal((4, 6), resolved.Grid);
            var (tensors, metadata) = AttentionReport.Tensors(store, data.Model.Tokenizer, "a painting of a squirrel eating a burger", 0, resolved);
            Assert.Equal([77L, 4, 6], tensors["cross_avg"].shape);
            Assert.Equal([77L, 4, 6], tensors["cross_step_001"].shape);
            Assert.Equal([2L, 4, 6], tensors["self_components"].shape);
            Assert.Equal("4x6", metadata["resolution"]);
            foreach (var t in tensors.Values) t.Dispose();
            var images = AttentionReport.Images(store, data.Model.Tokenizer, "a painting of a squirrel eating a burger", 0, result.Images[0], resolved);
            Assert.Equal(["self_components.png", "step_001.png", "tokens.png"], images.Keys.Order());
        }
    }

    [Fact]
    public void Map_cells_keep_the_image_aspect()
    {
        using var wide = rand(4, 6, 3);
        var grid = AttentionReport.TokenGrid(wide, ["a", "b", "c"], null, 60);
        Assert.Equal(3 * 60 + 4 * 8, grid.Width);                          // three cells of 60 px, 8 px gaps
        Assert.Equal(40 + BitmapFont.CellHeight + 8 + 2 * 8, grid.Height);  // 60 x 40 cells, a caption line, gaps
        using var tall = rand(6, 4, 1);
        grid = AttentionReport.TokenGrid(tall, ["a"], null, 60);
        Assert.Equal(40 + 2 * 8, grid.Width);
        Assert.Equal(60 + BitmapFont.CellHeight + 8 + 2 * 8, grid.Height);
    }

    [Fact]
    public void Step_snapshots_average_to_the_running_average()
    {
        var (store, _) = Run(new AttentionViewOptions(Resolution: 8, PerStep: [0, 1, 2, 3]));
        using (store)
        {
            using var all = store.Aggregate(8, 8, [UNetPlace.Up, UNetPlace.Down], true, 0);
            using var fromSteps = store.Aggregate(8, 8, [UNetPlace.Up, UNetPlace.Down], true, 0, [0, 1, 2, 3]);
            // Snapshots are float16 (about 3 significant digits) of maps below 1.
            TensorAssert.Close(all, fromSteps, 1e-3, "mean of per-step maps vs average");
            using var one = store.Aggregate(8, 8, [UNetPlace.Up, UNetPlace.Down], true, 0, [2]);
            Assert.True(TensorAssert.MaxAbsDiff(all, one) > 1e-4, "one step's maps should differ from the average");
            var e = Assert.Throws<UserError>(() => store.Aggregate(8, 8, [UNetPlace.Up], true, 0, [5]));
            Assert.Contains("Step 5 was not kept", e.Message);
        }
    }

    [Fact]
    public void Self_attention_components_are_orthonormal_and_sorted()
    {
        var (store, _) = Run(new AttentionViewOptions(Resolution: 8, SelfComponents: 6));
        using (store)
        {
            var (components, values) = store.SelfAttentionComponents(8, 8, [UNetPlace.Up, UNetPlace.Down], 0, 6);
            Assert.Equal([6L, 8, 8], components.shape);
            var v = components.reshape(6, 64).to(ScalarType.Float64);
            TensorAssert.Close(eye(6, dtype: ScalarType.Float64), v.matmul(v.T), 1e-5, "V V^T");
            var s = values.data<float>().ToArray();
            Assert.Equal(s.OrderByDescending(x => x).ToArray(), s);
            Assert.True(s[^1] >= 0);
        }
    }

    [Fact]
    public void Per_layer_maps_cover_every_cross_attention_layer_with_its_resolution()
    {
        var (store, result) = Run(new AttentionViewOptions(Resolution: 8, PerLayer: true), steps: 2);
        using (store)
        {
            var names = store.Layers.Where(l => l.IsCross).Select(store.LayerName).ToList();
            Assert.Equal(16, names.Count);
            Assert.Contains("down_cross_0_res_32", names);
            Assert.Contains("mid_cross_0_res_4", names);
            Assert.Contains("up_cross_8_res_32", names);
            var images = AttentionReport.Images(store, data.Model.Tokenizer, "a painting of a squirrel eating a burger", 0, result.Images[0],
                new AttentionViewOptions(Resolution: 8, PerLayer: true, CellSize: 64).ForRun(data.Model, 256, 256, 2));
            Assert.Contains("layer_up_cross_3_res_16.png", images.Keys);
            Assert.Equal(8 * 64 + 9 * 8, images["tokens.png"].Width); // 10 tokens: 8 cells of 64 px per row, 8 px gaps
        }
    }

    [Fact]
    public void Token_labels_include_start_and_end_tokens()
    {
        Assert.Equal(["<|startoftext|>", "a", "photo", "of", "a", "hedgehog", "<|endoftext|>"],
            AttentionReport.TokenLabels(data.Model.Tokenizer, "a photo of a hedgehog"));
    }

    [Fact]
    public void Heat_maps_use_viridis_normalised_by_the_maximum()
    {
        Assert.Equal(((byte)68, (byte)1, (byte)84), HeatMap.Color(0));
        Assert.Equal(((byte)253, (byte)231, (byte)37), HeatMap.Color(1));
        using var map = tensor(new float[] { 0, 0.5f, 1, 2 }, [2, 2]);
        var image = HeatMap.Render(map, 2, 2);
        Assert.Equal(new byte[] { 68, 1, 84 }, image.Pixels[..3]);
        Assert.Equal(new byte[] { 253, 231, 37 }, image.Pixels[9..12]);
    }

    [Fact]
    public void Bad_view_options_are_user_errors()
    {
        Assert.Contains("outside this run's UNet evaluations 0..10", Assert.Throws<UserError>(() => new AttentionViewOptions(PerStep: [11]).ForRun(data.Model, 256, 256, 11)).Message);
        Assert.Contains("Unknown UNet place 'middle'", Assert.Throws<UserError>(() => AttentionViewOptions.ParsePlaces("up,middle")).Message);
        var (store, _) = Run(new AttentionViewOptions(Resolution: 8), steps: 1);
        using (store)
            Assert.Contains("Stored resolutions: 32x32, 16x16, 8x8, 4x4", Assert.Throws<UserError>(() => store.Aggregate(12, 12, [UNetPlace.Up], true, 0)).Message);
    }
}

/// <summary><c>p2p attention</c> end to end against the reference's aggregated maps (case 01).</summary>
public class AttentionCliTests
{
    [Fact]
    public void Saved_maps_equal_the_reference_aggregate()
    {
        using var dir = new TempDir();
        using (var golden = new SafetensorsFile(ConformanceData.Golden("p2p/01_store_squirrel.safetensors")))
            SafetensorsFile.Write(dir.File("x.safetensors"), new Dictionary<string, Tensor> { ["latent"] = golden.Read("x_T") });
        var (code, stdout, stderr) = CliTests.RunP2P("attention", "--model", ConformanceData.ModelPath, "--prompt", "a painting of a squirrel eating a burger",
            "--steps", "10", "--scheduler", "pndm", "--latent", dir.File("x.safetensors"), "--per-step", "0,10", "--self-components", "3",
            "--save-maps", dir.File("maps.safetensors"), "--out", dir.File("out"));
        Assert.True(code == 0, stderr);
        foreach (var f in new[] { "image.png", "tokens.png", "step_000.png", "step_010.png", "self_components.png" })
            Assert.Contains(Path.Combine(dir.File("out"), f), stdout);
        using var maps = new SafetensorsFile(dir.File("maps.safetensors"));
        using var golden2 = new SafetensorsFile(ConformanceData.Golden("p2p/01_store_squirrel.safetensors"));
        using var expected = golden2.Read("attention_cross_res16_up_down")[0].permute(2, 0, 1);
        TensorAssert.Close(expected, maps.Read("cross_avg"), 1e-5, "cross_avg");
        Assert.Equal([77L, 16, 16], maps.Entries["cross_step_010"].Shape);
        Assert.Equal([3L, 16, 16], maps.Entries["self_components"].Shape);
        Assert.Contains("squirrel", JsonSerializer.Deserialize<string[]>(maps.Metadata["tokens"])!);
        Assert.Contains("cross_avg", maps.Metadata["tensors"]);
    }
}
