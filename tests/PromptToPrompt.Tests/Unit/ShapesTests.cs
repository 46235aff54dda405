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
    }
}

public class ShapesTrainerTests
{
    static ShapesTrainingOptions Tiny(string dir, double? minutes = null) =>
        new(dir, Seed: 3, VaeSteps: 3, UNetSteps: 3, VaeBatch: 2, UNetBatch: 2, Minutes: minutes, CheckpointEverySteps: 1, ScaleSamples: 8);

    [Fact]
    public void Training_resumes_to_the_same_result_and_saves_a_loadable_diffusers_folder()
    {
        using var straight = new TempDir();
        new ShapesTrainer(Tiny(straight.Path)).Run();
        using var resumed = new TempDir();
        var logs = new List<string>();
        new ShapesTrainer(Tiny(resumed.Path, minutes: 0), logs.Add).Run();   // stops after the first step
        Assert.Contains(logs, l => l.Contains("run again to resume"));
        Assert.False(File.Exists(Path.Combine(resumed.Path, "model_index.json")));
        new ShapesTrainer(Tiny(resumed.Path), logs.Add).Run();                // resumes in the VAE phase and finishes
        Assert.Contains(logs, l => l.StartsWith("resuming"));

        using var a = PromptToPrompt.Loading.StableDiffusionModel.Load(straight.Path, PromptToPrompt.Loading.ModelPlacement.Cpu);
        using var b = PromptToPrompt.Loading.StableDiffusionModel.Load(resumed.Path, PromptToPrompt.Loading.ModelPlacement.Cpu);
        Assert.Equal(a.Fingerprint, b.Fingerprint);
        Assert.Equal(32, a.Tokenizer.MaxLength);
        Assert.Equal(64, a.DefaultImageSize);
        Assert.NotEqual(1.0, a.Vae.Config.ScalingFactor);
    }
}
