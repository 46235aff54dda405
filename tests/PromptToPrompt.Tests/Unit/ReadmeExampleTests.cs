using PromptToPrompt.Control;
using PromptToPrompt.Editing;
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

    [Fact]
    public void The_editing_layer_example_runs()
    {
        using var model = StableDiffusionModel.Load(ShippedModelTests.Folder, ModelPlacement.Cpu);
        using var dir = new TempDir();
        using var cache = new SourceCache(budgetMb: 4096, directory: dir.File("cache"));
        var session = new EditSession(model, new SourceSettings { Prompt = "a large red circle on a white background", Seed = 3, Steps = 5, Scheduler = "ddim" }, cache);
        using var blue = session.Edit(new EditRequest(["a large blue circle on a white background"], new EditDescription { Edit = EditKind.Replace }));
        var sweep = new Sweep("a large red star on a white background", new EditDescription { Edit = EditKind.Replace },
                              [new SweepAxis(SweepParameter.CrossReplace, [0.2, 0.6, 1.0])]);
        var cells = session.EditAll(sweep.Cells(session.Source.Prompt).Select(c => c.Request).ToList(), batch: 4);
        Assert.Equal(3, cells.Count);
        Assert.All(cells, c => Assert.Same(blue.Images[0], c.Images[0]));
        Assert.Single(Directory.GetFiles(dir.File("cache"), "*.safetensors"));
        foreach (var c in cells) c.Dispose();
    }
}
