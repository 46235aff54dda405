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

    /// <summary>
    /// Checks before any work is done that <paramref name="path"/> can be written: it is not a folder, no part of
    /// its folder is a file, the nearest existing folder accepts a new file, and an existing file is replaced only
    /// when the caller allows it.
    /// </summary>
    public static void EnsureWritable(string path, bool overwrite)
    {
        if (Directory.Exists(path)) throw new UserError($"{path} is a folder. Give a file name as the output path.");
        if (!overwrite && File.Exists(path))
            throw new UserError($"{path} already exists. Choose another output path or pass --overwrite to replace it.");
        var dir = Path.GetDirectoryName(Path.GetFullPath(path));
        while (dir is not null && !Directory.Exists(dir))
        {
            if (File.Exists(dir)) throw new UserError($"{path} cannot be written: {dir} is a file, not a folder. Choose another output path.");
            dir = Path.GetDirectoryName(dir);
        }
        if (dir is null) return;
        try
        {
            using var probe = new FileStream(Path.Combine(dir, $".p2p-write-test.{Environment.ProcessId}.{Guid.NewGuid():N}"),
                FileMode.CreateNew, FileAccess.Write, FileShare.None, 1, FileOptions.DeleteOnClose);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new UserError($"{path} cannot be written: {dir} does not accept new files ({e.Message}). Choose another output path.");
        }
    }
}
