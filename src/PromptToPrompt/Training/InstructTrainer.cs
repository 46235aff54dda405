using System.Diagnostics;
using System.Text.Json;
using PromptToPrompt.Datasets;
using PromptToPrompt.Loading;
using PromptToPrompt.Models;
using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace PromptToPrompt.Training;

/// <summary>
/// Settings of <c>p2p train-instruct</c>. As for <see cref="ShapesTrainingOptions"/>, the schedule is in steps (the same
/// seed, data and steps give the same model) and <see cref="Minutes"/> only caps wall time.
/// </summary>
public sealed record InstructTrainingOptions(
    IReadOnlyList<string> DataDirs, string OutDir, string InitModel, long Seed = 0, int Steps = 4000, int Batch = 32, double? Minutes = null,
    double LearningRate = 2e-4, double ConditioningDropout = 0.05, int CheckpointEverySteps = 500, bool RandomFlip = false,
    double? ConvInLearningRate = null, double AttentionLossWeight = 0, double EmaDecay = 0, int? LayersPerBlock = null, double SnrGamma = 0,
    double EditWeight = 1)
{
    public void Validate()
    {
        static void Check(bool ok, string message) { if (!ok) throw new UserError(message); }
        Check(DataDirs.Count > 0, "--data: give the dataset folder (repeat --data to train on several).");
        var twice = DataDirs.GroupBy(d => Path.TrimEndingDirectorySeparator(Path.GetFullPath(d))).FirstOrDefault(g => g.Count() > 1);
        Check(twice is null, $"--data {twice?.First()} is given twice; give each dataset once.");
        Check(Steps >= 0, $"--steps must be 0 or more; got {Steps}.");
        Check(Batch >= 1 && CheckpointEverySteps >= 1, "the batch size and the checkpoint interval must be at least 1.");
        Check(Minutes is null or >= 0 && (Minutes is null || double.IsFinite(Minutes.Value)), "--minutes must be a finite number of 0 or more.");
        Check(double.IsFinite(LearningRate) && LearningRate > 0, $"--learning-rate must be a positive number; got {LearningRate}.");
        Check(ConvInLearningRate is null || double.IsFinite(ConvInLearningRate.Value) && ConvInLearningRate > 0, $"--conv-in-learning-rate must be a positive number; got {ConvInLearningRate}.");
        Check(double.IsFinite(AttentionLossWeight) && AttentionLossWeight >= 0, $"--attention-loss must be 0 or more; got {AttentionLossWeight}.");
        Check(double.IsFinite(SnrGamma) && SnrGamma >= 0, $"--snr-gamma must be 0 (off) or more; got {SnrGamma}.");
        Check(double.IsFinite(EditWeight) && EditWeight >= 1, $"--edit-weight must be at least 1 (1: every latent alike); got {EditWeight}.");
        Check(LayersPerBlock is null or >= 1, $"--layers-per-block must be at least 1; got {LayersPerBlock}.");
        Check(EmaDecay is >= 0 and < 1, $"--ema-decay must be at least 0 (off) and below 1; got {EmaDecay}.");
        Check(ConditioningDropout is >= 0 and <= 1.0 / 3, "the conditioning dropout must be between 0 and 1/3 (it is applied three times: text, image, both).");
    }
}

/// <summary>
/// Trains an InstructPix2Pix model from a text-to-image one (Brooks et al. 2023, as diffusers'
/// <c>train_instruct_pix2pix.py</c>): the UNet's <c>conv_in</c> is widened to take the input image's latent as well (the
/// new input channels zero, everything else kept, so training starts from the text-to-image model), then the UNet learns
/// to predict the noise of the edited image's latent from the noisy latent concatenated with the input image's latent
/// (its VAE posterior mean, unscaled, as <see cref="Pipelines.InstructPix2PixPipeline"/> encodes it) and the instruction.
/// Conditioning dropout as the paper's: of every batch, on average <c>p</c> has no text, <c>p</c> no image and <c>p</c>
/// neither (p = 5%), so both guidance scales work. Unlike the paper, the text encoder is trained too: the shipped
/// model's encoder never saw an instruction verb. The VAE stays frozen; every pair is encoded once.
/// </summary>
public sealed class InstructTrainer(InstructTrainingOptions options, Action<string>? log = null)
{
    string Checkpoint(string name) => Path.Combine(options.OutDir, "checkpoint", name);

    /// <summary>What a checkpoint was trained on; a resume with other data or another start is refused.</summary>
    sealed record State(int Step, double ElapsedSeconds, int Pairs, string Init, long Seed, int Batch, bool RandomFlip = false, double AttentionLoss = 0,
        double Ema = 0, int? LayersPerBlock = null, double SnrGamma = 0, double EditWeight = 1);

    /// <summary>
    /// A copy of <paramref name="unet"/> whose <c>conv_in</c> takes <paramref name="extraChannels"/> more input channels:
    /// their weights zero, the rest and the bias kept, so the widened model ignores the new channels until trained
    /// (with 0, a copy).
    /// </summary>
    public static UNet2DConditionModel Widen(UNet2DConditionModel unet, int extraChannels)
    {
        var widened = new UNet2DConditionModel(unet.Config with { InChannels = unet.Config.InChannels + extraChannels });
        var source = unet.named_parameters().ToDictionary(p => p.name, p => p.parameter);
        var first = source.Values.First();
        widened.to(first.device, first.dtype);
        using (no_grad())
            foreach (var (name, target) in widened.named_parameters())
            {
                var value = source[name];
                if (value.shape.SequenceEqual(target.shape)) target.copy_(value);
                else if (name == "conv_in.weight")
                {
                    target.zero_();
                    target.narrow(1, 0, value.shape[1]).copy_(value);
                }
                else throw new InvalidOperationException($"widening conv_in changed {name}");
            }
        return widened;
    }

    /// <summary>
    /// A copy of <paramref name="unet"/> with <paramref name="layers"/> layers per block (at least its own), that computes
    /// what <paramref name="unet"/> computes until trained. Every new layer — a ResNet, with a transformer in an attention
    /// block — starts as the identity: the ResNet's last convolution and the transformer's output projection zero, and in
    /// an up block the ResNet's shortcut passing its input through and dropping the skip connection. A down block's new
    /// layers follow its own, so their skip connections repeat its last; an up block's follow its first, which is where
    /// it reads those repeats. The new layers' other weights are drawn from <paramref name="seed"/>.
    /// </summary>
    public static UNet2DConditionModel Deepen(UNet2DConditionModel unet, int layers, long seed)
    {
        int added = layers - unet.Config.LayersPerBlock;
        if (added < 0)
            throw new UserError($"--layers-per-block {layers}: the model already has {unet.Config.LayersPerBlock} layers per block; a model can be made deeper, not shallower.");
        manual_seed(seed);
        var deeper = new UNet2DConditionModel(unet.Config with { LayersPerBlock = layers });
        var first = unet.parameters().First();
        deeper.to(first.device, first.dtype);
        // An up block's layer k > 0 moves to k + added.
        static string Moved(string name, int added) => System.Text.RegularExpressions.Regex.Replace(name, @"^(up_blocks\.\d+\.(?:resnets|attentions))\.(\d+)\.",
            m => int.Parse(m.Groups[2].Value) is var k and > 0 ? $"{m.Groups[1].Value}.{k + added}." : m.Value);
        var source = unet.named_parameters().ToDictionary(p => Moved(p.name, added), p => p.parameter);
        using (no_grad())
            foreach (var (name, target) in deeper.named_parameters())
            {
                if (source.TryGetValue(name, out var value)) target.copy_(value);
                else if (name.Contains(".conv2.") || name.Contains(".proj_out.") || name.EndsWith(".conv_shortcut.bias")) target.zero_();
                else if (name.EndsWith(".conv_shortcut.weight"))
                {
                    long outChannels = target.shape[0];
                    target.zero_();
                    target.narrow(1, 0, outChannels).copy_(eye(outChannels, dtype: target.dtype, device: target.device).reshape(outChannels, outChannels, 1, 1));
                }
            }
        return deeper;
    }

    /// <summary>
    /// Which conditions a sample drops, from a uniform draw <paramref name="u"/> in [0, 1), as diffusers' training script
    /// draws it: u &lt; 2p drops the text, p &lt;= u &lt; 3p the image — so [0, p) text only, [p, 2p) both, [2p, 3p) image only.
    /// </summary>
    public static (bool Text, bool Image) Dropped(double u, double p) => (u < 2 * p, u >= p && u < 3 * p);

    public void Run(IProgress<TrainingProgress>? progress = null, CancellationToken cancel = default)
    {
        options.Validate();
        if (!Directory.Exists(options.InitModel))
            throw new UserError($"--init {options.InitModel}: give the diffusers folder of a text-to-image model (such as models/shapes) or of an instruction model " +
                                "to train further (such as models/shapes-instruct); its tokenizer and VAE are copied into the new model.");
        if (File.Exists(Path.Combine(options.OutDir, "model_index.json")) && !File.Exists(Checkpoint("state.json")))
            throw new UserError($"{options.OutDir} already holds a model that this command did not train; give a new --out folder (nothing is overwritten).");
        set_num_threads(Math.Max(1, Environment.ProcessorCount));
        // Several datasets are trained on as one: their pairs in the order given.
        var sets = options.DataDirs.Select(dir => (Dir: dir, Pairs: DatasetIndex.ReadPairs(dir))).ToList();
        var pairs = sets.SelectMany(set => set.Pairs).ToList();
        using var init = StableDiffusionModel.Load(options.InitModel, new ModelPlacement(CPU, ScalarType.Float32), log);
        var expected = new State(0, 0, pairs.Count, init.Name, options.Seed, options.Batch, options.RandomFlip, options.AttentionLossWeight, options.EmaDecay,
            options.LayersPerBlock, options.SnrGamma, options.EditWeight);
        var state = ReadState() ?? expected;
        static string Settings(State s) =>
            $"pairs {s.Pairs}, init {s.Init}, seed {s.Seed}, batch {s.Batch}, {(s.RandomFlip ? "random flip" : "no flip")}, attention loss {s.AttentionLoss}, " +
            $"EMA decay {s.Ema}, {(s.LayersPerBlock is int n ? $"{n} layers per block" : "the init's layers per block")}, SNR gamma {s.SnrGamma}, edit weight {s.EditWeight}";
        if (state != expected with { Step = state.Step, ElapsedSeconds = state.ElapsedSeconds })
            throw new UserError($"{options.OutDir} holds a training run with other settings ({Settings(state)}; now {Settings(expected)}). " +
                                $"Use another --out, or delete {Checkpoint("")}.");
        if (state.Step >= options.Steps && state.Step > 0)
        {
            log?.Invoke($"{options.OutDir} is already trained ({state.Step} steps); pass a larger --steps to train it further.");
            return;
        }
        int size = init.DefaultImageSize;
        foreach (var (dir, set) in sets)
        {
            var wrong = set.FirstOrDefault(p => p.Input.Width != size || p.Input.Height != size || p.Edited.Width != size || p.Edited.Height != size);
            if (wrong is not null)
                throw new UserError($"{dir} holds {wrong.Input.Width}x{wrong.Input.Height} images; {init.Name} is trained at {size}x{size}. " +
                                    "Generate the dataset with the model it trains (p2p dataset generate --model ...).");
        }

        using var unet = TrainedUNet(init);
        var text = init.TextEncoder;
        var modules = new (nn.Module Module, string Name)[] { (unet, "unet"), (text, "text_encoder") };
        void Load(string prefix)
        {
            foreach (var (module, name) in modules)
                using (var source = TensorSource.Open(name, Checkpoint($"{prefix}{name}.safetensors")))
                    WeightLoader.Load(module, source, CPU, ScalarType.Float32, trainable: true);
        }
        if (state.Step > 0)
        {
            Load("");
            log?.Invoke($"resuming at step {state.Step}");
        }
        var (imageLatents, editLatents) = Encode(init, pairs, options.RandomFlip);
        using var _1 = imageLatents;
        using var _2 = editLatents;
        using var latentWeights = options.EditWeight > 1 ? LatentWeights(pairs, (int)editLatents.shape[2], options.RandomFlip, options.EditWeight) : null;
        var tokenizer = init.Tokenizer;
        var instructionIds = pairs.Select(p => tokenizer.Tokenize(p.Instruction).Ids).ToArray();
        var emptyIds = tokenizer.Tokenize("").Ids;
        // What the attention loss binds, per sample (with --random-flip the mirrored pairs follow the pairs, as the latents do).
        var bound = options.AttentionLossWeight > 0 ? pairs.Select(pair => ChangedRegion(pair, tokenizer)).ToList() : null;
        if (bound is not null && options.RandomFlip) bound.AddRange(bound.Select(Mirrored).ToList());

        var clock = Stopwatch.StartNew();
        var budget = options.Minutes is double m ? TimeSpan.FromMinutes(m) : TimeSpan.MaxValue;
        double elapsedBefore = state.ElapsedSeconds;
        var scheduler = init.Scheduler with { ClassName = "EulerAncestralDiscreteScheduler" };

        unet.train();
        text.train();
        var parameters = unet.parameters().Concat(text.parameters()).ToList();
        foreach (var parameter in parameters) parameter.requires_grad = true;
        using var ema = options.EmaDecay > 0 ? new WeightAverage(parameters, options.EmaDecay) : null;
        if (ema is not null && state.Step > 0)
        {
            // The checkpoint's averages are loaded into the weights and swapped into the average.
            ema.Swap();
            Load("ema_");
            ema.Swap();
        }

        void Save(int step)
        {
            Directory.CreateDirectory(Checkpoint(""));
            void SaveCheckpoint(string prefix)
            {
                foreach (var (module, name) in modules) ModelFolderWriter.SaveWeights(Checkpoint($"{prefix}{name}.safetensors"), module, ScalarType.Float32);
            }
            SaveCheckpoint("");
            // With --ema-decay the model is the averaged weights (the live ones go on training).
            ema?.Swap();
            if (ema is not null) SaveCheckpoint("ema_");
            // The model folder (fp16): an InstructPix2Pix model usable by p2p instruct while training goes on.
            ModelFolderWriter.Save(options.OutDir, text, unet, init.Vae, scheduler, ScalarType.Float16, "StableDiffusionInstructPix2PixPipeline");
            ema?.Swap();
            ModelFolderWriter.CopyTokenizer(Path.Combine(options.InitModel, "tokenizer"), Path.Combine(options.OutDir, "tokenizer"));
            var json = JsonSerializer.Serialize(state with { Step = step, ElapsedSeconds = elapsedBefore + clock.Elapsed.TotalSeconds });
            AtomicFile.Write(Checkpoint("state.json"), f => f.Write(System.Text.Encoding.UTF8.GetBytes(json)));
        }
        // conv_in, which holds the new image channels, may learn at its own rate.
        var convIn = unet.named_parameters().Where(p => p.name.StartsWith("conv_in.")).Select(p => p.parameter).ToList();
        using var optimizer = optim.AdamW([
            new TorchSharp.Modules.AdamW.ParamGroup(convIn, lr: options.ConvInLearningRate ?? options.LearningRate, weight_decay: 1e-4),
            new TorchSharp.Modules.AdamW.ParamGroup(parameters.Except(convIn).ToList(), lr: options.LearningRate, weight_decay: 1e-4)]);
        if (state.Step > 0 && File.Exists(Checkpoint("optimizer")))
        {
            try { optimizer.load_state_dict(Checkpoint("optimizer")); }
            catch (ArgumentException e)
            {
                throw new UserError($"The optimizer state {Checkpoint("optimizer")} does not fit this trainer ({e.Message.TrimEnd('.')}; runs before " +
                                    $"--conv-in-learning-rate kept one parameter group). Delete the folder {Checkpoint("")} to train from the start.");
            }
        }
        var alphas = new Schedulers.NoiseSchedule(init.Scheduler).AlphasCumprod;
        using var sqrtA = tensor(alphas.Select(a => MathF.Sqrt(a)).ToArray());
        using var sqrtB = tensor(alphas.Select(a => MathF.Sqrt(1 - a)).ToArray());
        using var snr = options.SnrGamma > 0 ? tensor(alphas.Select(a => a / (1 - a)).ToArray()) : null;
        double p = options.ConditioningDropout;
        for (int step = state.Step; step < options.Steps; step++)
        {
            cancel.ThrowIfCancellationRequested();
            using var scope = NewDisposeScope();
            using var pause = CollectionPause.Begin();
            using var g = new Generator((ulong)(options.Seed * 9_000_011 + step), CPU);
            // With --random-flip a sample is one of 2N: the pairs, then the same pairs mirrored left to right.
            var index = randint(0, imageLatents.shape[0], [options.Batch], generator: g);
            var x0 = editLatents.index_select(0, index);
            var noise = randn(x0.shape, generator: g);
            var t = randint(0, init.Scheduler.NumTrainTimesteps, [options.Batch], generator: g);
            var xt = sqrtA[t].reshape(-1, 1, 1, 1) * x0 + sqrtB[t].reshape(-1, 1, 1, 1) * noise;
            var dropped = rand([options.Batch], generator: g).data<float>().ToArray().Select(u => Dropped(u, p)).ToArray();
            var indices = index.data<long>().ToArray();
            var ids = tensor(indices.Select((k, i) => dropped[i].Text ? emptyIds : instructionIds[k % pairs.Count]).SelectMany(x => x).ToArray(), [options.Batch, tokenizer.MaxLength]);
            var keepImage = tensor(dropped.Select(d => d.Image ? 0f : 1f).ToArray()).reshape(-1, 1, 1, 1);
            var image = imageLatents.index_select(0, index) * keepImage;
            using var localisation = bound is null ? null : new AttentionLocalisationLoss(tokenizer,
                indices.Select((k, i) => dropped[i].Text ? null : bound[(int)k]).ToList(), (int)x0.shape[2], CPU);
            Tensor predicted;
            using (unet.Hooks.Use(localisation)) predicted = unet.forward(cat([xt, image], 1), t.to(ScalarType.Float32), text.forward(ids));
            var loss = Loss(predicted, noise, latentWeights?.index_select(0, index), snr?[t], options.SnrGamma);
            if (localisation is not null) loss = loss + options.AttentionLossWeight * localisation.Loss();
            optimizer.zero_grad();
            loss.backward();
            nn.utils.clip_grad_norm_(parameters, 1.0);
            optimizer.step();
            ema?.Update(step);
            progress?.Report(new TrainingProgress("UNet + text encoder", step + 1, options.Steps, loss.item<float>(), clock.Elapsed));
            if ((step + 1) % options.CheckpointEverySteps == 0 || step + 1 == options.Steps || clock.Elapsed > budget)
            {
                Save(step + 1);
                optimizer.save_state_dict(Checkpoint("optimizer"));
                if (clock.Elapsed > budget && step + 1 < options.Steps)
                {
                    log?.Invoke("time budget reached: stopped at a checkpoint; run again to resume.");
                    return;
                }
            }
        }
        if (options.Steps == 0) Save(0);
        log?.Invoke($"instruction model written to {options.OutDir} ({pairs.Count} pairs, {(elapsedBefore + clock.Elapsed.TotalSeconds) / 60:0.0} min in all)");
    }

    /// <summary>
    /// The denoising loss: the mean squared error of the predicted noise, per sample a mean weighted by
    /// <paramref name="latentWeights"/> ([B, 1, h, w]; see <see cref="LatentWeights"/>), then, with <paramref name="snr"/>
    /// (each sample's SNR = ᾱ / (1 − ᾱ), [B]), the samples weighted by min(SNR, γ) / SNR (Hang et al. 2023, "Min-SNR"; as
    /// diffusers' <c>--snr_gamma</c> for a noise-predicting model: the nearly clean steps weigh less, the noisy ones, where
    /// an object's shape is decided, 1). Neither moves the loss's minimum (the best prediction of each latent at each step);
    /// they share the model's capacity out differently. Both null, the plain mean squared error.
    /// </summary>
    public static Tensor Loss(Tensor predicted, Tensor noise, Tensor? latentWeights, Tensor? snr, double snrGamma)
    {
        if (latentWeights is null && snr is null) return F.mse_loss(predicted, noise);
        var error = (predicted - noise).square();
        var weights = latentWeights?.expand_as(error);
        var perSample = weights is null ? error.mean([1, 2, 3]) : (error * weights).sum([1, 2, 3]) / weights.sum([1, 2, 3]);
        return (snr is null ? perSample : perSample * snr.clamp_max(snrGamma) / snr).mean();
    }

    /// <summary>Per latent, <paramref name="editWeight"/> where the pair's edit changed it (<see cref="ChangedLatents"/>), else 1.</summary>
    public static Tensor LatentWeights(IReadOnlyList<InstructionPair> pairs, int latentSize, bool mirrored, double editWeight)
    {
        using var changed = ChangedLatents(pairs, latentSize, mirrored);
        return changed.mul(editWeight - 1).add_(1);
    }

    /// <summary>Pixels where the pair's input and edited image differ by more than a quarter of the range in some channel.</summary>
    static bool[] ChangedPixels(InstructionPair pair)
    {
        var (a, b) = (pair.Input.Pixels, pair.Edited.Pixels);
        var mask = new bool[pair.Input.Width * pair.Input.Height];
        for (int i = 0; i < mask.Length; i++)
            for (int c = 0; c < 3; c++) mask[i] |= Math.Abs(a[3 * i + c] - b[3 * i + c]) > 64;
        return mask;
    }

    /// <summary>
    /// Which latents each pair's edit changed, [N, 1, h, w] (1: a changed pixel lies in the latent's cell); with
    /// <paramref name="mirrored"/> [2N, 1, h, w], the second half mirrored, as <see cref="Encode"/> orders the latents.
    /// </summary>
    public static Tensor ChangedLatents(IReadOnlyList<InstructionPair> pairs, int latentSize, bool mirrored)
    {
        using var scope = NewDisposeScope();
        var masks = pairs.Select(pair => tensor(ChangedPixels(pair).Select(m => m ? 1f : 0f).ToArray(), [1, 1, pair.Input.Height, pair.Input.Width])).ToArray();
        var pixels = cat(masks, 0);
        var latents = F.max_pool2d(pixels, pairs[0].Input.Width / latentSize);
        return (mirrored ? cat([latents, latents.flip(3)], 0) : latents).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// What <c>--attention-loss</c> binds in a pair: the instruction's shape and colour words own the region the edit
    /// changed (pixels where input and edited image differ by more than a quarter of the range in some channel: the
    /// recoloured, reshaped, resized, added or removed object), the other words are free. Null when the instruction
    /// names no shape or colour, or the change covers half the image or more (a new background).
    /// </summary>
    public static (Scene Scene, CaptionWords Caption)? ChangedRegion(InstructionPair pair, Text.ClipTokenizer tokenizer)
    {
        var mask = ChangedPixels(pair);
        int changed = mask.Count(m => m);
        var words = pair.Instruction.Split(' ', StringSplitOptions.RemoveEmptyEntries)
            .Select(w => (w, Scenes.ShapeOf(w) is not null || Scenes.Colours.ContainsKey(w) ? 0 : CaptionWords.Free)).ToList();
        if (changed == 0 || changed * 2 >= mask.Length || words.All(w => w.Item2 == CaptionWords.Free)) return null;
        return (new Scene(pair.Input, pair.Instruction, "", [new SceneObject("", "", "", mask)], false), new CaptionWords(words));
    }

    /// <summary>The same binding for the pair mirrored left to right.</summary>
    static (Scene Scene, CaptionWords Caption)? Mirrored((Scene Scene, CaptionWords Caption)? entry)
    {
        if (entry is not var (scene, caption)) return entry;
        int w = scene.Image.Width;
        var mask = scene.Objects[0].Mask;
        var flipped = new bool[mask.Length];
        for (int i = 0; i < mask.Length; i++) flipped[i] = mask[i / w * w + (w - 1 - i % w)];
        return (scene with { Objects = [scene.Objects[0] with { Mask = flipped }] }, caption);
    }

    /// <summary>
    /// The UNet to train: a text-to-image model's with <c>conv_in</c> widened for the image latent (an instruction model's
    /// already takes it), then, with <c>--layers-per-block</c>, made deeper (the widened copy freed at once).
    /// </summary>
    UNet2DConditionModel TrainedUNet(StableDiffusionModel init)
    {
        var widened = Widen(init.UNet, init.IsInstructPix2Pix ? 0 : init.LatentChannels);
        if (options.LayersPerBlock is not int layers) return widened;
        using (widened) return Deepen(widened, layers, options.Seed);
    }

    /// <summary>
    /// Input images' latents (posterior mean, unscaled) and edited images' latents (mean x scaling factor), [N, C, h, w];
    /// with <paramref name="mirrored"/> [2N, C, h, w], the second half encoded from the images flipped left to right (the
    /// grammar names no positions, so a mirrored pair is as true as the pair).
    /// </summary>
    public static (Tensor Image, Tensor Edit) Encode(StableDiffusionModel model, List<InstructionPair> pairs, bool mirrored)
    {
        using var _ = no_grad();
        var image = new List<Tensor>();
        var edit = new List<Tensor>();
        foreach (var flip in mirrored ? [false, true] : new[] { false })
            foreach (var chunk in pairs.Chunk(64))
                using (var scope = NewDisposeScope())
                {
                    Tensor Pixels(Func<InstructionPair, Imaging.RgbImage> side)
                    {
                        var x = cat(chunk.Select(p => side(p).ToTensor()).ToArray(), 0);
                        return flip ? x.flip(3) : x;
                    }
                    image.Add(model.Vae.Encode(Pixels(p => p.Input)).Mean.MoveToOuterDisposeScope());
                    edit.Add((model.Vae.Encode(Pixels(p => p.Edited)).Mean * model.Vae.Config.ScalingFactor).MoveToOuterDisposeScope());
                }
        var result = (cat(image, 0), cat(edit, 0));
        foreach (var x in image.Concat(edit)) x.Dispose();
        return result;
    }

    State? ReadState()
    {
        var path = Checkpoint("state.json");
        if (!File.Exists(path)) return null;
        try
        {
            var state = JsonSerializer.Deserialize<State>(File.ReadAllText(path)) ?? throw new JsonException("empty");
            // Runs of the first --layers-per-block release wrote 0 for the init's depth.
            return state.LayersPerBlock == 0 ? state with { LayersPerBlock = null } : state;
        }
        catch (JsonException e)
        {
            throw new UserError($"The training checkpoint {path} is unreadable ({e.Message}). Delete the folder {Checkpoint("")} to train from the start.");
        }
    }
}
