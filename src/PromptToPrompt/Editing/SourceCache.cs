using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using PromptToPrompt.Control;
using PromptToPrompt.Imaging;
using PromptToPrompt.Loading;
using TorchSharp;
using static TorchSharp.torch;

namespace PromptToPrompt.Editing;

/// <summary>A computed source: its recorded trajectory and its decoded image.</summary>
public sealed record CachedSource(SourceTrajectory Trajectory, RgbImage Image) : IDisposable
{
    public void Dispose() => Trajectory.Dispose();
}

/// <summary>
/// Recorded sources by key (<see cref="SourceKey"/>): in memory within a budget (least recently used first out), and
/// optionally on disk, one safetensors file per source (<c>DIR/KEY.safetensors</c>) with a checksum over its tensors.
/// A file that is stale (another format, another key) or corrupt is reported in one line and recomputed.
/// </summary>
public sealed class SourceCache : IDisposable
{
    public const string Format = "p2p-source-cache/1";
    /// <summary>Default memory budget: 4 GB.</summary>
    public const long DefaultBudgetMb = 4096;

    readonly Dictionary<string, CachedSource> _entries = new();
    readonly LinkedList<string> _recent = new();
    readonly Action<string>? _log;

    public long BudgetBytes { get; }
    public string? Directory { get; }
    public long UsedBytes => _entries.Values.Sum(e => e.Trajectory.Plan.Bytes);
    public int Count => _entries.Count;

    /// <param name="budgetMb">Memory for recorded sources, in MB.</param>
    /// <param name="directory">Folder of cache files, or null for memory only. Created if absent; must be writable.</param>
    public SourceCache(long budgetMb = DefaultBudgetMb, string? directory = null, Action<string>? log = null)
    {
        if (budgetMb < 1) throw new UserError($"The cache budget must be at least 1 MB; got {budgetMb}.");
        BudgetBytes = budgetMb * 1024 * 1024;
        _log = log;
        if (directory is not null)
        {
            if (File.Exists(directory)) throw new UserError($"The cache folder {directory} is a file. Give a folder for --cache (it is created if absent).");
            try
            {
                System.IO.Directory.CreateDirectory(directory);
                var probe = Path.Combine(directory, $".write-test-{Environment.ProcessId}-{Guid.NewGuid():N}");
                File.WriteAllBytes(probe, []);
                File.Delete(probe);
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                throw new UserError($"The cache folder {directory} cannot be written ({e.Message}). Give a writable folder for --cache.");
            }
            Directory = directory;
        }
    }

    public string FileOf(string key) => Path.Combine(Directory ?? throw new InvalidOperationException("no cache folder"), key + ".safetensors");

    /// <summary>Whether the source of <paramref name="key"/> is held in memory now.</summary>
    public bool Contains(SourceKey key)
    {
        lock (_entries) return _entries.ContainsKey(key.Hash);
    }

    /// <summary>Refuses a source whose recording does not fit the budget, naming the size it needs.</summary>
    public void CheckFits(TrajectoryPlan plan)
    {
        if (plan.Bytes > BudgetBytes)
            throw new UserError($"The recorded source needs {TrajectoryPlan.Megabytes(plan.Bytes)} ({plan.Evaluations} UNet evaluations, {plan.Layers.Count} attention layers), " +
                                $"more than the cache budget of {BudgetBytes / (1024 * 1024)} MB. Raise --cache-budget to at least {(plan.Bytes + (1 << 20) - 1) >> 20}, or use fewer steps or a smaller size.");
    }

    /// <summary>The source of <paramref name="key"/>: from memory, else from the cache folder, else computed (and kept).</summary>
    public CachedSource GetOrCompute(SourceKey key, TrajectoryPlan plan, Device device, Func<CachedSource> compute)
    {
        lock (_entries)
        {
            if (_entries.TryGetValue(key.Hash, out var hit))
            {
                Touch(key.Hash);
                return hit;
            }
            CheckFits(plan);
            var source = Directory is not null ? TryLoad(key, plan, device) : null;
            if (source is null)
            {
                source = compute();
                if (Directory is not null) Save(key, source);
            }
            MakeRoom(plan.Bytes);
            _entries[key.Hash] = source;
            _recent.AddFirst(key.Hash);
            return source;
        }
    }

    void Touch(string hash)
    {
        _recent.Remove(hash);
        _recent.AddFirst(hash);
    }

    void MakeRoom(long bytes)
    {
        while (_entries.Count > 0 && UsedBytes + bytes > BudgetBytes)
        {
            var oldest = _recent.Last!.Value;
            _recent.RemoveLast();
            _entries.Remove(oldest, out var evicted);
            evicted?.Dispose();
        }
    }

    void Save(SourceKey key, CachedSource source)
    {
        var tensors = new Dictionary<string, Tensor>();
        foreach (var (name, t) in source.Trajectory.Tensors()) tensors[name] = t;
        using var image = tensor(source.Image.Pixels, [source.Image.Height, source.Image.Width, 3], ScalarType.Byte);
        tensors["image"] = image;
        var metadata = new Dictionary<string, string>
        {
            ["format"] = Format,
            ["key"] = key.Hash,
            ["source"] = key.Description,
            ["sha256"] = Checksum(tensors),
        };
        SafetensorsFile.Write(FileOf(key.Hash), tensors, metadata);
        _log?.Invoke($"cache: saved the source to {FileOf(key.Hash)} ({TrajectoryPlan.Megabytes(source.Trajectory.Plan.Bytes)})");
    }

    CachedSource? TryLoad(SourceKey key, TrajectoryPlan plan, Device device)
    {
        var path = FileOf(key.Hash);
        if (!File.Exists(path)) return null;
        try
        {
            using var file = new SafetensorsFile(path);
            var m = file.Metadata;
            if (m.GetValueOrDefault("format") != Format) throw new InvalidDataException($"stale: format {m.GetValueOrDefault("format", "none")}, expected {Format}");
            if (m.GetValueOrDefault("key") != key.Hash || m.GetValueOrDefault("source") != key.Description)
                throw new InvalidDataException("stale: it was recorded for another source");
            var read = new Dictionary<string, Tensor>();
            try
            {
                foreach (var name in file.Entries.Keys) read[name] = file.Read(name);
                if (Checksum(read) != m.GetValueOrDefault("sha256")) throw new InvalidDataException("corrupt: its checksum does not match its tensors");
                if (!read.TryGetValue("image", out var img) || img.dim() != 3 || img.shape[2] != 3 || img.dtype != ScalarType.Byte)
                    throw new InvalidDataException("corrupt: no source image");
                var image = new RgbImage((int)img.shape[1], (int)img.shape[0], img.bytes.ToArray());
                // The trajectory takes the tensors read (no copy); whatever it does not take is disposed below.
                var trajectory = SourceTrajectory.FromTensors(plan, name => read.Remove(name, out var t) ? t : throw new InvalidDataException($"tensor {name} is missing"), device);
                _log?.Invoke($"cache: loaded the source from {path}");
                return new CachedSource(trajectory, image);
            }
            finally
            {
                foreach (var t in read.Values) t.Dispose();
            }
        }
        catch (Exception e) when (e is InvalidDataException or UserError or IOException or KeyNotFoundException)
        {
            _log?.Invoke($"cache: {path} is {(e is InvalidDataException ? "" : "corrupt: ")}{e.Message.TrimEnd('.')}; recomputing the source.");
            return null;
        }
    }

    /// <summary>SHA-256 over every tensor's name, dtype, shape and bytes, in name order.</summary>
    static string Checksum(IReadOnlyDictionary<string, Tensor> tensors)
    {
        using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        foreach (var (name, t) in tensors.OrderBy(kv => kv.Key, StringComparer.Ordinal))
        {
            sha.AppendData(Encoding.UTF8.GetBytes($"{name} {t.dtype} [{string.Join(",", t.shape)}]\n"));
            using var c = t.cpu().contiguous();
            sha.AppendData(c.bytes);
        }
        return Convert.ToHexString(sha.GetHashAndReset()).ToLowerInvariant();
    }

    public void Dispose()
    {
        foreach (var e in _entries.Values) e.Dispose();
        _entries.Clear();
        _recent.Clear();
    }
}

/// <summary>
/// What determines a source's trajectory, as canonical JSON (<see cref="Description"/>) and its SHA-256
/// (<see cref="Hash"/>, the cache file's name): the model's fingerprint, placement, prompt, negative prompt, seed or
/// x_T, steps, guidance, scheduler, size, the recorded self-attention limit (the variant), the storage dtype, and the
/// per-step null embeddings or the direct-inversion trajectory.
/// </summary>
public sealed record SourceKey(string Description, string Hash)
{
    public static SourceKey Of(IReadOnlyDictionary<string, object?> fields)
    {
        var json = JsonSerializer.Serialize(fields.OrderBy(kv => kv.Key, StringComparer.Ordinal).ToDictionary(kv => kv.Key, kv => kv.Value));
        var hash = Convert.ToHexString(SHA256.HashData(Encoding.UTF8.GetBytes(json))).ToLowerInvariant()[..32];
        return new SourceKey(json, hash);
    }

    /// <summary>SHA-256 of a tensor's dtype, shape and values (first 16 hex digits), for keys.</summary>
    public static string? TensorHash(Tensor? t)
    {
        if (t is null) return null;
        using var c = t.detach().cpu().contiguous();
        using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        sha.AppendData(Encoding.UTF8.GetBytes($"{c.dtype} [{string.Join(",", c.shape)}]"));
        sha.AppendData(c.bytes);
        return Convert.ToHexString(sha.GetHashAndReset()).ToLowerInvariant()[..16];
    }
}
