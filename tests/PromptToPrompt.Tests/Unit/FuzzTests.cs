using System.Buffers.Binary;
using System.Diagnostics;
using System.Text;
using CsCheck;
using PromptToPrompt.Imaging;
using PromptToPrompt.Loading;
using PromptToPrompt.Pipelines;
using PromptToPrompt.Text;
using static TorchSharp.torch;

namespace PromptToPrompt.Tests.Unit;

/// <summary>
/// Property-based fuzzing (CsCheck) of every parser that reads a user's file: safetensors headers, inversion files,
/// edit specs, PNG/JPEG input, PNG metadata, and the prompt text fixer. Inputs are valid files mutated by shrinkable
/// edits (bit flips, overwrites, insertions, deletions, truncation, 64-bit length fields set to extreme values,
/// numbers in text replaced by extreme ones) and, for safetensors, headers generated from scratch. Each input must
/// be accepted or refused with a <see cref="UserError"/> — nothing else — within <see cref="HangSeconds"/>, and
/// within the allocation bound stated by each test. The count per parser is P2P_FUZZ_ITERATIONS (default 10,000; the
/// README gives the command for longer runs). P2P_FUZZ_LAST=PREFIX writes each input to PREFIX{thread} before it
/// is parsed, so the input of a hang is on disk when the run is killed.
/// </summary>
public class FuzzTests
{
    static readonly long Iterations = long.TryParse(Environment.GetEnvironmentVariable("P2P_FUZZ_ITERATIONS"), out var n) ? n : 10_000;
    const double HangSeconds = 10;

    record Mutation(int Kind, int Position, int Length, byte[] Bytes);

    static readonly long[] ExtremeLongs = [0, -1, 1, long.MaxValue, long.MinValue, 1L << 60, int.MaxValue, (long)int.MaxValue + 1, 255, 1L << 32];
    static readonly string[] ExtremeNumbers = ["0", "-1", "1e400", "-1e400", "1152921504606846976", "99999999999999999999999", "0.5", "\"x\"", "null", "[]", "2147483648", "-0"];

    static readonly Gen<Mutation> OneMutation = Gen.Select(Gen.Int[0, 6], Gen.Int[0, int.MaxValue], Gen.Int[0, 64], Gen.Byte.Array[1, 16],
        (kind, position, length, bytes) => new Mutation(kind, position, length, bytes));

    /// <summary>One of <paramref name="corpus"/> with one to six mutations applied.</summary>
    static Gen<byte[]> Mutated(byte[][] corpus) =>
        Gen.Select(Gen.Int[0, corpus.Length - 1], OneMutation.Array[1, 6], (i, mutations) => mutations.Aggregate(corpus[i], Apply));

    static byte[] Apply(byte[] data, Mutation m)
    {
        var list = data.ToList();
        int at = list.Count == 0 ? 0 : m.Position % (list.Count + 1);
        switch (m.Kind)
        {
            case 0:  // flip bits of one byte
                if (at < list.Count) list[at] ^= m.Bytes[0] == 0 ? (byte)1 : m.Bytes[0];
                break;
            case 1:  // overwrite
                for (int k = 0; k < m.Bytes.Length && at + k < list.Count; k++) list[at + k] = m.Bytes[k];
                break;
            case 2:  // insert
                list.InsertRange(at, m.Bytes);
                break;
            case 3:  // delete
                list.RemoveRange(at, Math.Min(m.Length, list.Count - at));
                break;
            case 4:  // truncate
                list.RemoveRange(at, list.Count - at);
                break;
            case 5:  // an extreme 64-bit little-endian value (a safetensors header length, a PNG length pair)
                var bytes = new byte[8];
                BinaryPrimitives.WriteInt64LittleEndian(bytes, ExtremeLongs[m.Length % ExtremeLongs.Length]);
                for (int k = 0; k < 8 && at + k < list.Count; k++) list[at + k] = bytes[k];
                break;
            default:  // replace the n-th number in the text by an extreme one
                var text = Encoding.Latin1.GetString(list.ToArray());
                var numbers = System.Text.RegularExpressions.Regex.Matches(text, @"-?\d+(\.\d+)?([eE]-?\d+)?");
                if (numbers.Count == 0) break;
                var hit = numbers[m.Length % numbers.Count];
                text = text[..hit.Index] + ExtremeNumbers[m.Bytes[0] % ExtremeNumbers.Length] + text[(hit.Index + hit.Length)..];
                return Encoding.Latin1.GetBytes(text);
        }
        return list.ToArray();
    }

    /// <summary>Runs <paramref name="parse"/> on every input: a UserError is an accepted refusal; anything else, a
    /// hang or an allocation over <paramref name="maxManagedBytes"/> (of this thread, for that input) fails.</summary>
    static void Fuzz(Gen<byte[]> inputs, Action<byte[]> parse, Func<byte[], long> maxManagedBytes) =>
        inputs.Sample(input =>
        {
            long before = GC.GetAllocatedBytesForCurrentThread();
            var clock = Stopwatch.StartNew();
            if (Environment.GetEnvironmentVariable("P2P_FUZZ_LAST") is { } last) File.WriteAllBytes(last + Environment.CurrentManagedThreadId, input);
            try { parse(input); }
            catch (UserError) { }
            double seconds = clock.Elapsed.TotalSeconds;
            long allocated = GC.GetAllocatedBytesForCurrentThread() - before;
            if (seconds > HangSeconds) throw new Exception($"took {seconds:F1} s on a {input.Length}-byte input");
            if (allocated > maxManagedBytes(input)) throw new Exception($"allocated {allocated} bytes on a {input.Length}-byte input");
        }, iter: Iterations, print: input => $"{input.Length} bytes: {Convert.ToBase64String(input[..Math.Min(input.Length, 600)])}");

    /// <summary>Writes the input to a file of its own (the parsers read paths), runs the parser, deletes it.</summary>
    static Action<byte[]> OnFile(string extension, Action<string> parse) => input =>
    {
        var path = Path.Combine(Path.GetTempPath(), $"p2p-fuzz-{Guid.NewGuid():N}{extension}");
        File.WriteAllBytes(path, input);
        try { parse(path); }
        finally { File.Delete(path); }
    };

    static byte[] SafetensorsBytes(Dictionary<string, Tensor> tensors, Dictionary<string, string>? metadata = null)
    {
        var path = Path.Combine(Path.GetTempPath(), $"p2p-fuzz-seed-{Guid.NewGuid():N}.safetensors");
        SafetensorsFile.Write(path, tensors, metadata);
        var bytes = File.ReadAllBytes(path);
        File.Delete(path);
        return bytes;
    }

    static readonly Dictionary<string, string> InversionMetadata = new()
    {
        ["format"] = InversionFile.Format, ["prompt"] = "a red ball on a table", ["method"] = "null-text", ["steps"] = "3",
        ["guidance_scale"] = "7.5", ["model"] = "tiny", ["model_fingerprint"] = "abc123", ["width"] = "64", ["height"] = "64",
    };

    static byte[][] SafetensorsCorpus() =>
    [
        SafetensorsBytes(new() { ["latent"] = randn(1, 4, 8, 8) }),
        SafetensorsBytes(new() { ["a"] = randn(3, 5).half(), ["b"] = arange(6L), ["c"] = ones(2, 2).to(ScalarType.BFloat16) }, new() { ["k"] = "v" }),
        SafetensorsBytes(new() { ["x_T"] = randn(1, 4, 8, 8), ["null_embeddings"] = randn(3, 7, 16) }, InversionMetadata),
    ];

    [Fact]
    public void Safetensors_headers_are_read_or_refused_without_allocating_what_they_claim()
    {
        // Bound: opening reads only the header (managed: the header bytes, its string and JSON tree, under 16x the
        // file plus 1 MB); a tensor read allocates its own bytes, which validation keeps inside the file.
        var generated = Gen.Select(Gen.OneOf("F32", "F16", "BF16", "I64", "U8", "BOOL", "F8", ""), Gen.Long[-2, 1L << 62].Array[0, 4],
            Gen.Long[-2, 1L << 62].Array[0, 3], Gen.Int[0, 256], (dtype, shape, offsets, data) =>
            {
                var header = $"{{\"t\":{{\"dtype\":\"{dtype}\",\"shape\":[{string.Join(",", shape)}],\"data_offsets\":[{string.Join(",", offsets)}]}}}}";
                var json = Encoding.UTF8.GetBytes(header);
                var bytes = new byte[8 + json.Length + data];
                BinaryPrimitives.WriteInt64LittleEndian(bytes, json.Length);
                json.CopyTo(bytes, 8);
                return bytes;
            });
        Fuzz(Gen.OneOf(Mutated(SafetensorsCorpus()), generated), OnFile(".safetensors", path =>
        {
            using var file = new SafetensorsFile(path);
            long size = new FileInfo(path).Length;
            foreach (var e in file.Entries.Values)
            {
                Assert.True(e.End - e.Begin <= size, $"entry '{e.Name}' claims {e.End - e.Begin} bytes of a {size}-byte file");
                using var t = file.Read(e.Name);
                Assert.Equal(e.Shape, t.shape);
            }
        }), input => 16L * input.Length + (1 << 20));
    }

    [Fact]
    public void Inversion_files_are_loaded_or_refused()
    {
        var direct = new Dictionary<string, string>(InversionMetadata) { ["method"] = "direct" };
        byte[][] corpus =
        [
            SafetensorsBytes(new() { ["x_T"] = randn(1, 4, 8, 8), ["null_embeddings"] = randn(3, 7, 16) }, InversionMetadata),
            SafetensorsBytes(new() { ["x_T"] = randn(1, 4, 8, 8), ["null_embeddings"] = randn(3, 7, 16), ["ddim_latents"] = randn(4, 4, 8, 8) }, direct),
        ];
        Fuzz(Mutated(corpus), OnFile(".safetensors", path =>
        {
            using var inversion = InversionFile.Load(path);
            Assert.True(inversion.Steps > 0 && double.IsFinite(inversion.GuidanceScale));
            Assert.Equal(inversion.Steps, inversion.PerStepUnconditional.shape[0]);
            Assert.NotNull(inversion.Prompt);
        }), input => 16L * input.Length + (1 << 20));
    }

    [Fact]
    public void Edit_specs_are_parsed_or_refused()
    {
        var examples = Path.Combine(TestProcess.RepositoryRoot, "examples");
        var corpus = Directory.GetFiles(examples, "*.json").Select(File.ReadAllBytes).ToArray();
        Assert.True(corpus.Length >= 5, $"the spec corpus is the examples folder: {examples}");
        Fuzz(Mutated(corpus), OnFile(".json", path => EditSpec.Load(path)), input => 64L * input.Length + (1 << 20));
    }

    static byte[][] ImageCorpus()
    {
        var pixels = Enumerable.Range(0, 16 * 12 * 3).Select(i => (byte)(i * 7)).ToArray();
        var image = new RgbImage(16, 12, pixels);
        return [Png.Encode(image), Png.Encode(image, new Dictionary<string, string> { ["parameters"] = "a red circle\nSteps: 5", ["prompt-to-prompt"] = "{\"steps\":5}" }),
                Jpeg.Encode(image), Jpeg.Encode(image, 50)];
    }

    [Fact]
    public void Png_and_jpeg_input_is_decoded_or_refused_within_the_pixel_limit()
    {
        // Bound: the decoder allocates for at most RgbImage.MaxPixels (the header is checked first): 4 channels of
        // 4 bytes per pixel, twice, plus 16 MB.
        Fuzz(Mutated(ImageCorpus()), input =>
        {
            var image = RgbImage.Decode(new MemoryStream(input), "input");
            Assert.Equal((long)image.Width * image.Height * 3, image.Pixels.Length);
            Assert.True((long)image.Width * image.Height <= RgbImage.MaxPixels);
        }, _ => 2 * 16 * RgbImage.MaxPixels + (16 << 20));
    }

    [Fact]
    public void Png_metadata_is_read_or_refused()
    {
        Fuzz(Mutated(ImageCorpus()), input => Png.ReadText(input, "input"), input => 8L * input.Length + (1 << 20));
    }

    [Fact]
    public void Prompt_text_fixing_never_fails()
    {
        // Prompts are typed or pasted, not files, but every one goes through ftfy's fix_text port: random strings
        // over the characters its heuristics weigh, and mutated mojibake.
        var alphabet = "abc XYZ,.'<>&;#0123456789\n\r\t\u001b[m\u0080\u009dÃÂâ€œ™ÐÑ¢£¥©®°±²³µ¶·¸¹º»¼½¾¿ÀÉàéü€ŁłŠšŽžВГРСвЂΒΓΞΟβ│═▀░√≈ﬁＡ　“”‘’\ufffd\u0301\ud83c\udf1f";
        var strings = Gen.Char[alphabet].Array[0, 60].Select(chars => Encoding.UTF8.GetBytes(new string(chars)));
        var mojibake = Mutated(["cafÃ© naÃ¯ve â€œquotedâ€ &amp; &eacute; ï¬ne"u8.ToArray(), Encoding.UTF8.GetBytes("ÐŸÑ€Ð¸Ð²ÐµÑ‚ Ã¢â‚¬Å“x")]);
        Fuzz(Gen.OneOf(strings, mojibake), input => ClipTokenizer.Normalize(Encoding.UTF8.GetString(input)),
            input => 4096L * input.Length + (4 << 20));
    }
}
