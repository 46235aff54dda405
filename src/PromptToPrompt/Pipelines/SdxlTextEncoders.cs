using PromptToPrompt.Models;
using PromptToPrompt.Text;
using static TorchSharp.torch;

namespace PromptToPrompt.Pipelines;

/// <summary>
/// SDXL's two text encoders as diffusers' <c>StableDiffusionXLPipeline.encode_prompt</c> uses them: each prompt
/// tokenized by both tokenizers (they differ only in the pad id), the penultimate hidden state of each encoder (no
/// final LayerNorm) concatenated CLIP-L first, and the second encoder's projected <c>text_embeds</c> as the pooled
/// embedding. <c>prompt_2</c> (the second encoder's text) defaults to the prompt.
/// </summary>
public sealed class SdxlTextEncoders(ClipTokenizer tokenizer, ClipTextModel encoder, ClipTokenizer tokenizer2, ClipTextModel encoder2)
{
    /// <summary>Token ids [N, L] of <paramref name="prompts"/> for the first (<paramref name="second"/> false) or second encoder.</summary>
    public Tensor Ids(IReadOnlyList<string> prompts, bool second) =>
        tensor(prompts.SelectMany(p => (second ? tokenizer2 : tokenizer).Tokenize(p).Ids).ToArray(), [prompts.Count, (second ? tokenizer2 : tokenizer).MaxLength]);

    /// <summary>Prompt embeddings [N, L, D1 + D2] and pooled embeddings [N, projection_dim], float32.</summary>
    public (Tensor Embeds, Tensor Pooled) Encode(IReadOnlyList<string> prompts, IReadOnlyList<string>? prompts2 = null)
    {
        if (prompts2 is not null && prompts2.Count != prompts.Count)
            throw new UserError($"Give one second prompt per prompt ({prompts.Count}); got {prompts2.Count}.");
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        var device = encoder.parameters().First().device;
        var ids1 = Ids(prompts, second: false).to(device);
        var ids2 = Ids(prompts2 ?? prompts, second: true).to(device);
        var states1 = encoder.HiddenStates(ids1);
        var states2 = encoder2.HiddenStates(ids2);
        var embeds = cat([states1[^2].to(ScalarType.Float32), states2[^2].to(ScalarType.Float32)], -1);
        var pooled = encoder2.TextEmbeds(ids2, states2[^1]).to(ScalarType.Float32);
        return (embeds.MoveToOuterDisposeScope(), pooled.MoveToOuterDisposeScope());
    }
}
