using PromptToPrompt.Imaging;
using PromptToPrompt.Loading;
using PromptToPrompt.Pipelines;
using PromptToPrompt.Training;

namespace PromptToPrompt.Tests.Unit;

/// <summary>
/// The instruction model the project ships (models/shapes-instruct, trained with p2p train-instruct on a p2p dataset):
/// the figures the README reports, measured on a small fixed sample of drawn scenes, and p2p instruct's default model.
/// </summary>
public class ShippedInstructModelTests(ITestOutputHelper output)
{
    public static string Folder => Path.Combine(Path.GetDirectoryName(ShippedModelTests.Folder)!, "shapes-instruct");

    [Fact]
    public void Shipped_instruction_model_edits_drawn_scenes_as_the_readme_reports()
    {
        using var model = StableDiffusionModel.Load(Folder, ModelPlacement.Cpu);
        var pipeline = new InstructPix2PixPipeline(model);
        var report = new InstructEvaluation(pipeline, null).Run(samples: 5, promptToPromptSamples: 0, seed: 0);
        output.WriteLine(report.ToTable());
        // Measured on this sample (README, "The shipped instruction model"): the instructed colour lands on the object in
        // all 5 recolourings, its mask IoU with the drawn object 0.85 on average, 4 of 5 at IoU >= 0.8; shape and size
        // changes draw the new object every time and keep the other objects (mean IoU 0.88 and 0.91, counted 1 where there
        // is none). The target for a recolouring (IoU >= 0.8 with the drawn object in 80% of cases) is reached on these
        // 5 scenes but not on the README's 20 (70%): issue 17.
        Assert.True(report.Recolour.NewColour >= 0.8, $"the instructed colour landed on the object in only {report.Recolour.NewColour:P0} of recolourings");
        Assert.True(report.Recolour.MaskIoU >= 0.75, $"recoloured objects' mask IoU with the drawn ones {report.Recolour.MaskIoU:0.00} < 0.75");
        Assert.True(report.Recolour.Both >= 0.6, $"only {report.Recolour.Both:P0} of recolourings reached the new colour at mask IoU >= 0.8 (< 60%)");
        // The 5 scenes alternate one object and two (3 and 2 of them), and the split shares add up to the whole.
        Assert.Equal(report.Recolour.Both, (3 * report.Recolour.BothOneObject + 2 * report.Recolour.BothTwoObjects) / 5, 9);
        foreach (var kind in new[] { "shape", "size" })
        {
            var r = report.Kinds[kind].Instruct;
            Assert.True(r.Instructed >= 0.8, $"{kind} instructions: the new object's measure {r.Instructed:0.00} < 0.8");
            Assert.True(r.KeptIoU >= 0.8, $"{kind} instructions keep the other objects at mean mask IoU {r.KeptIoU:0.00} < 0.8");
        }
    }

    [Fact]
    public void P2p_instruct_uses_the_shipped_instruction_model_by_default()
    {
        using var dir = new TempDir();
        var scene = new Scenes(64).Generate(0, 0, 1);
        Png.Save(dir.File("scene.png"), scene.Image);
        var (code, stdout, stderr) = CliTests.RunP2P("instruct", "--image", dir.File("scene.png"), "--instruction", "make the background blue",
            "--steps", "10", "--seed", "1", "--out", dir.File("edit.png"));
        Assert.True(code == 0, stderr);
        Assert.Contains(dir.File("edit.png"), stdout);
        Assert.Contains("shapes-instruct", Png.ReadText(dir.File("edit.png"))["parameters"]);
    }
}
