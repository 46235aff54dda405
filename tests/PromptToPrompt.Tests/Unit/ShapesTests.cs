using PromptToPrompt.Imaging;
using PromptToPrompt.Models;
using static TorchSharp.torch;
using PromptToPrompt.Text;
using PromptToPrompt.Training;

namespace PromptToPrompt.Tests.Unit;

public class ScenesTests
{
    [Fact]
    public void Scenes_are_deterministic_and_captioned_from_the_grammar()
    {
        var scenes = new Scenes();
        var a = scenes.Generate(5, 42);
        var b = scenes.Generate(5, 42);
        Assert.Equal(a.Caption, b.Caption);
        Assert.Equal(a.Image.Pixels, b.Image.Pixels);
        Assert.NotEqual(a.Image.Pixels, scenes.Generate(5, 43).Image.Pixels);
        Assert.Matches(@"^a (small|large) \w+ \w+( and a (small|large) \w+ \w+){0,2} on a (striped )?\w+ background$", a.Caption);
        Assert.All(a.Caption.Split(' '), w => Assert.Contains(w, Scenes.Vocabulary));
    }

    [Fact]
    public void Object_masks_cover_pixels_of_the_objects_colour()
    {
        var scene = new Scenes().Generate(1, 7, objectCount: 2);
        Assert.Equal(2, scene.Objects.Count);
        foreach (var o in scene.Objects)
        {
            var (r, g, b) = Scenes.Colours[o.Colour];
            int count = 0;
            for (int i = 0; i < o.Mask.Length; i++)
                if (o.Mask[i])
                {
                    count++;
                    Assert.Equal((r, g, b), (scene.Image.Pixels[3 * i], scene.Image.Pixels[3 * i + 1], scene.Image.Pixels[3 * i + 2]));
                }
            Assert.True(count > 20, $"{o.Shape} covers only {count} pixels");
            Assert.Contains($"{o.SizeWord} {o.Colour} {o.Shape}", scene.Caption);
        }
    }

    [Fact]
    public void Varied_captions_phrase_a_scene_as_people_type_it_and_each_word_keeps_its_owner()
    {
        using var dir = new TempDir();
        var tokenizer = AttentionLocalisationLossTests.Tokenizer(dir, varied: true);
        var scenes = new Scenes();
        var plain = scenes.Render([("circle", "red", "large", 20, 20, 12), ("square", "blue", "small", 46, 46, 8)], "white", striped: false);
        Assert.Equal(plain.Caption, Scenes.Describe(plain, null).Text);
        var rng = new Random(3);
        var texts = new HashSet<string>();
        for (int i = 0; i < 2000; i++)
        {
            var words = Scenes.Describe(plain, rng);
            texts.Add(words.Text);
            // The caption's tokens are its words' tokens in order, so a word's position is where the text puts it.
            Assert.Equal(tokenizer.EncodeWithoutSpecials(words.Text), words.Words.SelectMany(w => (IEnumerable<int>)tokenizer.EncodeWithoutSpecials(w.Word)));
            foreach (var (word, owner) in words.Words)
            {
                var expected = word switch
                {
                    "a" or "and" or "on" or "," or "." => CaptionWords.Free,
                    "white" or "background" => CaptionWords.Background,
                    "red" or "large" or "circle" or "disc" or "ball" => 0,
                    _ => 1,
                };
                Assert.Equal(expected, owner);
                if (word is not ("," or ".")) Assert.Contains(word, Scenes.VariedVocabulary);
            }
            Assert.Equal(0, words.Replace(0, "red", "green").Words.Count(w => w.Word == "red"));
        }
        foreach (var expected in new[]
        {
            "a large red circle and a small blue square on a white background", // canonical
            "a small blue square and a large red circle on a white background", // order swapped
            "a red circle and a blue square",                                   // sizes and background left out
            "large red circle and small blue square on white",                  // no articles, short background
            "a large disc, red and a small blue square on a white background",  // synonym, colour after the shape
        })
            Assert.Contains(expected, texts);
        Assert.Contains(texts, t => t.EndsWith("background.", StringComparison.Ordinal));
        // A striped background is always named (a caption without a background asks for a plain one).
        var striped = scenes.Render([("star", "red", "large", 32, 32, 12)], "gray", striped: true);
        for (int i = 0; i < 200; i++) Assert.Contains("striped gray", Scenes.Describe(striped, rng).Text);
    }

    [Fact]
    public void The_learned_bpe_encodes_every_caption_word_as_one_token()
    {
        var (vocab, merges) = BpeTrainer.Train(Scenes.Vocabulary);
        using var dir = new TempDir();
        BpeTrainer.Save(dir.Path, vocab, merges, 32);
        var tokenizer = ClipTokenizer.Load(dir.Path);
        Assert.Equal(32, tokenizer.MaxLength);
        foreach (var word in Scenes.Vocabulary)
            Assert.Single(tokenizer.EncodeWithoutSpecials(word));
        var caption = "a small red circle and a large blue star on a striped yellow background";
        Assert.Equal(caption.Split(' ').Length + 2, tokenizer.Tokenize(caption).TokenCount);
        Assert.Equal("red", tokenizer.Decode(tokenizer.EncodeWithoutSpecials("red").Select(i => (long)i)));
        Assert.True(tokenizer.EncodeWithoutSpecials("zebra!").Count > 1); // unknown words still tokenize, byte by byte
    }

    [Fact]
    public void Evaluation_masks_and_colours()
    {
        var scene = new Scenes().Render([("square", "red", "large", 32, 32, 14)], "white", false);
        Assert.Equal("red", ShapesEvaluation.ObjectColour(scene.Image, "white"));
        var mask = ShapesEvaluation.Mask(scene.Image, "white");
        Assert.Equal(1.0, ShapesEvaluation.IoU(mask, scene.Objects[0].Mask), 3);
        Assert.Equal(1.0, ShapesEvaluation.IoU(ShapesEvaluation.ObjectMask(scene.Image, "white", "red"), scene.Objects[0].Mask), 3);

        // A soft edge: the half-contrast mask of a black and of a blue square blurred alike is the same, whereas
        // a fixed distance from the background makes the higher-contrast black square larger.
        RgbImage Blurred(string colour) => BoxBlur(new Scenes().Render([("square", colour, "large", 32, 32, 14)], "white", false).Image);
        var (black, blue) = (Blurred("black"), Blurred("blue"));
        Assert.Equal(1.0, ShapesEvaluation.IoU(ShapesEvaluation.ObjectMask(black, "white", "black"), ShapesEvaluation.ObjectMask(blue, "white", "blue")), 3);
        Assert.True(ShapesEvaluation.Mask(black, "white").Count(m => m) > ShapesEvaluation.Mask(blue, "white").Count(m => m));
    }

    [Fact]
    public void A_recolouring_drawn_exactly_scores_iou_1_with_another_object_past_the_half_contrast_edge()
    {
        // A blue circle to be made purple beside a red square on black: red lies past the half-contrast edge between
        // black and purple, so the background-only mask of purple takes in the whole square too.
        var scenes = new Scenes(64);
        Scene Draw(string circle, string square) => scenes.Render([("circle", circle, "large", 20, 20, 12), ("square", square, "large", 46, 46, 10)], "black", false);
        var (scene, recoloured) = (Draw("blue", "red"), Draw("purple", "red"));
        var square = scene.Objects[1].Mask.Count(m => m);
        Assert.Equal(square, ShapesEvaluation.ObjectMask(recoloured.Image, "black", "purple").Zip(scene.Objects[1].Mask, (a, b) => a && b).Count(m => m));
        Assert.Equal((true, 1.0, false), InstructEvaluation.RecolourMeasures(scene, 0, "purple", recoloured.Image));
        Assert.Equal((false, 0.0, false), InstructEvaluation.RecolourMeasures(scene, 0, "purple", scene.Image)); // left blue
        // The square recoloured instead of the circle: the instruction bound to the wrong object.
        Assert.Equal((false, 0.0, true), InstructEvaluation.RecolourMeasures(scene, 0, "purple", Draw("blue", "purple").Image));
        // The new colour is the other object's: that object is left out, not counted as a spill.
        var (second, sameAsSquare) = (Draw("blue", "purple"), Draw("purple", "purple"));
        Assert.Equal((true, 1.0, false), InstructEvaluation.RecolourMeasures(second, 0, "purple", sameAsSquare.Image));
    }

    [Fact]
    public void The_eval_instruct_table_splits_the_recolourings_by_object_count_and_marks_a_missing_count()
    {
        var kinds = new Dictionary<string, (InstructMethodReport, InstructMethodReport?)> { ["colour"] = (new(3, 2 / 3.0, 0.7, 0.8, 4, 0.3), null) };
        var table = new InstructReport(kinds, new RecolourReport(1, 0.75, 2 / 3.0, 0, 0.5, 1), new RecolourReport(1, 0.9, 1, 0, 1, double.NaN)).ToTable().Split('\n');
        Assert.Contains("both (IoU >= 0.8)   1 / 2 objects   other object recoloured", table[^3]);
        Assert.Equal("  InstructPix2Pix                            100 %      0.750                67 %    50 % / 100 %                       0 %", table[^2]);
        Assert.Equal("  P2P + null-text                            100 %      0.900               100 %       100 % / –                       0 %", table[^1]);
    }

    static RgbImage BoxBlur(RgbImage image, int radius = 2)
    {
        var pixels = new byte[image.Pixels.Length];
        for (int y = 0; y < image.Height; y++)
            for (int x = 0; x < image.Width; x++)
                for (int c = 0; c < 3; c++)
                {
                    int sum = 0, n = 0;
                    for (int dy = -radius; dy <= radius; dy++)
                        for (int dx = -radius; dx <= radius; dx++)
                        {
                            int xx = Math.Clamp(x + dx, 0, image.Width - 1), yy = Math.Clamp(y + dy, 0, image.Height - 1);
                            sum += image.Pixels[(yy * image.Width + xx) * 3 + c];
                            n++;
                        }
                    pixels[(y * image.Width + x) * 3 + c] = (byte)(sum / n);
                }
        return image with { Pixels = pixels };
    }
}

public class AttentionLocalisationLossTests
{
    internal static ClipTokenizer Tokenizer(TempDir dir, bool varied = false)
    {
        var (vocab, merges) = BpeTrainer.Train(varied ? Scenes.VariedVocabulary : Scenes.Vocabulary);
        BpeTrainer.Save(dir.Path, vocab, merges, 32);
        return ClipTokenizer.Load(dir.Path);
    }

    static Scene TwoObjects() => new Scenes().Render(
        [("square", "red", "large", 16, 16, 12), ("circle", "blue", "small", 48, 48, 8)], "white", striped: true);

    [Fact]
    public void Each_object_word_owns_its_objects_mask_and_background_words_the_rest()
    {
        using var dir = new TempDir();
        var scene = TwoObjects();
        Assert.Equal("a large red square and a small blue circle on a striped white background", scene.Caption);
        var regions = AttentionLocalisationLoss.WordRegions(Tokenizer(dir), scene, Scenes.Describe(scene, null)).ToList();
        // Token positions (BOS = 0): large red square = 2..4, small blue circle = 7..9, striped white background = 12..14.
        Assert.Equal([2, 3, 4, 7, 8, 9, 12, 13, 14], regions.Select(r => r.Position));
        Assert.All(regions.Take(3), r => Assert.Same(scene.Objects[0].Mask, r.Region));
        Assert.All(regions.Skip(3).Take(3), r => Assert.Same(scene.Objects[1].Mask, r.Region));
        var background = regions[^1].Region;
        for (int i = 0; i < background.Length; i++)
            Assert.Equal(!scene.Objects[0].Mask[i] && !scene.Objects[1].Mask[i], background[i]);
    }

    [Fact]
    public void The_loss_is_zero_for_attention_inside_each_words_region_and_the_outside_share_otherwise()
    {
        using var dir = new TempDir();
        var tokenizer = Tokenizer(dir);
        var scene = TwoObjects();
        var regions = AttentionLocalisationLoss.WordRegions(tokenizer, scene, Scenes.Describe(scene, null)).ToList();
        int k = tokenizer.MaxLength, side = 16, heads = 2;
        var call = new AttentionCall(new AttentionLayer("down_blocks.0.attentions.0.transformer_blocks.0.attn2", UNetPlace.Down, true, 0, heads), side, side, k);

        // Each supervised token attends only to cells inside its (64 px) region seen at 16x16; a dropped caption supervises nothing.
        var inside = new float[heads * side * side * k];
        foreach (var (position, region) in regions)
            for (int cell = 0; cell < side * side; cell++)
                if (region[(cell / side * 4 + 1) * 64 + cell % side * 4 + 1])
                    for (int h = 0; h < heads; h++) inside[(h * side * side + cell) * k + position] = 1;
        using (var loss = new AttentionLocalisationLoss(tokenizer, [(scene, Scenes.Describe(scene, null)), null], side, CPU))
        {
            var probabilities = cat([tensor(inside, [heads, side * side, k]), rand(heads, side * side, k)], 0);
            Assert.Same(probabilities, loss.Edit(call, probabilities));
            Assert.Equal(0.0, loss.Loss().item<float>(), 4);
        }

        // Uniform attention: the loss is the mean share of cells outside each word's (max-pooled) region.
        using (var loss = new AttentionLocalisationLoss(tokenizer, [(scene, Scenes.Describe(scene, null))], side, CPU))
        {
            loss.Edit(call, full(heads, side * side, k, 1f / (side * side)));
            double expected = regions.Average(r =>
            {
                int touched = 0;
                for (int cell = 0; cell < side * side; cell++)
                {
                    bool any = false;
                    for (int dy = 0; dy < 4; dy++) for (int dx = 0; dx < 4; dx++) any |= r.Region[(cell / side * 4 + dy) * 64 + cell % side * 4 + dx];
                    if (any) touched++;
                }
                return 1 - touched / (double)(side * side);
            });
            Assert.Equal(expected, loss.Loss().item<float>(), 4);
        }
    }
}

/// <summary>
/// Tests that run alone, after the parallel ones: bit-exact training needs a process where nothing else draws from
/// torch's global generator (it seeds the initial weights, as in PyTorch), and the garbage-collection pauses of
/// <see cref="PromptToPrompt.Models.CollectionPause"/> are process-wide.
/// </summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class RunsAlone
{
    public const string Name = "runs alone";
}

[Collection(RunsAlone.Name)]
public class ShapesTrainerTests
{
    static ShapesTrainingOptions Tiny(string dir, double? minutes = null) =>
        new(dir, Seed: 3, VaeSteps: 3, UNetSteps: 3, VaeBatch: 2, UNetBatch: 2, Minutes: minutes, CheckpointEverySteps: 1, ScaleSamples: 8, LatentReuse: 2);

    [Fact]
    public void Training_resumes_to_the_same_result_and_saves_a_loadable_diffusers_folder()
    {
        using var straight = new TempDir();
        var reports = new Reports();
        new ShapesTrainer(Tiny(straight.Path)).Run(reports);
        Assert.Contains(reports.All, r => r.AttentionLoss is > 0);   // the resumed run covers the attention loss too
        using var resumed = new TempDir();
        var logs = new List<string>();
        new ShapesTrainer(Tiny(resumed.Path, minutes: 0), logs.Add).Run();   // stops after the first step
        Assert.Contains(logs, l => l.Contains("run again to resume"));
        Assert.False(File.Exists(Path.Combine(resumed.Path, "model_index.json")));
        // One step per run from then on: every step resumes, in both phases and across the switch between them.
        int runs = 1;
        while (!File.ReadAllText(Path.Combine(resumed.Path, "checkpoint", "state.json")).Contains("\"done\"") && runs++ < 10)
            new ShapesTrainer(Tiny(resumed.Path, minutes: 0), logs.Add).Run();
        Assert.Equal(7, runs);   // 3 VAE steps, 3 UNet steps, then one run that only writes the final model
        Assert.Equal(6, logs.Count(l => l.StartsWith("resuming")));

        using var a = PromptToPrompt.Loading.StableDiffusionModel.Load(straight.Path, PromptToPrompt.Loading.ModelPlacement.Cpu);
        using var b = PromptToPrompt.Loading.StableDiffusionModel.Load(resumed.Path, PromptToPrompt.Loading.ModelPlacement.Cpu);
        Assert.Equal(a.Fingerprint, b.Fingerprint);
        Assert.Equal(32, a.Tokenizer.MaxLength);
        Assert.Equal(64, a.DefaultImageSize);
        Assert.NotEqual(1.0, a.Vae.Config.ScalingFactor);
    }

    [Fact]
    public void A_finished_model_is_left_alone_or_trained_further_to_the_same_model_as_one_longer_run()
    {
        using var extended = new TempDir();
        new ShapesTrainer(Tiny(extended.Path)).Run();
        var weights = Path.Combine(extended.Path, "unet", "diffusion_pytorch_model.fp16.safetensors");
        var written = File.GetLastWriteTimeUtc(weights);
        var logs = new List<string>();
        new ShapesTrainer(Tiny(extended.Path), logs.Add).Run();
        Assert.Equal($"{extended.Path} is already trained (3 UNet steps); pass a larger --unet-steps to train it further.", Assert.Single(logs));
        Assert.Equal(written, File.GetLastWriteTimeUtc(weights));

        new ShapesTrainer(Tiny(extended.Path) with { UNetSteps = 5 }, logs.Add).Run();
        Assert.Contains("resuming unet at step 3", logs);
        using var straight = new TempDir();
        new ShapesTrainer(Tiny(straight.Path) with { UNetSteps = 5 }).Run();
        using var a = PromptToPrompt.Loading.StableDiffusionModel.Load(straight.Path, PromptToPrompt.Loading.ModelPlacement.Cpu);
        using var b = PromptToPrompt.Loading.StableDiffusionModel.Load(extended.Path, PromptToPrompt.Loading.ModelPlacement.Cpu);
        Assert.Equal(a.Fingerprint, b.Fingerprint);
    }

    [Fact]
    public void Training_from_a_model_keeps_its_weights_and_starts_each_new_synonym_as_its_shape()
    {
        using var canonical = new TempDir();
        new ShapesTrainer(Tiny(canonical.Path)).Run();   // the canonical grammar's vocabulary
        using var dir = new TempDir();
        var logs = new List<string>();
        // No UNet steps: the result is the init model itself, with the larger vocabulary of the varied captions.
        new ShapesTrainer(Tiny(dir.Path) with { Init = canonical.Path, VariedCaptions = true, UNetSteps = 0 }, logs.Add).Run();
        Assert.Contains($"starting from {canonical.Path} (its VAE kept; the UNet and text encoder trained further)", logs);
        Assert.DoesNotContain(logs, l => l.StartsWith("resuming"));   // no VAE phase ran
        using var init = PromptToPrompt.Loading.StableDiffusionModel.Load(canonical.Path, PromptToPrompt.Loading.ModelPlacement.Cpu);
        using var made = PromptToPrompt.Loading.StableDiffusionModel.Load(dir.Path, PromptToPrompt.Loading.ModelPlacement.Cpu);
        Assert.Equal(init.Vae.Config.ScalingFactor, made.Vae.Config.ScalingFactor);
        foreach (var (a, b) in new (TorchSharp.torch.nn.Module, TorchSharp.torch.nn.Module)[] { (init.Vae, made.Vae), (init.UNet, made.UNet) })
            foreach (var ((name, x), (_, y)) in a.named_parameters().Zip(b.named_parameters()))
                Assert.True(x.eq(y).all().item<bool>(), $"{name} changed");
        // Same words, same ids as far as the old vocabulary goes: every old word's embedding is kept, a synonym's is its shape's.
        Assert.True(made.Tokenizer.VocabSize > init.Tokenizer.VocabSize);
        using var oldRows = init.TextEncoder.named_parameters().Single(p => p.name.EndsWith("token_embedding.weight")).parameter;
        using var newRows = made.TextEncoder.named_parameters().Single(p => p.name.EndsWith("token_embedding.weight")).parameter;
        long Id(PromptToPrompt.Loading.StableDiffusionModel m, string word) => m.Tokenizer.Tokenize(word).Ids[1];
        foreach (var (word, asWord) in new[] { ("red", "red"), ("circle", "circle"), ("background", "background"), ("disc", "circle"), ("box", "square"), ("donut", "ring") })
            Assert.True(newRows[Id(made, word)].eq(oldRows[Id(init, asWord)]).all().item<bool>(), $"'{word}' does not start as '{asWord}'");
        Assert.Equal(3, made.Tokenizer.Tokenize("disc").TokenCount);   // BOS, disc, EOS

        // A model of another architecture (here an instruction model) is refused with one line.
        using var other = new TempDir();
        var error = Assert.Throws<UserError>(() => new ShapesTrainer(Tiny(other.Path) with { Init = Path.Combine(Path.GetDirectoryName(ShippedModelTests.Folder)!, "shapes-instruct") }).Run());
        Assert.Contains("is an InstructPix2Pix model", error.Message);
    }

    [Fact]
    public void An_unreadable_checkpoint_names_the_folder_to_delete()
    {
        using var dir = new TempDir();
        Directory.CreateDirectory(Path.Combine(dir.Path, "checkpoint"));
        File.WriteAllText(Path.Combine(dir.Path, "checkpoint", "state.json"), "{\"Phase\": ");
        var error = Assert.Throws<UserError>(() => new ShapesTrainer(Tiny(dir.Path)).Run());
        Assert.StartsWith($"The training checkpoint {Path.Combine(dir.Path, "checkpoint", "state.json")} is unreadable (", error.Message);
        Assert.EndsWith($"Delete the folder {Path.Combine(dir.Path, "checkpoint", "")} to train from the start.", error.Message);
    }

    [Theory]
    [InlineData(0, 3, "--latent-reuse must be at least 1 and divide the UNet batch (2).")]
    [InlineData(0, 0, "--latent-reuse must be at least 1 and divide the UNet batch (2).")]
    [InlineData(30, 2, "--vae-crop must be 0 (whole images) or a multiple of 4 (the VAE's downsampling) up to 64.")]
    [InlineData(68, 2, "--vae-crop must be 0 (whole images) or a multiple of 4 (the VAE's downsampling) up to 64.")]
    public void Options_out_of_range_are_refused_before_training(int crop, int reuse, string message)
    {
        using var dir = new TempDir();
        var options = Tiny(dir.Path) with { VaeCrop = crop, LatentReuse = reuse };
        var error = Assert.Throws<UserError>(() => new ShapesTrainer(options).Run());
        Assert.Equal(message, error.Message);
        Assert.Empty(Directory.GetFileSystemEntries(dir.Path));
    }

    sealed class Reports : IProgress<TrainingProgress>
    {
        public List<TrainingProgress> All { get; } = [];
        public void Report(TrainingProgress value) => All.Add(value);
    }
}
