using System.Diagnostics;
using System.Text.Json;
using PromptToPrompt.Loading;
using PromptToPrompt.Models;
using PromptToPrompt.Schedulers;
using PromptToPrompt.Text;
using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace PromptToPrompt.Training;

/// <summary>
/// Settings of <c>p2p train-shapes</c>. The schedule is defined in steps, so the same seed and step counts give the
/// same model; <see cref="Minutes"/> only caps wall time (training then stops at a checkpoint and resumes later).
/// </summary>
public sealed record ShapesTrainingOptions(
    string OutDir, long Seed = 0, int VaeSteps = 2000, int UNetSteps = 6000, int VaeBatch = 16, int UNetBatch = 32,
    double? Minutes = null, double CaptionDropout = 0.1, int CheckpointEverySteps = 500, int ScaleSamples = 256,
    double AttentionLossWeight = 0.05, int VaeCrop = 32, int LatentReuse = 4, bool VariedCaptions = false,
    string? Init = null, double LearningRate = 5e-4, double CanonicalShare = 0)
{
    /// <summary>Throws a <see cref="UserError"/> naming the first option out of range.</summary>
    public void Validate(int imageSize, int vaeDownsampling)
    {
        static void Check(bool ok, string message) { if (!ok) throw new UserError(message); }
        Check(VaeSteps >= 0 && UNetSteps >= 0, "--vae-steps and --unet-steps must be 0 or more.");
        Check(VaeBatch >= 1 && UNetBatch >= 1 && ScaleSamples >= 1 && CheckpointEverySteps >= 1, "batch sizes, scale samples and the checkpoint interval must be at least 1.");
        Check(Minutes is null or >= 0, "--minutes must be 0 or more.");
        Check(CaptionDropout is >= 0 and <= 1, "the caption dropout must be between 0 and 1.");
        Check(AttentionLossWeight >= 0, "--attention-loss must be 0 or more.");
        Check(VaeCrop == 0 || (VaeCrop >= vaeDownsampling && VaeCrop <= imageSize && VaeCrop % vaeDownsampling == 0),
            $"--vae-crop must be 0 (whole images) or a multiple of {vaeDownsampling} (the VAE's downsampling) up to {imageSize}.");
        Check(LatentReuse >= 1 && UNetBatch % LatentReuse == 0, $"--latent-reuse must be at least 1 and divide the UNet batch ({UNetBatch}).");
        Check(double.IsFinite(LearningRate) && LearningRate > 0, $"--learning-rate must be a positive number; got {LearningRate}.");
        Check(CanonicalShare is >= 0 and <= 1, $"--canonical-share must be between 0 and 1; got {CanonicalShare}.");
        Check(CanonicalShare == 0 || VariedCaptions, "--canonical-share needs --varied-captions (without it every caption is canonical).");
        Check(Init is null || Directory.Exists(Init), $"--init {Init}: give the folder of a model this command trained (such as models/shapes).");
    }
}

/// <summary>Progress of training: phase, step, total loss and, in the UNet phase, its attention localisation term.</summary>
public readonly record struct TrainingProgress(string Phase, int Step, int Total, double Loss, TimeSpan Elapsed, double? AttentionLoss = null);

/// <summary>
/// Trains a small Stable-Diffusion-shaped model on <see cref="Scenes"/>: the VAE first (reconstruction + a small KL
/// term, on random crops: a quarter of the cost of whole images; then the latent scaling factor is set to 1/std of the
/// latents), then the UNet and the text encoder together on the DDPM noise-prediction loss with caption dropout (so
/// classifier-free guidance works), each encoded scene serving <see cref="ShapesTrainingOptions.LatentReuse"/> steps, plus
/// <see cref="ShapesTrainingOptions.AttentionLossWeight"/> times the <see cref="AttentionLocalisationLoss"/> that binds
/// each caption word's cross-attention to its object. Everything uses the project's own model classes and is saved as
/// a diffusers folder. The same options give the same model bit for bit, interrupted and resumed or not, as long as
/// nothing else in the process draws from torch's global generator while the initial weights are drawn from it (as
/// in PyTorch, seeded with the seed).
/// </summary>
public sealed class ShapesTrainer(ShapesTrainingOptions options, Action<string>? log = null)
{
    public const int ImageSize = 64;
    public const int MaxTokens = 32;

    public static (UNetConfig UNet, VaeConfig Vae, ClipTextConfig Text, SchedulerConfig Scheduler) Configs(int vocabSize) => (
        new UNetConfig(4, 4, [32, 64, 64], ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"], ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
            1, [2, 4, 4], 64, 8, 1e-5, true, 0, 1, 1.0, false, false, ImageSize / 4, false),
        new VaeConfig(3, 3, 4, [32, 64, 64], 1, 8, 1.0, ImageSize),
        new ClipTextConfig(vocabSize, 64, 128, 2, 4, MaxTokens, 1e-5, "quick_gelu"),
        new SchedulerConfig(BetaStart: 0.00085, BetaEnd: 0.012, BetaSchedule: "scaled_linear", SkipPrkSteps: true, StepsOffset: 1,
            SetAlphaToOne: false, ClipSample: false, ClassName: "DDIMScheduler"));

    string Checkpoint(string name) => Path.Combine(options.OutDir, "checkpoint", name);

    sealed record State(string Phase, int Step, double ScalingFactor, double ElapsedSeconds);

    public void Run(IProgress<TrainingProgress>? progress = null, CancellationToken cancel = default)
    {
        options.Validate(ImageSize, Configs(1).Vae.DownscaleFactor);
        set_num_threads(Math.Max(1, Environment.ProcessorCount));
        var (vocab, merges) = BpeTrainer.Train(options.VariedCaptions ? Scenes.VariedVocabulary : Scenes.Vocabulary);
        var tokenizerDir = Path.Combine(options.OutDir, "tokenizer");
        BpeTrainer.Save(tokenizerDir, vocab, merges, MaxTokens);
        var tokenizer = ClipTokenizer.Load(tokenizerDir);
        var (unetConfig, vaeConfig, textConfig, schedulerConfig) = Configs(tokenizer.VocabSize);

        var state = ReadState();
        if (state.Phase == "done")
        {
            if (state.Step >= options.UNetSteps)
            {
                log?.Invoke($"{options.OutDir} is already trained ({state.Step} UNet steps); pass a larger --unet-steps to train it further.");
                return;
            }
            state = state with { Phase = "unet" };   // train further: the same model as one longer run
        }

        manual_seed(options.Seed);
        using var vae = new AutoencoderKL(vaeConfig);
        using var unet = new UNet2DConditionModel(unetConfig);
        using var text = new ClipTextModel(textConfig);
        if (state.Step > 0 || state.Phase != "vae")
        {
            foreach (var (module, name) in new (nn.Module, string)[] { (vae, "vae"), (unet, "unet"), (text, "text_encoder") })
                using (var source = TensorSource.Open(name, Checkpoint($"{name}.safetensors")))
                    WeightLoader.Load(module, source, CPU, ScalarType.Float32, trainable: true);
            log?.Invoke($"resuming {state.Phase} at step {state.Step}");
        }
        var scenes = new Scenes(ImageSize);
        var clock = Stopwatch.StartNew();
        var budget = options.Minutes is double m ? TimeSpan.FromMinutes(m) : TimeSpan.MaxValue;
        double elapsedBefore = state.ElapsedSeconds;

        // The diffusers folder (fp16) of the current weights: usable by every p2p command while training goes on.
        void Export(VaeConfig scaledConfig)
        {
            using var vaeOut = new AutoencoderKL(scaledConfig);
            using (no_grad())
                foreach (var ((_, dst), (_, src)) in vaeOut.named_parameters().Zip(vae.named_parameters())) dst.copy_(src);
            ModelFolderWriter.Save(options.OutDir, text, unet, vaeOut, schedulerConfig, ScalarType.Float16);
        }

        void Save(State s)
        {
            Directory.CreateDirectory(Checkpoint(""));
            ModelFolderWriter.SaveWeights(Checkpoint("vae.safetensors"), vae, ScalarType.Float32);
            ModelFolderWriter.SaveWeights(Checkpoint("unet.safetensors"), unet, ScalarType.Float32);
            ModelFolderWriter.SaveWeights(Checkpoint("text_encoder.safetensors"), text, ScalarType.Float32);
            var json = JsonSerializer.Serialize(s with { ElapsedSeconds = elapsedBefore + clock.Elapsed.TotalSeconds });
            AtomicFile.Write(Checkpoint("state.json"), f => f.Write(System.Text.Encoding.UTF8.GetBytes(json)));
        }

        if (options.Init is not null && state is { Phase: "vae", Step: 0 })
        {
            state = new State("unet", 0, InitialiseFrom(options.Init, vae, unet, text, vocab), 0);
            Save(state);
            log?.Invoke($"starting from {options.Init} (its VAE kept; the UNet and text encoder trained further)");
        }

        if (state.Phase == "vae")
        {
            vae.train();
            foreach (var (_, p) in vae.named_parameters()) p.requires_grad = true;
            using var optimizer = optim.Adam(vae.parameters(), lr: 1e-3);
            if (state.Step > 0 && File.Exists(Checkpoint("vae.optimizer"))) optimizer.load_state_dict(Checkpoint("vae.optimizer"));
            for (int step = state.Step; step < options.VaeSteps; step++)
            {
                cancel.ThrowIfCancellationRequested();
                using var scope = NewDisposeScope();
                using var pause = CollectionPause.Begin();
                using var g = new Generator((ulong)(options.Seed * 1_000_003 + step), CPU);
                var x = Crop(Batch(scenes, "vae", step, options.VaeBatch).Images, options.VaeCrop, g);
                var (mean, std) = vae.Encode(x);
                var z = mean + std * randn(mean.shape, generator: g);
                var recon = vae.Decode(z);
                var kl = 0.5 * (mean.pow(2) + std.pow(2) - 1 - (std.pow(2) + 1e-10).log()).mean();
                var loss = F.mse_loss(recon, x) + 1e-4 * kl;
                optimizer.zero_grad();
                loss.backward();
                optimizer.step();
                progress?.Report(new TrainingProgress("VAE", step + 1, options.VaeSteps, loss.item<float>(), clock.Elapsed));
                if ((step + 1) % options.CheckpointEverySteps == 0 || clock.Elapsed > budget)
                {
                    Save(new State("vae", step + 1, 1.0, 0));
                    optimizer.save_state_dict(Checkpoint("vae.optimizer"));
                    if (clock.Elapsed > budget) { log?.Invoke("time budget reached: stopped at a checkpoint; run again to resume."); return; }
                }
            }
            // Scale latents to unit variance, as SD's 0.18215 does for its VAE.
            vae.eval();
            using (no_grad())
            using (var scope = NewDisposeScope())
            {
                var (mean, _) = vae.Encode(Batch(scenes, "scale", 0, options.ScaleSamples).Images);
                state = new State("unet", 0, 1.0 / mean.std().item<float>(), 0);
            }
            Save(state);
        }

        var scaled = vaeConfig with { ScalingFactor = Math.Round(state.ScalingFactor, 5) };
        foreach (var (_, p) in vae.named_parameters()) p.requires_grad = false;
        vae.eval();
        unet.train();
        text.train();
        var parameters = unet.parameters().Concat(text.parameters()).ToList();
        foreach (var p in parameters) p.requires_grad = true;
        using (var optimizer = optim.AdamW(parameters, lr: options.LearningRate, weight_decay: 1e-4))
        {
            if (state.Step > 0 && File.Exists(Checkpoint("unet.optimizer"))) optimizer.load_state_dict(Checkpoint("unet.optimizer"));
            var alphas = new NoiseSchedule(schedulerConfig).AlphasCumprod;
            var sqrtA = tensor(alphas.Select(a => MathF.Sqrt(a)).ToArray());
            var sqrtB = tensor(alphas.Select(a => MathF.Sqrt(1 - a)).ToArray());
            // Step s trains on chunks s-R+1..s of the scene stream, so each scene's latent is encoded once and used
            // in R consecutive steps (R = LatentReuse), each time with new noise, timestep and caption dropout.
            int reuse = options.LatentReuse, chunkSize = options.UNetBatch / reuse;
            using var latents = new LatentCache();
            for (int step = state.Step; step < options.UNetSteps; step++)
            {
                cancel.ThrowIfCancellationRequested();
                using var scope = NewDisposeScope();
                using var pause = CollectionPause.Begin();
                var chunks = Enumerable.Range(step - reuse + 1, reuse).Select(c => latents.Get(c, () =>
                {
                    var chunk = Batch(scenes, "unet", c, chunkSize);
                    using (no_grad()) return (vae.Encode(chunk.Images).Mean * scaled.ScalingFactor, chunk.Scenes);
                })).ToList();
                latents.DropBefore(step - reuse + 1);
                var x0 = cat(chunks.Select(c => c.Latents).ToArray(), 0);
                using var g = new Generator((ulong)(options.Seed * 7_000_003 + step), CPU);
                var noise = randn(x0.shape, generator: g);
                var t = randint(0, schedulerConfig.NumTrainTimesteps, [x0.shape[0]], generator: g);
                var xt = sqrtA[t].reshape(-1, 1, 1, 1) * x0 + sqrtB[t].reshape(-1, 1, 1, 1) * noise;
                var rng = new Random(Scenes.StableSeed(options.Seed + 17, step));
                // With varied captions each use of a scene draws its caption's phrasing anew (Scenes.Describe), except
                // for the canonical share (no draw when it is 0, so runs without it keep their stream).
                bool Varied() => options.VariedCaptions && (options.CanonicalShare == 0 || rng.NextDouble() >= options.CanonicalShare);
                var kept = chunks.SelectMany(c => c.Scenes)
                    .Select(scene => rng.NextDouble() < options.CaptionDropout ? null
                        : ((Scene, CaptionWords)?)(scene, Scenes.Describe(scene, Varied() ? rng : null))).ToList();
                var ids = tensor(kept.SelectMany(entry => tokenizer.Tokenize(entry?.Item2.Text ?? "").Ids).ToArray(), [kept.Count, tokenizer.MaxLength]);
                using var localisation = options.AttentionLossWeight > 0 ? new AttentionLocalisationLoss(tokenizer, kept, (int)x0.shape[2], CPU) : null;
                Tensor predicted;
                using (unet.Hooks.Use(localisation))
                    predicted = unet.forward(xt, t.to(ScalarType.Float32), text.forward(ids));
                var attentionLoss = localisation?.Loss();
                var loss = F.mse_loss(predicted, noise);
                if (attentionLoss is not null) loss = loss + options.AttentionLossWeight * attentionLoss;
                optimizer.zero_grad();
                loss.backward();
                nn.utils.clip_grad_norm_(parameters, 1.0);
                optimizer.step();
                progress?.Report(new TrainingProgress("UNet + text encoder", step + 1, options.UNetSteps, loss.item<float>(), clock.Elapsed,
                    attentionLoss?.item<float>()));
                if ((step + 1) % options.CheckpointEverySteps == 0 || clock.Elapsed > budget)
                {
                    Save(state with { Step = step + 1 });
                    optimizer.save_state_dict(Checkpoint("unet.optimizer"));
                    Export(scaled);
                    if (clock.Elapsed > budget) { log?.Invoke("time budget reached: stopped at a checkpoint; run again to resume."); return; }
                }
            }
        }
        Export(scaled);
        Save(new State("done", options.UNetSteps, state.ScalingFactor, 0));
        log?.Invoke($"trained model written to {options.OutDir} ({(elapsedBefore + clock.Elapsed.TotalSeconds) / 60:0.0} min in all)");
    }

    /// <summary>
    /// Copies a model this trainer made (a diffusers folder of the same architecture) into the new modules and returns
    /// its VAE scaling factor. The token embedding is copied by token text, so a vocabulary with more words keeps every
    /// old word's embedding; a new shape synonym ("disc") starts as its shape's ("circle"), other new tokens as drawn.
    /// </summary>
    static double InitialiseFrom(string folder, AutoencoderKL vae, UNet2DConditionModel unet, ClipTextModel text, Dictionary<string, int> vocab)
    {
        using var init = StableDiffusionModel.Load(folder, new ModelPlacement(CPU, ScalarType.Float32));
        init.RequireTextToImage();
        int? OldId(string token) => init.Tokenizer.IdOf(token)
            ?? (token.EndsWith("</w>") && Scenes.ShapeOf(token[..^4]) is string shape ? init.Tokenizer.IdOf(shape + "</w>") : null);
        var rows = vocab.Select(t => (New: (long)t.Value, Old: OldId(t.Key))).Where(r => r.Old is not null).ToList();
        using var scope = NewDisposeScope();
        using (no_grad())
            foreach (var (target, source) in new (nn.Module, nn.Module)[] { (vae, init.Vae), (unet, init.UNet), (text, init.TextEncoder) })
            {
                var from = source.named_parameters().ToDictionary(p => p.name, p => p.parameter);
                foreach (var (name, parameter) in target.named_parameters())
                {
                    bool embedding = name.EndsWith("token_embedding.weight");
                    if (!from.TryGetValue(name, out var value) || (embedding ? value.shape[1] != parameter.shape[1] : !value.shape.SequenceEqual(parameter.shape)))
                        throw new UserError($"--init {folder} is not a model of train-shapes' architecture ({name} differs); give a folder this command wrote (such as models/shapes).");
                    if (!embedding) parameter.copy_(value);
                    else parameter.index_copy_(0, tensor(rows.Select(r => r.New).ToArray()), value.index_select(0, tensor(rows.Select(r => (long)r.Old!.Value).ToArray())));
                }
            }
        return init.Vae.Config.ScalingFactor;
    }

    State ReadState()
    {
        var path = Checkpoint("state.json");
        if (!File.Exists(path)) return new State("vae", 0, 1.0, 0);
        try
        {
            return JsonSerializer.Deserialize<State>(File.ReadAllText(path)) ?? throw new JsonException("empty");
        }
        catch (JsonException e)
        {
            throw new UserError($"The training checkpoint {path} is unreadable ({e.Message}). Delete the folder {Checkpoint("")} to train from the start.");
        }
    }

    /// <summary>Encoded chunks of the scene stream, kept while a step still trains on them.</summary>
    sealed class LatentCache : IDisposable
    {
        readonly SortedDictionary<int, (Tensor Latents, List<Scene> Scenes)> _chunks = [];

        public (Tensor Latents, List<Scene> Scenes) Get(int index, Func<(Tensor, List<Scene>)> encode)
        {
            if (!_chunks.TryGetValue(index, out var chunk))
            {
                var (latents, scenes) = encode();
                _chunks[index] = chunk = (latents.DetachFromDisposeScope(), scenes);
            }
            return chunk;
        }

        public void DropBefore(int index)
        {
            foreach (var old in _chunks.Keys.Where(k => k < index).ToList())
            {
                _chunks[old].Latents.Dispose();
                _chunks.Remove(old);
            }
        }

        public void Dispose() => DropBefore(int.MaxValue);
    }

    /// <summary>A random <paramref name="size"/>-pixel square of every image (all of it when size is 0).</summary>
    static Tensor Crop(Tensor images, int size, Generator g)
    {
        if (size <= 0 || size >= images.shape[2]) return images;
        var offsets = randint(0, images.shape[2] - size + 1, [images.shape[0], 2], generator: g).data<long>().ToArray();
        return cat(Enumerable.Range(0, (int)images.shape[0])
            .Select(i => images[i..(i + 1)].narrow(2, offsets[2 * i], size).narrow(3, offsets[2 * i + 1], size)).ToArray(), 0);
    }

    /// <summary>A deterministic batch: scenes <c>index * size</c> onwards of the stream named <paramref name="stream"/>.</summary>
    (Tensor Images, List<Scene> Scenes) Batch(Scenes scenes, string stream, int index, int size)
    {
        long streamSeed = options.Seed * 31 + stream switch { "vae" => 1, "unet" => 2, _ => 3 };
        var items = Enumerable.Range(0, size).Select(i => scenes.Generate(streamSeed, (long)index * size + i)).ToList();
        return (cat(items.Select(s => s.Image.ToTensor()).ToArray(), 0), items);
    }
}
