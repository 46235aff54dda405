using System.Text;
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

    /// <summary>The largest image read (8192 x 8192): its RGB bytes and the decoder's buffers stay under about 0.5 GB.</summary>
    public const long MaxPixels = 8192L * 8192;

    /// <summary>The largest image file read.</summary>
    public const long MaxFileBytes = 256L << 20;

    /// <summary>
    /// Decodes PNG or JPEG bytes (any channel layout) as RGB; <paramref name="name"/> names them in errors. Before
    /// anything is decoded, the file's structure is walked (every PNG chunk or JPEG segment inside the file, up to
    /// IEND or EOI), so a truncated file is refused rather than handed to the decoder (stb_image loops forever on
    /// some truncated JPEGs), and the size in the header is checked against <paramref name="maxPixels"/> (at most
    /// <see cref="MaxPixels"/>).
    /// </summary>
    public static RgbImage Decode(Stream stream, string name, long maxPixels = MaxPixels)
    {
        byte[] data;
        using (var copy = new MemoryStream())
        {
            var buffer = new byte[81920];
            int read;
            while ((read = stream.Read(buffer)) > 0)
            {
                copy.Write(buffer, 0, read);
                if (copy.Length > MaxFileBytes)
                    throw new UserError($"{name} is larger than {MaxFileBytes >> 20} MB, more than p2p reads as an image. Use a smaller PNG or JPEG file.");
            }
            data = copy.ToArray();
        }
        var (w, h) = ReadSize(data, name);
        if ((long)w * h > Math.Min(maxPixels, MaxPixels))
            throw new UserError($"{name} has {w}x{h} pixels; at most {Math.Min(maxPixels, MaxPixels)} are read. " +
                                "Shrink it first; editing works at the model's size anyway.");
        try
        {
            var img = StbImageSharp.ImageResult.FromMemory(data, StbImageSharp.ColorComponents.RedGreenBlue);
            return new RgbImage(img.Width, img.Height, img.Data);
        }
        catch (Exception e) when (e is not UserError)
        {
            // The decoder's reasons are terse and sometimes blank; say what is known.
            var reason = string.IsNullOrWhiteSpace(e.Message) || !e.Message.All(c => c is >= ' ' and <= '~') ? "corrupt" : e.Message.Trim();
            throw new UserError($"{name} could not be read as an image ({reason}). Use a PNG or JPEG file.");
        }
    }

    /// <summary>Width and height of a complete PNG (IHDR first, chunks inside the file, IEND) or JPEG (segments
    /// inside the file, a start-of-frame before the scan, EOI at the end), without decoding; anything else is
    /// refused with a <see cref="UserError"/> naming <paramref name="name"/>.</summary>
    static (int Width, int Height) ReadSize(byte[] d, string name)
    {
        string Bad(string why) => $"{name} could not be read as an image ({why}). Use a PNG or JPEG file.";
        static int Big16(byte[] b, long o) => (b[o] << 8) | b[o + 1];
        if (Png.IsPng(d))
        {
            var chunks = Png.Chunks(d, name).ToList();
            if (chunks[0] is not ("IHDR", _, >= 8)) throw new UserError(Bad("no PNG header"));
            long width = Png.ReadBigEndian(d, chunks[0].Start), height = Png.ReadBigEndian(d, chunks[0].Start + 4);
            return ((int)Math.Min(width, int.MaxValue), (int)Math.Min(height, int.MaxValue));
        }
        if (d.Length >= 3 && d[0] == 0xFF && d[1] == 0xD8)
        {
            (int, int)? size = null;
            for (long pos = 2; ; )
            {
                if (pos + 2 > d.Length) throw new UserError(Bad("truncated: the JPEG ends before its EOI marker"));
                if (d[pos] != 0xFF) throw new UserError(Bad($"no JPEG marker at byte {pos}"));
                int marker = d[pos + 1];
                pos += 2;
                if (marker == 0xFF) { pos--; continue; }  // fill byte
                if (marker == 0xD9) break;
                if (marker is 0x01 or >= 0xD0 and <= 0xD7) continue;
                if (pos + 2 > d.Length || Big16(d, pos) < 2 || pos + Big16(d, pos) > d.Length)
                    throw new UserError(Bad($"truncated: a JPEG segment at byte {pos - 2} runs past the end"));
                int length = Big16(d, pos);
                if (marker is >= 0xC0 and <= 0xCF and not (0xC4 or 0xC8 or 0xCC))
                {
                    if (length < 7) throw new UserError(Bad("a malformed JPEG frame header"));
                    size = (Big16(d, pos + 5), Big16(d, pos + 3));
                }
                pos += length;
                if (marker == 0xDA)
                {
                    if (size is null) throw new UserError(Bad("a JPEG scan before its frame header"));
                    while (pos + 1 < d.Length && !(d[pos] == 0xFF && d[pos + 1] != 0 && d[pos + 1] is not (>= 0xD0 and <= 0xD7))) pos++;
                }
            }
            return size ?? throw new UserError(Bad("a JPEG without a frame header"));
        }
        throw new UserError(Bad("not a PNG or JPEG file"));
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
