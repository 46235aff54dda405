using PromptToPrompt.Imaging;
using PromptToPrompt.Loading;
using PromptToPrompt.Pipelines;
using PromptToPrompt.Training;

namespace PromptToPrompt.Editing;

/// <summary>A pix2pix-zero edit of a photo: the photo as fitted, the direction, the reconstruction and the edit.</summary>
public sealed record ZeroPhotoEdit(RgbImage Input, EditDirection Direction, ZeroResult Result) : IDisposable
{
    /// <summary>PSNR (dB) of the reconstruction against the photo as fitted.</summary>
    public double Psnr => Inversion.Psnr(Input, Result.Reconstruction);

    public static readonly string[] FileNames = ["edit.png", "reconstruction.png"];

    /// <summary>Writes <c>edit.png</c> and <c>reconstruction.png</c> (atomically, with the run's parameters) into <paramref name="folder"/>.</summary>
    public IReadOnlyList<string> Save(string folder)
    {
        Directory.CreateDirectory(folder);
        var text = new Dictionary<string, string>(Result.Parameters) { ["reconstruction_psnr_db"] = $"{Psnr:F2}" };
        var paths = FileNames.Select(n => Path.Combine(folder, n)).ToArray();
        Png.Save(paths[0], Result.Edit, text);
        Png.Save(paths[1], Result.Reconstruction, text);
        return paths;
    }

    public void Dispose()
    {
        Direction.Dispose();
        Result.Dispose();
    }
}

/// <summary>pix2pix-zero for the front ends: where the direction's sentences come from, and a photo edited along it.</summary>
public static class ZeroEditing
{
    /// <summary>Sentence pairs generated from the shapes grammar when no sentence files are given.</summary>
    public const int GrammarSentences = 100;

    /// <summary>
    /// The edit direction <paramref name="from"/> -> <paramref name="to"/>: from <c>DIR/FROM.txt</c> and <c>DIR/TO.txt</c>
    /// (one sentence a line) when <paramref name="directions"/> is given, else from the shapes grammar's captions.
    /// </summary>
    public static EditDirection Direction(StableDiffusionPipeline pipeline, string from, string to, string? directions)
    {
        foreach (var (name, word) in new[] { ("--from", from), ("--to", to) })
            if (string.IsNullOrWhiteSpace(word) || word.IndexOfAny(['/', '\\', '\0']) >= 0 || word is "." or "..")
                throw new UserError($"{name} '{word}' is not a word; give the word the edit changes, e.g. --from red --to blue.");
        var zero = new Pix2PixZero(pipeline);
        if (directions is null)
        {
            var (a, b) = Scenes.DirectionSentences(from, to, GrammarSentences, seed: 0);
            return zero.Direction(from, to, a, b, "shapes grammar");
        }
        if (!Directory.Exists(directions)) throw new UserError($"--directions {directions} is not a folder; it holds {from}.txt and {to}.txt, one sentence a line.");
        var fromSentences = EditDirection.ReadSentences(Path.Combine(directions, from + ".txt"));
        var toSentences = EditDirection.ReadSentences(Path.Combine(directions, to + ".txt"));
        return zero.Direction(from, to, fromSentences, toSentences, directions);
    }

    /// <summary>Loads and fits the photo, builds the direction, inverts (regularised DDIM) and samples the reconstruction and the edit.</summary>
    public static ZeroPhotoEdit Run(StableDiffusionModel model, string imagePath, string prompt, string from, string to, string? directions,
                                    ZeroSettings settings, FitMode fit, int? width, int? height, IProgress<InversionProgress>? progress = null,
                                    CancellationToken cancel = default, Action<string>? log = null)
    {
        settings.Validate();
        model.RequireTextToImage();
        if (string.IsNullOrWhiteSpace(prompt)) throw new UserError("Describe the photo with --prompt: pix2pix-zero inverts it with that caption.");
        var pipeline = new StableDiffusionPipeline(model, log);
        var (w, h) = pipeline.ResolveSize(width, height, null);
        var input = ImageInput.Load(imagePath, w, h, fit);
        var direction = Direction(pipeline, from, to, directions);
        try
        {
            var zero = new Pix2PixZero(pipeline);
            using var xT = zero.Invert(input, prompt, settings, progress, cancel);
            return new ZeroPhotoEdit(input, direction, zero.Edit(xT, prompt, direction, settings, progress, cancel));
        }
        catch
        {
            direction.Dispose();
            throw;
        }
    }
}
