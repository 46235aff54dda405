using System.CommandLine;
using System.Globalization;
using PromptToPrompt.Loading;
using PromptToPrompt.Pipelines;

namespace PromptToPrompt.Cli;

/// <summary>Options shared by the commands and the error handling every command uses.</summary>
static class CliSupport
{
    public static Option<string?> Model() => new("--model", "-m")
    {
        Description = "Diffusers model folder (with model_index.json) or single-file .safetensors checkpoint (default: the shipped shapes model).",
    };
    public static Option<string?> Latent() => new("--latent") { Description = "Initial latent x_T: a safetensors file with a tensor 'latent' [1, C, H/8, W/8]." };
    public static Option<string?> NegativePrompt() => new("--negative-prompt") { Description = "Negative prompt (replaces the empty unconditional prompt)." };
    public static Option<int> Steps(int fallback = 50) => new("--steps") { Description = "Denoising steps.", DefaultValueFactory = _ => fallback };
    public static Option<double> Guidance() => new("--guidance") { Description = "Classifier-free guidance scale.", DefaultValueFactory = _ => 7.5 };
    public static Option<long?> Seed() => new("--seed") { Description = "Random seed of the initial noise (random if omitted; always recorded in the PNG)." };
    public static Option<string?> Scheduler() => new("--scheduler")
    {
        Description = "pndm, ddim, euler, euler-a or dpmpp-2m (default: the model's own scheduler; euler-a, which adds fresh noise at every step, generates and follows instructions but does not edit).",
    };
    public static Option<int?> Width() => new("--width") { Description = "Image width in pixels, a multiple of 8 (default: the model's size)." };
    public static Option<int?> Height() => new("--height") { Description = "Image height in pixels, a multiple of 8 (default: the model's size)." };
    public static Option<string> Device() => new("--device") { Description = "cpu, cuda or cuda:N.", DefaultValueFactory = _ => "cpu" };
    public static Option<string> DType() => new("--dtype") { Description = "float32, float16 or bfloat16.", DefaultValueFactory = _ => "float32" };
    public static Option<string?> Tokenizer() => new("--tokenizer")
    {
        Description = "For single-file checkpoints: a folder with the CLIP tokenizer (vocab.json, merges.txt).",
    };
    public static Option<string?> PredictionType() => new("--prediction-type")
    {
        Description = "For single-file checkpoints: epsilon or v_prediction (SD 2.x 768-v models).",
    };
    public static Option<string?> Config() => new("--config")
    {
        Description = "For single-file checkpoints: a diffusers model folder whose configs (and tokenizer) describe the checkpoint, instead of inferring them.",
    };
    public static Option<bool> Overwrite() => new("--overwrite") { Description = "Replace existing output files." };

    static readonly CancellationTokenSource CtrlC = new();

    /// <summary>Cancelled by Ctrl-C: long loops stop at the next step; nothing half-written is left behind.</summary>
    public static CancellationToken Cancellation => CtrlC.Token;

    /// <summary>Every number option of every command refuses NaN and infinity when parsed, before anything runs.</summary>
    public static void RequireFiniteNumbers(Command command)
    {
        foreach (var option in command.Options.Where(o => o.ValueType == typeof(double) || o.ValueType == typeof(double?)))
            option.Validators.Add(result =>
            {
                // Text that is no number at all is left to the parser's own error.
                foreach (var token in result.Tokens)
                    if (double.TryParse(token.Value, NumberStyles.Float, CultureInfo.InvariantCulture, out var d) && !double.IsFinite(d))
                        result.AddError($"{option.Name} must be a finite number; got {d.ToString(CultureInfo.InvariantCulture)}.");
            });
        foreach (var sub in command.Subcommands) RequireFiniteNumbers(sub);
    }

    /// <summary>Runs a command body: user errors become one line on stderr and exit code 1; Ctrl-C exits with 130.</summary>
    public static int Run(Func<int> body)
    {
        Console.CancelKeyPress += (_, e) =>
        {
            e.Cancel = true;
            Console.Error.WriteLine("\nstopping after the current step (Ctrl-C again to abort at once)...");
            if (CtrlC.IsCancellationRequested) Environment.Exit(130);
            CtrlC.Cancel();
        };
        try
        {
            return body();
        }
        catch (UserError e)
        {
            Console.Error.WriteLine($"error: {e.Message}");
            return 1;
        }
        catch (OperationCanceledException)
        {
            Console.Error.WriteLine("cancelled.");
            return 130;
        }
        catch (Exception e) when (Environment.GetEnvironmentVariable("P2P_DEBUG") is null)
        {
            Console.Error.WriteLine($"error: {e.GetType().Name}: {e.Message}");
            Console.Error.WriteLine("This is unexpected; rerun with P2P_DEBUG=1 for the full trace and report it.");
            return 2;
        }
    }

    /// <summary>The sampling options of the commands that generate from prompts (generate, attention).</summary>
    public sealed record SamplingOptions(Option<string?> Negative, Option<long?> Seed, Option<int> Steps, Option<double> Guidance,
                                         Option<string?> Scheduler, Option<int?> Width, Option<int?> Height, Option<string?> Latent)
    {
        public static SamplingOptions Create() => new(NegativePrompt(), CliSupport.Seed(), CliSupport.Steps(), CliSupport.Guidance(),
            CliSupport.Scheduler(), CliSupport.Width(), CliSupport.Height(), CliSupport.Latent());

        public SizeOptions Sizes { get; } = SizeOptions.Create();

        public IEnumerable<Option> All => [Negative, Seed, Steps, Guidance, Scheduler, Width, Height, Latent, .. Sizes.All];

        /// <summary>Checks the scheduler name and reads the initial latent (before any model is loaded); picks a seed if none was given.</summary>
        public (TorchSharp.torch.Tensor? Initial, long Seed) Prepare(ParseResult r)
        {
            Schedulers.Schedulers.CheckName(r.GetValue(Scheduler));
            var initial = r.GetValue(Latent) is { } path ? ReadLatent(path) : null;
            long seed = r.GetValue(Seed) ?? Random.Shared.NextInt64(0, 1L << 32);
            if (initial is null) Console.Error.WriteLine($"seed {seed}");
            return (initial, seed);
        }

        /// <summary>The same settings as the source of an editing session.</summary>
        public Editing.SourceSettings Source(ParseResult r, string prompt, TorchSharp.torch.Tensor? initial, long seed) => new()
        {
            Prompt = prompt, NegativePrompt = r.GetValue(Negative) ?? "", Steps = r.GetValue(Steps), GuidanceScale = r.GetValue(Guidance),
            Scheduler = r.GetValue(Scheduler), Seed = seed, InitialLatent = initial, Width = r.GetValue(Width), Height = r.GetValue(Height),
            SizeConditioning = Sizes.Parse(r),
        };

        public GenerationRequest Request(ParseResult r, IReadOnlyList<string> prompts, TorchSharp.torch.Tensor? initial, long seed) => new()
        {
            Prompts = prompts, NegativePrompt = r.GetValue(Negative) ?? "", Steps = r.GetValue(Steps), GuidanceScale = r.GetValue(Guidance),
            Scheduler = r.GetValue(Scheduler), Seed = seed, InitialLatent = initial, Width = r.GetValue(Width), Height = r.GetValue(Height),
            SizeConditioning = Sizes.Parse(r),
        };
    }

    /// <summary>SDXL's micro-conditioning options (<c>--original-size H,W --crop-coords TOP,LEFT --target-size H,W</c>).</summary>
    public sealed record SizeOptions(Option<string?> Original, Option<string?> Crop, Option<string?> Target)
    {
        public static SizeOptions Create() => new(
            new Option<string?>("--original-size") { Description = "SDXL: the original image size H,W the model is told (default: the output size)." },
            new Option<string?>("--crop-coords") { Description = "SDXL: the crop's top-left corner TOP,LEFT the model is told (default 0,0)." },
            new Option<string?>("--target-size") { Description = "SDXL: the target size H,W the model is told (default: the output size)." });

        public IEnumerable<Option> All => [Original, Crop, Target];

        /// <summary>The given parts (null when none is given).</summary>
        public SizeConditioning? Parse(ParseResult r)
        {
            (int, int)? Pair(Option<string?> o)
            {
                if (r.GetValue(o) is not { } text) return null;
                var parts = text.Split(',');
                if (parts.Length != 2 || !int.TryParse(parts[0].Trim(), out int a) || !int.TryParse(parts[1].Trim(), out int b))
                    throw new UserError($"{o.Name} '{text}': give two integers separated by a comma, e.g. 1024,1024.");
                return (a, b);
            }
            var (original, crop, target) = (Pair(Original), Pair(Crop), Pair(Target));
            return original is null && crop is null && target is null ? null : new SizeConditioning(original, crop, target);
        }
    }

    /// <summary>The options every model-loading command takes.</summary>
    public sealed record ModelOptions(Option<string> Device, Option<string> DType, Option<string?> Tokenizer, Option<string?> PredictionType, Option<string?> Config)
    {
        public static ModelOptions Create() => new(CliSupport.Device(), CliSupport.DType(), CliSupport.Tokenizer(), CliSupport.PredictionType(), CliSupport.Config());
        public IEnumerable<Option> All => [Device, DType, Tokenizer, PredictionType, Config];

        public StableDiffusionModel Load(ParseResult r, string? path)
        {
            path ??= DefaultModel();
            var placement = ModelPlacement.Parse(r.GetValue(Device)!, r.GetValue(DType)!);
            Console.Error.WriteLine($"loading {path} ({placement.DType.ToString().ToLowerInvariant()} on {placement.Device})...");
            return StableDiffusionModel.Load(path, placement, Warn, new SingleFileOptions(r.GetValue(Tokenizer), r.GetValue(PredictionType), r.GetValue(Config)));
        }
    }

    /// <summary>The source-cache options of the commands that edit one source many times (edit, sweep).</summary>
    public sealed record CacheOptions(Option<string?> Dir, Option<long> BudgetMb, Option<string?> DType)
    {
        public static CacheOptions Create() => new(
            new Option<string?>("--cache") { Description = "Folder of recorded sources: later edits of the same source skip its computation (created if absent)." },
            new Option<long>("--cache-budget") { Description = "Memory for recorded sources, in MB.", DefaultValueFactory = _ => Editing.SourceCache.DefaultBudgetMb },
            new Option<string?>("--cache-dtype") { Description = "Storage of the recorded attention: float32 or float16 (half the memory, less exact; default: the model's dtype)." });

        public IEnumerable<Option> All => [Dir, BudgetMb, DType];

        /// <summary>A cache when --cache is given or <paramref name="always"/>; null otherwise. Checks the folder and the budget first.</summary>
        public Editing.SourceCache? Create(ParseResult r, bool always)
        {
            var dir = r.GetValue(Dir);
            // --cache-budget has a default, so only an explicit one asks for a (memory) cache.
            if (dir is null && !always && r.GetResult(BudgetMb) is not { Implicit: false }) return null;
            return new Editing.SourceCache(r.GetValue(BudgetMb), dir, Warn);
        }

        public TorchSharp.torch.ScalarType? Storage(ParseResult r) => r.GetValue(DType) switch
        {
            null => null,
            "float32" => TorchSharp.torch.ScalarType.Float32,
            "float16" => TorchSharp.torch.ScalarType.Float16,
            var d => throw new UserError($"--cache-dtype {d}: use float32 or float16."),
        };
    }

    public static void Warn(string message) => Console.Error.WriteLine(message);

    /// <summary>
    /// A model shipped with the project (models/NAME in the repository, copied beside p2p.dll by the build), found from
    /// the executable's folder upwards; the shapes model also through P2P_DEFAULT_MODEL.
    /// </summary>
    public static string DefaultModel(string name = "shapes")
    {
        if (name == "shapes" && Environment.GetEnvironmentVariable("P2P_DEFAULT_MODEL") is { Length: > 0 } env) return env;
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            var candidate = Path.Combine(dir.FullName, "models", name);
            if (File.Exists(Path.Combine(candidate, "model_index.json"))) return candidate;
        }
        throw new UserError($"No --model given and the shipped model models/{name} was not found. Pass --model DIR|FILE.");
    }

    /// <summary>Reads the tensor <c>latent</c> from a safetensors file.</summary>
    public static TorchSharp.torch.Tensor ReadLatent(string path)
    {
        using var file = new SafetensorsFile(path);
        return file.ReadUserTensor("latent", 4, "Save the initial latent as a float tensor named 'latent' of shape [1, C, H/8, W/8].");
    }
}

/// <summary>How progress is shown: a bar redrawn in place, a line every 5%, or nothing (<c>--progress</c>).</summary>
enum ProgressMode { Auto, Bar, Plain, None }

/// <summary>
/// A progress line on stderr: step, it/s, ETA. On a terminal (or <c>--progress bar</c>) a bar redrawn in place; in a
/// log (stderr redirected, or <c>--progress plain</c>) one line each time another 5% of the steps is done.
/// </summary>
sealed class ConsoleProgress(string label) : IProgress<StepProgress>, IProgress<InversionProgress>, IProgress<Datasets.DatasetProgress>
{
    /// <summary>Set from the root command's <c>--progress</c> before a command runs.</summary>
    public static ProgressMode Mode { get; set; } = ProgressMode.Auto;

    readonly ProgressMode _mode = Mode == ProgressMode.Auto ? (Console.IsErrorRedirected ? ProgressMode.Plain : ProgressMode.Bar) : Mode;
    string? _phase;
    int _bucket = -1;

    bool Interactive => _mode == ProgressMode.Bar;

    public void Report(StepProgress p) =>
        Write(label, p.Step, p.Total, $"{p.StepsPerSecond:0.00} it/s  ETA {p.Remaining:m\\:ss}", p.Step == p.Total);

    public void Report(InversionProgress p)
    {
        if (_phase != p.Phase)
        {
            if (_phase is not null && Interactive) Console.Error.WriteLine();
            _bucket = -1;
        }
        _phase = p.Phase;
        // Time per outer step so far; inner iterations vary (early stopping), so the ETA is an estimate.
        double perStep = p.Step > 0 ? p.Elapsed.TotalSeconds / p.Step : 0;
        var inner = p.InnerTotal > 0 ? $"  inner {p.Inner}/{p.InnerTotal}  loss {p.Loss:0.###e+0}" : "";
        Write(p.Phase, p.Step, p.Total, $"{inner}  elapsed {p.Elapsed:m\\:ss}  ETA ~{TimeSpan.FromSeconds(perStep * (p.Total - p.Step)):m\\:ss}",
            p.Step == p.Total && (p.InnerTotal == 0 || p.Inner == p.InnerTotal));
    }

    /// <summary><paramref name="done"/> of <paramref name="total"/> samples (an evaluation's measure).</summary>
    public void Report(int done, int total) => Write(label, done, total, "", done == total, "sample");

    public void Report(Datasets.DatasetProgress p) =>
        Write(label, p.RecordsDone, p.RecordsTotal, $"sample {p.InRecord}/{p.SamplesPerRecord}  {p.PairsKept} pairs kept  ETA {p.Remaining:h\\:mm\\:ss}",
            p.RecordsDone == p.RecordsTotal, "records");

    static int TerminalWidth()
    {
        try { return Math.Clamp(Console.BufferWidth - 1, 0, 110); }
        catch (IOException) { return 0; }
    }

    void Write(string what, int step, int total, string detail, bool done, string unit = "step")
    {
        const int width = 24;
        int filled = total == 0 ? width : step * width / total;
        var line = $"{what} [{new string('#', filled)}{new string('-', width - filled)}] {unit} {step}/{total}  {detail}";
        switch (_mode)
        {
            case ProgressMode.Bar:
                Console.Error.Write("\r" + line.PadRight(TerminalWidth()));
                if (done) Console.Error.WriteLine();
                break;
            case ProgressMode.Plain:
                // The first report of each further 5% of the steps, and the last one.
                int bucket = total == 0 ? 20 : step * 20 / total;
                if (bucket == _bucket && !done) break;
                _bucket = bucket;
                Console.Error.WriteLine(line);
                break;
        }
    }
}

/// <summary>
/// Progress given as text ending in <c>k/n</c> (the evaluations' "canonical edits 3/20"): each label's samples shown by
/// a <see cref="ConsoleProgress"/> of that label. Synchronous, so the lines keep their order.
/// </summary>
sealed class StatusLine : IProgress<string>
{
    static readonly System.Text.RegularExpressions.Regex Count = new(@"^(?<label>.*?)\s*(?<k>\d+)/(?<n>\d+)$");
    (string Label, ConsoleProgress Line)? _current;

    public void Report(string text)
    {
        var m = Count.Match(text);
        if (!m.Success) return;
        var label = m.Groups["label"].Value;
        if (_current?.Label != label) _current = (label, new ConsoleProgress(label));
        _current.Value.Line.Report(int.Parse(m.Groups["k"].Value), int.Parse(m.Groups["n"].Value));
    }
}
