using System.IO.Compression;
using System.Text;
using PromptToPrompt.Loading;

namespace PromptToPrompt.Imaging;

/// <summary>
/// Minimal PNG writer (8-bit RGB, zlib-compressed, Up-filtered rows) with UTF-8 text chunks (iTXt), so every image
/// carries the parameters that reproduce it; and a reader for those text chunks.
/// </summary>
public static class Png
{
    internal static readonly byte[] Signature = [137, 80, 78, 71, 13, 10, 26, 10];

    public static byte[] Encode(RgbImage image, IReadOnlyDictionary<string, string>? text = null)
    {
        using var ms = new MemoryStream();
        ms.Write(Signature);
        var ihdr = new byte[13];
        WriteBigEndian(ihdr, 0, (uint)image.Width);
        WriteBigEndian(ihdr, 4, (uint)image.Height);
        ihdr[8] = 8; // bit depth
        ihdr[9] = 2; // colour type RGB
        WriteChunk(ms, "IHDR", ihdr);
        foreach (var (key, value) in text ?? new Dictionary<string, string>())
        {
            // iTXt: keyword, 0, compression flag 0, method 0, language tag "", 0, translated keyword "", 0, UTF-8 text.
            var payload = new List<byte>(Encoding.Latin1.GetBytes(key)) { 0, 0, 0, 0, 0 };
            payload.AddRange(Encoding.UTF8.GetBytes(value));
            WriteChunk(ms, "iTXt", payload.ToArray());
        }
        int stride = image.Width * 3;
        using (var raw = new MemoryStream())
        {
            using (var z = new ZLibStream(raw, CompressionLevel.Optimal, leaveOpen: true))
            {
                var row = new byte[stride + 1];
                for (int y = 0; y < image.Height; y++)
                {
                    row[0] = (byte)(y == 0 ? 0 : 2); // filter: none for the first row, Up for the rest
                    for (int i = 0; i < stride; i++)
                    {
                        byte v = image.Pixels[y * stride + i];
                        row[i + 1] = y == 0 ? v : (byte)(v - image.Pixels[(y - 1) * stride + i]);
                    }
                    z.Write(row);
                }
            }
            WriteChunk(ms, "IDAT", raw.ToArray());
        }
        WriteChunk(ms, "IEND", []);
        return ms.ToArray();
    }

    /// <summary>Writes the PNG atomically (temporary file, then rename).</summary>
    public static void Save(string path, RgbImage image, IReadOnlyDictionary<string, string>? text = null)
    {
        var bytes = Encode(image, text);
        AtomicFile.Write(path, s => s.Write(bytes));
    }

    /// <summary>The tEXt and iTXt entries of a PNG file.</summary>
    public static Dictionary<string, string> ReadText(string path)
    {
        if (!File.Exists(path)) throw new UserError($"Image not found: {path}.");
        return ReadText(File.ReadAllBytes(path), path);
    }

    /// <summary>
    /// The tEXt and iTXt entries of PNG bytes (<paramref name="name"/> names them in errors). A file that is not a
    /// complete PNG is refused (<see cref="Chunks"/>); an entry without its separators is skipped; compressed iTXt
    /// entries are skipped (this project writes them uncompressed).
    /// </summary>
    public static Dictionary<string, string> ReadText(byte[] data, string name)
    {
        if (!IsPng(data)) throw new UserError($"{name} is not a PNG file, so it carries no PNG metadata.");
        var result = new Dictionary<string, string>();
        foreach (var (type, start, length) in Chunks(data, name))
        {
            var body = data.AsSpan(start, length);
            int zero = body.IndexOf((byte)0);
            if (type == "tEXt" && zero > 0)
                result[Encoding.Latin1.GetString(body[..zero])] = Encoding.Latin1.GetString(body[(zero + 1)..]);
            else if (type == "iTXt" && zero > 0 && body.Length >= zero + 3 && body[zero + 1] == 0)
            {
                var rest = body[(zero + 3)..];  // after the compression flag and method: language, 0, translated key, 0, text
                int lang = rest.IndexOf((byte)0);
                int translated = lang < 0 ? -1 : rest[(lang + 1)..].IndexOf((byte)0);
                if (translated >= 0)
                    result[Encoding.Latin1.GetString(body[..zero])] = Encoding.UTF8.GetString(rest[(lang + 1 + translated + 1)..]);
            }
        }
        return result;
    }

    internal static bool IsPng(byte[] data) => data.Length >= 8 && data.AsSpan(0, 8).SequenceEqual(Signature);

    /// <summary>Every chunk of PNG bytes up to IEND as (type, start of its data, length), refusing with a
    /// <see cref="UserError"/> a chunk that runs past the end or a file that ends before IEND.</summary>
    internal static IEnumerable<(string Type, int Start, int Length)> Chunks(byte[] data, string name)
    {
        for (long pos = 8; ; )
        {
            if (pos + 12 > data.Length)
                throw new UserError($"{name} could not be read as an image (truncated: the PNG ends before its IEND chunk). Use a PNG or JPEG file.");
            long length = ReadBigEndian(data, (int)pos);
            if (length > data.Length - pos - 12)
                throw new UserError($"{name} could not be read as an image (truncated: a PNG chunk at byte {pos} runs past the end). Use a PNG or JPEG file.");
            string type = Encoding.ASCII.GetString(data, (int)pos + 4, 4);
            yield return (type, (int)pos + 8, (int)length);
            if (type == "IEND") yield break;
            pos += 12 + length;
        }
    }

    static void WriteChunk(Stream s, string type, byte[] data)
    {
        var header = new byte[8];
        WriteBigEndian(header, 0, (uint)data.Length);
        Encoding.ASCII.GetBytes(type, 0, 4, header, 4);
        s.Write(header);
        s.Write(data);
        uint crc = Crc32(header.AsSpan(4, 4), 0xFFFFFFFFu);
        crc = Crc32(data, crc) ^ 0xFFFFFFFFu;
        var c = new byte[4];
        WriteBigEndian(c, 0, crc);
        s.Write(c);
    }

    static readonly uint[] CrcTable = Enumerable.Range(0, 256).Select(n =>
    {
        uint c = (uint)n;
        for (int k = 0; k < 8; k++) c = (c & 1) != 0 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        return c;
    }).ToArray();

    static uint Crc32(ReadOnlySpan<byte> data, uint crc)
    {
        foreach (var b in data) crc = CrcTable[(crc ^ b) & 0xFF] ^ (crc >> 8);
        return crc;
    }

    static void WriteBigEndian(byte[] buffer, int offset, uint value)
    {
        buffer[offset] = (byte)(value >> 24);
        buffer[offset + 1] = (byte)(value >> 16);
        buffer[offset + 2] = (byte)(value >> 8);
        buffer[offset + 3] = (byte)value;
    }

    internal static uint ReadBigEndian(byte[] b, int o) => (uint)(b[o] << 24 | b[o + 1] << 16 | b[o + 2] << 8 | b[o + 3]);
}
