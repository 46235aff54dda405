using System.Collections.Concurrent;
using System.Diagnostics;
using PromptToPrompt.Imaging;
using PromptToPrompt.Pipelines;

namespace PromptToPrompt.Editing;

public enum JobState { Queued, Running, Done, Failed, Cancelled }

/// <summary>Where a running job is: its phase, step of steps, speed and ETA; inner iterations and loss for inversions.</summary>
public sealed record JobProgress(string Phase, int Step, int Total, double StepsPerSecond, double RemainingSeconds, int Inner = 0, int InnerTotal = 0,
                                 double? Loss = null);

/// <summary>One file a job wrote: its name inside the job's folder, and what it shows.</summary>
public sealed record JobFile(string Name, string Label);

/// <summary>What a finished job produced: files in its folder and a JSON-ready summary (spec, seed, PSNR, ...).</summary>
public sealed record JobOutcome(IReadOnlyList<JobFile> Files, IReadOnlyDictionary<string, object?> Details);

/// <summary>
/// A unit of work of an interactive front end. Its state changes only on the queue's worker thread; readers see a
/// consistent snapshot through <see cref="Snapshot"/>.
/// </summary>
public sealed class Job
{
    readonly CancellationTokenSource _cancel = new();
    readonly object _gate = new();

    internal Job(string id, string kind, string folder, Func<JobContext, JobOutcome> work)
    {
        Id = id;
        Kind = kind;
        Folder = folder;
        Work = work;
    }

    public string Id { get; }
    public string Kind { get; }
    /// <summary>The folder the job writes its files to.</summary>
    public string Folder { get; }
    internal Func<JobContext, JobOutcome> Work { get; }
    internal CancellationToken Token => _cancel.Token;

    public JobState State { get; private set; } = JobState.Queued;
    public JobProgress? Progress { get; private set; }
    public JobOutcome? Outcome { get; private set; }
    public string? Error { get; private set; }
    /// <summary>A small preview of the run so far (PNG), when the job makes them.</summary>
    public byte[]? Preview { get; private set; }
    /// <summary>Increases with every change, so a watcher can tell what it has already seen.</summary>
    public long Version { get; private set; }

    internal void Set(JobState? state = null, JobProgress? progress = null, JobOutcome? outcome = null, string? error = null, byte[]? preview = null)
    {
        lock (_gate)
        {
            if (state is { } s) State = s;
            if (progress is not null) Progress = progress;
            if (outcome is not null) Outcome = outcome;
            if (error is not null) Error = error;
            if (preview is not null) Preview = preview;
            Version++;
        }
    }

    /// <summary>Asks the job to stop; a running job stops within one UNet evaluation, a queued one never starts.</summary>
    public void Cancel() => _cancel.Cancel();
    public bool CancelRequested => _cancel.IsCancellationRequested;

    public bool Finished => State is JobState.Done or JobState.Failed or JobState.Cancelled;
}

/// <summary>What a job's work sees: its cancellation, its folder and reporters of progress and previews.</summary>
public sealed class JobContext(Job job) : IProgress<StepProgress>, IProgress<InversionProgress>
{
    public string JobId => job.Id;
    public CancellationToken Cancel => job.Token;
    public string Folder => job.Folder;
    /// <summary>Label of the phase reported by the next <see cref="StepProgress"/> reports.</summary>
    public string Phase { get; set; } = "sampling";
    /// <summary>Makes a preview image of latents [C, h, w], or null when it cannot (yet).</summary>
    public Func<TorchSharp.torch.Tensor, RgbImage?>? Previewer { get; set; }

    public void Report(StepProgress p)
    {
        double rate = p.Elapsed.TotalSeconds > 0 ? p.Step / p.Elapsed.TotalSeconds : 0;
        job.Set(progress: new JobProgress(Phase, p.Step, p.Total, rate, rate > 0 ? (p.Total - p.Step) / rate : 0));
        // A low-resolution preview of the batch's last image about ten times per run.
        if (Previewer is not null && p.Latents is { } latents && p.Step % Math.Max(1, p.Total / 10) == 0 && Previewer(latents[^1]) is { } preview)
            job.Set(preview: Png.Encode(preview.Resize(preview.Width * 4, preview.Height * 4)));
    }

    public void Report(InversionProgress p)
    {
        double rate = p.Elapsed.TotalSeconds > 0 ? p.Step / p.Elapsed.TotalSeconds : 0;
        job.Set(progress: new JobProgress(p.Phase, p.Step, p.Total, rate, rate > 0 ? (p.Total - p.Step) / rate : 0, p.Inner, p.InnerTotal,
                                          double.IsNaN(p.Loss) ? null : p.Loss));
    }

    public void ReportPreview(byte[] png) => job.Set(preview: png);
}

/// <summary>
/// A bounded queue of jobs run one at a time on one worker thread (one model, one device). A job that throws fails
/// alone: a <see cref="UserError"/> gives its message, anything else its type and message; the queue goes on.
/// <see cref="Invoke"/> runs other model work (loading the model, rendering an attention map) on the same thread, so
/// one thread does all of it: libtorch's OpenMP gives every thread that runs a parallel operation its own team of
/// threads, and with more of them than cores every team stops spinning between operations and sleeps instead, which
/// made each job 2-3x slower on the small shipped model (measured: a cached 50-step edit 0.8-1.0 s on the thread that
/// loaded the model, 2.0-2.7 s on another).
/// </summary>
public sealed class JobQueue : IDisposable
{
    // The worker's two inputs, each item a piece of work: invocations are taken before waiting jobs.
    readonly BlockingCollection<Action> _pending;
    readonly BlockingCollection<Action> _invocations = new();
    readonly ConcurrentDictionary<string, Job> _jobs = new();
    readonly Thread _worker;
    readonly string _root;
    readonly Action<string>? _log;
    int _next;

    /// <param name="root">Folder under which each job gets its own folder (named by its id).</param>
    /// <param name="capacity">Jobs that may wait; more are refused with <see cref="QueueFullException"/>.</param>
    public JobQueue(string root, int capacity = 8, Action<string>? log = null)
    {
        if (capacity < 1) throw new UserError($"The job queue needs room for at least one job; got {capacity}.");
        _root = root;
        _log = log;
        _pending = new BlockingCollection<Action>(capacity);
        _worker = new Thread(Work) { IsBackground = true, Name = "p2p jobs" };
        _worker.Start();
    }

    public int Capacity => _pending.BoundedCapacity;

    /// <summary>
    /// Runs <paramref name="work"/> on the worker thread, after the running job (if any) and before every waiting one,
    /// and returns its result or rethrows its exception.
    /// </summary>
    public T Invoke<T>(Func<T> work)
    {
        if (Thread.CurrentThread == _worker) return work();
        var done = new TaskCompletionSource<T>(TaskCreationOptions.RunContinuationsAsynchronously);
        _invocations.Add(() =>
        {
            try { done.SetResult(work()); }
            catch (Exception e) { done.SetException(e); }
        });
        return done.Task.GetAwaiter().GetResult();
    }

    /// <summary>Queues <paramref name="work"/>; throws <see cref="QueueFullException"/> when <see cref="Capacity"/> jobs already wait.</summary>
    public Job Enqueue(string kind, Func<JobContext, JobOutcome> work)
    {
        string id;
        // A folder left by an earlier server in the same output folder is never reused.
        do id = $"{DateTime.UtcNow:yyyyMMdd-HHmmss}-{Interlocked.Increment(ref _next):D4}";
        while (Directory.Exists(Path.Combine(_root, id)));
        var job = new Job(id, kind, Path.Combine(_root, id), work);
        _jobs[id] = job;
        if (!_pending.TryAdd(() => Run(job)))
        {
            _jobs.TryRemove(id, out _);
            throw new QueueFullException(Capacity);
        }
        return job;
    }

    public Job? Find(string id) => _jobs.GetValueOrDefault(id);

    public IReadOnlyList<Job> All => _jobs.Values.OrderBy(j => j.Id, StringComparer.Ordinal).ToList();

    void Work()
    {
        while (true)
        {
            Action? work;
            try { BlockingCollection<Action>.TakeFromAny([_invocations, _pending], out work); }
            catch (ArgumentException) { return; }   // both completed: disposed
            work!();
        }
    }

    void Run(Job job)
    {
        if (job.CancelRequested) { job.Set(JobState.Cancelled); return; }
        job.Set(JobState.Running);
        var clock = Stopwatch.StartNew();
        try
        {
            Directory.CreateDirectory(job.Folder);
            var outcome = job.Work(new JobContext(job));
            job.Set(JobState.Done, outcome: outcome);
        }
        catch (OperationCanceledException)
        {
            job.Set(JobState.Cancelled);
        }
        catch (UserError e)
        {
            job.Set(JobState.Failed, error: e.Message);
        }
        catch (Exception e)
        {
            job.Set(JobState.Failed, error: $"{e.GetType().Name}: {e.Message}");
            _log?.Invoke($"job {job.Id} failed: {e}");
        }
        _log?.Invoke($"job {job.Id} ({job.Kind}) {job.State.ToString().ToLowerInvariant()} in {clock.Elapsed.TotalSeconds:F1} s");
    }

    public void Dispose()
    {
        _pending.CompleteAdding();
        _invocations.CompleteAdding();
        foreach (var job in _jobs.Values) job.Cancel();
        _worker.Join(TimeSpan.FromSeconds(30));
        _pending.Dispose();
        _invocations.Dispose();
    }
}

public sealed class QueueFullException(int capacity) : Exception($"The job queue is full ({capacity} jobs waiting). Wait for a job to finish or cancel one.");
