// MSBuild task (compiled by RoslynCodeTaskFactory from Directory.Build.targets).
//
// TorchSharp 0.107.0's libLibTorchSharp.so was linked with GCC 13 and asks for GLIBCXX_3.4.32 only because
// <iostream> references `std::ios_base_library_init()`, a symbol it never calls. Debian 12 / Ubuntu 22.04
// ship libstdc++ up to GLIBCXX_3.4.30, so the dynamic loader refuses the library. When (and only when) the
// system libstdc++ lacks that version, this task marks that one version requirement weak (VER_FLG_WEAK in
// the .gnu.version_r entry) in the copies placed in the build output; the loader then accepts the library.
// The NuGet cache is never touched, and the task is a no-op on systems whose libstdc++ has the version.
using System;
using System.IO;
using System.Linq;
using System.Text;
using Microsoft.Build.Framework;
using Microsoft.Build.Utilities;

public class WeakenGlibcxxRequirement : Task
{
    [Required] public string Directory { get; set; } = "";
    public string Version { get; set; } = "GLIBCXX_3.4.32";

    static readonly string[] LibDirs =
    {
        "/usr/lib/x86_64-linux-gnu", "/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu",
        "/lib/aarch64-linux-gnu", "/usr/lib64", "/lib64", "/usr/lib", "/lib",
    };

    public override bool Execute()
    {
        if (!System.IO.Directory.Exists(Directory)) return true;
        var libs = System.IO.Directory.GetFiles(Directory, "libLibTorchSharp.so", SearchOption.AllDirectories);
        if (libs.Length == 0) return true;
        var libstdcxx = LibDirs.Select(d => Path.Combine(d, "libstdc++.so.6")).FirstOrDefault(File.Exists);
        if (libstdcxx != null && Contains(File.ReadAllBytes(libstdcxx), Encoding.ASCII.GetBytes(Version + "\0")))
            return true; // the system provides the version: leave the library untouched
        foreach (var lib in libs)
        {
            try
            {
                var result = Patch(lib, Version);
                if (result == PatchResult.Patched)
                    Log.LogMessage(MessageImportance.High,
                        $"libLibTorchSharp.so: marked the {Version} requirement weak ({libstdcxx ?? "no libstdc++.so.6 found"} lacks it): {lib}");
            }
            catch (Exception e)
            {
                Log.LogWarning($"Could not patch {lib} for an older libstdc++: {e.Message}");
            }
        }
        return true;
    }

    enum PatchResult { NotNeeded, AlreadyWeak, Patched }

    static PatchResult Patch(string path, string version)
    {
        var elf = File.ReadAllBytes(path);
        if (elf.Length < 64 || elf[0] != 0x7f || elf[1] != (byte)'E' || elf[2] != (byte)'L' || elf[3] != (byte)'F')
            throw new InvalidDataException("not an ELF file");
        if (elf[4] != 2 || elf[5] != 1) throw new InvalidDataException("not a 64-bit little-endian ELF file");
        long shoff = BitConverter.ToInt64(elf, 0x28);
        int shentsize = BitConverter.ToUInt16(elf, 0x3A), shnum = BitConverter.ToUInt16(elf, 0x3C);
        const uint SHT_GNU_verneed = 0x6ffffffe;
        const ushort VER_FLG_WEAK = 0x2;
        var state = PatchResult.NotNeeded;
        for (int s = 0; s < shnum; s++)
        {
            long sh = shoff + (long)s * shentsize;
            if (BitConverter.ToUInt32(elf, (int)sh + 4) != SHT_GNU_verneed) continue;
            long offset = BitConverter.ToInt64(elf, (int)sh + 0x18);
            int link = BitConverter.ToInt32(elf, (int)sh + 0x28);
            long strtab = BitConverter.ToInt64(elf, (int)(shoff + (long)link * shentsize + 0x18));
            long vn = offset;
            while (true)
            {
                int cnt = BitConverter.ToUInt16(elf, (int)vn + 2);
                long aux = vn + BitConverter.ToUInt32(elf, (int)vn + 8);
                for (int i = 0; i < cnt; i++)
                {
                    string name = ReadCString(elf, strtab + BitConverter.ToUInt32(elf, (int)aux + 8));
                    if (name == version)
                    {
                        ushort flags = BitConverter.ToUInt16(elf, (int)aux + 4);
                        if ((flags & VER_FLG_WEAK) != 0) state = state == PatchResult.Patched ? state : PatchResult.AlreadyWeak;
                        else
                        {
                            BitConverter.GetBytes((ushort)(flags | VER_FLG_WEAK)).CopyTo(elf, (int)aux + 4);
                            state = PatchResult.Patched;
                        }
                    }
                    aux += BitConverter.ToUInt32(elf, (int)aux + 12);
                }
                uint next = BitConverter.ToUInt32(elf, (int)vn + 12);
                if (next == 0) break;
                vn += next;
            }
        }
        if (state == PatchResult.Patched)
        {
            var tmp = path + ".patching";
            File.WriteAllBytes(tmp, elf);
            File.Copy(tmp, path, overwrite: true);
            File.Delete(tmp);
        }
        return state;
    }

    static string ReadCString(byte[] data, long at)
    {
        int end = (int)at;
        while (data[end] != 0) end++;
        return Encoding.ASCII.GetString(data, (int)at, end - (int)at);
    }

    static bool Contains(byte[] haystack, byte[] needle) =>
        IndexOf(haystack, needle) >= 0;

    static int IndexOf(byte[] haystack, byte[] needle)
    {
        for (int i = 0; i + needle.Length <= haystack.Length; i++)
        {
            int j = 0;
            while (j < needle.Length && haystack[i + j] == needle[j]) j++;
            if (j == needle.Length) return i;
        }
        return -1;
    }
}
