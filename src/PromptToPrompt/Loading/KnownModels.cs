using PromptToPrompt.Models;
using PromptToPrompt.Text;
using TorchSharp;
using static TorchSharp.torch;

namespace PromptToPrompt.Loading;

/// <summary>
/// The published Stable Diffusion architectures, with random weights: for measuring speed and memory at full size
/// (p2p benchmark) on machines without the weights.
/// </summary>
public static class KnownModels
{
    public static readonly string[] Names = ["sd15", "sd21", "sdxl"];

    public static SingleFileCheckpoint.Configs Configs(string name)
    {
        if (name == "sdxl") return SdxlBase();
        bool sd2 = name switch
        {
            "sd15" => false,
            "sd21" => true,
            _ => throw new UserError($"Unknown architecture '{name}'. Use {string.Join(", ", Names)}."),
        };
        int[] channels = [320, 640, 1280, 1280];
        var unet = new UNetConfig(4, 4, channels, ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
            ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"], 2,
            sd2 ? [5, 10, 20, 20] : [8, 8, 8, 8], sd2 ? 1024 : 768, 32, 1e-5, true, 0, 1, 1.0, sd2, sd2, sd2 ? 96 : 64, false);
        var vae = new VaeConfig(3, 3, 4, [128, 256, 512, 512], 2, 32, 0.18215, sd2 ? 768 : 512);
        var text = sd2 ? new ClipTextConfig(49408, 1024, 4096, 23, 16, 77, 1e-5, "gelu") : new ClipTextConfig(49408, 768, 3072, 12, 12, 77, 1e-5, "quick_gelu");
        var scheduler = new SchedulerConfig(BetaStart: 0.00085, BetaEnd: 0.012, BetaSchedule: "scaled_linear", SkipPrkSteps: true, StepsOffset: 1,
            SetAlphaToOne: false, ClipSample: false, PredictionType: sd2 ? "v_prediction" : "epsilon");
        return new SingleFileCheckpoint.Configs(unet, vae, text, scheduler);
    }

    /// <summary>stable-diffusion-xl-base-1.0's configs (2.6 B UNet parameters, CLIP-L and OpenCLIP bigG).</summary>
    static SingleFileCheckpoint.Configs SdxlBase()
    {
        var unet = new UNetConfig(4, 4, [320, 640, 1280], ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
            ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"], 2, [5, 10, 20], 2048, 32, 1e-5, true, 0, 1, 1.0, true, false, 128, false,
            TransformerLayersPerBlock: [1, 2, 10], AdditionTimeEmbedDim: 256, ProjectionClassEmbeddingsInputDim: 2816);
        var vae = new VaeConfig(3, 3, 4, [128, 256, 512, 512], 2, 32, 0.13025, 1024);
        var text = new ClipTextConfig(49408, 768, 3072, 12, 12, 77, 1e-5, "quick_gelu");
        var text2 = new ClipTextConfig(49408, 1280, 5120, 32, 20, 77, 1e-5, "gelu", 1280);
        var scheduler = new SchedulerConfig(BetaStart: 0.00085, BetaEnd: 0.012, BetaSchedule: "scaled_linear", SkipPrkSteps: true, StepsOffset: 1,
            SetAlphaToOne: false, ClipSample: false, TimestepSpacing: "leading", ClassName: "EulerDiscreteScheduler");
        return new SingleFileCheckpoint.Configs(unet, vae, text, scheduler, text2);
    }

    /// <summary>A full-size model with random weights and a byte-level tokenizer (no merges): numbers are meaningless, cost is real.</summary>
    public static StableDiffusionModel Random(string name, ModelPlacement placement)
    {
        var c = Configs(name);
        var vocab = new Dictionary<string, int>();
        for (int b = 0; b < 256; b++)
        {
            var ch = ClipTokenizer.ByteCharacter((byte)b).ToString();
            vocab[ch] = b;
            vocab[ch + "</w>"] = 256 + b;
        }
        vocab["<|startoftext|>"] = 512;
        vocab["<|endoftext|>"] = 513;
        var tokenizer = new ClipTokenizer(vocab, [], c.Text.MaxPositions);
        using var _ = no_grad();
        nn.Module Place(nn.Module m, ModelPlacement? where = null)
        {
            m.to((where ?? placement).Device, (where ?? placement).DType);
            foreach (var (_, p) in m.named_parameters()) p.requires_grad = false;
            m.eval();
            return m;
        }
        bool xl = c.Text2 is not null;
        return new StableDiffusionModel
        {
            Name = $"{name} (random weights)", Tokenizer = tokenizer,
            TextEncoder = (ClipTextModel)Place(new ClipTextModel(c.Text)), UNet = (UNet2DConditionModel)Place(new UNet2DConditionModel(c.UNet)),
            Vae = (AutoencoderKL)Place(new AutoencoderKL(c.Vae), StableDiffusionModel.VaePlacement(placement, c.Vae, xl)), Scheduler = c.Scheduler, Placement = placement,
            Tokenizer2 = xl ? new ClipTokenizer(vocab, [], c.Text2!.MaxPositions, pad: "!") : null,
            TextEncoder2 = xl ? (ClipTextModel)Place(new ClipTextModel(c.Text2!)) : null, ForceZerosForEmptyPrompt = xl,
        };
    }
}
