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

    /// <summary>
    /// Decodes PNG or JPEG bytes (any channel layout) as RGB; <paramref name="name"/> names them in errors. The size
    /// in the header is checked against <see cref="MaxPixels"/> before anything is decoded.
    /// </summary>
    public static RgbImage Decode(Stream stream, string name)
    {
        try
        {
            if (!stream.CanSeek)
            {
                var copy = new MemoryStream();
                stream.CopyTo(copy);
                copy.Position = 0;
                stream = copy;
            }
            long start = stream.Position;
            if (HeaderSize(stream) is var (w, h) && (long)w * h > MaxPixels)
                throw new UserError($"{name} is {w}x{h} pixels, more than the {MaxPixels / 1_000_000} megapixels " +
                                    "(8192x8192) p2p reads. Shrink it first; editing works at the model's size anyway.");
            stream.Position = start;
            var img = StbImageSharp.ImageResult.FromStream(stream, StbImageSharp.ColorComponents.RedGreenBlue);
            return new RgbImage(img.Width, img.Height, img.Data);
        }
        catch (Exception e) when (e is not UserError)
        {
            // The decoder's reasons are terse and sometimes blank; say what is known.
            var reason = string.IsNullOrWhiteSpace(e.Message) || !e.Message.All(c => c is >= ' ' and <= '~') ? "corrupt or truncated" : e.Message.Trim();
            throw new UserError($"{name} could not be read as an image ({reason}). Use a PNG or JPEG file.");
        }
    }

    /// <summary>Width and height from a PNG's IHDR or a JPEG's start-of-frame marker, read without decoding; null
    /// when the header is not found (the decoder then reports the file).</summary>
    static (int Width, int Height)? HeaderSize(Stream stream)
    {
        var reader = new BinaryReader(stream);
        int Big16() => (reader.ReadByte() << 8) | reader.ReadByte();
        try
        {
            var head = reader.ReadBytes(8);
            if (head.Length == 8 && head.AsSpan().SequenceEqual((byte[])[0x89, (byte)'P', (byte)'N', (byte)'G', 0x0D, 0x0A, 0x1A, 0x0A]))
            {
                var ihdr = reader.ReadBytes(16);  // length, "IHDR", width, height (big-endian)
                return ihdr.Length == 16 ? ((int)Math.Min(System.Buffers.Binary.BinaryPrimitives.ReadUInt32BigEndian(ihdr.AsSpan(8)), int.MaxValue),
                    (int)Math.Min(System.Buffers.Binary.BinaryPrimitives.ReadUInt32BigEndian(ihdr.AsSpan(12)), int.MaxValue)) : null;
            }
            if (head.Length < 2 || head[0] != 0xFF || head[1] != 0xD8) return null;
            stream.Position -= 6;
            while (true)  // JPEG segments: FF marker, big-endian length (including itself), payload
            {
                if (reader.ReadByte() != 0xFF) return null;
                int marker = reader.ReadByte();
                while (marker == 0xFF) marker = reader.ReadByte();
                if (marker is 0xD8 or 0x01 or >= 0xD0 and <= 0xD7) continue;
                int length = Big16();
                if (marker is >= 0xC0 and <= 0xCF and not (0xC4 or 0xC8 or 0xCC))
                {
                    reader.ReadByte();  // sample precision
                    int height = Big16();
                    return (Big16(), height);
                }
                if (length < 2) return null;
                stream.Position += length - 2;
            }
        }
        catch (EndOfStreamException) { return null; }
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
