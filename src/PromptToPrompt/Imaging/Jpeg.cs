namespace PromptToPrompt.Imaging;

/// <summary>JPEG output (stb_image_write; the same pixels give the same bytes on every machine).</summary>
public static class Jpeg
{
    public static byte[] Encode(RgbImage image, int quality = 100)
    {
        using var stream = new MemoryStream();
        new StbImageWriteSharp.ImageWriter().WriteJpg(image.Pixels, image.Width, image.Height, StbImageWriteSharp.ColorComponents.RedGreenBlue, stream, quality);
        return stream.ToArray();
    }
}
