using TorchSharp;
using static TorchSharp.torch;

namespace PromptToPrompt.Imaging;

/// <summary>An 8-bit RGB image, row-major HWC.</summary>
public sealed record RgbImage(int Width, int Height, byte[] Pixels)
{
    /// <summary>
    /// Converts decoded VAE output [N, 3, H, W] in [-1, 1] to images exactly as the reference does:
    /// <c>uint8(clamp(x / 2 + 0.5, 0, 1) * 255)</c> in float32, truncating as the Prompt-to-Prompt code does, or
    /// rounding half to even as diffusers' <c>numpy_to_pil</c> does (<paramref name="round"/>).
    /// </summary>
    public static RgbImage[] FromDecoded(Tensor decoded, bool round = false)
    {
        using var scope = NewDisposeScope();
        var x = (decoded.to(ScalarType.Float32) / 2 + 0.5).clamp(0.0, 1.0);
        var scaled = x.permute(0, 2, 3, 1) * 255;
        var bytes = (round ? scaled.round() : scaled).to(ScalarType.Byte).cpu().contiguous();
        int n = (int)bytes.shape[0], h = (int)bytes.shape[1], w = (int)bytes.shape[2];
        var all = bytes.data<byte>().ToArray();
        return Enumerable.Range(0, n).Select(i => new RgbImage(w, h, all.AsSpan(i * h * w * 3, h * w * 3).ToArray())).ToArray();
    }

    /// <summary>Reads a PNG or JPEG file (any channel layout) as RGB.</summary>
    public static RgbImage Load(string path)
    {
        if (!File.Exists(path)) throw new UserError($"Image not found: {path}.");
        using var stream = File.OpenRead(path);
        return Decode(stream, path);
    }

    /// <summary>Decodes PNG or JPEG bytes (any channel layout) as RGB; <paramref name="name"/> names them in errors.</summary>
    public static RgbImage Decode(Stream stream, string name)
    {
        try
        {
            var img = StbImageSharp.ImageResult.FromStream(stream, StbImageSharp.ColorComponents.RedGreenBlue);
            return new RgbImage(img.Width, img.Height, img.Data);
        }
        catch (Exception e) when (e is not UserError)
        {
            throw new UserError($"{name} could not be read as an image ({e.Message}). Use a PNG or JPEG file.");
        }
    }

    /// <summary>Resized with bilinear filtering (antialiased when shrinking).</summary>
    public RgbImage Resize(int width, int height)
    {
        if (width == Width && height == Height) return this;
        using var scope = NewDisposeScope();
        var t = tensor(Pixels, [1, Height, Width, 3]).permute(0, 3, 1, 2).to(ScalarType.Float32);
        t = nn.functional.interpolate(t, [height, width], mode: InterpolationMode.Bilinear, align_corners: false, antialias: width < Width || height < Height);
        var bytes = t.round().clamp(0, 255).to(ScalarType.Byte).permute(0, 2, 3, 1).contiguous();
        return new RgbImage(width, height, bytes.data<byte>().ToArray());
    }

    /// <summary>[1, 3, H, W] float32 tensor scaled to [-1, 1] (u8 / 127.5 - 1).</summary>
    public Tensor ToTensor()
    {
        using var scope = NewDisposeScope();
        var t = tensor(Pixels, [Height, Width, 3]).to(ScalarType.Float32) / 127.5 - 1;
        return t.permute(2, 0, 1).unsqueeze(0).contiguous().MoveToOuterDisposeScope();
    }
}
