using PromptToPrompt.Control;
using PromptToPrompt.Loading;
using PromptToPrompt.Pipelines;
using PromptToPrompt.Training;

namespace PromptToPrompt.Tests.Unit;

/// <summary>
/// The model the project ships (models/shapes, trained with p2p train-shapes): the quality the README promises,
/// measured on a fixed seed and a small sample, and the round trip of saving and loading it.
/// </summary>
public class ShippedModelTests(ITestOutputHelper output)
{
    public static string Folder
    {
        get
        {
            for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
                if (File.Exists(Path.Combine(dir.FullName, "PromptToPrompt.slnx")))
                    return Path.Combine(dir.FullName, "models", "shapes");
            throw new InvalidOperationException("repository root not found");
        }
    }

    [Fact]
    public void Shipped_model_meets_the_promised_quality()
    {
        using var model = StableDiffusionModel.Load(Folder, ModelPlacement.Cpu);
        var report = new ShapesEvaluation(new StableDiffusionPipeline(model)).Run(samples: 10, seed: 0);
        output.WriteLine(report.ToTable());
        // The targets, on the canonical grammar and on captions phrased as people type them (sizes and the background
        // left out, "red circle on white", "a circle, red", synonyms): the colour drawn, and a word swap with
        // Prompt-to-Prompt that keeps the object's mask (IoU >= 0.8), far better than regenerating the edited prompt.
        foreach (var (set, r) in new[] { ("canonical", report.Canonical), ("varied", report.Varied) })
        {
            Assert.True(r.ColourAccuracy >= 0.8, $"{set}: colour accuracy {r.ColourAccuracy:P0} < 80%");
            Assert.True(r.SwapNewColourWithInjection >= 0.8, $"{set}: word swap takes the new colour in only {r.SwapNewColourWithInjection:P0}");
            Assert.True(r.SwapIoUWithInjection >= 0.8, $"{set}: word-swap mask IoU with injection {r.SwapIoUWithInjection:0.00} < 0.8");
            Assert.True(r.SwapIoUWithInjection >= r.SwapIoUWithoutInjection + 0.2,
                $"{set}: word-swap mask IoU with injection {r.SwapIoUWithInjection:0.00} is not clearly above plain regeneration's {r.SwapIoUWithoutInjection:0.00}");
        }
        Assert.True(report.VaeReconstructionError < 10, $"the VAE changes a scene by {report.VaeReconstructionError:0.0} of 255 on average");
    }

    [Fact]
    public void Null_text_inversion_reconstructs_scenes_the_model_never_drew()
    {
        using var model = StableDiffusionModel.Load(Folder, ModelPlacement.Cpu);
        var report = new ShapesEvaluation(new StableDiffusionPipeline(model)).MeasureInversion(samples: 3, seed: 0);
        output.WriteLine(report.ToTable());
        // Null-text inversion (Mokady et al.) comes back nearly as exactly as the VAE allows; plain DDIM inversion under
        // guidance drifts; negative-prompt inversion lies between.
        Assert.True(report[InversionMethod.NullText].Psnr >= report.Vae - 1, $"null-text reconstruction {report[InversionMethod.NullText].Psnr:0.0} dB is more than 1 dB below the VAE's {report.Vae:0.0} dB");
        Assert.True(report[InversionMethod.NullText].Psnr >= report[InversionMethod.Ddim].Psnr + 4, $"null-text reconstruction {report[InversionMethod.NullText].Psnr:0.0} dB is not clearly above DDIM's {report[InversionMethod.Ddim].Psnr:0.0} dB");
        // Direct inversion ends on the photo's own latent: exactly the VAE's round trip.
        Assert.True(Math.Abs(report[InversionMethod.Direct].Psnr - report.Vae) < 0.01, $"direct-inversion reconstruction {report[InversionMethod.Direct].Psnr:0.00} dB differs from the VAE's {report.Vae:0.00} dB");
        Assert.True(report[InversionMethod.NegativePrompt].Psnr >= report[InversionMethod.Ddim].Psnr + 3, $"negative-prompt reconstruction {report[InversionMethod.NegativePrompt].Psnr:0.0} dB is not clearly above DDIM's {report[InversionMethod.Ddim].Psnr:0.0} dB");
    }

    [Fact]
    public void Local_blend_keeps_the_source_latents_exactly_outside_the_mask()
    {
        using var model = StableDiffusionModel.Load(Folder, ModelPlacement.Cpu);
        var pipeline = new StableDiffusionPipeline(model);
        string[] prompts = ["a small red circle on a white background", "a small blue circle on a white background"];
        double ExactlyKept(LocalBlend? blend)
        {
            using var swap = new AttentionReplace(model.Tokenizer, prompts, 10, new EditSchedule(0.8, StepWindow.Until(0.4)), blend);
            using var latents = pipeline.Generate(new GenerationRequest { Prompts = prompts, Steps = 10, Seed = 4, Scheduler = "ddim" }, null, swap).Latents;
            // A latent pixel is kept when all its channels equal the source's bit for bit.
            using var same = latents[0].eq(latents[1]).all(0);
            return same.to(TorchSharp.torch.ScalarType.Float32).mean().item<float>();
        }
        double withBlend = ExactlyKept(new LocalBlend(model.Tokenizer, prompts, new LocalBlendOptions([["circle"], ["circle"]], 0.3), 10));
        double without = ExactlyKept(null);
        output.WriteLine($"latent pixels equal to the source's: {withBlend:P0} with local blend, {without:P0} without");
        Assert.True(withBlend >= 0.5, $"only {withBlend:P0} of the latent pixels kept the source's values with a local blend on a small circle");
        Assert.True(withBlend < 1, "the blended edit changed nothing");
        Assert.Equal(0, without);
    }

    [Fact]
    public void Shipped_model_saves_and_loads_to_the_same_numbers()
    {
        using var model = StableDiffusionModel.Load(Folder, ModelPlacement.Cpu);
        using var dir = new TempDir();
        ModelFolderWriter.Save(dir.Path, model.TextEncoder, model.UNet, model.Vae, model.Scheduler, TorchSharp.torch.ScalarType.Float16);
        foreach (var f in new[] { "vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json" })
        {
            Directory.CreateDirectory(Path.Combine(dir.Path, "tokenizer"));
            File.Copy(Path.Combine(Folder, "tokenizer", f), Path.Combine(dir.Path, "tokenizer", f));
        }
        using var again = StableDiffusionModel.Load(dir.Path, ModelPlacement.Cpu);
        Assert.Equal(model.Fingerprint, again.Fingerprint);
    }
}
