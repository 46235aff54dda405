using System.Diagnostics;
using System.Text.Json;
using PromptToPrompt.Datasets;
using PromptToPrompt.Training;

namespace PromptToPrompt.Tests.Unit;

/// <summary>
/// p2p dataset: triplets from the grammar, the JSONL reader's errors, sharding from the environment, and the job as a
/// cluster runs it — three shards as concurrent processes, one killed mid-way and rerun, merged — equal byte for byte
/// to a single-shard run.
/// </summary>
public class DatasetTests
{
    [Fact]
    public void Grammar_triplets_are_stable_parse_and_cover_every_kind_of_edit()
    {
        var lines = ShapeTriplets.Generate(200, 4).ToList();
        Assert.Equal(lines, ShapeTriplets.Generate(200, 4).ToList());
        Assert.NotEqual(lines, ShapeTriplets.Generate(200, 5).ToList());
        foreach (var line in lines)
        {
            var t = TripletFile.Parse(line);
            Assert.NotNull(Scenes.ParseCaption(t.Input));
            Assert.NotNull(Scenes.ParseCaption(t.Output));
            Assert.NotEqual(t.Input, t.Output);
        }
        var edits = lines.Select(l => TripletFile.Parse(l).Edit).ToList();
        foreach (var start in new[] { "make the", "turn the", "put it on a", "add stripes", "remove the stripes", "add a", "remove the " })
            Assert.Contains(edits, e => e.StartsWith(start));
        Assert.Contains(edits, e => e.EndsWith("bigger"));
        Assert.Contains(lines.Select(TripletFile.Parse), t => t.Edit == "make the circle blue" || t.Edit.StartsWith("make the") && Scenes.Colours.Keys.Any(c => t.Edit.EndsWith(" " + c)));
    }

    [Fact]
    public void Triplets_can_be_limited_to_kinds_and_object_counts()
    {
        // The defaults are the grammar's: the same records as before the options existed (record 1 of seed 7 is the
        // README's "make the triangle blue"), and all kinds named are the same as none.
        Assert.Equal("make the triangle blue", TripletFile.Parse(ShapeTriplets.Generate(8, 7).ElementAt(1)).Edit);
        Assert.Equal(ShapeTriplets.Generate(100, 4), ShapeTriplets.Generate(100, 4, ShapeTriplets.Kinds, 1, 2));
        // One object per scene with every kind: removal, which needs two, is never drawn.
        Assert.DoesNotContain(ShapeTriplets.Generate(100, 4, minObjects: 1, maxObjects: 1).Select(l => TripletFile.Parse(l).Edit),
            e => e.StartsWith("remove the ") && e != "remove the stripes from the background");
        Assert.StartsWith("Removing an object needs scenes of two objects or more",
            Assert.Throws<UserError>(() => ShapeTriplets.Generate(5, 4, ["colour", "remove"], 1, 1)).Message);
        foreach (var line in ShapeTriplets.Generate(100, 4, ["colour"], 2, 2))
        {
            var t = TripletFile.Parse(line);
            var (objects, background, _) = Scenes.ParseCaption(t.Input)!.Value;
            var (edited, editedBackground, _) = Scenes.ParseCaption(t.Output)!.Value;
            Assert.Equal(2, objects.Count);
            Assert.Equal(background, editedBackground);
            int changed = Assert.Single(Enumerable.Range(0, 2), i => objects[i] != edited[i]);
            Assert.Equal($"make the {objects[changed].Shape} {edited[changed].Colour}", t.Edit);
            Assert.Equal(objects[changed] with { Colour = edited[changed].Colour }, edited[changed]);
        }
        // Removing alone draws scenes it can remove from; one to three objects all occur when allowed.
        Assert.All(ShapeTriplets.Generate(50, 4, ["remove"], 1, 2), l => Assert.Equal(2, Scenes.ParseCaption(TripletFile.Parse(l).Input)!.Value.Objects.Count));
        Assert.Equal([1, 2, 3], ShapeTriplets.Generate(100, 4, ["add", "shape"], 1, 3)
            .Select(l => Scenes.ParseCaption(TripletFile.Parse(l).Input)!.Value.Objects.Count).Distinct().Order());
    }

    [Fact]
    public void Malformed_lines_are_named_by_line_number_and_can_be_skipped()
    {
        using var dir = new TempDir();
        var path = dir.File("t.jsonl");
        File.WriteAllText(path, "{\"caption\": \"a red circle on a white background\", \"edit\": \"make it blue\", \"output\": \"a blue circle on a white background\"}\n\n" +
                                "{\"input\": \"x\", \"edit\": \"y\"}\nnot json\n{\"input\": \"a\", \"edit\": \"b\", \"output\": \"c\"}\n");
        var e = Assert.Throws<UserError>(() => TripletFile.Read(path));
        Assert.Equal($"{path}:3: the record has no text field 'output'. Fix the line, or pass --skip-bad-lines to leave such lines out.", e.Message);
        var warnings = new List<string>();
        var records = TripletFile.Read(path, skipBadLines: true, warnings.Add);
        Assert.Equal([0, 3], records.Select(r => r.Index));
        Assert.Equal("a red circle on a white background", records[0].Triplet.Input);
        Assert.Equal(2, warnings.Count);
        Assert.Contains($"{path}:4: not valid JSON", warnings[1]);
    }

    [Fact]
    public void The_shapes_filter_keeps_a_recolouring_by_its_measured_iou_and_the_threshold_can_be_raised()
    {
        // Drawn scenes: a red circle recoloured blue in place, and recoloured but moved 6 pixels (mask IoU 0.66).
        var scenes = new Scenes(64);
        Imaging.RgbImage Draw(string colour, double cx) =>
            scenes.Render([("circle", colour, "large", cx, 30, 14), ("square", "green", "small", 52, 52, 8)], "white", false).Image;
        var triplet = new Triplet("a large red circle and a small green square on a white background", "make the circle blue",
                                  "a large blue circle and a small green square on a white background", "{}");
        var source = Draw("red", 22);
        var inPlace = ShapesPairFilter.Score(triplet, source, Draw("blue", 22), minIoU: 0.8);
        Assert.True(inPlace.Keep);
        Assert.Equal(1.0, inPlace.Measures["instructed"], 2);
        Assert.Equal(1.0, inPlace.Measures["kept_iou"], 2);
        var moved = Draw("blue", 28);
        var loose = ShapesPairFilter.Score(triplet, source, moved);
        var strict = ShapesPairFilter.Score(triplet, source, moved, minIoU: 0.8);
        Assert.InRange(loose.Measures["instructed"], 0.5, 0.7);
        Assert.True(loose.Keep);
        Assert.False(strict.Keep);

        // A second object past the half-contrast edge of the recoloured one's colour (red is nearer purple than black is)
        // stays out of its mask: the exact recolouring measures 1.
        var dark = new Triplet("a large purple circle and a large red square on a black background", "make the circle blue",
                               "a large blue circle and a large red square on a black background", "{}");
        Imaging.RgbImage DrawDark(string colour) =>
            scenes.Render([("circle", colour, "large", 18, 20, 14), ("square", "red", "large", 46, 44, 14)], "black", false).Image;
        var exact = ShapesPairFilter.Score(dark, DrawDark("purple"), DrawDark("blue"), minIoU: 0.8);
        Assert.Equal(1.0, exact.Measures["instructed"], 4);
        Assert.True(exact.Keep);

        Assert.Equal("--shapes-min-iou must be between 0 and 1; got 1.5.", Assert.Throws<UserError>(() => new DatasetSettings { ShapesMinIoU = 1.5 }.Validate()).Message);
        Assert.Equal("--shapes-min-iou sets the shapes filter's threshold; it needs --filter shapes.",
            Assert.Throws<UserError>(() => new DatasetSettings { ShapesMinIoU = 0.8, Filter = "none" }.Validate()).Message);
    }

    [Fact]
    public void A_drawn_source_pairs_the_drawn_caption_with_its_edit_after_direct_inversion()
    {
        using var dir = new TempDir();
        var prompts = dir.File("t.jsonl");
        string[] inputs = ["a large red circle and a small blue star on a white background", "a small green ring on a striped yellow background"];
        File.WriteAllLines(prompts, [
            TripletFile.ToJson(inputs[0], "make the circle blue", "a large blue circle and a small blue star on a white background"),
            TripletFile.ToJson(inputs[1], "make the ring red", "a small red ring on a striped yellow background"),
            TripletFile.ToJson("a photo of a cat", "make it a dog", "a photo of a dog"),
        ]);
        var output = dir.File("drawn");
        using var model = PromptToPrompt.Loading.StableDiffusionModel.Load(ShippedModelTests.Folder, PromptToPrompt.Loading.ModelPlacement.Cpu);
        var logs = new List<string>();
        new DatasetGenerator(model, new DatasetSettings { SamplesPerPrompt = 1, Keep = 1, Steps = 4, Filter = "none", Source = PairSource.Drawn }, logs.Add)
            .Run(prompts, output, new Shard(0, 1));

        // The input image is the caption drawn by the scene generator: the caption's colours only (the background, its
        // stripes' shade, the objects'; within JPEG's rounding), each object's colour covering a shape's area.
        for (int record = 0; record < 2; record++)
        {
            var folder = Path.Combine(output, DatasetGenerator.RecordName(record));
            var input = Imaging.RgbImage.Load(Directory.GetFiles(folder, "*_0.jpg").Single());
            var edit = Imaging.RgbImage.Load(Directory.GetFiles(folder, "*_1.jpg").Single());
            var (objects, background, striped) = Scenes.ParseCaption(inputs[record])!.Value;
            var bg = Scenes.BackgroundColours[background];
            var colours = objects.Select(o => Scenes.Colours[o.Colour]).Append(bg)
                .Concat(striped ? [((byte)(bg.R * 3 / 4), (byte)(bg.G * 3 / 4), (byte)(bg.B * 3 / 4))] : []).ToList();
            int Nearest(int p) => Enumerable.Range(0, colours.Count).MinBy(c => Distance(input, p, colours[c]));
            int pixels = input.Width * input.Height;
            var nearest = Enumerable.Range(0, pixels).Select(Nearest).ToList();
            double close = Enumerable.Range(0, pixels).Count(p => Distance(input, p, colours[nearest[p]]) < 24) / (double)pixels;
            Assert.True(close > 0.99, $"record {record}: {close:P1} of the pixels are a colour of the caption");
            for (int o = 0; o < objects.Count; o++)
                Assert.InRange(nearest.Count(c => c == o) / (double)pixels, ShapesPairFilter.MinArea, 0.25);
            Assert.NotEqual(input.Pixels, edit.Pixels);
        }
        Assert.Contains("\"source\": \"drawn\"", File.ReadAllText(Path.Combine(output, DatasetGenerator.ManifestName)));
        Assert.Contains("record 2: skipped (--source drawn draws the input caption with the scene generator, and 'a photo of a cat' is not a caption of its grammar " +
                        "(p2p dataset prompts writes such captions).)", logs);
        Assert.Equal("--source drawn edits from a direct inversion, which samples with DDIM; drop --scheduler euler.",
            Assert.Throws<UserError>(() => new DatasetSettings { Source = PairSource.Drawn, Scheduler = "euler" }.Validate()).Message);
        var (code, _, err) = CliTests.RunP2P("dataset", "generate", "--prompts", prompts, "--out", dir.File("other"), "--source", "photo");
        Assert.Equal(1, code);
        Assert.Equal("error: Unknown --source 'photo'. Use model or drawn.", err.Trim());
    }

    static double Distance(Imaging.RgbImage image, int p, (byte R, byte G, byte B) c) =>
        Math.Sqrt(Math.Pow(image.Pixels[3 * p] - c.R, 2) + Math.Pow(image.Pixels[3 * p + 1] - c.G, 2) + Math.Pow(image.Pixels[3 * p + 2] - c.B, 2));

    [Fact]
    public void The_shard_comes_from_the_options_or_from_slurm_or_kubernetes()
    {
        Assert.Equal(new Shard(0, 1), Shard.Resolve(null, null, _ => null));
        Assert.Equal(new Shard(2, 5), Shard.Resolve(2, 5, _ => null));
        var slurm = new Dictionary<string, string> { ["SLURM_ARRAY_TASK_ID"] = "4", ["SLURM_ARRAY_TASK_MIN"] = "1", ["SLURM_ARRAY_TASK_COUNT"] = "4" };
        Assert.Equal(new Shard(3, 4), Shard.Resolve(null, null, k => slurm.GetValueOrDefault(k)));
        var k8s = new Dictionary<string, string> { ["JOB_COMPLETION_INDEX"] = "1", ["P2P_SHARD_COUNT"] = "3" };
        Assert.Equal(new Shard(1, 3), Shard.Resolve(null, null, k => k8s.GetValueOrDefault(k)));
        Assert.Contains("set P2P_SHARD_COUNT", Assert.Throws<UserError>(() => Shard.Resolve(null, null, k => k == "JOB_COMPLETION_INDEX" ? "0" : null)).Message);
        Assert.Contains("Shard 3 of 3 does not exist", Assert.Throws<UserError>(() => Shard.Resolve(3, 3, _ => null)).Message);
    }

    static string[] Generate(string prompts, string output, params string[] extra) =>
        ["dataset", "generate", "--model", ShippedModelTests.Folder, "--prompts", prompts, "--out", output, "--samples-per-prompt", "2", "--keep", "1",
         "--steps", "8", "--seed", "11", "--save-rejected", .. extra];

    static Dictionary<string, byte[]> Files(string dir) => Directory.GetFiles(dir, "*", SearchOption.AllDirectories)
        .Where(f => !Path.GetFileName(f).StartsWith('.'))
        .ToDictionary(f => Path.GetRelativePath(dir, f), File.ReadAllBytes);

    [Fact]
    public void Three_concurrent_shards_one_killed_and_rerun_equal_a_single_shard_run()
    {
        using var dir = new TempDir();
        var prompts = dir.File("t.jsonl");
        var lines = ShapeTriplets.Generate(8, 2).ToList();
        lines[5] = TripletFile.ToJson("a red circle on a white background", "do nothing", "a red circle on a white background"); // no edit: a failed record
        File.WriteAllText(prompts, string.Join("\n", lines) + "\n");

        var single = dir.File("single");
        var (code, _, err) = CliTests.RunP2P(Generate(prompts, single));
        Assert.True(code == 0, err);
        Assert.Contains("record 5: skipped (the input and output captions are the same", err);
        Assert.Contains("records 8/8", err);

        var sharded = dir.File("sharded");
        var psi = (int k) =>
        {
            var p = new ProcessStartInfo("dotnet") { RedirectStandardError = true, RedirectStandardOutput = true };
            p.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "p2p.dll"));
            foreach (var a in Generate(prompts, sharded, "--shard-index", k.ToString(), "--shard-count", "3")) p.ArgumentList.Add(a);
            return p;
        };
        var workers = Enumerable.Range(0, 3).Select(k => Process.Start(psi(k))!).ToArray();
        foreach (var w in workers) { w.ErrorDataReceived += (_, _) => { }; w.BeginErrorReadLine(); w.BeginOutputReadLine(); }
        // Shard 1 owns records 1, 4, 7: kill it once its first record is committed.
        var clock = Stopwatch.StartNew();
        while (!Directory.Exists(Path.Combine(sharded, "0000001")) && clock.Elapsed < TimeSpan.FromMinutes(3)) Thread.Sleep(20);
        workers[1].Kill(entireProcessTree: true);
        foreach (var w in workers) w.WaitForExit();
        Assert.Equal(0, workers[0].ExitCode);
        Assert.Equal(0, workers[2].ExitCode);
        var (statusCode, status, _) = CliTests.RunP2P("dataset", "status", sharded);
        Assert.Equal(0, statusCode);
        Assert.Matches(@"missing: (4|7|4, 7)", status); // what the killed worker had not committed yet

        (code, _, err) = CliTests.RunP2P(Generate(prompts, sharded, "--shard-index", "1", "--shard-count", "3"));
        Assert.True(code == 0, err);
        Assert.Matches("resuming: [12] of this shard's 3 records are already done", err);
        foreach (var d in new[] { single, sharded })
        {
            var (c, _, e) = CliTests.RunP2P("dataset", "merge", "--out", d);
            Assert.True(c == 0, e);
            Assert.Contains("8 of 8 records done (7 with", e);
            Assert.Contains("1 failed), 0 missing", e);
        }
        var a = Files(single);
        var b = Files(sharded);
        Assert.Equal(a.Keys.Order(), b.Keys.Order());
        foreach (var (name, bytes) in a) Assert.True(bytes.SequenceEqual(b[name]), $"{name} differs between the single-shard and the sharded run");
        Assert.Contains("0000000/prompt.json", a.Keys);
        Assert.Contains(a.Keys, k => k.StartsWith("0000003/") && k.EndsWith("_1.jpg"));
        var seeds = JsonDocument.Parse(a["seeds.json"]).RootElement;
        Assert.Equal("0000000", seeds[0][0].GetString());
        var report = JsonDocument.Parse(a["report.json"]).RootElement;
        Assert.Equal(5, report.GetProperty("failed")[0].GetProperty("index").GetInt32());

        // The Parquet shard, read back with Apache Arrow's reader: one row per pair, the Hub dataset's columns.
        using (var reader = new ParquetSharp.ParquetFileReader(Path.Combine(single, "data", "train-00000-of-00001.parquet")))
        {
            var columns = Enumerable.Range(0, reader.FileMetaData.Schema.NumColumns).Select(i => reader.FileMetaData.Schema.Column(i).Path.ToDotString()).ToArray();
            Assert.Equal(["original_prompt", "original_image.bytes", "original_image.path", "edit_prompt", "edited_prompt", "edited_image.bytes", "edited_image.path"], columns);
            Assert.Contains("\"original_image\": {\"_type\": \"Image\"}", reader.FileMetaData.KeyValueMetadata["huggingface"]);
            int pairs = seeds.EnumerateArray().Sum(e => e[1].GetArrayLength());
            Assert.Equal(pairs, (int)reader.FileMetaData.NumRows);
            using var group = reader.RowGroup(0);
            var originals = group.Column(0).LogicalReader<string>().ReadAll(pairs);
            var images = group.Column(5).LogicalReader<byte[]>().ReadAll(pairs);
            string folder = seeds[0][0].GetString()!, seed = seeds[0][1][0].GetString()!;
            Assert.Equal(JsonDocument.Parse(a[$"{folder}/prompt.json"]).RootElement.GetProperty("input").GetString(), originals[0]);
            Assert.Equal(a[$"{folder}/{seed}_1.jpg"], images[0]);
        }

        // Every sample of a record is either kept or saved as rejected; the preview shows them all.
        Assert.Equal(2, a.Keys.Count(k => (k.StartsWith("0000003/") || k.StartsWith("rejected/0000003/")) && k.EndsWith("_0.jpg")));
        var (previewCode, _, previewErr) = CliTests.RunP2P("dataset", "preview", "--out", single, "--record", "3", "--image", dir.File("preview.png"));
        Assert.True(previewCode == 0, previewErr);
        Assert.True(PromptToPrompt.Imaging.RgbImage.Load(dir.File("preview.png")).Height > 2 * 64);

        // The same folder with other settings is refused, naming what differs.
        (code, _, err) = CliTests.RunP2P(Generate(prompts, sharded, "--schedule", "p2p"));
        Assert.Equal(1, code);
        Assert.Contains("holds a run with other settings (schedule: \"ip2p\" there, \"p2p\" now)", err);
    }
}
