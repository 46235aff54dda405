namespace PromptToPrompt.Imaging;

/// <summary>
/// Text drawn with the bitmap font the project ships (printable ASCII of DejaVu Sans Mono, 8x16 cells, made by
/// tools/FontAtlas), so captions work on machines without any installed font. Other characters are drawn as '?'.
/// </summary>
public static class BitmapFont
{
    public const int CellWidth = 8, CellHeight = 16;
    static readonly Lazy<byte[]> Atlas = new(() =>
    {
        using var stream = typeof(BitmapFont).Assembly.GetManifestResourceStream("font-atlas.png")!;
        var img = StbImageSharp.ImageResult.FromStream(stream, StbImageSharp.ColorComponents.Grey);
        return img.Data;
    });

    /// <summary>Draws <paramref name="text"/> onto <paramref name="image"/> with its top-left corner at (x, y).</summary>
    public static void Draw(RgbImage image, string text, int x, int y, (byte R, byte G, byte B) color)
    {
        var atlas = Atlas.Value;
        int atlasWidth = 95 * CellWidth;
        for (int i = 0; i < text.Length; i++)
        {
            int glyph = text[i] is >= ' ' and <= '~' ? text[i] - 32 : '?' - 32;
            for (int gy = 0; gy < CellHeight; gy++)
                for (int gx = 0; gx < CellWidth; gx++)
                {
                    int px = x + i * CellWidth + gx, py = y + gy;
                    if (px < 0 || py < 0 || px >= image.Width || py >= image.Height) continue;
                    int a = atlas[gy * atlasWidth + glyph * CellWidth + gx];
                    if (a == 0) continue;
                    int o = (py * image.Width + px) * 3;
                    image.Pixels[o] = (byte)((image.Pixels[o] * (255 - a) + color.R * a) / 255);
                    image.Pixels[o + 1] = (byte)((image.Pixels[o + 1] * (255 - a) + color.G * a) / 255);
                    image.Pixels[o + 2] = (byte)((image.Pixels[o + 2] * (255 - a) + color.B * a) / 255);
                }
        }
    }

    /// <summary>Splits text into lines of at most <paramref name="maxChars"/> characters at spaces.</summary>
    public static List<string> Wrap(string text, int maxChars)
    {
        var lines = new List<string>();
        var line = "";
        foreach (var word in text.Split(' ', StringSplitOptions.RemoveEmptyEntries))
        {
            var w = word;
            while (w.Length > maxChars) { if (line.Length > 0) { lines.Add(line); line = ""; } lines.Add(w[..maxChars]); w = w[maxChars..]; }
            if (line.Length == 0) line = w;
            else if (line.Length + 1 + w.Length <= maxChars) line += " " + w;
            else { lines.Add(line); line = w; }
        }
        if (line.Length > 0 || lines.Count == 0) lines.Add(line);
        return lines;
    }
}

/// <summary>Side-by-side images with captions under them.</summary>
public static class Grid
{
    /// <summary>
    /// Places the images in rows of <paramref name="columns"/> (default: all in one row) on a white background, each
    /// with its caption wrapped under it. Images narrower than <paramref name="minCellWidth"/> are enlarged by a whole
    /// factor so that captions stay readable.
    /// </summary>
    public static RgbImage WithCaptions(IReadOnlyList<RgbImage> images, IReadOnlyList<string> captions, int? columns = null, int gap = 8, int minCellWidth = 192)
    {
        if (images.Count == 0) throw new ArgumentException("no images");
        int factor = Math.Max(1, (int)Math.Ceiling((double)minCellWidth / images.Max(i => i.Width)));
        if (factor > 1) images = images.Select(i => i.Resize(i.Width * factor, i.Height * factor)).ToList();
        int cols = Math.Max(1, Math.Min(columns ?? images.Count, images.Count));
        int rows = (images.Count + cols - 1) / cols;
        int cellW = images.Max(i => i.Width), imgH = images.Max(i => i.Height);
        int maxChars = Math.Max(1, cellW / BitmapFont.CellWidth);
        var wrapped = captions.Select(c => BitmapFont.Wrap(c, maxChars)).ToList();
        int textH = (wrapped.Count == 0 ? 0 : wrapped.Max(w => w.Count)) * BitmapFont.CellHeight + (captions.Count > 0 ? gap : 0);
        int cellH = imgH + textH;
        int width = cols * cellW + (cols + 1) * gap, height = rows * cellH + (rows + 1) * gap;
        var grid = new RgbImage(width, height, Enumerable.Repeat((byte)255, width * height * 3).ToArray());
        for (int k = 0; k < images.Count; k++)
        {
            int x0 = gap + (k % cols) * (cellW + gap), y0 = gap + (k / cols) * (cellH + gap);
            var im = images[k];
            for (int y = 0; y < im.Height; y++)
                Array.Copy(im.Pixels, y * im.Width * 3, grid.Pixels, ((y0 + y) * width + x0) * 3, im.Width * 3);
            if (k < wrapped.Count)
                for (int l = 0; l < wrapped[k].Count; l++)
                {
                    var line = wrapped[k][l];
                    int tx = x0 + (cellW - line.Length * BitmapFont.CellWidth) / 2;
                    BitmapFont.Draw(grid, line, tx, y0 + imgH + gap / 2 + l * BitmapFont.CellHeight, (0, 0, 0));
                }
        }
        return grid;
    }
}
