using PromptToPrompt.Imaging;
using static TorchSharp.torch;

namespace PromptToPrompt.Tests.Unit;

public class LatentPreviewTests
{
    [Fact]
    public void The_learned_map_recovers_an_affine_latent_to_rgb_relation()
    {
        var preview = new LatentPreview();
        using var latents = randn([2, 4, 8, 8], generator: new TorchSharp.torch.Generator(5));
        // Images whose 4x4 blocks are an affine function of the latent pixel under them.
        double[,] map = { { 30, -10, 5 }, { 0, 25, -5 }, { 10, 10, 20 }, { -15, 5, 30 } };
        double[] bias = { 128, 120, 110 };
        var z = latents.data<float>().ToArray();
        var images = new List<RgbImage>();
        for (int b = 0; b < 2; b++)
        {
            var pixels = new byte[32 * 32 * 3];
            for (int y = 0; y < 32; y++)
                for (int x = 0; x < 32; x++)
                    for (int j = 0; j < 3; j++)
                    {
                        double v = bias[j];
                        for (int k = 0; k < 4; k++) v += map[k, j] * z[((b * 4 + k) * 8 + y / 4) * 8 + x / 4];
                        pixels[(y * 32 + x) * 3 + j] = (byte)Math.Clamp(Math.Round(v), 0, 255);
                    }
            images.Add(new RgbImage(32, 32, pixels));
        }
        Assert.Null(preview.Render(latents[0]));
        preview.Learn(latents, images);
        var rendered = preview.Render(latents[1])!;
        Assert.Equal((8, 8), (rendered.Width, rendered.Height));
        // Clamping at 0/255 bends the relation slightly; away from it the map is recovered to within rounding.
        int worst = 0;
        for (int y = 0; y < 8; y++)
            for (int x = 0; x < 8; x++)
                for (int j = 0; j < 3; j++)
                {
                    int expected = images[1].Pixels[((y * 4) * 32 + x * 4) * 3 + j];
                    if (expected is > 5 and < 250) worst = Math.Max(worst, Math.Abs(expected - rendered.Pixels[(y * 8 + x) * 3 + j]));
                }
        Assert.InRange(worst, 0, 3);
    }
}
