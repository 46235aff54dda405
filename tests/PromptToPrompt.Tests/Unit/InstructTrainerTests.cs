using PromptToPrompt.Datasets;
using PromptToPrompt.Loading;
using PromptToPrompt.Pipelines;
using PromptToPrompt.Text;
using PromptToPrompt.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace PromptToPrompt.Tests.Unit;

/// <summary>
/// <c>p2p train-instruct</c>: the widened <c>conv_in</c>, the conditioning dropout, resume, both dataset forms, and the
/// refusals. The datasets are written by <see cref="DatasetGenerator"/> on the shipped model, as <c>p2p dataset generate</c> does.
/// </summary>
public class InstructTrainerTests
{
    /// <summary>A dataset of <paramref name="records"/> records, one unfiltered pair each (2 DDIM steps).</summary>
    static void WriteDataset(string dir, int records, int? size = null)
    {
        var prompts = Path.Combine(dir, "triplets.jsonl");
        ShapeTriplets.Write(prompts, records, seed: 4);
        using var model = StableDiffusionModel.Load(ShippedModelTests.Folder, ModelPlacement.Cpu);
        new DatasetGenerator(model, new DatasetSettings { SamplesPerPrompt = 1, Keep = 1, Steps = 2, Filter = "none", Size = size })
            .Run(prompts, Path.Combine(dir, "dataset"), new Shard(0, 1));
    }

    static InstructTrainingOptions Tiny(string data, string output, double? minutes = null) =>
        new([data], output, ShippedModelTests.Folder, Seed: 5, Steps: 3, Batch: 2, Minutes: minutes, CheckpointEverySteps: 1);

    [Fact]
    public void The_widened_unet_equals_the_old_one_whatever_the_new_channels_hold()
    {
        using var model = StableDiffusionModel.Load(ShippedModelTests.Folder, ModelPlacement.Cpu);
        using var widened = InstructTrainer.Widen(model.UNet, model.LatentChannels);
        Assert.Equal(8, widened.Config.InChannels);
        using var g = new Generator(11, CPU);
        using var x = randn([2, 4, 16, 16], generator: g);
        using var image = randn([2, 4, 16, 16], generator: g) * 3;
        using var t = tensor(new float[] { 10, 700 });
        using var context = randn([2, model.Tokenizer.MaxLength, model.UNet.Config.CrossAttentionDim], generator: g);
        using var _ = no_grad();
        using var old = model.UNet.forward(x, t, context);
        using var wide = widened.forward(cat([x, image], 1), t, context);
        // Zero weights add exact zeros; only the convolution's summation order may differ (float32 rounding).
        Assert.True((old - wide).abs().max().item<float>() < 1e-5f, $"max difference {(old - wide).abs().max().item<float>()}");
        var weights = widened.named_parameters().ToDictionary(p => p.name, p => p.parameter);
        var oldWeights = model.UNet.named_parameters().ToDictionary(p => p.name, p => p.parameter);
        Assert.Equal(0f, weights["conv_in.weight"].narrow(1, 4, 4).abs().max().item<float>());
        Assert.True(weights["conv_in.weight"].narrow(1, 0, 4).eq(oldWeights["conv_in.weight"]).all().item<bool>());
        Assert.True(weights["conv_in.bias"].eq(oldWeights["conv_in.bias"]).all().item<bool>());
    }

    [Theory]
    [InlineData(2)]
    [InlineData(3)]
    public void The_deepened_unet_computes_what_the_old_one_does_until_trained(int layers)
    {
        using var model = StableDiffusionModel.Load(ShippedModelTests.Folder, ModelPlacement.Cpu);
        Assert.Equal(1, model.UNet.Config.LayersPerBlock);
        using var deeper = InstructTrainer.Deepen(model.UNet, layers, seed: 3);
        Assert.Equal(layers, deeper.Config.LayersPerBlock);
        using var g = new Generator(12, CPU);
        using var x = randn([2, 4, 16, 16], generator: g);
        using var t = tensor(new float[] { 10, 700 });
        using var context = randn([2, model.Tokenizer.MaxLength, model.UNet.Config.CrossAttentionDim], generator: g);
        using var _ = no_grad();
        using var old = model.UNet.forward(x, t, context);
        using var deep = deeper.forward(x, t, context);
        Assert.True((old - deep).abs().max().item<float>() < 1e-5f, $"max difference {(old - deep).abs().max().item<float>()}");
        // Each block gained layers - 1 ResNets (the down blocks) or as many (the up blocks), with their transformers.
        int Count(nn.Module m, string part) => m.named_parameters().Select(p => p.name).Where(n => n.Contains(part) && !n.StartsWith("mid_block")).Select(n => string.Join('.', n.Split('.').Take(4))).Distinct().Count();
        int blocks = model.UNet.Config.BlockOutChannels.Length;
        Assert.Equal(Count(model.UNet, "resnets") + 2 * blocks * (layers - 1), Count(deeper, "resnets"));
        Assert.Equal(Count(model.UNet, "attentions") + 2 * (blocks - 1) * (layers - 1), Count(deeper, "attentions"));
        // Trained, the new layers change the output: they are in the computation, not beside it.
        using (no_grad())
            foreach (var (name, p) in deeper.named_parameters().Where(p => p.name.StartsWith("up_blocks.0.resnets.1.conv2"))) p.add_(0.1);
        using var changed = deeper.forward(x, t, context);
        Assert.True((old - changed).abs().max().item<float>() > 1e-3f);
        Assert.Contains("deeper, not shallower", Assert.Throws<UserError>(() => InstructTrainer.Deepen(deeper, 1, 0)).Message);
    }

    [Fact]
    public void Dropout_drops_the_text_the_image_and_both_five_percent_each()
    {
        const int n = 100_000;
        var draws = Enumerable.Range(0, n).Select(i => InstructTrainer.Dropped((i + 0.5) / n, 0.05)).ToList();
        Assert.Equal(5000, draws.Count(d => d is { Text: true, Image: false }));
        Assert.Equal(5000, draws.Count(d => d is { Text: false, Image: true }));
        Assert.Equal(5000, draws.Count(d => d is { Text: true, Image: true }));
        Assert.Equal(85000, draws.Count(d => d is { Text: false, Image: false }));
    }

    [Fact]
    public void Training_resumes_to_the_same_model_reads_both_dataset_forms_and_saves_an_instruction_model()
    {
        using var dir = new TempDir();
        WriteDataset(dir.Path, 3);
        var data = dir.File("dataset");
        // The Parquet shards alone (as downloaded from the Hub) give the same pairs as the record folders.
        DatasetIndex.Merge(data);
        var parquetOnly = dir.File("parquet");
        Directory.CreateDirectory(Path.Combine(parquetOnly, "data"));
        foreach (var shard in Directory.GetFiles(Path.Combine(data, "data"))) File.Copy(shard, Path.Combine(parquetOnly, "data", Path.GetFileName(shard)));
        var fromFolders = DatasetIndex.ReadPairs(data);
        var fromParquet = DatasetIndex.ReadPairs(parquetOnly);
        Assert.Equal(3, fromFolders.Count);
        Assert.Equal(fromFolders.Select(p => (p.Instruction, p.Input.Pixels.Length)), fromParquet.Select(p => (p.Instruction, p.Input.Pixels.Length)));
        Assert.All(fromFolders.Zip(fromParquet), x => Assert.Equal(x.First.Edited.Pixels, x.Second.Edited.Pixels));

        var straight = dir.File("straight");
        new InstructTrainer(Tiny(data, straight)).Run();
        var resumed = dir.File("resumed");
        var logs = new List<string>();
        int runs = 0;
        do new InstructTrainer(Tiny(parquetOnly, resumed, minutes: 0), logs.Add).Run();   // one step per run
        while (!logs.Any(l => l.StartsWith("instruction model written")) && ++runs < 10);
        Assert.Equal(2, logs.Count(l => l.StartsWith("resuming")));

        using var a = StableDiffusionModel.Load(straight, ModelPlacement.Cpu);
        using var b = StableDiffusionModel.Load(resumed, ModelPlacement.Cpu);
        Assert.Equal(a.Fingerprint, b.Fingerprint);
        Assert.True(a.IsInstructPix2Pix);
        Assert.Equal("EulerAncestralDiscreteScheduler", a.Scheduler.ClassName);
        using var shipped = StableDiffusionModel.Load(ShippedModelTests.Folder, ModelPlacement.Cpu);
        Assert.Equal(shipped.Vae.Config.ScalingFactor, a.Vae.Config.ScalingFactor);
        Assert.Equal(shipped.Vae.Config.BlockOutChannels, a.Vae.Config.BlockOutChannels);
        Assert.Equal(shipped.Tokenizer.Tokenize("make the circle blue").Ids, a.Tokenizer.Tokenize("make the circle blue").Ids);
        using var edit = new InstructPix2PixPipeline(a).Edit(new InstructRequest { Image = fromFolders[0].Input, Instruction = fromFolders[0].Instruction, Steps = 2 });
        Assert.Equal((64, 64), (edit.Image.Width, edit.Image.Height));

        // A finished run is left alone; more steps continue it to the same model as one longer run.
        logs.Clear();
        new InstructTrainer(Tiny(data, straight), logs.Add).Run();
        Assert.Equal($"{straight} is already trained (3 steps); pass a larger --steps to train it further.", Assert.Single(logs));
        new InstructTrainer(Tiny(data, straight) with { Steps = 4 }, logs.Add).Run();
        Assert.Contains("resuming at step 3", logs);
        var longer = dir.File("longer");
        new InstructTrainer(Tiny(data, longer) with { Steps = 4 }).Run();
        using var c = StableDiffusionModel.Load(straight, ModelPlacement.Cpu);
        using var d = StableDiffusionModel.Load(longer, ModelPlacement.Cpu);
        Assert.Equal(d.Fingerprint, c.Fingerprint);
        Assert.NotEqual(a.Fingerprint, c.Fingerprint);

        // Another seed on the same folder is refused, naming the difference.
        var error = Assert.Throws<UserError>(() => new InstructTrainer(Tiny(data, straight) with { Seed = 6, Steps = 5 }).Run());
        Assert.Contains("holds a training run with other settings", error.Message);
        Assert.Contains("seed 5", error.Message);
    }

    [Fact]
    public void An_instruction_model_given_as_init_trains_further_from_its_own_weights()
    {
        using var dir = new TempDir();
        WriteDataset(dir.Path, 2);
        var data = dir.File("dataset");
        var first = dir.File("first");
        new InstructTrainer(Tiny(data, first) with { Steps = 2 }).Run();
        // From an instruction model, conv_in is not widened again: 0 steps write its weights unchanged (the image channels
        // the first run trained included), a step moves them.
        var same = dir.File("same");
        new InstructTrainer(Tiny(data, same) with { InitModel = first, Steps = 0 }).Run();
        var further = dir.File("further");
        new InstructTrainer(Tiny(data, further) with { InitModel = first, Steps = 1 }).Run();
        using var a = StableDiffusionModel.Load(first, ModelPlacement.Cpu);
        using var b = StableDiffusionModel.Load(same, ModelPlacement.Cpu);
        using var c = StableDiffusionModel.Load(further, ModelPlacement.Cpu);
        Assert.Equal(8, b.UNet.Config.InChannels);
        Assert.Equal(a.Fingerprint, b.Fingerprint);
        var wa = a.UNet.named_parameters().ToDictionary(p => p.name, p => p.parameter);
        var wb = b.UNet.named_parameters().ToDictionary(p => p.name, p => p.parameter);
        var wc = c.UNet.named_parameters().ToDictionary(p => p.name, p => p.parameter);
        Assert.True(wa["conv_in.weight"].narrow(1, 4, 4).abs().max().item<float>() > 0);
        Assert.All(wa, w => Assert.True(w.Value.eq(wb[w.Key]).all().item<bool>(), $"{w.Key} changed in 0 steps"));
        Assert.False(wa["conv_in.weight"].eq(wc["conv_in.weight"]).all().item<bool>());
        Assert.Equal("EulerAncestralDiscreteScheduler", c.Scheduler.ClassName);
    }

    static Imaging.RgbImage Mirrored(Imaging.RgbImage image)
    {
        var pixels = new byte[image.Pixels.Length];
        for (int y = 0; y < image.Height; y++)
            for (int x = 0; x < image.Width; x++)
                Array.Copy(image.Pixels, (y * image.Width + x) * 3, pixels, (y * image.Width + image.Width - 1 - x) * 3, 3);
        return image with { Pixels = pixels };
    }

    [Fact]
    public void Random_flip_adds_the_mirrored_pairs_and_belongs_to_the_run()
    {
        using var dir = new TempDir();
        WriteDataset(dir.Path, 2);
        var pairs = DatasetIndex.ReadPairs(dir.File("dataset"));
        using var model = StableDiffusionModel.Load(ShippedModelTests.Folder, ModelPlacement.Cpu);
        var (image, edit) = InstructTrainer.Encode(model, pairs, mirrored: true);
        var (plainImage, plainEdit) = InstructTrainer.Encode(model, pairs, mirrored: false);
        var (mirrorImage, mirrorEdit) = InstructTrainer.Encode(model, pairs.Select(p => p with { Input = Mirrored(p.Input), Edited = Mirrored(p.Edited) }).ToList(), mirrored: false);
        Assert.Equal(new long[] { 4, 4, 16, 16 }, image.shape);
        Assert.Equal(new long[] { 2, 4, 16, 16 }, plainEdit.shape);
        // The first half is the pairs, the second the pairs mirrored left to right (encoded from the mirrored pixels).
        Assert.True(image.narrow(0, 0, 2).eq(plainImage).all().item<bool>() && edit.narrow(0, 0, 2).eq(plainEdit).all().item<bool>());
        Assert.True((image.narrow(0, 2, 2) - mirrorImage).abs().max().item<float>() < 1e-5f);
        Assert.True((edit.narrow(0, 2, 2) - mirrorEdit).abs().max().item<float>() < 1e-5f);
        Assert.False((image.narrow(0, 2, 2) - plainImage).abs().max().item<float>() < 1e-2f);

        // The flip is a setting of the run: a resume without it is refused, naming it.
        var output = dir.File("flipped");
        new InstructTrainer(Tiny(dir.File("dataset"), output) with { RandomFlip = true, Steps = 1 }).Run();
        var error = Assert.Throws<UserError>(() => new InstructTrainer(Tiny(dir.File("dataset"), output) with { Steps = 2 }).Run());
        Assert.Contains("batch 2, random flip, attention loss 0, EMA decay 0, the init's layers per block, SNR gamma 0, edit weight 1; now pairs 2", error.Message);
        Assert.Contains("batch 2, no flip, attention loss 0, EMA decay 0, the init's layers per block, SNR gamma 0, edit weight 1).", error.Message);

        // An optimizer state of another layout (one parameter group, as runs before --conv-in-learning-rate wrote).
        using (var other = optim.AdamW(nn.Linear(2, 2).parameters(), lr: 1e-3))
            other.save_state_dict(Path.Combine(output, "checkpoint", "optimizer"));
        var stale = Assert.Throws<UserError>(() => new InstructTrainer(Tiny(dir.File("dataset"), output) with { RandomFlip = true, Steps = 2 }).Run());
        Assert.Equal($"The optimizer state {Path.Combine(output, "checkpoint", "optimizer")} does not fit this trainer (Invalid optimizer state -- different number " +
                     $"of parameter groups; runs before --conv-in-learning-rate kept one parameter group). Delete the folder {Path.Combine(output, "checkpoint", "")} to train from the start.",
            stale.Message);
    }

    [Fact]
    public void Conv_in_learns_at_its_own_rate()
    {
        using var dir = new TempDir();
        WriteDataset(dir.Path, 2);
        var still = dir.File("still");
        var plain = dir.File("plain");
        new InstructTrainer(Tiny(dir.File("dataset"), still) with { Steps = 1, ConvInLearningRate = 1e-12 }).Run();
        new InstructTrainer(Tiny(dir.File("dataset"), plain) with { Steps = 1 }).Run();
        using var a = StableDiffusionModel.Load(still, ModelPlacement.Cpu);
        using var b = StableDiffusionModel.Load(plain, ModelPlacement.Cpu);
        var wa = a.UNet.named_parameters().ToDictionary(p => p.name, p => p.parameter);
        var wb = b.UNet.named_parameters().ToDictionary(p => p.name, p => p.parameter);
        // One AdamW step moves a weight by about its rate: 1e-12 leaves the new image channels zero (in the fp16 folder),
        // the default 2e-4 does not; the first step's gradients are the same, so every other weight moved alike.
        Assert.Equal(0f, wa["conv_in.weight"].narrow(1, 4, 4).abs().max().item<float>());
        Assert.True(wb["conv_in.weight"].narrow(1, 4, 4).abs().min().item<float>() > 1e-4f);
        Assert.True(wa["conv_out.weight"].eq(wb["conv_out.weight"]).all().item<bool>());
        Assert.False(wa["conv_out.weight"].eq(ShippedWeights("conv_out.weight")).all().item<bool>());
    }

    [Fact]
    public void The_attention_loss_binds_the_instructions_shape_and_colour_words_to_the_changed_region_and_belongs_to_the_run()
    {
        var scenes = new Scenes(64);
        Scene Draw(string circle, string square, string background = "black") =>
            scenes.Render([("circle", circle, "large", 20, 20, 12), ("square", square, "large", 46, 46, 10)], background, false);
        var scene = Draw("blue", "red");
        var tokenizer = ClipTokenizer.Load(Path.Combine(ShippedModelTests.Folder, "tokenizer"));
        var bound = InstructTrainer.ChangedRegion(new InstructionPair(scene.Image, "make the circle purple", Draw("purple", "red").Image), tokenizer);
        Assert.NotNull(bound);
        var (region, words) = bound.Value;
        Assert.Equal(scene.Objects[0].Mask, region.Objects.Single().Mask); // exactly the recoloured circle
        Assert.Equal(["circle", "purple"], words.Words.Where(w => w.Owner == 0).Select(w => w.Word));
        Assert.Equal(["make", "the"], words.Words.Where(w => w.Owner == CaptionWords.Free).Select(w => w.Word));
        // A new background changes most of the image, and an instruction may name no shape or colour: nothing is bound.
        Assert.Null(InstructTrainer.ChangedRegion(new InstructionPair(scene.Image, "put it on a white background", Draw("blue", "red", "white").Image), tokenizer));
        Assert.Null(InstructTrainer.ChangedRegion(new InstructionPair(scene.Image, "do it", Draw("purple", "red").Image), tokenizer));

        // The weight belongs to the run: a resume with another is refused, naming it.
        using var dir = new TempDir();
        WriteDataset(dir.Path, 2);
        new InstructTrainer(Tiny(dir.File("dataset"), dir.File("bound")) with { Steps = 1, AttentionLossWeight = 1 }).Run();
        var error = Assert.Throws<UserError>(() => new InstructTrainer(Tiny(dir.File("dataset"), dir.File("bound")) with { Steps = 2 }).Run());
        Assert.Contains("attention loss 1, EMA decay 0, the init's layers per block, SNR gamma 0, edit weight 1; now", error.Message);
        Assert.Contains("attention loss 0, EMA decay 0, the init's layers per block, SNR gamma 0, edit weight 1).", error.Message);
        Assert.Equal("--attention-loss must be 0 or more; got -1.",
            Assert.Throws<UserError>(() => new InstructTrainer(Tiny(dir.File("dataset"), dir.File("x")) with { AttentionLossWeight = -1 }).Run()).Message);
    }

    [Fact]
    public void The_weight_average_warms_up_as_diffusers_ema_and_swaps_back()
    {
        using var w = nn.Parameter(tensor(new float[] { 1, 2 }));
        using var average = new WeightAverage([w], decay: 0.5);
        Assert.Equal([0.1, 2.0 / 11, 0.25, 0.5, 0.5], new[] { 0, 1, 2, 8, 100 }.Select(average.Decay));   // (1+n)/(10+n) reaches the decay at n = 8
        using (no_grad()) w.copy_(tensor(new float[] { 11, 12 }));
        average.Update(0);   // 0.1 * 1 + 0.9 * 11 = 10
        average.Update(1);   // 2/11 * 10 + 9/11 * 11 = 10.8181...
        average.Swap();
        Assert.Equal(new[] { 10 + 9f / 11, 11 + 9f / 11 }, w.data<float>().ToArray(), (a, b) => Math.Abs(a - b) < 1e-5);
        average.Swap();
        Assert.Equal(new float[] { 11, 12 }, w.data<float>().ToArray());
    }

    /// <summary>
    /// Trains <see cref="Tiny"/> with <paramref name="settings"/> in one run and in three one-step runs, each resuming the
    /// last, and asserts both give the same model; returns the dataset and the one run's folder.
    /// </summary>
    static (string Data, string Straight) TrainedInOneRunAndResumed(TempDir dir, Func<InstructTrainingOptions, InstructTrainingOptions> settings)
    {
        WriteDataset(dir.Path, 2);
        var data = dir.File("dataset");
        var straight = dir.File("straight");
        new InstructTrainer(settings(Tiny(data, straight))).Run();
        var resumed = dir.File("resumed");
        for (int run = 0; run < 3; run++) new InstructTrainer(settings(Tiny(data, resumed, minutes: 0))).Run();   // one step per run
        using var a = StableDiffusionModel.Load(straight, ModelPlacement.Cpu);
        using var b = StableDiffusionModel.Load(resumed, ModelPlacement.Cpu);
        Assert.Equal(a.Fingerprint, b.Fingerprint);
        return (data, straight);
    }

    [Fact]
    public void With_ema_the_model_is_the_averaged_weights_resumed_alike_and_the_decay_belongs_to_the_run()
    {
        using var dir = new TempDir();
        var (data, straight) = TrainedInOneRunAndResumed(dir, o => o with { EmaDecay = 0.9 });
        using var a = StableDiffusionModel.Load(straight, ModelPlacement.Cpu);

        // The folder holds the averages (fp16), not the last weights, which the checkpoint keeps for the next steps.
        Tensor Weight(string file) { using var source = Loading.TensorSource.Open("unet", Path.Combine(straight, "checkpoint", file)); return source.Read("conv_out.weight").to(ScalarType.Float16); }
        var saved = a.UNet.named_parameters().First(p => p.name == "conv_out.weight").parameter;
        Assert.True(saved.eq(Weight("ema_unet.safetensors")).all().item<bool>());
        Assert.False(saved.eq(Weight("unet.safetensors")).all().item<bool>());

        var error = Assert.Throws<UserError>(() => new InstructTrainer(Tiny(data, straight) with { Steps = 4 }).Run());
        Assert.Contains("attention loss 0, EMA decay 0.9, the init's layers per block, SNR gamma 0, edit weight 1; now", error.Message);
        Assert.EndsWith("attention loss 0, EMA decay 0, the init's layers per block, SNR gamma 0, edit weight 1). Use another --out, or delete " + Path.Combine(straight, "checkpoint", "") + ".", error.Message);
        Assert.Equal("--ema-decay must be at least 0 (off) and below 1; got 1.",
            Assert.Throws<UserError>(() => new InstructTrainer(Tiny(data, dir.File("x")) with { EmaDecay = 1 }).Run()).Message);
    }

    [Fact]
    public void A_deepened_run_resumes_to_the_same_model_saves_the_deeper_config_and_the_depth_belongs_to_the_run()
    {
        using var dir = new TempDir();
        var (data, straight) = TrainedInOneRunAndResumed(dir, o => o with { LayersPerBlock = 2 });
        using (var a = StableDiffusionModel.Load(straight, ModelPlacement.Cpu))
        {
            Assert.Equal(2, a.UNet.Config.LayersPerBlock);
            Assert.True(a.IsInstructPix2Pix);
        }

        var error = Assert.Throws<UserError>(() => new InstructTrainer(Tiny(data, straight) with { Steps = 4 }).Run());
        Assert.Contains("EMA decay 0, 2 layers per block, SNR gamma 0, edit weight 1; now", error.Message);
        Assert.Equal("--layers-per-block must be at least 1; got 0.",
            Assert.Throws<UserError>(() => new InstructTrainer(Tiny(data, dir.File("x")) with { LayersPerBlock = 0 }).Run()).Message);
        Assert.StartsWith("--layers-per-block 1: the model already has 2 layers per block",
            Assert.Throws<UserError>(() => new InstructTrainer(Tiny(data, dir.File("y")) with { InitModel = straight, LayersPerBlock = 1 }).Run()).Message);
    }

    [Fact]
    public void The_loss_counts_the_edited_latents_more_and_weights_samples_by_min_snr()
    {
        using var noise = zeros(2, 1, 2, 2);
        using var predicted = tensor(new float[] { 2, 0, 0, 0, 1, 1, 1, 1 }, [2, 1, 2, 2]);
        using var snr = tensor(new float[] { 9, 1 });
        float Loss(Tensor? latentWeights, Tensor? snr) { using var l = InstructTrainer.Loss(predicted, noise, latentWeights, snr, 5); return l.item<float>(); }
        Assert.Equal(1f, Loss(null, null));   // plain mean: (4 + 4) / 8
        // Only the first latent of the first sample counted 3 times: that sample's loss is 3 * 4 / 6 = 2.
        using var latentWeights = tensor(new float[] { 3, 1, 1, 1, 1, 1, 1, 1 }, [2, 1, 2, 2]);
        Assert.Equal(1.5f, Loss(latentWeights, null), 6);   // (2 + 1) / 2
        // Min-SNR at gamma 5: the first sample (SNR 9) weighs 5/9, the second (SNR 1) 1.
        Assert.Equal((float)((5.0 / 9 + 1) / 2), Loss(null, snr), 6);
        Assert.Equal((float)((2 * 5.0 / 9 + 1) / 2), Loss(latentWeights, snr), 6);
    }

    [Fact]
    public void The_changed_latents_are_the_cells_holding_a_recoloured_pixel_mirrored_with_the_pair()
    {
        var scenes = new Scenes(64);
        Scene Draw(string circle) => scenes.Render([("circle", circle, "large", 20, 20, 12), ("square", "red", "large", 46, 46, 10)], "black", false);
        var scene = Draw("blue");
        var pair = new InstructionPair(scene.Image, "make the circle purple", Draw("purple").Image);
        using var latents = InstructTrainer.ChangedLatents([pair], 8, mirrored: true);
        Assert.Equal([2L, 1, 8, 8], latents.shape);
        var mask = scene.Objects[0].Mask;
        for (int y = 0; y < 8; y++)
            for (int x = 0; x < 8; x++)
            {
                bool any = Enumerable.Range(0, 64).Any(k => mask[(8 * y + k / 8) * 64 + 8 * x + k % 8]);
                Assert.Equal(any ? 1f : 0f, latents[0, 0, y, x].item<float>());
                Assert.Equal(any ? 1f : 0f, latents[1, 0, y, 7 - x].item<float>());
            }
        Assert.InRange(latents[0].sum().item<float>(), 9, 25);   // the circle of radius 12 spans 3 to 5 cells a side, not the square
        using var weights = InstructTrainer.LatentWeights([pair], 8, mirrored: false, editWeight: 4);
        Assert.True(weights.eq(1 + 3 * latents[0..1]).all().item<bool>());   // 4 in the changed cells, 1 elsewhere
    }

    [Fact]
    public void A_weighted_run_resumes_to_the_same_model_and_its_weights_belong_to_the_run()
    {
        using var dir = new TempDir();
        var (data, straight) = TrainedInOneRunAndResumed(dir, o => o with { SnrGamma = 5, EditWeight = 4 });
        var error = Assert.Throws<UserError>(() => new InstructTrainer(Tiny(data, straight) with { Steps = 4, EditWeight = 4 }).Run());
        Assert.Contains("the init's layers per block, SNR gamma 5, edit weight 4; now", error.Message);
        Assert.Contains("the init's layers per block, SNR gamma 0, edit weight 4).", error.Message);
        Assert.Equal("--snr-gamma must be 0 (off) or more; got -1.",
            Assert.Throws<UserError>(() => new InstructTrainer(Tiny(data, dir.File("x")) with { SnrGamma = -1 }).Run()).Message);
        Assert.Equal("--edit-weight must be at least 1 (1: every latent alike); got 0.5.",
            Assert.Throws<UserError>(() => new InstructTrainer(Tiny(data, dir.File("x")) with { EditWeight = 0.5 }).Run()).Message);
    }

    [Fact]
    public void A_checkpoint_of_the_first_depth_release_writing_0_for_the_inits_depth_resumes()
    {
        using var dir = new TempDir();
        WriteDataset(dir.Path, 2);
        var output = dir.File("old");
        new InstructTrainer(Tiny(dir.File("dataset"), output) with { Steps = 1 }).Run();
        var state = Path.Combine(output, "checkpoint", "state.json");
        File.WriteAllText(state, File.ReadAllText(state).Replace("\"LayersPerBlock\":null", "\"LayersPerBlock\":0"));
        Assert.Contains("\"LayersPerBlock\":0", File.ReadAllText(state));
        new InstructTrainer(Tiny(dir.File("dataset"), output) with { Steps = 2 }).Run();
        Assert.Contains("\"Step\":2", File.ReadAllText(state));
    }

    static Tensor ShippedWeights(string name)
    {
        using var model = StableDiffusionModel.Load(ShippedModelTests.Folder, ModelPlacement.Cpu);
        return model.UNet.named_parameters().First(p => p.name == name).parameter.detach().clone();
    }

    [Fact]
    public void Several_datasets_train_as_one_holding_their_records_in_order()
    {
        using var dir = new TempDir();
        WriteDataset(dir.Path, 2);
        var first = dir.File("dataset");
        var second = dir.File("second");
        var joined = dir.File("joined");
        static void CopyRecord(string from, string to)
        {
            Directory.CreateDirectory(to);
            foreach (var file in Directory.GetFiles(from)) File.Copy(file, Path.Combine(to, Path.GetFileName(file)));
        }
        CopyRecord(Path.Combine(first, "0000001"), Path.Combine(second, "0000000"));
        CopyRecord(Path.Combine(first, "0000000"), Path.Combine(second, "0000001"));
        for (int i = 0; i < 4; i++) CopyRecord(Path.Combine(i < 2 ? first : second, $"{i % 2:D7}"), Path.Combine(joined, $"{i:D7}"));
        new InstructTrainer(Tiny(first, dir.File("a")) with { DataDirs = [first, second] }).Run();
        new InstructTrainer(Tiny(joined, dir.File("b"))).Run();
        using var a = StableDiffusionModel.Load(dir.File("a"), ModelPlacement.Cpu);
        using var b = StableDiffusionModel.Load(dir.File("b"), ModelPlacement.Cpu);
        Assert.Equal(b.Fingerprint, a.Fingerprint);
        Assert.Contains("\"Pairs\":4", File.ReadAllText(Path.Combine(dir.File("a"), "checkpoint", "state.json")));
        Assert.Equal($"--data {first} is given twice; give each dataset once.",
            Assert.Throws<UserError>(() => new InstructTrainer(Tiny(first, dir.File("d")) with { DataDirs = [first, second, first + "/"] }).Run()).Message);
    }

    [Fact]
    public void Bad_data_and_folders_are_refused_with_one_line()
    {
        using var dir = new TempDir();
        Assert.Equal($"Dataset folder not found: {dir.File("none")}. Make one with p2p dataset generate --out {dir.File("none")}.",
            Assert.Throws<UserError>(() => new InstructTrainer(Tiny(dir.File("none"), dir.File("out"))).Run()).Message);
        Directory.CreateDirectory(dir.File("empty"));
        Assert.Equal($"{dir.File("empty")} holds no pairs (no record folders with pairs, no data/train-*.parquet). Make them with p2p dataset generate --out {dir.File("empty")}.",
            Assert.Throws<UserError>(() => new InstructTrainer(Tiny(dir.File("empty"), dir.File("out"))).Run()).Message);

        WriteDataset(dir.Path, 1, size: 32);
        Assert.Equal($"{dir.File("dataset")} holds 32x32 images; shapes is trained at 64x64. Generate the dataset with the model it trains (p2p dataset generate --model ...).",
            Assert.Throws<UserError>(() => new InstructTrainer(Tiny(dir.File("dataset"), dir.File("out"))).Run()).Message);

        // An existing model folder is never overwritten, and the start must be a text-to-image diffusers folder.
        Assert.Equal($"{ShippedModelTests.Folder} already holds a model that this command did not train; give a new --out folder (nothing is overwritten).",
            Assert.Throws<UserError>(() => new InstructTrainer(Tiny(dir.File("dataset"), ShippedModelTests.Folder)).Run()).Message);
        var file = dir.File("model.safetensors");
        File.WriteAllText(file, "");
        Assert.StartsWith($"--init {file}: give the diffusers folder of a text-to-image model",
            Assert.Throws<UserError>(() => new InstructTrainer(Tiny(dir.File("dataset"), dir.File("out")) with { InitModel = file }).Run()).Message);
        Assert.Equal("--steps must be 0 or more; got -1.",
            Assert.Throws<UserError>(() => new InstructTrainer(Tiny(dir.File("dataset"), dir.File("out")) with { Steps = -1 }).Run()).Message);
        Assert.Equal("--conv-in-learning-rate must be a positive number; got 0.",
            Assert.Throws<UserError>(() => new InstructTrainer(Tiny(dir.File("dataset"), dir.File("out")) with { ConvInLearningRate = 0 }).Run()).Message);
        Assert.False(Directory.Exists(dir.File("out")));
    }
}
