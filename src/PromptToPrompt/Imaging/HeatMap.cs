using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace PromptToPrompt.Imaging;

/// <summary>Colour-mapped attention maps: viridis (perceptually uniform), alone or over an image.</summary>
public static class HeatMap
{
    // matplotlib's viridis at 0, 1/8, ..., 1 (piecewise-linear between these points).
    static readonly (double R, double G, double B)[] Viridis =
    [
        (68, 1, 84), (71, 44, 122), (59, 81, 139), (44, 113, 142), (33, 144, 141),
        (39, 173, 129), (92, 200, 99), (170, 220, 50), (253, 231, 37),
    ];

    /// <summary>The viridis colour of <paramref name="v"/> in [0, 1].</summary>
    public static (byte R, byte G, byte B) Color(double v)
    {
        v = double.IsNaN(v) ? 0 : Math.Clamp(v, 0, 1);
        double x = v * (Viridis.Length - 1);
        int i = Math.Min((int)x, Viridis.Length - 2);
        double f = x - i;
        var (a, b) = (Viridis[i], Viridis[i + 1]);
        return ((byte)Math.Round(a.R + (b.R - a.R) * f), (byte)Math.Round(a.G + (b.G - a.G) * f), (byte)Math.Round(a.B + (b.B - a.B) * f));
    }

    /// <summary>
    /// A [h, w] map resized (bilinear) to <paramref name="width"/> x <paramref name="height"/> and divided by its maximum,
    /// as the reference displays maps (negative values, possible after re-weighting, show as 0).
    /// </summary>
    public static float[] Normalized(Tensor map, int width, int height)
    {
        using var scope = NewDisposeScope();
        var m = map.to(ScalarType.Float32).cpu().unsqueeze(0).unsqueeze(0);
        m = F.interpolate(m, [height, width], mode: InterpolationMode.Bilinear, align_corners: false);
        var max = m.max().item<float>();
        if (max > 0) m = m / max;
        return m.flatten().data<float>().ToArray();
    }

    /// <summary>The map in viridis colours.</summary>
    public static RgbImage Render(Tensor map, int width, int height)
    {
        var values = Normalized(map, width, height);
        var pixels = new byte[width * height * 3];
        for (int i = 0; i < values.Length; i++)
        {
            var (r, g, b) = Color(values[i]);
            (pixels[3 * i], pixels[3 * i + 1], pixels[3 * i + 2]) = (r, g, b);
        }
        return new RgbImage(width, height, pixels);
    }

    /// <summary>The map in viridis colours over <paramref name="image"/> (opacity <paramref name="alpha"/>).</summary>
    public static RgbImage Overlay(RgbImage image, Tensor map, double alpha = 0.6)
    {
        var heat = Render(map, image.Width, image.Height);
        var pixels = new byte[heat.Pixels.Length];
        for (int i = 0; i < pixels.Length; i++)
            pixels[i] = (byte)Math.Round(alpha * heat.Pixels[i] + (1 - alpha) * image.Pixels[i]);
        return new RgbImage(image.Width, image.Height, pixels);
    }

    /// <summary>A [h, w] map of any sign shown as grey (min to max), as the reference shows self-attention components.</summary>
    public static RgbImage Grey(Tensor map, int width, int height)
    {
        using var scope = NewDisposeScope();
        var m = map.to(ScalarType.Float32).cpu();
        m = m - m.min();
        var max = m.max().item<float>();
        if (max > 0) m = m / max;
        var values = Normalized(m, width, height);
        var pixels = new byte[width * height * 3];
        for (int i = 0; i < values.Length; i++) pixels[3 * i] = pixels[3 * i + 1] = pixels[3 * i + 2] = (byte)Math.Round(255 * values[i]);
        return new RgbImage(width, height, pixels);
    }
}
