using System.Buffers.Binary;
using System.Text;
using PromptToPrompt.Imaging;
using PromptToPrompt.Loading;
using PromptToPrompt.Tests.Conformance;
using static TorchSharp.torch;

namespace PromptToPrompt.Tests.Unit;

/// <summary>
/// Bad input a user can give, one row each: missing and corrupt files, truncated safetensors, latent and inversion
/// files of the wrong dtype or shape, malformed specs and unknown fields, out-of-range and non-finite numbers, words
/// not in the prompt, files that are not images or are too large, unwritable outputs. Every row must end with exactly
/// one `error:` line naming the problem, exit code 1, no stack trace and no output file.
/// </summary>
public class BadInputTests : IClassFixture<BadInputTests.Files>
{
    /// <summary>The bad files the rows refer to as {name}, made once.</summary>
    public sealed class Files : IDisposable
    {
        readonly TempDir _dir = new();
        public string Path => _dir.Path;

        public Files()
        {
            File.WriteAllText(_dir.File("text.txt"), "hello, not a model or an image\n");
            File.WriteAllBytes(_dir.File("empty.png"), []);
            File.WriteAllBytes(_dir.File("garbage.safetensors"), Enumerable.Range(0, 300).Select(i => (byte)(i * 97 + 13)).ToArray());
            SafetensorsFile.Write(_dir.File("latent.safetensors"), new Dictionary<string, Tensor> { ["latent"] = randn(1, 4, 8, 8) });
            var whole = File.ReadAllBytes(_dir.File("latent.safetensors"));
            File.WriteAllBytes(_dir.File("truncated.safetensors"), whole[..(whole.Length - 100)]);
            var hugeHeader = (byte[])whole.Clone();
            BinaryPrimitives.WriteInt64LittleEndian(hugeHeader, 1L << 60);
            File.WriteAllBytes(_dir.File("huge-header.safetensors"), hugeHeader);
            File.WriteAllBytes(_dir.File("huge-tensor.safetensors"), Safetensors("{\"latent\":{\"dtype\":\"F32\",\"shape\":[1,4,268435456,268435456],\"data_offsets\":[0,1152921504606846976]}}", 0));
            SafetensorsFile.Write(_dir.File("latent-int.safetensors"), new Dictionary<string, Tensor> { ["latent"] = zeros(new long[] { 1, 4, 8, 8 }, ScalarType.Int64) });
            SafetensorsFile.Write(_dir.File("latent-3ch.safetensors"), new Dictionary<string, Tensor> { ["latent"] = randn(1, 3, 8, 8) });
            SafetensorsFile.Write(_dir.File("latent-3d.safetensors"), new Dictionary<string, Tensor> { ["latent"] = randn(4, 8, 8) });
            SafetensorsFile.Write(_dir.File("latent-nan.safetensors"), new Dictionary<string, Tensor> { ["latent"] = full(new long[] { 1, 4, 8, 8 }, float.NaN) });
            SafetensorsFile.Write(_dir.File("named-x.safetensors"), new Dictionary<string, Tensor> { ["x"] = randn(1, 4, 8, 8) });
            File.WriteAllText(_dir.File("malformed.json"), "{\"prompts\": [\"a cat riding a bicycle\",");
            File.WriteAllText(_dir.File("unknown-field.json"), "{\"prompts\": [\"a cat riding a bicycle\", \"a dog riding a bicycle\"], \"colour\": 1}");
            File.WriteAllText(_dir.File("wrong-type.json"), "{\"prompts\": \"a cat riding a bicycle\"}");
            File.WriteAllText(_dir.File("steps-out-of-range.json"), "{\"prompts\": [\"a cat riding a bicycle\", \"a dog riding a bicycle\"], \"cross_replace_steps\": 2}");
            var png = Png.Encode(new RgbImage(2, 2, new byte[12]));
            BinaryPrimitives.WriteInt32BigEndian(png.AsSpan(16), 60000);  // IHDR width and height, then its CRC again
            BinaryPrimitives.WriteInt32BigEndian(png.AsSpan(20), 60000);
            BinaryPrimitives.WriteUInt32BigEndian(png.AsSpan(29), Crc32(png.AsSpan(12, 17)));
            File.WriteAllBytes(_dir.File("huge.png"), png);
            var jpeg = Jpeg.Encode(new RgbImage(8, 8, new byte[8 * 8 * 3]));
            int sof = Enumerable.Range(0, jpeg.Length - 1).First(i => jpeg[i] == 0xFF && jpeg[i + 1] == 0xC0);
            BinaryPrimitives.WriteUInt16BigEndian(jpeg.AsSpan(sof + 5), 50000);  // SOF0: length, precision, height, width
            BinaryPrimitives.WriteUInt16BigEndian(jpeg.AsSpan(sof + 7), 50000);
            File.WriteAllBytes(_dir.File("huge.jpg"), jpeg);
            Directory.CreateDirectory(_dir.File("directions"));
            File.WriteAllText(_dir.File("directions/red.txt"), "a red ball\n\na red ball on grass\na red apple\n");
            File.WriteAllBytes(_dir.File("cut.png"), Png.Encode(new RgbImage(64, 64, new byte[64 * 64 * 3]))[..60]);
            // An SDXL refiner's folder, as far as the loader reads before refusing it: no first text encoder.
            Directory.CreateDirectory(_dir.File("refiner/unet"));
            File.WriteAllText(_dir.File("refiner/model_index.json"),
                "{\"_class_name\": \"StableDiffusionXLImg2ImgPipeline\", \"text_encoder\": [null, null], \"text_encoder_2\": [\"transformers\", \"CLIPTextModelWithProjection\"]}");
            File.Copy(System.IO.Path.Combine(ConformanceData.SdxlPath, "unet", "config.json"), _dir.File("refiner/unet/config.json"));
        }

        static byte[] Safetensors(string header, int dataBytes)
        {
            var json = Encoding.UTF8.GetBytes(header);
            var bytes = new byte[8 + json.Length + dataBytes];
            BinaryPrimitives.WriteInt64LittleEndian(bytes, json.Length);
            json.CopyTo(bytes, 8);
            return bytes;
        }

        static uint Crc32(ReadOnlySpan<byte> data)
        {
            uint crc = 0xFFFFFFFFu;
            foreach (var b in data)
            {
                crc ^= b;
                for (int k = 0; k < 8; k++) crc = (crc & 1) != 0 ? 0xEDB88320u ^ (crc >> 1) : crc >> 1;
            }
            return crc ^ 0xFFFFFFFFu;
        }

        public void Dispose() => _dir.Dispose();
    }

    const string Gen = "generate|--model|{model}|--prompt|a red fox|--out|{out}/o.png";
    const string Edit = "edit|--model|{model}|--prompt|a cat riding a bicycle|--steps|2|--out|{out}/edit";
    const string EditDog = Edit + "|--target|a dog riding a bicycle";
    const string Sdxl = "generate|--model|{sdxl}|--prompt|a cat|--steps|2|--out|{out}/x.png";
    const string Zero = "zero|--model|{model}|--image|{photo}|--prompt|a red ball|--out|{out}/z";

    public static TheoryData<string, string> Rows() => new()
    {
        // missing and corrupt model files
        { "generate|--model|/no/such/model|--prompt|x|--out|{out}/o.png", "Model not found: /no/such/model" },
        { "generate|--model|{files}/text.txt|--prompt|x|--out|{out}/o.png", "text.txt" },
        { "generate|--model|{files}/garbage.safetensors|--prompt|x|--out|{out}/o.png", "garbage.safetensors" },
        { "generate|--model|{files}/truncated.safetensors|--prompt|x|--out|{out}/o.png", "truncated.safetensors" },
        { "generate|--model|{files}/huge-header.safetensors|--prompt|x|--out|{out}/o.png", "huge-header.safetensors" },
        // latent files
        { Gen + "|--latent|{files}/missing.safetensors", "File not found" },
        { Gen + "|--latent|{files}/garbage.safetensors", "garbage.safetensors" },
        { Gen + "|--latent|{files}/truncated.safetensors", "truncated.safetensors" },
        { Gen + "|--latent|{files}/huge-tensor.safetensors", "huge-tensor.safetensors" },
        { Gen + "|--latent|{files}/latent-int.safetensors", "is I64, not floating point" },
        { Gen + "|--latent|{files}/latent-3ch.safetensors", "shape [1, 3, 8, 8] but this model and size need [1, 4," },
        { Gen + "|--latent|{files}/latent-3d.safetensors", "[4, 8, 8], which is not 4-dimensional" },
        { Gen + "|--latent|{files}/latent-nan.safetensors", "holds NaN or infinite values" },
        { Gen + "|--latent|{files}/named-x.safetensors", "'latent'" },
        // numbers
        { Gen + "|--steps|0", "steps" },
        { Gen + "|--steps|-3", "steps" },
        { Gen + "|--steps|many", "many" },
        { Gen + "|--guidance|nan", "--guidance must be a finite number; got NaN." },
        { Gen + "|--guidance|-Infinity", "--guidance must be a finite number; got -Infinity." },
        { Gen + "|--dtype|float8", "Unknown dtype 'float8'" },
        { Gen + "|--width|100", "width 100 is not a positive multiple of 8" },
        { Gen + "|--height|0", "height 0" },
        { Gen + "|--seed|1.5", "'1.5'" },
        { Gen + "|--scheduler|lms", "Unknown scheduler 'lms'" },
        { Gen + "|--excite|fox,cat", "'cat'" },
        { Gen + "|--excite|fox|--excite-scale|inf", "'inf'" },
        { Gen + "|--excite|fox|--excite-scale|NaN", "--excite-scale must be a finite number" },
        { Gen + "|--box|cat=0,0.5,0,1", "'cat'" },
        { Gen + "|--box|fox=0,1.5,0,1", "outside [0, 1]" },
        { Gen + "|--box|fox=0.5,0.5,0,1", "is empty" },
        { Gen + "|--box|fox=0,0.5,0", "is not four numbers" },
        { Gen + "|--box|0,0.5,0,1", "write word=left,right,top,bottom" },
        { Gen + "|--box|fox=0,0.5,0,1|--box-strength|-1", "--box-strength must be" },
        { Gen + "|--unknown-flag", "Unrecognized command or argument '--unknown-flag'" },
        // outputs that cannot be written
        { "generate|--model|{model}|--prompt|x|--out|{files}/text.txt/o.png", "text.txt is a file, not a folder" },
        { "generate|--model|{model}|--prompt|x|--out|{files}", "the output must be a .png file" },
        { "invert|--model|{model}|--image|{photo}|--prompt|x|--out|{files}", "is a folder" },
        // edits
        { Edit + "|--target|a dog riding a red bicycle|--edit|replace", "same number of words" },
        { EditDog + "|--blend|cat;cow", "'cow' is not in the prompt" },
        { EditDog + "|--cross-replace|1.2", "in [0, 1]" },
        { EditDog + "|--self-replace|-0.5", "-0.5" },
        { EditDog + "|--blend|cat;dog|--blend-threshold|nan", "--blend-threshold must be a finite number" },
        { Edit + "|--reweight|happy=3", "'happy' is not in the prompt" },
        { Edit + "|--reweight|cat=nan", "expected word=value with a finite number" },
        // specs
        { "edit|--spec|{files}/missing.json|--model|{model}|--out|{out}/edit", "missing.json" },
        { "edit|--spec|{files}/malformed.json|--model|{model}|--out|{out}/edit", "malformed.json" },
        { "edit|--spec|{files}/unknown-field.json|--model|{model}|--out|{out}/edit", "colour" },
        { "edit|--spec|{files}/wrong-type.json|--model|{model}|--out|{out}/edit", "prompts" },
        { "edit|--spec|{files}/steps-out-of-range.json|--model|{model}|--out|{out}/edit", "in [0, 1]" },
        // inversion files
        { EditDog + "|--inversion|{files}/latent.safetensors", "latent.safetensors" },
        { EditDog + "|--inversion|{files}/garbage.safetensors", "garbage.safetensors" },
        // images
        { EditDog + "|--image|{files}/text.txt", "text.txt" },
        { EditDog + "|--image|{files}/empty.png", "empty.png" },
        { EditDog + "|--image|{files}/cut.png", "cut.png could not be read as an image" },
        { EditDog + "|--image|{files}/huge.png", "has 60000x60000 pixels; at most 67108864 are read" },
        { EditDog + "|--image|{files}/huge.jpg", "has 50000x50000 pixels; at most 67108864 are read" },
        { "invert|--model|{model}|--image|{files}/huge.png|--prompt|x|--out|{out}/inv.safetensors", "has 60000x60000 pixels; at most 67108864 are read" },
        { "invert|--model|{model}|--image|{files}/missing.png|--prompt|x|--out|{out}/inv.safetensors", "missing.png" },
        // instruction edits
        { "instruct|--model|{model}|--image|{photo}|--instruction|make it blue|--out|{out}/i.png", "is not an InstructPix2Pix model" },
        { "instruct|--model|{ip2p}|--image|{photo}|--instruction| |--out|{out}/i.png", "instruction" },
        { "instruct|--model|{ip2p}|--image|{photo}|--instruction|make it blue|--image-guidance|nan|--out|{out}/i.png", "'nan' is not a finite number" },
        { "instruct|--model|{ip2p}|--image|{photo}|--instruction|make it blue|--scheduler|lms|--out|{out}/i.png", "Unknown scheduler 'lms'. Choose one of: pndm, ddim, euler, euler-a, dpmpp-2m." },
        { "eval-instruct|--model|{ip2p}|--scheduler|lms", "Unknown scheduler 'lms'. Choose one of: pndm, ddim, euler, euler-a, dpmpp-2m." },
        { EditDog.Replace("{model}", "{ip2p}"), "is an InstructPix2Pix model" },
        { "invert|--model|{ip2p}|--image|{photo}|--prompt|x|--out|{out}/inv.safetensors", "use p2p instruct with it" },
        // triplets
        { "dataset|prompts|--count|5|--kinds|colour,hue|--out|{out}/t.jsonl", "Unknown instruction kind 'hue'; choose from colour, shape, size, background, stripes, add, remove." },
        { "dataset|prompts|--count|5|--objects|1,2,3|--out|{out}/t.jsonl", "--objects 1,2,3: give N or MIN,MAX, e.g. --objects 1,2." },
        { "dataset|prompts|--count|5|--objects|0|--out|{out}/t.jsonl", "--objects must be N or MIN,MAX with 1 <= MIN <= MAX <= 3; got 0,0." },
        { "dataset|prompts|--count|5|--kinds|remove|--objects|1|--out|{out}/t.jsonl", "Removing an object needs scenes of two objects or more" },
        // pix2pix-zero
        { Zero + "|--from|red|--to|blue|--directions|{files}/directions", "has 3 sentences; an edit direction needs at least 10" },
        { Zero + "|--from|red|--to|circle", "'red' -> 'circle' is not an edit the shapes grammar can describe" },
        { Zero + "|--from|red|--to|blue|--xa-guidance|-1", "--xa-guidance must be a finite number of at least 0; got -1" },
        { Zero + "|--from|red|--to|blue|--directions|{files}/nowhere", "is not a folder" },
        { Zero + "|--from|../x|--to|blue|--directions|{files}/directions", "is not a word" },
        // SDXL
        { Sdxl + "|--width|260", "width 260 is not a positive multiple of 8" },
        { Sdxl + "|--original-size|0,1024", "The original size must be a positive height,width; got 0,1024." },
        { Sdxl + "|--target-size|512,-1", "The target size must be a positive height,width; got 512,-1." },
        { Sdxl + "|--crop-coords|-8,0", "The crop coordinates must be a top,left of at least 0; got -8,0." },
        { Sdxl + "|--crop-coords|top,left", "--crop-coords 'top,left': give two integers separated by a comma" },
        { "generate|--model|{model}|--prompt|a cat|--original-size|512,512|--out|{out}/x.png", "are SDXL's micro-conditioning; tiny-sd has none" },
        { "generate|--model|{files}/refiner|--prompt|a cat|--out|{out}/x.png", "is an SDXL refiner" },
        { Zero.Replace("{model}", "{sdxl}") + "|--from|red|--to|blue", "p2p zero works with SD 1.x/2.x models so far" },
        { "instruct|--model|{sdxl}|--image|{photo}|--instruction|make it blue|--out|{out}/i.png", "is not an InstructPix2Pix model" },
        // sweeps
        { EditDog.Replace("edit|", "sweep|") + "|--cross-replace|0.2,abc", "abc" },
    };

    readonly Files _files;
    public BadInputTests(Files files) => _files = files;

    [Theory]
    [MemberData(nameof(Rows))]
    public void Bad_input_is_one_error_line_exit_1_and_no_output(string row, string named)
    {
        using var outDir = new TempDir();
        var args = row.Split('|').Select(a => a.Replace("{model}", ConformanceData.ModelPath).Replace("{ip2p}", ConformanceData.Ip2pPath).Replace("{sdxl}", ConformanceData.SdxlPath)
            .Replace("{photo}", ConformanceData.Golden("inversion/images/inv01_red_ball_image_gt.png"))
            .Replace("{files}", _files.Path).Replace("{out}", outDir.Path)).ToArray();
        var (code, _, stderr) = CliTests.RunP2P(args);
        var errors = stderr.Split('\n').Where(l => l.StartsWith("error:")).ToArray();
        Assert.True(code == 1 && errors.Length == 1, $"{string.Join(' ', args)}\nexit {code}, {errors.Length} error lines:\n{stderr[^Math.Min(stderr.Length, 1500)..]}");
        Assert.True(errors[0].Contains(named), $"'{named}' is not named in: {errors[0]}");
        Assert.DoesNotContain("   at ", stderr);
        Assert.Empty(Directory.EnumerateFileSystemEntries(outDir.Path));
    }
}
