using System.CommandLine;
using System.Globalization;
using PromptToPrompt.Editing;
using PromptToPrompt.Imaging;
using PromptToPrompt.Loading;
using PromptToPrompt.Pipelines;

namespace PromptToPrompt.Cli;

/// <summary><c>p2p sweep</c>: one source, one target, a labelled grid over one or two edit parameters.</summary>
static class SweepCommand
{
    public static Command Create()
    {
        var model = CliSupport.Model();
        var specFile = new Option<string?>("--spec") { Description = "An edit spec (as p2p edit --spec) with the source and one target: the edit the cells start from." };
        var prompt = new Option<string?>("--prompt", "-p") { Description = "Source prompt (or the inversion's, with --inversion)." };
        var target = new Option<string?>("--target", "-t") { Description = "Edited prompt (default: the source prompt, for re-weighting sweeps)." };
        var edit = new Option<string?>("--edit") { Description = "replace, refine or reweight (default: from the prompts, as p2p edit)." };
        var cross = new Option<string?>("--cross-replace") { Description = "cross_replace_steps values, e.g. 0.2,0.4,0.6,0.8 (one value: fixed)." };
        var self = new Option<string?>("--self-replace") { Description = "self_replace_steps values, e.g. 0.2,0.4,0.6 (one value: fixed)." };
        var reweight = new Option<string[]>("--reweight") { Description = "word=values, e.g. smiling=-1,0,2,5 (repeatable; one value: fixed)." };
        var blend = new Option<string?>("--blend") { Description = "Local blend words, as p2p edit: \"circle;circle\"." };
        var threshold = new Option<string?>("--blend-threshold") { Description = "Local blend threshold values, e.g. 0.2,0.3,0.5 (needs --blend)." };
        var variant = new Option<string?>("--variant") { Description = "prompt_to_prompt (default) or null_text." };
        var inversion = new Option<string?>("--inversion") { Description = "Sweep edits of an inverted photo (a file written by p2p invert)." };
        var batch = new Option<int>("--batch") { Description = "Cells per UNet batch (each cell is one target row).", DefaultValueFactory = _ => 4 };
        var sampling = CliSupport.SamplingOptions.Create();
        var cacheOptions = CliSupport.CacheOptions.Create();
        var modelOptions = CliSupport.ModelOptions.Create();
        var overwrite = CliSupport.Overwrite();
        var output = new Option<string>("--out", "-o") { Description = "Output folder: source.png, one PNG per cell, grid.png.", Required = true };
        var command = new Command("sweep", "Edit one source over a grid of edit parameters (cross/self-replace fractions, re-weighting, blend threshold).")
        {
            model, specFile, prompt, target, edit, cross, self, reweight, blend, threshold, variant, inversion, batch, overwrite, output,
        };
        foreach (var o in sampling.All.Concat(cacheOptions.All).Concat(modelOptions.All)) command.Options.Add(o);
        command.SetAction(r => CliSupport.Run(() =>
        {
            using var inversionFile = r.GetValue(inversion) is { } invPath ? InversionFile.Load(invPath) : null;
            var source = r.GetValue(prompt) ?? inversionFile?.Prompt;
            var axes = new List<SweepAxis>();
            if (r.GetValue(cross) is { } c) axes.Add(new SweepAxis(SweepParameter.CrossReplace, Values(c, "--cross-replace")));
            if (r.GetValue(self) is { } sr) axes.Add(new SweepAxis(SweepParameter.SelfReplace, Values(sr, "--self-replace")));
            foreach (var rw in r.GetValue(reweight) ?? [])
            {
                int eq = rw.LastIndexOf('=');
                if (eq <= 0) throw new UserError($"--reweight {rw}: expected word=values, e.g. --reweight smiling=-1,0,2,5.");
                axes.Add(new SweepAxis(SweepParameter.Reweight, Values(rw[(eq + 1)..], "--reweight"), rw[..eq]));
            }
            if (r.GetValue(threshold) is { } t) axes.Add(new SweepAxis(SweepParameter.BlendThreshold, Values(t, "--blend-threshold")));
            if (r.GetValue(batch) < 1) throw new UserError($"--batch must be at least 1; got {r.GetValue(batch)}.");

            // The edit the cells start from: a spec file or the flags of p2p edit, then every single-valued axis.
            var targetPrompt = r.GetValue(target) ?? source;
            EditSpec spec;
            if (r.GetValue(specFile) is { } specPath)
            {
                if (new Option[] { prompt, target, edit, blend, variant }.FirstOrDefault(o => r.GetResult(o) is not null) is { } clash)
                    throw new UserError($"{clash.Name} cannot be combined with --spec: put it in the spec file.");
                spec = EditSpec.Load(specPath);
                if (spec.Prompts.Count != 2) throw new UserError($"{specPath}: a sweep edits one source into one target; the spec has {spec.Prompts.Count} prompts.");
            }
            else spec = EditCommand.FromFlags(source, targetPrompt is null ? [] : [targetPrompt], r.GetValue(edit),
                null, null, r.GetValue(blend), null, [], r.GetValue(variant));
            IReadOnlyList<string> prompts = [spec.Prompts[0], spec.Prompts[1]];
            var sweep = Sweep.Create(prompts[0], prompts[1], spec.Edit, axes);
            var cells = sweep.Cells(prompts[0]);

            var outDir = r.GetValue(output)!;
            bool replace = r.GetValue(overwrite);
            foreach (var f in Sweep.FileNames(cells)) AtomicFile.EnsureWritable(Path.Combine(outDir, f), replace);
            using var cache = cacheOptions.Create(r, always: true)!;
            // Command-line generation options override the spec's (steps and guidance only when given: they have defaults).
            bool Given(Option o) => r.GetResult(o) is { Implicit: false };
            bool fromSpec = r.GetValue(specFile) is not null || inversionFile is not null;
            spec = spec with
            {
                Steps = fromSpec && !Given(sampling.Steps) ? spec.Steps : r.GetValue(sampling.Steps),
                GuidanceScale = fromSpec && !Given(sampling.Guidance) ? spec.GuidanceScale : r.GetValue(sampling.Guidance),
                Scheduler = r.GetValue(sampling.Scheduler) ?? spec.Scheduler, Width = r.GetValue(sampling.Width) ?? spec.Width,
                Height = r.GetValue(sampling.Height) ?? spec.Height, NegativePrompt = r.GetValue(sampling.Negative) ?? spec.NegativePrompt,
                Seed = r.GetValue(sampling.Seed) ?? spec.Seed, Model = r.GetValue(model) ?? spec.Model,
                SizeConditioning = sampling.Sizes.Parse(r) ?? spec.SizeConditioning,
            };
            using var initial = inversionFile is null && (r.GetValue(sampling.Latent) ?? spec.Latent) is { } lp ? CliSupport.ReadLatent(lp) : null;
            long seed = spec.Seed ?? Random.Shared.NextInt64(0, 1L << 32);
            if (inversionFile is not null) spec = EditCommand.ForInversion(spec, inversionFile, Given(sampling.Steps) || Given(sampling.Guidance));
            using var sd = modelOptions.Load(r, spec.Model);
            if (inversionFile is null && initial is null) Console.Error.WriteLine($"seed {seed}");
            var settings = inversionFile is not null ? EditCommand.FromInversionFile(inversionFile, r.GetValue(inversion)!, sd, spec)
                : SourceSettings.FromSpec(spec, initial, seed);
            var session = new EditSession(sd, settings with { CacheStorage = cacheOptions.Storage(r) }, cache, CliSupport.Warn);
            Console.Error.WriteLine($"sweep: {cells.Count} cells of {string.Join(" x ", sweep.Axes.Select(a => $"{a.Name} ({a.Values.Count})"))}, {r.GetValue(batch)} per batch");
            var results = session.EditAll(cells.Select(x => x.Request).ToList(), r.GetValue(batch), null, new ConsoleProgress("sweep"), CliSupport.Cancellation);
            try
            {
                foreach (var f in sweep.Save(outDir, prompts[0], cells, results)) Console.WriteLine(f);
            }
            finally
            {
                foreach (var x in results) x.Dispose();
            }
            return 0;
        }));
        return command;
    }

    static List<double> Values(string text, string option) => text.Split(',', StringSplitOptions.TrimEntries)
        .Select(v => Numbers.TryParseFinite(v, out var d) ? d
            : throw new UserError($"{option} {text}: expected comma-separated finite numbers, e.g. 0.2,0.4,0.6.")).ToList();
}
