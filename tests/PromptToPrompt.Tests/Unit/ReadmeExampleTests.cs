using PromptToPrompt.Control;
using PromptToPrompt.Loading;
using PromptToPrompt.Models;
using PromptToPrompt.Pipelines;
using PromptToPrompt.Tests.Conformance;

namespace PromptToPrompt.Tests.Unit;

/// <summary>The README's C# example, kept compiling and running (smaller and shorter than in the README).</summary>
public class ReadmeExampleTests
{
    [Fact]
    public void The_library_example_runs()
    {
        using var model = StableDiffusionModel.Load(ConformanceData.ModelPath, ModelPlacement.Parse("cpu", "float32"));
        var pipeline = new StableDiffusionPipeline(model, Console.Error.WriteLine);
        var result = pipeline.Generate(new GenerationRequest { Prompts = ["a cat riding a bicycle"], Seed = 8888, Steps = 3, Width = 128, Height = 128 });
        using var dir = new TempDir();
        PromptToPrompt.Imaging.Png.Save(dir.File("cat.png"), result.Images[0], result.Parameters);

        string[] prompts = ["a cat sitting on a chair", "a dog sitting on a chair"];
        var blend = new LocalBlend(model.Tokenizer, prompts, new LocalBlendOptions([["cat"], ["dog"]]), numSteps: 3);
        using var swap = new AttentionReplace(model.Tokenizer, prompts, 3, new EditSchedule(0.8, StepWindow.Until(0.4)), blend);
        var edit = pipeline.Generate(new GenerationRequest { Prompts = prompts, Seed = 8888, Steps = 3, Width = 128, Height = 128 }, null, swap);
        using var maps = swap.Aggregate(4, 4, [UNetPlace.Up, UNetPlace.Down], cross: true, select: 1);
        Assert.Equal([4L, 4, 77], maps.shape);
        Assert.Equal(2, edit.Images.Length);
        Assert.True(File.Exists(dir.File("cat.png")));
    }
}
