using TorchSharp;
using static TorchSharp.torch;

namespace PromptToPrompt.Imaging;

/// <summary>How a photo is brought to the model's square size.</summary>
public enum FitMode
{
    /// <summary>The reference's <c>load_512</c>: centre-crop to a square (the shorter side), then resize.</summary>
    Crop,
    /// <summary>Keep the whole photo: resize the longer side to the target and pad the rest with black.</summary>
    Pad,
}

/// <summary>Reads photos for inversion: PNG or JPEG, any channel layout, EXIF orientation applied.</summary>
public static class ImageInput
{
    /// <summary>
    /// Loads <paramref name="path"/> as RGB (grey is expanded, an alpha channel is dropped as the reference does),
    /// turns it upright according to its EXIF orientation, and brings it to <paramref name="width"/> x
    /// <paramref name="height"/> with <paramref name="fit"/> (bicubic, antialiased when shrinking, like PIL's resize).
    /// </summary>
    public static RgbImage Load(string path, int width, int height, FitMode fit = FitMode.Crop) => Fit(LoadUpright(path), width, height, fit);

    /// <summary>Loads <paramref name="path"/> as RGB at its own size, turned upright according to its EXIF orientation.</summary>
    public static RgbImage LoadUpright(string path) => ApplyOrientation(RgbImage.Load(path), ExifOrientation(File.ReadAllBytes(path)));

    /// <summary>
    /// Resized with PIL's Lanczos filter (<c>Image.resize(size, LANCZOS)</c>, as diffusers' preprocessing resizes): support 3,
    /// widened by the scale when shrinking, horizontal pass then vertical, each in PIL's 22-bit fixed point with 8-bit rounding.
    /// </summary>
    public static RgbImage Lanczos(RgbImage image, int width, int height)
    {
        var result = image;
        if (width != image.Width) result = LanczosPass(result, width, horizontal: true);
        if (height != image.Height) result = LanczosPass(result, height, horizontal: false);
        return result;
    }

    const int PrecisionBits = 32 - 8 - 2;

    static RgbImage LanczosPass(RgbImage image, int outSize, bool horizontal)
    {
        int inSize = horizontal ? image.Width : image.Height;
        double scale = (double)inSize / outSize, filterScale = Math.Max(scale, 1.0), support = 3.0 * filterScale;
        static double Sinc(double x) => x == 0 ? 1 : Math.Sin(x * Math.PI) / (x * Math.PI);
        static double Filter(double x) => x >= -3.0 && x < 3.0 ? Sinc(x) * Sinc(x / 3) : 0;
        var starts = new int[outSize];
        var weights = new int[outSize][];
        for (int o = 0; o < outSize; o++)
        {
            double center = (o + 0.5) * scale;
            int min = Math.Max((int)(center - support + 0.5), 0), max = Math.Min((int)(center + support + 0.5), inSize) - min;
            var k = new double[max];
            double sum = 0;
            for (int x = 0; x < max; x++) sum += k[x] = Filter((x + min - center + 0.5) / filterScale);
            starts[o] = min;
            weights[o] = k.Select(w => sum == 0 ? 0 : w / sum).Select(w => (int)(w < 0 ? -0.5 + w * (1 << PrecisionBits) : 0.5 + w * (1 << PrecisionBits))).ToArray();
        }
        int ow = horizontal ? outSize : image.Width, oh = horizontal ? image.Height : outSize;
        var pixels = new byte[ow * oh * 3];
        for (int y = 0; y < oh; y++)
            for (int x = 0; x < ow; x++)
            {
                int o = horizontal ? x : y;
                var k = weights[o];
                for (int c = 0; c < 3; c++)
                {
                    long acc = 1L << (PrecisionBits - 1);
                    for (int j = 0; j < k.Length; j++)
                    {
                        int sx = horizontal ? starts[o] + j : x, sy = horizontal ? y : starts[o] + j;
                        acc += image.Pixels[(sy * image.Width + sx) * 3 + c] * (long)k[j];
                    }
                    pixels[(y * ow + x) * 3 + c] = (byte)Math.Clamp(acc >> PrecisionBits, 0, 255);
                }
            }
        return new RgbImage(ow, oh, pixels);
    }

    public static RgbImage Fit(RgbImage image, int width, int height, FitMode fit)
    {
        if (fit == FitMode.Crop)
        {
            double targetAspect = (double)width / height;
            int cw = image.Width, ch = image.Height;
            if ((double)cw / ch > targetAspect) cw = (int)Math.Round(ch * targetAspect); else ch = (int)Math.Round(cw / targetAspect);
            var cropped = Crop(image, (image.Width - cw) / 2, (image.Height - ch) / 2, cw, ch);
            return Bicubic(cropped, width, height);
        }
        double scale = Math.Min((double)width / image.Width, (double)height / image.Height);
        int w = Math.Max(1, (int)Math.Round(image.Width * scale)), h = Math.Max(1, (int)Math.Round(image.Height * scale));
        var resized = Bicubic(image, w, h);
        var padded = new RgbImage(width, height, new byte[width * height * 3]);
        int x0 = (width - w) / 2, y0 = (height - h) / 2;
        for (int y = 0; y < h; y++)
            Array.Copy(resized.Pixels, y * w * 3, padded.Pixels, ((y0 + y) * width + x0) * 3, w * 3);
        return padded;
    }

    static RgbImage Crop(RgbImage image, int x0, int y0, int w, int h)
    {
        var pixels = new byte[w * h * 3];
        for (int y = 0; y < h; y++)
            Array.Copy(image.Pixels, ((y0 + y) * image.Width + x0) * 3, pixels, y * w * 3, w * 3);
        return new RgbImage(w, h, pixels);
    }

    static RgbImage Bicubic(RgbImage image, int width, int height)
    {
        if (image.Width == width && image.Height == height) return image;
        using var scope = NewDisposeScope();
        var t = tensor(image.Pixels, [1, image.Height, image.Width, 3]).permute(0, 3, 1, 2).to(ScalarType.Float32);
        t = nn.functional.interpolate(t, [height, width], mode: InterpolationMode.Bicubic, align_corners: false,
            antialias: width < image.Width || height < image.Height);
        var bytes = t.round().clamp(0, 255).to(ScalarType.Byte).permute(0, 2, 3, 1).contiguous();
        return new RgbImage(width, height, bytes.data<byte>().ToArray());
    }

    /// <summary>The EXIF orientation (1..8) of a JPEG file, or 1 when there is none.</summary>
    public static int ExifOrientation(byte[] data)
    {
        if (data.Length < 4 || data[0] != 0xFF || data[1] != 0xD8) return 1;
        int pos = 2;
        while (pos + 4 <= data.Length && data[pos] == 0xFF)
        {
            int marker = data[pos + 1];
            int length = (data[pos + 2] << 8) | data[pos + 3];
            if (marker == 0xDA || length < 2) break; // start of scan: no more metadata
            int body = pos + 4;
            if (marker == 0xE1 && body + 6 <= data.Length && data.AsSpan(body, 6).SequenceEqual("Exif\0\0"u8))
                return ReadTiffOrientation(data, body + 6, Math.Min(data.Length, pos + 2 + length));
            pos += 2 + length;
        }
        return 1;
    }

    static int ReadTiffOrientation(byte[] d, int tiff, int end)
    {
        if (tiff + 8 > end) return 1;
        bool little = d[tiff] == 'I';
        int U16(int o) => little ? d[o] | d[o + 1] << 8 : d[o] << 8 | d[o + 1];
        int U32(int o) => little ? d[o] | d[o + 1] << 8 | d[o + 2] << 16 | d[o + 3] << 24 : d[o] << 24 | d[o + 1] << 16 | d[o + 2] << 8 | d[o + 3];
        int ifd = tiff + U32(tiff + 4);
        if (ifd + 2 > end) return 1;
        int count = U16(ifd);
        for (int i = 0; i < count; i++)
        {
            int entry = ifd + 2 + i * 12;
            if (entry + 12 > end) break;
            if (U16(entry) == 0x0112)
            {
                int value = U16(entry + 8);
                return value is >= 1 and <= 8 ? value : 1;
            }
        }
        return 1;
    }

    /// <summary>Turns an image stored with EXIF orientation <paramref name="orientation"/> upright.</summary>
    public static RgbImage ApplyOrientation(RgbImage image, int orientation)
    {
        if (orientation <= 1 || orientation > 8) return image;
        int w = image.Width, h = image.Height;
        bool swap = orientation >= 5;
        int ow = swap ? h : w, oh = swap ? w : h;
        var pixels = new byte[image.Pixels.Length];
        for (int y = 0; y < oh; y++)
            for (int x = 0; x < ow; x++)
            {
                // Source pixel for output (x, y), per the EXIF definition of each orientation.
                var (sx, sy) = orientation switch
                {
                    2 => (w - 1 - x, y),
                    3 => (w - 1 - x, h - 1 - y),
                    4 => (x, h - 1 - y),
                    5 => (y, x),
                    6 => (y, h - 1 - x),
                    7 => (w - 1 - y, h - 1 - x),
                    _ => (w - 1 - y, x), // 8
                };
                Array.Copy(image.Pixels, (sy * w + sx) * 3, pixels, (y * ow + x) * 3, 3);
            }
        return new RgbImage(ow, oh, pixels);
    }
}
