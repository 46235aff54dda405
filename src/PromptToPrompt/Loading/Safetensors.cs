using System.IO.MemoryMappedFiles;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using TorchSharp;
using static TorchSharp.torch;

namespace PromptToPrompt.Loading;

/// <summary>One tensor entry of a safetensors header.</summary>
public sealed record SafetensorsEntry(string Name, string DType, long[] Shape, long Begin, long End)
{
    public long ElementCount => Shape.Aggregate(1L, (a, b) => checked(a * b));
}

/// <summary>
/// Reads a .safetensors file (8-byte little-endian header length, JSON header, raw little-endian data).
/// The file is memory-mapped: a tensor is copied once, from the mapping into its own storage, so a multi-GB
/// checkpoint is never held twice. The header is validated completely before any tensor is read.
/// </summary>
public sealed class SafetensorsFile : IDisposable
{
    const long MaxHeaderBytes = 100L << 20;

    static readonly Dictionary<string, (ScalarType Type, int Size)> DTypes = new()
    {
        ["F64"] = (ScalarType.Float64, 8), ["F32"] = (ScalarType.Float32, 4), ["F16"] = (ScalarType.Float16, 2),
        ["BF16"] = (ScalarType.BFloat16, 2), ["I64"] = (ScalarType.Int64, 8), ["I32"] = (ScalarType.Int32, 4),
        ["I16"] = (ScalarType.Int16, 2), ["I8"] = (ScalarType.Int8, 1), ["U8"] = (ScalarType.Byte, 1),
        ["BOOL"] = (ScalarType.Bool, 1),
    };

    readonly MemoryMappedFile? _map;
    readonly MemoryMappedViewAccessor? _view;
    readonly long _dataStart;

    public string Path { get; }
    public IReadOnlyDictionary<string, SafetensorsEntry> Entries { get; }
    public IReadOnlyDictionary<string, string> Metadata { get; }

    public SafetensorsFile(string path)
    {
        Path = path;
        if (!File.Exists(path)) throw new UserError($"File not found: {path}. Check the path.");
        long length = new FileInfo(path).Length;
        string Corrupt(string why) =>
            $"{path} is not a valid safetensors file ({why}). The file is probably truncated or corrupt: download it again.";
        if (length < 8) throw new UserError(Corrupt($"only {length} bytes"));

        byte[] header;
        using (var fs = File.OpenRead(path))
        {
            Span<byte> len = stackalloc byte[8];
            fs.ReadExactly(len);
            long headerLength = BitConverter.ToInt64(len);
            if (headerLength <= 1 || headerLength > MaxHeaderBytes || 8 + headerLength > length)
                throw new UserError(Corrupt($"header length {headerLength} does not fit a file of {length} bytes"));
            header = new byte[headerLength];
            fs.ReadExactly(header);
        }
        _dataStart = 8 + header.Length;
        long dataLength = length - _dataStart;

        JsonObject root;
        try
        {
            // A name given twice is refused here (JsonException), not when the entries are enumerated.
            root = JsonNode.Parse(Encoding.UTF8.GetString(header).TrimEnd(' ', '\0'), documentOptions: new JsonDocumentOptions { AllowDuplicateProperties = false }) as JsonObject
                   ?? throw new UserError(Corrupt("header is not a JSON object"));
        }
        catch (JsonException e) { throw new UserError(Corrupt("header is not valid JSON: " + e.Message)); }

        var entries = new Dictionary<string, SafetensorsEntry>();
        var metadata = new Dictionary<string, string>();
        foreach (var (name, node) in root)
        {
            if (name == "__metadata__")
            {
                if (node is JsonObject meta)
                    foreach (var (k, v) in meta) metadata[k] = v?.ToString() ?? "";
                continue;
            }
            try
            {
                var obj = node!.AsObject();
                string dtype = obj["dtype"]!.GetValue<string>();
                long[] shape = obj["shape"]!.AsArray().Select(x => x!.GetValue<long>()).ToArray();
                var offsets = obj["data_offsets"]!.AsArray().Select(x => x!.GetValue<long>()).ToArray();
                if (!DTypes.TryGetValue(dtype, out var info))
                    throw new UserError($"{path}: tensor '{name}' has dtype {dtype}, which is not supported (F32, F16, BF16, F64, integer and bool are).");
                if (offsets.Length != 2 || shape.Any(d => d < 0))
                    throw new UserError(Corrupt($"tensor '{name}' has a malformed shape or offsets"));
                var entry = new SafetensorsEntry(name, dtype, shape, offsets[0], offsets[1]);
                if (entry.Begin < 0 || entry.End < entry.Begin || entry.End > dataLength)
                    throw new UserError(Corrupt($"tensor '{name}' lies outside the data ({entry.Begin}..{entry.End} of {dataLength} bytes)"));
                if (entry.End - entry.Begin != entry.ElementCount * info.Size)
                    throw new UserError(Corrupt($"tensor '{name}' has {entry.End - entry.Begin} bytes but shape [{string.Join(",", shape)}] of {dtype} needs {entry.ElementCount * info.Size}"));
                entries[name] = entry;
            }
            catch (Exception e) when (e is not UserError)
            {
                throw new UserError(Corrupt($"entry '{name}' is malformed"));
            }
        }
        Entries = entries;
        Metadata = metadata;
        if (dataLength > 0)
        {
            _map = MemoryMappedFile.CreateFromFile(path, FileMode.Open, null, 0, MemoryMappedFileAccess.Read);
            _view = _map.CreateViewAccessor(0, 0, MemoryMappedFileAccess.Read);
        }
    }

    /// <summary>
    /// Reads a tensor a user supplied (a latent, an inversion) as float32 on the CPU, refusing one that is missing,
    /// not floating point, not of <paramref name="dims"/> dimensions, or holds NaN or infinity.
    /// </summary>
    public Tensor ReadUserTensor(string name, int dims, string fix)
    {
        if (!Entries.TryGetValue(name, out var e))
            throw new UserError($"{Path} has no tensor named '{name}' (it has: {string.Join(", ", Entries.Keys)}). {fix}");
        string shape = $"[{string.Join(", ", e.Shape)}]";
        if (e.DType is not ("F32" or "F16" or "BF16" or "F64"))
            throw new UserError($"{Path}: tensor '{name}' {shape} is {e.DType}, not floating point. {fix}");
        if (e.Shape.Length != dims)
            throw new UserError($"{Path}: tensor '{name}' has shape {shape}, which is not {dims}-dimensional. {fix}");
        using var stored = Read(name);
        var t = stored.to(ScalarType.Float32);
        if (!t.isfinite().all().item<bool>())
        {
            t.Dispose();
            throw new UserError($"{Path}: tensor '{name}' {shape} holds NaN or infinite values. {fix}");
        }
        return t;
    }

    /// <summary>Reads one tensor onto the CPU in its stored dtype.</summary>
    public unsafe Tensor Read(string name)
    {
        if (!Entries.TryGetValue(name, out var e)) throw new KeyNotFoundException($"{Path} has no tensor '{name}'.");
        var t = empty(e.Shape, DTypes[e.DType].Type);
        long count = e.End - e.Begin;
        if (count == 0) return t;
        byte* basePtr = null;
        _view!.SafeMemoryMappedViewHandle.AcquirePointer(ref basePtr);
        try
        {
            var src = basePtr + _view.PointerOffset + _dataStart + e.Begin;
            var dst = t.bytes;
            // Span lengths are int: copy in chunks so tensors over 2 GB work too.
            long done = 0;
            fixed (byte* d = dst)
            {
                while (done < count)
                {
                    long n = Math.Min(count - done, 1L << 30);
                    Buffer.MemoryCopy(src + done, d + done, n, n);
                    done += n;
                }
            }
        }
        finally { _view.SafeMemoryMappedViewHandle.ReleasePointer(); }
        return t;
    }

    public void Dispose()
    {
        _view?.Dispose();
        _map?.Dispose();
    }

    /// <summary>
    /// Writes tensors to <paramref name="path"/> atomically (a temporary file in the same folder, then a rename),
    /// so a reader never sees a half-written file and an existing file survives a failed write.
    /// </summary>
    public static void Write(string path, IReadOnlyDictionary<string, Tensor> tensors, IReadOnlyDictionary<string, string>? metadata = null)
    {
        var header = new JsonObject();
        if (metadata is { Count: > 0 })
        {
            var meta = new JsonObject();
            foreach (var (k, v) in metadata) meta[k] = v;
            header["__metadata__"] = meta;
        }
        var cpu = new List<Tensor>();
        long offset = 0;
        foreach (var (name, tensor) in tensors)
        {
            var t = tensor.detach().cpu().contiguous();
            var dtype = DTypes.First(kv => kv.Value.Type == t.dtype).Key;
            long bytes = t.numel() * DTypes[dtype].Size;
            header[name] = new JsonObject
            {
                ["dtype"] = dtype,
                ["shape"] = new JsonArray(t.shape.Select(d => (JsonNode)d).ToArray()),
                ["data_offsets"] = new JsonArray(offset, offset + bytes),
            };
            offset += bytes;
            cpu.Add(t);
        }
        var json = Encoding.UTF8.GetBytes(header.ToJsonString());
        int padded = (json.Length + 7) / 8 * 8;
        AtomicFile.Write(path, stream =>
        {
            stream.Write(BitConverter.GetBytes((long)padded));
            stream.Write(json);
            for (int i = json.Length; i < padded; i++) stream.WriteByte((byte)' ');
            foreach (var t in cpu) stream.Write(t.bytes);
        });
        foreach (var t in cpu) t.Dispose();
    }
}
