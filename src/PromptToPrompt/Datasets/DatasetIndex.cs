using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using PromptToPrompt.Loading;

namespace PromptToPrompt.Datasets;

/// <summary>What a dataset folder holds: records committed, failed (with reasons), missing, and pairs.</summary>
public sealed record DatasetReport(int Records, int Committed, int Pairs, IReadOnlyList<(int Index, string Reason)> Failed, IReadOnlyList<int> Missing)
{
    public string Summary() =>
        $"{Committed + Failed.Count} of {Records} records done ({Committed} with {Pairs} pairs, {Failed.Count} failed), {Missing.Count} missing" +
        (Missing.Count > 0 ? $": {string.Join(", ", Missing.Take(10))}{(Missing.Count > 10 ? ", ..." : "")}" : "");
}

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
    /// Writes seeds.json (<c>[[record folder, [seed, ...]], ...]</c>, folders and seeds sorted as the authors'
    /// prepare_dataset.py lists them) and report.json (missing and failed records); returns the report.
    /// </summary>
    public static DatasetReport Merge(string dir)
    {
        var report = Status(dir);
        var entries = new List<string>();
        foreach (var folder in Directory.GetDirectories(dir).Select(Path.GetFileName).Where(n => n!.Length == 7 && n.All(char.IsAsciiDigit)).Order(StringComparer.Ordinal))
        {
            var seeds = Directory.GetFiles(Path.Combine(dir, folder!), "*_0.jpg").Select(Path.GetFileName).Order(StringComparer.Ordinal)
                .Select(f => f![..f!.IndexOf('_')]).ToList();
            if (seeds.Count > 0) entries.Add($"[{JsonSerializer.Serialize(folder)}, [{string.Join(", ", seeds.Select(x => JsonSerializer.Serialize(x)))}]]");
        }
        AtomicFile.Write(Path.Combine(dir, "seeds.json"), s => s.Write(Encoding.UTF8.GetBytes($"[{string.Join(", ", entries)}]")));
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
