using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.Json.Serialization;
using PromptToPrompt.Loading;

namespace PromptToPrompt.Datasets;

/// <summary>What a dataset folder holds: records committed, failed (with reasons), missing, and pairs.</summary>
public sealed record DatasetReport(int Records, int Committed, int Pairs, IReadOnlyList<(int Index, string Reason)> Failed, IReadOnlyList<int> Missing)
{
    public string Summary() =>
        $"{Committed + Failed.Count} of {Records} records done ({Committed} with {Pairs} pairs, {Failed.Count} failed), {Missing.Count} missing" +
        (Missing.Count > 0 ? $": {string.Join(", ", Missing.Take(10))}{(Missing.Count > 10 ? ", ..." : "")}" : "");
}

/// <summary>One training pair of an instruction model: the input image, the instruction, the edited image.</summary>
public sealed record InstructionPair(Imaging.RgbImage Input, string Instruction, Imaging.RgbImage Edited);

/// <summary><c>p2p dataset merge</c> and <c>status</c>: the index files the authors' training code reads, and a report.</summary>
public static class DatasetIndex
{
    public static DatasetReport Status(string dir)
    {
        var manifestPath = Path.Combine(dir, DatasetGenerator.ManifestName);
        if (!File.Exists(manifestPath)) throw new UserError($"{dir} is not a dataset folder (no {DatasetGenerator.ManifestName}). Run p2p dataset generate --out {dir} first.");
        int records = JsonNode.Parse(File.ReadAllText(manifestPath))?["records"]?.GetValue<int>() ?? 0;
        int committed = 0, pairs = 0;
        var failed = new List<(int, string)>();
        var missing = new List<int>();
        for (int i = 0; i < records; i++)
        {
            var folder = Path.Combine(dir, DatasetGenerator.RecordName(i));
            var failure = Path.Combine(dir, "failed", DatasetGenerator.RecordName(i) + ".json");
            if (Directory.Exists(folder)) { committed++; pairs += Directory.GetFiles(folder, "*_0.jpg").Length; }
            else if (File.Exists(failure)) failed.Add((i, JsonNode.Parse(File.ReadAllText(failure))?["reason"]?.GetValue<string>() ?? "unknown"));
            else missing.Add(i);
        }
        return new DatasetReport(records, committed, pairs, failed, missing);
    }

    /// <summary>
    /// A record's pairs side by side (source, edit), the kept ones first and then, when the run saved them
    /// (<c>--save-rejected</c>), the rejected ones, each captioned with the filter's measures.
    /// </summary>
    public static Imaging.RgbImage Preview(string dir, int index)
    {
        var images = new List<Imaging.RgbImage>();
        var captions = new List<string>();
        foreach (var (folder, verdict) in new[] { (Path.Combine(dir, DatasetGenerator.RecordName(index)), "kept"), (Path.Combine(dir, "rejected", DatasetGenerator.RecordName(index)), "rejected") })
        {
            var metadata = Path.Combine(folder, "metadata.jsonl");
            if (!File.Exists(metadata)) continue;
            foreach (var line in File.ReadAllLines(metadata).Where(l => l.Length > 0))
            {
                var m = JsonNode.Parse(line)!.AsObject();
                var seed = m["seed"]!.ToJsonString();
                var measures = string.Join(" ", m.Where(p => p.Key is "instructed" or "kept_iou" or "background_change").Select(p => $"{p.Key} {p.Value}"));
                images.Add(Imaging.RgbImage.Load(Path.Combine(folder, $"{seed}_0.jpg")));
                var label = verdict == "kept" ? "kept" : m["passed"]?.GetValue<bool>() == true ? "passed, not kept" : "rejected";
                captions.Add($"{label} {seed}: source");
                images.Add(Imaging.RgbImage.Load(Path.Combine(folder, $"{seed}_1.jpg")));
                captions.Add($"edit {measures}");
            }
        }
        if (images.Count == 0) throw new UserError($"Record {index} of {dir} has no pairs (not committed yet, or none kept and rejected ones not saved: --save-rejected).");
        return Imaging.Grid.WithCaptions(images, captions, 2);
    }

    /// <summary>Pairs per Parquet shard.</summary>
    public const int RowsPerShard = 1000;

    /// <summary>A row of the published Hub dataset (timbrooks/instructpix2pix-clip-filtered); images as datasets' Image struct.</summary>
    sealed class PairRow
    {
        [JsonPropertyName("original_prompt")] public string OriginalPrompt { get; set; } = "";
        [JsonPropertyName("original_image")] public ImageCell OriginalImage { get; set; } = new();
        [JsonPropertyName("edit_prompt")] public string EditPrompt { get; set; } = "";
        [JsonPropertyName("edited_prompt")] public string EditedPrompt { get; set; } = "";
        [JsonPropertyName("edited_image")] public ImageCell EditedImage { get; set; } = new();
    }

    sealed class ImageCell
    {
        [JsonPropertyName("bytes")] public byte[] Bytes { get; set; } = [];
        [JsonPropertyName("path")] public string? Path { get; set; }
    }

    /// <summary>The features record datasets keeps in a Parquet file's "huggingface" metadata, so the image columns load as images.</summary>
    const string Features = "{\"info\": {\"features\": {\"original_prompt\": {\"dtype\": \"string\", \"_type\": \"Value\"}, " +
        "\"original_image\": {\"_type\": \"Image\"}, \"edit_prompt\": {\"dtype\": \"string\", \"_type\": \"Value\"}, " +
        "\"edited_prompt\": {\"dtype\": \"string\", \"_type\": \"Value\"}, \"edited_image\": {\"_type\": \"Image\"}}}}";

    /// <summary>
    /// Writes data/train-KKKKK-of-NNNNN.parquet: one row per kept pair, in record and seed order, with the columns of the
    /// published dataset (which datasets and diffusers' train_instruct_pix2pix.py load directly); removes shards of an
    /// earlier merge that the new set does not have.
    /// </summary>
    static void WriteParquet(string dir)
    {
        var rows = new List<PairRow>();
        foreach (var folder in RecordFolders(dir))
        {
            var prompt = JsonNode.Parse(File.ReadAllText(Path.Combine(dir, folder, "prompt.json")))!;
            string Text(params string[] keys) => keys.Select(k => prompt[k]?.GetValue<string>()).FirstOrDefault(v => v is not null) ?? "";
            foreach (var seed in Seeds(dir, folder))
                rows.Add(new PairRow
                {
                    OriginalPrompt = Text("input", "caption"), EditPrompt = Text("edit"), EditedPrompt = Text("output"),
                    OriginalImage = new ImageCell { Bytes = File.ReadAllBytes(Path.Combine(dir, folder, $"{seed}_0.jpg")), Path = $"{folder}/{seed}_0.jpg" },
                    EditedImage = new ImageCell { Bytes = File.ReadAllBytes(Path.Combine(dir, folder, $"{seed}_1.jpg")), Path = $"{folder}/{seed}_1.jpg" },
                });
        }
        var data = Path.Combine(dir, "data");
        Directory.CreateDirectory(data);
        int shards = Math.Max(1, (rows.Count + RowsPerShard - 1) / RowsPerShard);
        var names = Enumerable.Range(0, shards).Select(k => $"train-{k:D5}-of-{shards:D5}.parquet").ToList();
        for (int k = 0; k < shards; k++)
        {
            var chunk = rows.Skip(k * RowsPerShard).Take(RowsPerShard).ToList();
            AtomicFile.Write(Path.Combine(data, names[k]), s =>
                Parquet.Serialization.ParquetSerializer.SerializeAsync(chunk, s, null, new Dictionary<string, string> { ["huggingface"] = Features }).GetAwaiter().GetResult());
        }
        foreach (var stale in Directory.GetFiles(data, "train-*.parquet").Where(f => !names.Contains(Path.GetFileName(f)))) File.Delete(stale);
    }

    /// <summary>
    /// The pairs of a dataset in either output form: the record folders (<c>{index:07d}/prompt.json</c> and
    /// <c>{seed}_0.jpg</c> / <c>{seed}_1.jpg</c>) when there are any, else the Parquet shards <c>data/train-*.parquet</c>
    /// (as the Hub dataset's columns). Records and seeds in the order <see cref="Merge"/> lists them.
    /// </summary>
    public static List<InstructionPair> ReadPairs(string dir)
    {
        if (!Directory.Exists(dir)) throw new UserError($"Dataset folder not found: {dir}. Make one with p2p dataset generate --out {dir}.");
        var pairs = new List<InstructionPair>();
        foreach (var folder in RecordFolders(dir))
        {
            var promptPath = Path.Combine(dir, folder, "prompt.json");
            if (!File.Exists(promptPath)) continue;
            string instruction;
            try
            {
                instruction = JsonNode.Parse(File.ReadAllText(promptPath))?["edit"]?.GetValue<string>() ?? throw new JsonException("no \"edit\" field");
            }
            catch (Exception e) when (e is JsonException or InvalidOperationException)
            {
                throw new UserError($"{promptPath} is not a triplet record ({e.Message}); the folder was not written by p2p dataset generate.");
            }
            foreach (var seed in Seeds(dir, folder))
                pairs.Add(new InstructionPair(Image(Path.Combine(dir, folder, $"{seed}_0.jpg")), instruction, Image(Path.Combine(dir, folder, $"{seed}_1.jpg"))));
        }
        if (pairs.Count > 0) return pairs;
        var data = Path.Combine(dir, "data");
        var shards = Directory.Exists(data) ? Directory.GetFiles(data, "train-*.parquet").Order(StringComparer.Ordinal).ToList() : [];
        foreach (var shard in shards)
        {
            IList<PairRow> rows;
            try
            {
                using var stream = File.OpenRead(shard);
                rows = Parquet.Serialization.ParquetSerializer.DeserializeAsync<PairRow>(stream).GetAwaiter().GetResult().Data;
            }
            catch (Exception e) when (e is IOException or InvalidDataException or InvalidOperationException or NotSupportedException or Parquet.ParquetException)
            {
                throw new UserError($"{shard} is not a readable Parquet shard of pairs ({e.Message.Split('\n')[0]}). Rewrite it with p2p dataset merge --out {dir}.");
            }
            foreach (var row in rows)
                pairs.Add(new InstructionPair(Decode(row.OriginalImage, shard), row.EditPrompt, Decode(row.EditedImage, shard)));
        }
        if (pairs.Count == 0)
            throw new UserError($"{dir} holds no pairs (no record folders with pairs, no data/train-*.parquet). Make them with p2p dataset generate --out {dir}.");
        return pairs;

        static Imaging.RgbImage Image(string path) => Imaging.RgbImage.Load(path);
        static Imaging.RgbImage Decode(ImageCell cell, string shard)
        {
            using var bytes = new MemoryStream(cell.Bytes);
            return Imaging.RgbImage.Decode(bytes, $"{shard}: {cell.Path ?? "an image"}");
        }
    }

    static IEnumerable<string> RecordFolders(string dir) =>
        Directory.GetDirectories(dir).Select(p => Path.GetFileName(p)!).Where(n => n.Length == 7 && n.All(char.IsAsciiDigit)).Order(StringComparer.Ordinal);

    /// <summary>The seeds of a record's pairs, ordered as the authors' prepare_dataset.py lists them (sorted file names).</summary>
    static List<string> Seeds(string dir, string folder) => Directory.GetFiles(Path.Combine(dir, folder), "*_0.jpg").Select(p => Path.GetFileName(p)!)
        .Order(StringComparer.Ordinal).Select(f => f[..f.IndexOf('_')]).ToList();

    /// <summary>
    /// Writes seeds.json (<c>[[record folder, [seed, ...]], ...]</c>, folders and seeds sorted as the authors'
    /// prepare_dataset.py lists them), the Parquet shards and report.json (missing and failed records); returns the report.
    /// </summary>
    public static DatasetReport Merge(string dir)
    {
        var report = Status(dir);
        var entries = new List<string>();
        foreach (var folder in RecordFolders(dir))
        {
            var seeds = Seeds(dir, folder);
            if (seeds.Count > 0) entries.Add($"[{JsonSerializer.Serialize(folder)}, [{string.Join(", ", seeds.Select(x => JsonSerializer.Serialize(x)))}]]");
        }
        AtomicFile.Write(Path.Combine(dir, "seeds.json"), s => s.Write(Encoding.UTF8.GetBytes($"[{string.Join(", ", entries)}]")));
        WriteParquet(dir);
        var json = new JsonObject
        {
            ["records"] = report.Records, ["committed"] = report.Committed, ["pairs"] = report.Pairs,
            ["failed"] = new JsonArray(report.Failed.Select(f => (JsonNode)new JsonObject { ["index"] = f.Index, ["reason"] = f.Reason }).ToArray()),
            ["missing"] = new JsonArray(report.Missing.Select(m => (JsonNode)m).ToArray()),
        };
        AtomicFile.Write(Path.Combine(dir, "report.json"), s => s.Write(Encoding.UTF8.GetBytes(json.ToJsonString(new JsonSerializerOptions { WriteIndented = true }) + "\n")));
        return report;
    }
}
