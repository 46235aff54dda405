namespace PromptToPrompt.Loading;

/// <summary>Writes files so that they appear complete or not at all.</summary>
public static class AtomicFile
{
    /// <summary>
    /// Writes through a temporary file beside <paramref name="path"/> and renames it into place. On any failure the
    /// temporary file is removed and whatever was at <paramref name="path"/> before is untouched.
    /// </summary>
    public static void Write(string path, Action<Stream> write)
    {
        var full = Path.GetFullPath(path);
        var dir = Path.GetDirectoryName(full)!;
        Directory.CreateDirectory(dir);
        var tmp = Path.Combine(dir, $".{Path.GetFileName(full)}.{Environment.ProcessId}.{Guid.NewGuid():N}.tmp");
        try
        {
            using (var fs = new FileStream(tmp, FileMode.CreateNew, FileAccess.Write))
            {
                write(fs);
                fs.Flush(flushToDisk: true);
            }
            File.Move(tmp, full, overwrite: true);
        }
        finally
        {
            if (File.Exists(tmp)) File.Delete(tmp);
        }
    }

    /// <summary>Refuses to replace an existing file unless the caller allows it.</summary>
    public static void EnsureWritable(string path, bool overwrite)
    {
        if (!overwrite && File.Exists(path))
            throw new UserError($"{path} already exists. Choose another output path or pass --overwrite to replace it.");
    }
}
