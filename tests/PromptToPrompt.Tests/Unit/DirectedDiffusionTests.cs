using PromptToPrompt.Control;
using PromptToPrompt.Models;
using PromptToPrompt.Training;
using static TorchSharp.torch;

namespace PromptToPrompt.Tests.Unit;

/// <summary>
/// Directed Diffusion's attention edit on small maps, against values worked out by hand from the authors' released
/// code (AttnCore.py: the region's maps times noise_scale * level plus the Gaussian, then 0.01 outside the kept cells).
/// </summary>
public class DirectedDiffusionTests
{
    const int Side = 4, Keys = 6;
    static readonly AttentionCall Cross = new(new AttentionLayer("up_blocks.1.attentions.0.transformer_blocks.0.attn2", UNetPlace.Up, true, 0, 1), Side, Side, Keys);

    static float[] Edit(DirectedDiffusion dd, int step, float value = 0.5f)
    {
        dd.OnStepStart(step, 10);
        using var maps = full(1, Side * Side, Keys, value);
        using var edited = dd.Edit(Cross, maps);
        return edited.data<float>().ToArray();
    }

    static float At(float[] maps, int row, int column, int token) => maps[(row * Side + column) * Keys + token];

    [Fact]
    public void Inside_the_box_the_words_and_trailing_maps_are_amplified_plus_the_gaussian_and_everything_else_is_damped()
    {
        // Prompt of 3 tokens: its word "b" at position 2, one trailing map = the end token at position 4. Box: the
        // top-left quadrant (rows 0-1, columns 0-1). Three edited steps: levels 9, 4.5, 0.
        var settings = new DirectedSettings { Regions = [new DirectedRegion([2], new Box(0, 0.5, 0, 0.5))], Steps = 3, Trailing = 1, Strength = 2 };
        using var dd = new DirectedDiffusion(settings, promptTokens: 3, maxLength: Keys);
        Assert.Equal([9.0, 4.5, 0.0], new[] { dd.Level(0), dd.Level(1), dd.Level(2) });
        var maps = Edit(dd, step: 1);
        // A 2x2 box: x = linspace(0, 2, 2) = {0, 2}, mean 1, sigma 1, so every cell gets exp(-1) / (2 pi).
        double gaussian = Math.Exp(-1) / (2 * Math.PI);
        foreach (var token in new[] { 2, 4 })
            for (int r = 0; r < Side; r++)
                for (int c = 0; c < Side; c++)
                {
                    double expected = r < 2 && c < 2 ? 0.5 * 2 * 4.5 + gaussian : 0.5 * 0.01;
                    Assert.Equal(expected, At(maps, r, c, token), 5);
                }
        foreach (var token in new[] { 0, 1, 3, 5 })
            Assert.All(Enumerable.Range(0, Side * Side), cell => Assert.Equal(0.005, At(maps, cell / Side, cell % Side, token), 6));
    }

    [Fact]
    public void Only_the_first_steps_cross_attention_is_edited()
    {
        var settings = new DirectedSettings { Regions = [new DirectedRegion([1], new Box(0, 1, 0, 1))], Steps = 2 };
        using var dd = new DirectedDiffusion(settings, 3, Keys);
        var self = Cross with { Layer = Cross.Layer with { IsCross = false } };
        dd.OnStepStart(1, 10);
        Assert.True(dd.Needs(Cross));
        Assert.False(dd.Needs(self));
        dd.OnStepStart(2, 10);
        Assert.False(dd.Needs(Cross));
        // At the last edited step the level is 0: inside the box only the Gaussian remains; at a corner of the
        // whole 4x4 grid x = y = 0, mean 2, sigma 2: exp(-1) / (8 pi).
        var maps = Edit(dd, step: 1);
        Assert.Equal(Math.Exp(-1) / (8 * Math.PI), At(maps, 0, 0, 1), 6);
    }

    [Fact]
    public void A_trailing_map_shared_by_two_boxes_is_kept_where_the_last_boxs_rows_or_columns_are()
    {
        // As the reference: the kept mask of each box's tokens is OR-ed with the box, then AND-ed with the box's
        // rows-or-columns cross, box after box, so the shared end token (position 4) keeps only the second box.
        var settings = new DirectedSettings
        {
            Regions = [new DirectedRegion([1], new Box(0, 0.5, 0, 0.5)), new DirectedRegion([2], new Box(0.5, 1, 0.5, 1))], Steps = 2, Trailing = 1,
        };
        using var dd = new DirectedDiffusion(settings, 3, Keys);
        var maps = Edit(dd, step: 1, value: 1f);
        double inBox = 1 * 1 * 0 + Math.Exp(-1) / (2 * Math.PI); // level 0 at the last of two steps
        Assert.Equal(inBox, At(maps, 0, 0, 1), 5);
        Assert.Equal(inBox, At(maps, 3, 3, 2), 5);
        Assert.Equal(0.01, At(maps, 3, 3, 1), 5);
        Assert.Equal(inBox, At(maps, 3, 3, 4), 5);
        Assert.Equal(inBox * 0.01, At(maps, 0, 0, 4), 6); // amplified by the first box, then damped: not kept
    }

    [Fact]
    public void The_gaussian_follows_the_reference_on_an_uneven_box()
    {
        // A 3x2 box at rows 1-3, columns 2-3 of a 4x4 grid: x = linspace(0, 3, 3) = {0, 1.5, 3}, mean 1, sigma 1.5;
        // y = {0, 2}, mean 1, sigma 1; scale 1 / (2 pi 1.5).
        using var g = DirectedDiffusion.Gaussian(4, 4, 1, 4, 2, 4);
        Assert.Equal(0.0608771, g[2, 2].item<float>(), 6); // x = 1.5, y = 0
        Assert.Equal(0.0264571, g[3, 3].item<float>(), 6); // x = 3, y = 2
        Assert.Equal(0, g[0, 2].item<float>());
        Assert.Equal(0, g[2, 1].item<float>());
    }

    [Theory]
    [InlineData("0,0.5,0,1.2", "outside [0, 1]")]
    [InlineData("0.6,0.5,0,1", "is empty")]
    [InlineData("0,0.5,0", "is not four numbers")]
    [InlineData("0,a,0,1", "is not four numbers")]
    public void Bad_boxes_are_refused_with_one_message(string text, string message) =>
        Assert.Contains(message, Assert.Throws<UserError>(() => Box.Parse(text, "--box")).Message);
}

/// <summary>The guidance evaluation's measures on drawn scenes, where the answer is known.</summary>
public class GuidanceMeasureTests
{
    [Fact]
    public void A_drawn_object_is_present_in_its_colour_and_centred_in_the_quadrant_it_was_drawn_in()
    {
        var scenes = new Scenes();
        var scene = scenes.Render([("circle", "red", "small", 16, 48, 8), ("star", "blue", "large", 44, 20, 14)], "white", striped: false);
        Assert.True(GuidanceEvaluation.Present(scene.Image, "white", "red"));
        Assert.True(GuidanceEvaluation.Present(scene.Image, "white", "blue"));
        Assert.False(GuidanceEvaluation.Present(scene.Image, "white", "green"));
        // The red circle at (16, 48) of 64x64: the bottom-left quadrant; the blue star at (44, 20): top right.
        Assert.True(GuidanceEvaluation.InBox(scene.Image, "white", "red", new Box(0, 0.5, 0.5, 1)));
        Assert.False(GuidanceEvaluation.InBox(scene.Image, "white", "red", new Box(0.5, 1, 0.5, 1)));
        Assert.True(GuidanceEvaluation.InBox(scene.Image, "white", "blue", new Box(0.5, 1, 0, 0.5)));
        Assert.False(GuidanceEvaluation.InBox(scene.Image, "white", "green", new Box(0, 1, 0, 1))); // not drawn
    }
}
