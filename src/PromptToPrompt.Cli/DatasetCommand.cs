using System.CommandLine;
using System.Globalization;
using PromptToPrompt.Datasets;

namespace PromptToPrompt.Cli;

/// <summary><c>p2p dataset prompts|generate|merge|status</c>: InstructPix2Pix training data made with Prompt-to-Prompt.</summary>
static class DatasetCommand
{
    public static Command Create() => new("dataset", "InstructPix2Pix training data: caption triplets -> Prompt-to-Prompt pairs -> filtered dataset.")
    {
        Prompts(), Generate(), Merge(), Status(), Preview(),
    };

    static Command Prompts()
    {
        var count = new Option<int>("--count") { Description = "Number of triplets.", Required = true };
        var seed = new Option<long>("--seed") { Description = "Seed of the grammar.", DefaultValueFactory = _ => 0 };
        var output = new Option<string>("--out", "-o") { Description = "Output JSONL file.", Required = true };
        var kinds = new Option<string?>("--kinds") { Description = $"Only these instruction kinds, comma-separated ({string.Join(", ", ShapeTriplets.Kinds)}; default: all)." };
        var objects = new Option<string>("--objects") { Description = "Objects per scene: N or MIN,MAX.", DefaultValueFactory = _ => "1,2" };
        var overwrite = CliSupport.Overwrite();
        var command = new Command("prompts", "Write caption triplets {input, edit, output} from the shipped model's scene grammar.") { count, seed, kinds, objects, output, overwrite };
        command.SetAction(r => CliSupport.Run(() =>
        {
            if (r.GetValue(count) < 1) throw new UserError($"--count must be at least 1; got {r.GetValue(count)}.");
            var text = r.GetValue(objects)!;
            var parts = text.Split(',', StringSplitOptions.TrimEntries);
            if (parts.Length > 2 || !parts.All(p => int.TryParse(p, out _))) throw new UserError($"--objects {text}: give N or MIN,MAX, e.g. --objects 1,2.");
            var kindList = r.GetValue(kinds)?.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries);
            Loading.AtomicFile.EnsureWritable(r.GetValue(output)!, r.GetValue(overwrite));
            ShapeTriplets.Write(r.GetValue(output)!, r.GetValue(count), r.GetValue(seed), kindList, int.Parse(parts[0]), int.Parse(parts[^1]));
            Console.WriteLine(r.GetValue(output));
            return 0;
        }));
        return command;
    }

    static Command Generate()
    {
        var model = CliSupport.Model();
        var prompts = new Option<string>("--prompts") { Description = "Triplets, JSONL {\"input\", \"edit\", \"output\"} (\"caption\" is read as \"input\").", Required = true };
        var output = new Option<string>("--out", "-o") { Description = "Dataset folder (created; an earlier run with the same settings is resumed).", Required = true };
        var samples = new Option<int>("--samples-per-prompt") { Description = "Pairs generated per record before filtering.", DefaultValueFactory = _ => 100 };
        var keep = new Option<int>("--keep") { Description = "Best pairs kept per record.", DefaultValueFactory = _ => 4 };
        var steps = CliSupport.Steps();
        var size = new Option<int?>("--size") { Description = "Image size (default: the model's)." };
        var seed = new Option<long>("--seed") { Description = "Run seed; each sample's seed derives from (run seed, record, sample).", DefaultValueFactory = _ => 0 };
        var schedule = new Option<string>("--schedule") { Description = "ip2p (InstructPix2Pix: self-attention only, for p ~ U(self range) of the steps) or p2p (the paper's: cross and self).", DefaultValueFactory = _ => "ip2p" };
        var source = new Option<string>("--source")
        {
            Description = "model (the input image generated from the input caption) or drawn (the caption drawn by the scene generator, inverted with direct inversion and edited; scene-grammar captions).",
            DefaultValueFactory = _ => "model",
        };
        var selfRange = new Option<string>("--self-range") { Description = "MIN,MAX of the self-attention injection fraction.", DefaultValueFactory = _ => "0.1,0.9" };
        var crossRange = new Option<string>("--cross-range") { Description = "MIN,MAX of the cross-attention injection fraction (p2p schedule).", DefaultValueFactory = _ => "0.6,0.9" };
        var guidanceRange = new Option<string>("--guidance-range") { Description = "MIN,MAX of the guidance scale.", DefaultValueFactory = _ => "7.5,15" };
        var filter = new Option<string>("--filter") { Description = "shapes (measured from the images; for the shipped model), clip (the paper's, with --clip-model) or none.", DefaultValueFactory = _ => "shapes" };
        var shapesMinIoU = new Option<double>("--shapes-min-iou")
        {
            Description = "Least instructed-change measure and kept-object IoU of a pair the shapes filter keeps.", DefaultValueFactory = _ => ShapesPairFilter.MinIoU,
        };
        var clipModel = new Option<string?>("--clip-model") { Description = "A Hugging Face CLIP folder (openai/clip-vit-large-patch14) for --filter clip." };
        var clipCaption = new Option<double>("--clip-threshold") { Description = "Least image-caption similarity of each image.", DefaultValueFactory = _ => 0.2 };
        var clipImage = new Option<double>("--clip-image-threshold") { Description = "Least image-image similarity.", DefaultValueFactory = _ => 0.7 };
        var clipDirection = new Option<double>("--clip-direction-threshold") { Description = "Least directional similarity.", DefaultValueFactory = _ => 0.2 };
        var scheduler = CliSupport.Scheduler();
        var shardIndex = new Option<int?>("--shard-index") { Description = "This worker's shard (default: from SLURM_ARRAY_TASK_ID or JOB_COMPLETION_INDEX)." };
        var shardCount = new Option<int?>("--shard-count") { Description = "Number of shards (default: SLURM_ARRAY_TASK_COUNT or P2P_SHARD_COUNT)." };
        var skipBad = new Option<bool>("--skip-bad-lines") { Description = "Leave malformed JSONL lines out (reported) instead of stopping." };
        var saveRejected = new Option<bool>("--save-rejected") { Description = "Also write the pairs the filter rejected, under rejected/ (for inspecting the filter)." };
        var modelOptions = CliSupport.ModelOptions.Create();
        var command = new Command("generate", "Make Prompt-to-Prompt pairs for each triplet, filter them, keep the best (resumable, shardable).")
        {
            model, prompts, output, samples, keep, steps, size, seed, schedule, source, selfRange, crossRange, guidanceRange, filter, scheduler, shardIndex, shardCount, skipBad, saveRejected, shapesMinIoU, clipModel, clipCaption, clipImage, clipDirection,
        };
        foreach (var o in modelOptions.All) command.Options.Add(o);
        command.SetAction(r => CliSupport.Run(() =>
        {
            var settings = new DatasetSettings
            {
                SamplesPerPrompt = r.GetValue(samples), Keep = r.GetValue(keep), Steps = r.GetValue(steps), Size = r.GetValue(size), Seed = r.GetValue(seed),
                Schedule = r.GetValue(schedule) switch
                {
                    "ip2p" => PairSchedule.InstructPix2Pix,
                    "p2p" => PairSchedule.PromptToPrompt,
                    var s => throw new UserError($"Unknown --schedule '{s}'. Use ip2p or p2p."),
                },
                Source = r.GetValue(source) switch
                {
                    "model" => PairSource.Model,
                    "drawn" => PairSource.Drawn,
                    var s => throw new UserError($"Unknown --source '{s}'. Use model or drawn."),
                },
                SelfRange = Range(r.GetValue(selfRange)!, "--self-range"), CrossRange = Range(r.GetValue(crossRange)!, "--cross-range"),
                GuidanceRange = Range(r.GetValue(guidanceRange)!, "--guidance-range"), Filter = r.GetValue(filter)!, Scheduler = r.GetValue(scheduler),
                SaveRejected = r.GetValue(saveRejected), ShapesMinIoU = r.GetValue(shapesMinIoU),
            };
            settings.Validate();
            var shard = Shard.Resolve(r.GetValue(shardIndex), r.GetValue(shardCount));
            using var sd = modelOptions.Load(r, r.GetValue(model));
            using var clip = settings.Filter == "clip" && r.GetValue(clipModel) is { } clipPath ? Models.ClipModel.Load(clipPath, sd.Placement, CliSupport.Warn) : null;
            var clipFilter = clip is null ? null : new ClipPairFilter(clip, new ClipThresholds(r.GetValue(clipCaption), r.GetValue(clipImage), r.GetValue(clipDirection)));
            var generator = new DatasetGenerator(sd, settings, CliSupport.Warn, clipFilter);
            if (shard.Count > 1) Console.Error.WriteLine($"shard {shard.Index} of {shard.Count}");
            int kept = generator.Run(r.GetValue(prompts)!, r.GetValue(output)!, shard, r.GetValue(skipBad), new ConsoleProgress("dataset"), CliSupport.Cancellation);
            Console.Error.WriteLine($"{kept} pairs kept");
            Console.WriteLine(r.GetValue(output));
            return 0;
        }));
        return command;
    }

    static Command Merge()
    {
        var dir = new Option<string>("--out", "-o") { Description = "The dataset folder.", Required = true };
        var command = new Command("merge", "Write seeds.json (the authors' training index) and report.json (missing and failed records).") { dir };
        command.SetAction(r => CliSupport.Run(() =>
        {
            var report = DatasetIndex.Merge(r.GetValue(dir)!);
            Console.Error.WriteLine(report.Summary());
            foreach (var (index, reason) in report.Failed.Take(20)) Console.Error.WriteLine($"  record {index}: {reason}");
            Console.WriteLine(Path.Combine(r.GetValue(dir)!, "seeds.json"));
            return report.Missing.Count == 0 ? 0 : 3;
        }));
        return command;
    }

    static Command Status()
    {
        var dir = new Argument<string>("dir") { Description = "The dataset folder." };
        var command = new Command("status", "Show how far a dataset run is.") { dir };
        command.SetAction(r => CliSupport.Run(() =>
        {
            Console.WriteLine(DatasetIndex.Status(r.GetValue(dir)!).Summary());
            return 0;
        }));
        return command;
    }

    static Command Preview()
    {
        var dir = new Option<string>("--out", "-o") { Description = "The dataset folder.", Required = true };
        var record = new Option<int>("--record") { Description = "Record index.", Required = true };
        var image = new Option<string>("--image") { Description = "Output PNG: the record's kept (and saved rejected) pairs with the filter's measures.", Required = true };
        var overwrite = CliSupport.Overwrite();
        var command = new Command("preview", "Show a record's pairs, kept and rejected, with the filter's measures.") { dir, record, image, overwrite };
        command.SetAction(r => CliSupport.Run(() =>
        {
            Loading.AtomicFile.EnsureWritable(r.GetValue(image)!, r.GetValue(overwrite));
            Imaging.Png.Save(r.GetValue(image)!, DatasetIndex.Preview(r.GetValue(dir)!, r.GetValue(record)));
            Console.WriteLine(r.GetValue(image));
            return 0;
        }));
        return command;
    }

    static (double, double) Range(string text, string option)
    {
        var parts = text.Split(',', StringSplitOptions.TrimEntries);
        if (parts.Length != 2 || !Numbers.TryParseFinite(parts[0], out var lo) || !Numbers.TryParseFinite(parts[1], out var hi))
            throw new UserError($"{option} {text}: give MIN,MAX, e.g. {option} 0.1,0.9.");
        return (lo, hi);
    }
}
