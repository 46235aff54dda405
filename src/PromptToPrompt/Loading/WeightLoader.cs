using System.Text.Json;
using TorchSharp;
using static TorchSharp.torch;

namespace PromptToPrompt.Loading;

/// <summary>
/// A set of named tensors spread over one or more safetensors files, possibly with keys renamed to our module
/// names. Reading is lazy: a tensor is copied out of its memory-mapped file only when it is loaded.
/// </summary>
public sealed class TensorSource : IDisposable
{
    readonly List<SafetensorsFile> _files;
    readonly Dictionary<string, (SafetensorsFile File, string Key, Func<Tensor, Tensor>? Transform)> _entries;
    readonly bool _ownsFiles;

    public string Description { get; }
    public IEnumerable<string> Keys => _entries.Keys;

    TensorSource(string description, List<SafetensorsFile> files,
                 Dictionary<string, (SafetensorsFile, string, Func<Tensor, Tensor>?)> entries, bool ownsFiles)
    {
        Description = description;
        _files = files;
        _entries = entries;
        _ownsFiles = ownsFiles;
    }

    public static TensorSource Open(string description, params string[] paths)
    {
        var files = new List<SafetensorsFile>();
        try
        {
            foreach (var p in paths) files.Add(new SafetensorsFile(p));
        }
        catch
        {
            foreach (var f in files) f.Dispose();
            throw;
        }
        var entries = new Dictionary<string, (SafetensorsFile, string, Func<Tensor, Tensor>?)>();
        foreach (var f in files)
            foreach (var key in f.Entries.Keys)
                entries[key] = (f, key, null);
        return new TensorSource(description, files, entries, ownsFiles: true);
    }

    /// <summary>
    /// A view with keys renamed: <paramref name="rename"/> maps a stored key to zero or more (module key, transform)
    /// pairs; keys it maps to nothing are dropped. The view shares (does not own) the files.
    /// </summary>
    public TensorSource Map(string description, Func<string, IEnumerable<(string Key, Func<Tensor, Tensor>? Transform)>> rename)
    {
        var entries = new Dictionary<string, (SafetensorsFile, string, Func<Tensor, Tensor>?)>();
        foreach (var (key, e) in _entries)
            foreach (var (newKey, transform) in rename(key))
            {
                var prior = e.Transform;
                entries[newKey] = (e.File, e.Key, transform is null ? prior : prior is null ? transform : t => transform(prior(t)));
            }
        return new TensorSource(description, _files, entries, ownsFiles: false);
    }

    public bool Contains(string key) => _entries.ContainsKey(key);

    public long[] Shape(string key)
    {
        var (file, stored, transform) = _entries[key];
        if (transform is null) return file.Entries[stored].Shape;
        using var t = Read(key);
        return t.shape;
    }

    /// <summary>Reads a tensor onto the CPU in its stored dtype.</summary>
    public Tensor Read(string key)
    {
        var (file, stored, transform) = _entries[key];
        var t = file.Read(stored);
        if (transform is null) return t;
        var result = transform(t);
        if (!ReferenceEquals(result, t)) t.Dispose();
        return result;
    }

    public void Dispose()
    {
        if (!_ownsFiles) return;
        foreach (var f in _files) f.Dispose();
    }
}

/// <summary>Copies weights from a <see cref="TensorSource"/> into a module whose parameter names are the keys.</summary>
public static class WeightLoader
{
    /// <summary>
    /// Moves <paramref name="module"/> to <paramref name="device"/> / <paramref name="dtype"/> and fills every parameter
    /// and persistent buffer from <paramref name="source"/>. Missing keys and shape mismatches are errors naming the
    /// keys; keys the module does not have are returned (the caller decides whether they matter). The parameters are
    /// frozen (no gradients) unless <paramref name="trainable"/>: inference and inversion only need gradients for
    /// their own inputs.
    /// </summary>
    public static List<string> Load(nn.Module module, TensorSource source, Device device, ScalarType dtype, ISet<string>? ignoredKeys = null,
                                    bool trainable = false)
    {
        module.to(device, dtype);
        var targets = module.named_parameters().Select(p => (p.name, (Tensor)p.parameter)).ToList();
        var missing = targets.Where(t => !source.Contains(t.name)).Select(t => t.name).ToList();
        if (missing.Count > 0)
            throw new UserError($"{source.Description}: {missing.Count} weight(s) missing, e.g. {string.Join(", ", missing.Take(5))}. " +
                                "The weights do not belong to this model config (wrong file, or a config for a different model).");
        using (no_grad())
        {
            foreach (var (name, target) in targets)
            {
                using var scope = NewDisposeScope();
                var value = source.Read(name);
                if (!value.shape.SequenceEqual(target.shape))
                {
                    // 1x1 convolutions and linear layers hold the same numbers ([C, C, 1, 1] vs [C, C]).
                    if (value.numel() == target.numel() && Squeeze(value.shape).SequenceEqual(Squeeze(target.shape)))
                        value = value.reshape(target.shape);
                    else
                        throw new UserError($"{source.Description}: weight '{name}' has shape [{string.Join(",", value.shape)}] but the model config " +
                                            $"needs [{string.Join(",", target.shape)}]. The config and the weights belong to different models.");
                }
                target.copy_(value);
            }
        }
        foreach (var (_, p) in module.named_parameters()) p.requires_grad = trainable;
        var known = targets.Select(t => t.name).ToHashSet();
        return source.Keys.Where(k => !known.Contains(k) && !(ignoredKeys?.Contains(k) ?? false)).OrderBy(k => k).ToList();
    }

    static IEnumerable<long> Squeeze(long[] shape) => shape.Where(d => d != 1);

    /// <summary>
    /// Resolves the weight files of one diffusers component folder: a single file or a sharded index, preferring
    /// the full-precision file (or the fp16 variant when <paramref name="preferFp16"/>) and falling back to the other.
    /// </summary>
    public static string[] ComponentFiles(string folder, string baseName, bool preferFp16)
    {
        if (!Directory.Exists(folder))
            throw new UserError($"Model component folder not found: {folder}. The model folder is incomplete: copy it again.");
        var full = new[] { $"{baseName}.safetensors.index.json", $"{baseName}.safetensors" };
        var half = new[] { $"{baseName}.safetensors.index.fp16.json", $"{baseName}.fp16.safetensors.index.json", $"{baseName}.fp16.safetensors" };
        foreach (var name in preferFp16 ? half.Concat(full) : full.Concat(half))
        {
            var path = Path.Combine(folder, name);
            if (!File.Exists(path)) continue;
            if (!name.EndsWith(".json")) return [path];
            try
            {
                using var doc = JsonDocument.Parse(File.ReadAllText(path));
                return doc.RootElement.GetProperty("weight_map").EnumerateObject()
                    .Select(p => p.Value.GetString()!).Distinct().Select(f => Path.Combine(folder, f)).ToArray();
            }
            catch (Exception e) when (e is JsonException or KeyNotFoundException or InvalidOperationException)
            {
                throw new UserError($"{path} is not a valid shard index ({e.Message}). Replace the file.");
            }
        }
        if (Directory.EnumerateFiles(folder, "*.bin").Any() || Directory.EnumerateFiles(folder, "*.ckpt").Any())
            throw new UserError($"{folder} holds only PyTorch pickle weights (.bin/.ckpt), which are not loaded for safety. " +
                                "Convert them to .safetensors (e.g. with the safetensors 'convert' tool) and try again.");
        throw new UserError($"No {baseName}.safetensors (or fp16 / sharded variant) in {folder}. The model folder is incomplete: copy it again.");
    }
}
