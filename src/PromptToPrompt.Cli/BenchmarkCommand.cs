using System.CommandLine;
using System.Diagnostics;
using PromptToPrompt.Control;
using PromptToPrompt.Loading;
using PromptToPrompt.Pipelines;
using static TorchSharp.torch;

namespace PromptToPrompt.Cli;

/// <summary><c>p2p benchmark</c>: time and peak memory of each stage, on a model or a full-size random-weight architecture.</summary>
static class BenchmarkCommand
{
    public static Command Create()
    {
        var model = new Option<string?>("--model", "-m") { Description = "Model folder or checkpoint (or use --architecture)." };
        var architecture = new Option<string?>("--architecture") { Description = "Full-size random-weight model: sd15, sd21 or sdxl (no weights needed)." };
        var steps = CliSupport.Steps(5);
        var width = CliSupport.Width();
        var height = CliSupport.Height();
        var repeat = new Option<int>("--repeat") { Description = "Runs of the batched and the cached word swap (alternating; the ratio uses the fastest of each).", DefaultValueFactory = _ => 1 };
        var inversion = new Option<bool>("--inversion") { Description = "Also time null-text inversion (one step of inner iterations) and direct inversion." };
        var skip = new Option<string?>("--skip") { Description = "Stages to leave out, comma-separated: excite, directed (e.g. when a backward pass at full size does not fit in memory)." };
        var modelOptions = CliSupport.ModelOptions.Create();
        var command = new Command("benchmark", "Measure time and peak memory of generation, editing, decoding and inversion.")
        {
            model, architecture, steps, width, height, repeat, inversion, skip,
        };
        foreach (var o in modelOptions.All) command.Options.Add(o);
        command.SetAction(r => CliSupport.Run(() =>
        {
            var clock = Stopwatch.StartNew();
            var (arch, path) = (r.GetValue(architecture), r.GetValue(model));
            if ((arch is null) == (path is null)) throw new UserError("Give exactly one of --model and --architecture.");
            if (r.GetValue(repeat) < 1) throw new UserError($"--repeat must be at least 1; got {r.GetValue(repeat)}.");
            var skipped = (r.GetValue(skip) ?? "").Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).ToHashSet();
            if (skipped.FirstOrDefault(x => x is not ("excite" or "directed")) is { } unknown)
                throw new UserError($"--skip {unknown}: the stages that can be left out are excite and directed.");
            using var sd = arch is not null
                ? KnownModels.Random(arch, ModelPlacement.Parse(r.GetValue(modelOptions.Device)!, r.GetValue(modelOptions.DType)!))
                : modelOptions.Load(r, path!);
            var pipeline = new StableDiffusionPipeline(sd, CliSupport.Warn);
            var (w, h) = pipeline.ResolveSize(r.GetValue(width), r.GetValue(height), null);
            int n = r.GetValue(steps);
            Report($"load ({sd.Name})", clock.Elapsed, null);
            Console.WriteLine($"size {w}x{h}, {n} steps (ddim), {get_num_threads()} threads, {sd.Placement.DType.ToString().ToLowerInvariant()} on {sd.Placement.Device}");

            Measure("text encoder (2 prompts)", 1, () => pipeline.EncodePrompts(["a cat riding a bicycle", "a cat riding a car"]).Dispose());
            GenerationRequest Request(params string[] prompts) => new() { Prompts = prompts, Steps = n, Scheduler = "ddim", Seed = 1, Width = w, Height = h };
            // The first UNet evaluation pays one-time costs (allocator growth, kernel selection, weights paged in);
            // it is timed apart so that it does not inflate whichever stage happens to run first.
            Measure("warm-up: first UNet evaluation", 1, () => Denoise(pipeline, Request("a cat riding a bicycle") with { Steps = 1 }, null).Dispose());
            Tensor? final = null;
            Measure("plain generation, 1 prompt", n, () => { final?.Dispose(); final = Denoise(pipeline, Request("a cat riding a bicycle"), null); });
            Measure("plain generation, 2 prompts", n, () => Denoise(pipeline, Request("a cat riding a bicycle", "a cat riding a car"), null).Dispose());
            using (var store = new AttentionStore(1))
                Measure("generation + AttentionStore", n, () => Denoise(pipeline, Request("a cat riding a bicycle"), store).Dispose());
            // A latent update at every step (one conditional forward + backward before the guided pass), no refinement.
            var excite = new ExciteSettings
            {
                TokenIndices = AttendAndExcite.SubjectTokens(sd.Tokenizer, "a cat riding a bicycle", ["cat", "bicycle"]), MaxIterToAlter = n,
                Thresholds = new Dictionary<int, double>(),
            };
            if (!skipped.Contains("excite"))
                Measure("generation + Attend-and-Excite", n, () => Denoise(pipeline, Request("a cat riding a bicycle"), null, excite).Dispose());
            // Directed Diffusion editing every step's cross-attention (materialised probabilities in every cross-attention layer).
            var box = new DirectedSettings { Regions = [DirectedRegion.ForWord(sd.Tokenizer, "a cat riding a bicycle", "cat", new Box(0, 0.5, 0, 1))], Steps = n };
            if (!skipped.Contains("directed"))
                using (var directed = DirectedDiffusion.For(sd.Tokenizer, "a cat riding a bicycle", box))
                    Measure("generation + Directed Diffusion", n, () => Denoise(pipeline, Request("a cat riding a bicycle"), directed).Dispose());
            AttentionReplace Swap(string target) => new(sd.Tokenizer, ["a cat riding a bicycle", target], n, new EditSchedule(0.8, StepWindow.Until(0.4)));
            // The source cache: record the source once, then edit with the targets alone (EditSession does this). The
            // batched and the cached word swap alternate --repeat times; the ratio takes the fastest run of each.
            var plan = new Editing.EditSession(sd, new Editing.SourceSettings { Prompt = "a cat riding a bicycle", Steps = n, Scheduler = "ddim", Seed = 1, Width = w, Height = h }).Plan;
            using (var trajectory = SourceTrajectory.Allocate(plan, sd.Placement.Device))
            {
                Measure($"record the source ({TrajectoryPlan.Megabytes(plan.Bytes)} cached)", n,
                    () => Denoise(pipeline, Request("a cat riding a bicycle"), new SourceRecorder(trajectory)).Dispose());
                TimeSpan batched = TimeSpan.MaxValue, later = TimeSpan.MaxValue;
                for (int k = 0; k < r.GetValue(repeat); k++)
                {
                    using (var swap = Swap("a cat riding a car"))
                        batched = Min(batched, Measure("word swap, 2 prompts", n, () => Denoise(pipeline, Request("a cat riding a bicycle", "a cat riding a car"), swap).Dispose()));
                    using (var swap = Swap("a cat riding a horse"))
                        later = Min(later, Measure("later word swap, target alone + cache", n, () =>
                            Denoise(pipeline, Request("a cat riding a horse"), new CachedSourceEdit(trajectory, [new CachedSourceEdit.Group(swap, 1)])).Dispose()));
                }
                Console.WriteLine($"a later edit costs {later / batched:0.00}x the batched word swap; the cached source holds {TrajectoryPlan.Megabytes(plan.Bytes)} " +
                                  $"({plan.Evaluations} evaluations, {plan.Layers.Count(l => l.Kind == SourceRecordKind.Maps)} layers as maps, " +
                                  $"{plan.Layers.Count(l => l.Kind != SourceRecordKind.Maps)} as queries/keys, {plan.Storage.ToString().ToLowerInvariant()})");
            }
            Measure("VAE decode, 1 image", 1, () => pipeline.Decode(final!));
            if (r.GetValue(inversion))
            {
                var photo = pipeline.Decode(final!)[0];
                Measure("null-text inversion, 1 step x 10 inner", 1, () =>
                    new Inversion(pipeline).Invert(photo, "a cat riding a bicycle", new InversionSettings(InversionMethod.NullText, 1, 10, EarlyStopEpsilon: 0)).Dispose());
                // Direct and negative-prompt inversion need no optimisation: the DDIM inversion alone, one UNet evaluation per step.
                Measure($"direct inversion, {n} steps", n, () =>
                    new Inversion(pipeline).Invert(photo, "a cat riding a bicycle", new InversionSettings(InversionMethod.Direct, n)).Dispose());
            }
            final?.Dispose();
            return 0;
        }));
        return command;
    }

    /// <summary>The denoising loop alone (no VAE decoding), as <see cref="StableDiffusionPipeline.Generate"/> runs it.</summary>
    static Tensor Denoise(StableDiffusionPipeline pipeline, GenerationRequest request, IRunController? controller, ExciteSettings? excite = null)
    {
        var scheduler = Schedulers.Schedulers.Create("ddim", pipeline.Model.Scheduler, request.Steps);
        int count = request.Prompts.Count;
        using var noise = pipeline.InitialNoise(request.Seed, 1, request.Width!.Value, request.Height!.Value);
        using var latents = noise.expand(count, -1, -1, -1).contiguous();
        using var scope = NewDisposeScope();
        var (cond, uncond, pooled) = pipeline.Condition(request.Prompts, "", null, request.Width!.Value, request.Height!.Value);
        var guidance = excite is null ? null : new AttendAndExcite(pipeline.Model, cond, excite, scheduler.Timesteps.Count,
            request.Height!.Value / pipeline.Model.VaeScale, request.Width!.Value / pipeline.Model.VaeScale, added: pooled?.For(false, cond.device));
        using (pipeline.Model.UNet.Hooks.Use(controller))
            return pipeline.Denoise(latents, uncond, cond, scheduler, request.GuidanceScale, controller, null, CliSupport.Cancellation,
                                    latentGuidance: guidance, pooled: pooled).MoveToOuterDisposeScope();
    }

    static TimeSpan Min(TimeSpan a, TimeSpan b) => a < b ? a : b;

    static TimeSpan Measure(string what, int steps, Action action)
    {
        var clock = Stopwatch.StartNew();
        action();
        Report(what, clock.Elapsed, steps);
        return clock.Elapsed;
    }

    static void Report(string what, TimeSpan elapsed, int? steps)
    {
        using var process = Process.GetCurrentProcess();
        var rate = steps is int s && s > 1 ? $"  {elapsed.TotalSeconds / s,7:0.000} s/step ({s / elapsed.TotalSeconds:0.00} it/s)" : "";
        Console.WriteLine($"{what,-42} {elapsed.TotalSeconds,8:0.00} s{rate}  peak RSS {process.PeakWorkingSet64 / (1 << 20),6} MB");
    }
}
