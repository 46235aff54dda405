// Renders printable ASCII (32..126) of a monospace TrueType font into one grayscale atlas row: glyph i occupies
// columns [i*W, (i+1)*W). The cell size is written into the PNG's name-independent header (width = 95*W).
using SkiaSharp;

var (fontPath, output) = (args[0], args[1]);
const int size = 14, cellW = 8, cellH = 16;
using var typeface = SKTypeface.FromFile(fontPath) ?? throw new Exception("cannot load " + fontPath);
using var font = new SKFont(typeface, size) { Edging = SKFontEdging.Antialias, Hinting = SKFontHinting.Full };
using var paint = new SKPaint { Color = SKColors.White, IsAntialias = true };
using var bitmap = new SKBitmap(new SKImageInfo(95 * cellW, cellH, SKColorType.Gray8, SKAlphaType.Opaque));
using (var canvas = new SKCanvas(bitmap))
{
    canvas.Clear(SKColors.Black);
    var metrics = font.Metrics;
    float baseline = (cellH - (metrics.Descent - metrics.Ascent)) / 2 - metrics.Ascent;
    for (int c = 32; c < 127; c++)
        canvas.DrawText(((char)c).ToString(), (c - 32) * cellW, baseline, font, paint);
}
using var data = bitmap.Encode(SKEncodedImageFormat.Png, 100);
File.WriteAllBytes(output, data.ToArray());
Console.WriteLine($"{output}: {bitmap.Width}x{bitmap.Height}, cell {cellW}x{cellH}");
