using PromptToPrompt.Models;

namespace PromptToPrompt.Loading;

public sealed record SingleFileOptions(string? TokenizerFolder = null, string? PredictionType = null);

public static class SingleFileCheckpoint
{
    public static StableDiffusionModel Load(string path, ModelPlacement placement, SingleFileOptions options, Action<string>? log) =>
        throw new UserError("single-file checkpoints: not yet");
}
