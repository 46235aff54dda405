using System.CommandLine;
using System.Globalization;
using System.Text.Json.Nodes;
using PromptToPrompt.Control;
using PromptToPrompt.Editing;
using PromptToPrompt.Imaging;
using PromptToPrompt.Loading;
using PromptToPrompt.Pipelines;

namespace PromptToPrompt.Cli;

/// <summary><c>p2p edit</c>: Prompt-to-Prompt from a spec file or from flags.</summary>
static class EditCommand
{
    public static Command Create()
    {
        var spec = new Option<string?>("--spec") { Description = "Edit spec (JSON) with the reference's field names; see README." };
        var model = new Option<string?>("--model", "-m") { Description = "Model folder or .safetensors checkpoint (or 'model' in the spec)." };
        var prompt = new Option<string?>("--prompt", "-p") { Description = "Source prompt." };
        var target = new Option<string[]>("--target", "-t") { Description = "Edited prompt (repeat for several; default: the source prompt, for re-weighting)." };
        var edit = new Option<string?>("--edit") { Description = "replace, refine, reweight or store (default: replace when the prompts have the same number of words, else refine)." };
        var cross = new Option<string?>("--cross-replace") { Description = "cross_replace_steps: 0.8, 0.2,0.8, or per word: default=1.0,car=0.2 (default 0.8)." };
        var self = new Option<string?>("--self-replace") { Description = "self_replace_steps: 0.4 or 0,0.4 (default 0.4)." };
        var blend = new Option<string?>("--blend") { Description = "Local blend words per prompt, ';' between prompts, ',' between words: \"bicycle;car\"." };
        var threshold = new Option<double?>("--blend-threshold") { Description = "Local blend threshold (default 0.3)." };
        var reweight = new Option<string[]>("--reweight") { Description = "word=value: scale a word's attention in the edited prompt (repeatable; -2..5 is typical)." };
        var variant = new Option<string?>("--variant") { Description = "Reference variant: prompt_to_prompt (default) or null_text." };
        var negative = CliSupport.NegativePrompt();
        var seed = CliSupport.Seed();
        var steps = new Option<int?>("--steps") { Description = "Denoising steps (default 50)." };
        var guidance = new Option<double?>("--guidance") { Description = "Classifier-free guidance scale (default 7.5)." };
        var scheduler = CliSupport.Scheduler();
        var width = CliSupport.Width();
        var height = CliSupport.Height();
        var latent = CliSupport.Latent();
        var sizes = CliSupport.SizeOptions.Create();
        var modelOptions = CliSupport.ModelOptions.Create();
        var saveLatents = new Option<string?>("--save-latents") { Description = "Write the final latents of the batch (source first) as tensor 'latents' [N, C, H/8, W/8]." };
        var overwrite = CliSupport.Overwrite();
        var output = new Option<string>("--out", "-o") { Description = "Output folder: prompt_0.png (source), prompt_1.png, ..., grid.png.", Required = true };
        var showAttention = new Option<bool>("--show-attention") { Description = "Also write each prompt's per-token cross-attention maps (attention_N_tokens.png, ...)." };
        var view = ViewOptions.Create();
        var inversion = new Option<string?>("--inversion") { Description = "Edit an inverted photo: a file written by p2p invert (fixes the source prompt, x_T, steps and guidance)." };
        var image = new Option<string?>("--image") { Description = "Edit a photo: invert it first (with --prompt describing it), then edit." };
        var saveInversion = new Option<string?>("--save-inversion") { Description = "With --image: also write the inversion file." };
        var photo = InvertCommand.PhotoOptions.Create();
        var cacheOptions = CliSupport.CacheOptions.Create();
        var excite = ExciteOptions.Create();
        var boxes = BoxOptions.Create();

        var command = new Command("edit", "Edit an image by editing its prompt (Prompt-to-Prompt).")
        {
            spec, model, prompt, target, edit, cross, self, blend, threshold, reweight, variant, negative, seed, steps, guidance,
            scheduler, width, height, latent, saveLatents, overwrite, output, showAttention, inversion, image, saveInversion,
        };
        foreach (var o in view.All.Concat(sizes.All).Concat(photo.All).Concat(cacheOptions.All).Concat(modelOptions.All).Concat(excite.All).Concat(boxes.All)) command.Options.Add(o);
        command.SetAction(r => CliSupport.Run(() =>
        {
            // An inversion (from a file, or made here from --image) fixes the source prompt, x_T, steps, guidance and scheduler.
            using var inversionFile = r.GetValue(inversion) is { } invPath ? InversionFile.Load(invPath) : null;
            var imagePath = r.GetValue(image);
            if (inversionFile is not null && imagePath is not null) throw new UserError("Give --inversion or --image, not both.");
            if (imagePath is not null && !File.Exists(imagePath)) throw new UserError($"Image not found: {imagePath}.");
            bool guided = excite.Given(r) || boxes.Given(r);
            if (guided && (inversionFile is not null || imagePath is not null)) throw SourceSettings.GuidedInversionError();

            EditSpec s;
            var flagsForSpec = new Option[] { prompt, target, edit, cross, self, blend, threshold, reweight, variant };
            if (r.GetValue(spec) is { } specPath)
            {
                if (flagsForSpec.FirstOrDefault(o => r.GetResult(o) is not null) is { } clash)
                    throw new UserError($"{clash.Name} cannot be combined with --spec: put the edit in the spec file, or drop --spec and use flags.");
                s = EditSpec.Load(specPath);
            }
            else s = FromFlags(r.GetValue(prompt) ?? inversionFile?.Prompt, r.GetValue(target) ?? [], r.GetValue(edit), r.GetValue(cross), r.GetValue(self),
                               r.GetValue(blend), r.GetValue(threshold), r.GetValue(reweight) ?? [], r.GetValue(variant));
            s = s with
            {
                Model = r.GetValue(model) ?? s.Model,
                Steps = r.GetValue(steps) ?? s.Steps,
                GuidanceScale = r.GetValue(guidance) ?? s.GuidanceScale,
                Scheduler = r.GetValue(scheduler) ?? s.Scheduler,
                Seed = r.GetValue(seed) ?? s.Seed,
                Latent = r.GetValue(latent) ?? s.Latent,
                Width = r.GetValue(width) ?? s.Width,
                Height = r.GetValue(height) ?? s.Height,
                NegativePrompt = r.GetValue(negative) ?? s.NegativePrompt,
                SizeConditioning = sizes.Parse(r) ?? s.SizeConditioning,
            };
            if (inversionFile is not null || imagePath is not null)
                s = ForInversion(s, inversionFile, r.GetResult(steps) is not null || r.GetResult(guidance) is not null);
            Schedulers.Schedulers.CheckName(s.Scheduler);

            var outDir = r.GetValue(output)!;
            var files = EditResult.FileNames(s.Prompts.Count).Select(n => Path.Combine(outDir, n)).ToList();
            bool show = r.GetValue(showAttention);
            var viewOptions = view.Parse(r);
            bool replace = r.GetValue(overwrite);
            if (show && !replace && Directory.Exists(outDir) && Directory.EnumerateFiles(outDir, "attention_*.png").Any())
                throw new UserError($"{outDir} already holds attention_*.png maps. Choose another folder or pass --overwrite.");
            var latentsPath = r.GetValue(saveLatents);
            var saveInversionPath = r.GetValue(saveInversion);
            if (saveInversionPath is not null && imagePath is null) throw new UserError("--save-inversion needs --image.");
            foreach (var f in files.Append(latentsPath).Append(saveInversionPath).OfType<string>()) AtomicFile.EnsureWritable(f, replace);
            var storage = cacheOptions.Storage(r);
            bool direct = inversionFile?.DdimLatents is not null || (imagePath is not null && photo.ParseMethod(r) == InversionMethod.Direct);
            // A direct inversion's source is its recorded trajectory, and a guided source is recorded once and its edits
            // run alone, so both always edit through a (memory) cache.
            using var cache = cacheOptions.Create(r, always: direct || guided);
            using var initial = s.Latent is { } lp ? CliSupport.ReadLatent(lp) : null;
            long seedValue = s.Seed ?? Random.Shared.NextInt64(0, 1L << 32);

            using var sd = modelOptions.Load(r, s.Model);
            SourceSettings source;
            using PhotoInversion? fresh = imagePath is null ? null
                : InvertCommand.Run(sd, imagePath, s.Prompts[0], new InversionSettings(photo.ParseMethod(r), s.Steps, r.GetValue(photo.InnerSteps) ?? 10, s.GuidanceScale),
                    photo.ParseFit(r), s.Width, s.Height);
            if (inversionFile is not null)
            {
                source = FromInversionFile(inversionFile, r.GetValue(inversion)!, sd, s);
            }
            else if (fresh is not null)
            {
                Console.Error.WriteLine($"reconstruction PSNR {fresh.Psnr:F2} dB against the input photo");
                if (saveInversionPath is not null)
                {
                    InversionFile.Save(saveInversionPath, fresh.Result, sd, imagePath!, photo.ParseFit(r), fresh.Fitted.Width, fresh.Fitted.Height, fresh.Psnr);
                    Console.WriteLine(saveInversionPath);
                }
                source = EditSession.FromInversion(fresh.Result, s.Edit.Variant, $"{imagePath} (inverted here, sha256 {InversionFile.Sha256(imagePath!)})");
            }
            else
            {
                if (initial is null) Console.Error.WriteLine($"seed {seedValue}");
                source = SourceSettings.FromSpec(s, initial, seedValue) with
                {
                    Excite = excite.Settings(r, sd, [s.Prompts[0]]), Boxes = boxes.Settings(r, sd, [s.Prompts[0]]),
                };
            }
            var session = new EditSession(sd, source with { CacheStorage = storage }, cache, CliSupport.Warn);
            if (show) (session, viewOptions) = session.ForViews(viewOptions);
            using var result = session.Edit(new EditRequest(s.Prompts.Skip(1).ToList(), s.Edit), show ? viewOptions : null,
                new ConsoleProgress($"{s.Edit.Edit.ToString().ToLowerInvariant()} ({s.Prompts.Count} prompts)"), CliSupport.Cancellation);
            var text = result.Metadata;
            // Editing a photo: the grid starts with the photo as inverted (fitted), so the reconstruction and the
            // edits can be compared with it.
            foreach (var path in result.Save(outDir, fresh?.Fitted)) Console.WriteLine(path);
            if (show)
                foreach (var (_, name) in result.SaveAttention(outDir, sd.Tokenizer, viewOptions)) Console.WriteLine(Path.Combine(outDir, name));
            if (latentsPath is not null)
            {
                SafetensorsFile.Write(latentsPath, new Dictionary<string, TorchSharp.torch.Tensor> { ["latents"] = result.Latents }, text);
                Console.WriteLine(latentsPath);
            }
            return 0;
        }));
        return command;
    }

    /// <summary>The source of an inversion file, checked against the model.</summary>
    internal static SourceSettings FromInversionFile(InversionFile file, string path, StableDiffusionModel model, EditSpec s)
    {
        file.CheckCompatible(model, s.Steps);
        return EditSession.FromInversion(file, s.Edit.Variant,
            $"{path} ({file.Metadata.GetValueOrDefault("method", "?")}, image sha256 {file.Metadata.GetValueOrDefault("image_sha256", "?")})");
    }

    /// <summary>An edit of an inverted photo (a file, or one inverted here) samples exactly as the inversion assumed.</summary>
    internal static EditSpec ForInversion(EditSpec s, InversionFile? file, bool stepsOrGuidanceGiven) =>
        file is null ? s.ForInversion(s.Prompts[0], s.Steps, s.GuidanceScale, false) : s.ForInversion(file.Prompt, file.Steps, file.GuidanceScale, stepsOrGuidanceGiven);

    /// <summary>Builds a spec from the everyday flags.</summary>
    internal static EditSpec FromFlags(string? source, string[] targets, string? edit, string? cross, string? self, string? blend,
                                       double? threshold, string[] reweights, string? variant)
    {
        if (source is null) throw new UserError("Give --prompt (the source prompt, describing the photo with --image) and --target (the edited prompt), or --spec FILE.");
        var equalizer = reweights.Select(ParseReweight).ToList();
        if (targets.Length == 0)
        {
            if (equalizer.Count == 0 && edit is not "store")
                throw new UserError("Give at least one --target prompt (or --reweight word=value to re-weight the source prompt itself).");
            if (edit is not "store") targets = [source];
        }
        var prompts = new List<string> { source };
        prompts.AddRange(targets);
        var root = new JsonObject { ["prompts"] = new JsonArray(prompts.Select(p => (JsonNode)p).ToArray()) };
        var kind = edit ?? (prompts.Count == 1 ? "store" : EditDescription.Infer(prompts) == EditKind.Replace ? "replace" : "refine");
        bool identical = prompts.Skip(1).All(p => p == source);
        if (equalizer.Count > 0 && kind != "reweight")
        {
            // Re-weighting on top of the swap or refinement the prompts call for (the reference's prev_controller).
            if (!identical)
                root["base"] = new JsonObject { ["edit"] = kind, ["cross_replace_steps"] = CrossJson(cross), ["self_replace_steps"] = WindowJson(self ?? "0.4") };
            kind = "reweight";
        }
        root["edit"] = kind;
        if (cross is not null) root["cross_replace_steps"] = CrossJson(cross);
        if (self is not null) root["self_replace_steps"] = WindowJson(self);
        if (variant is not null) root["variant"] = variant;
        if (equalizer.Count > 0)
            root["equalizer"] = new JsonObject
            {
                ["words"] = new JsonArray(equalizer.Select(e => (JsonNode)e.Word).ToArray()),
                ["values"] = new JsonArray(equalizer.Select(e => (JsonNode)e.Value).ToArray()),
            };
        if (blend is not null)
        {
            var perPrompt = blend.Split(';').Select(p => (JsonNode)new JsonArray(p.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).Select(w => (JsonNode)w).ToArray())).ToArray();
            root["local_blend"] = new JsonObject { ["words"] = new JsonArray(perPrompt), ["threshold"] = threshold ?? 0.3 };
        }
        else if (threshold is not null) throw new UserError("--blend-threshold needs --blend.");
        return EditSpec.Parse(root, "command line");
    }

    static (string Word, double Value) ParseReweight(string text)
    {
        var eq = text.LastIndexOf('=');
        if (eq <= 0 || !Numbers.TryParseFinite(text[(eq + 1)..], out var value))
            throw new UserError($"--reweight {text}: expected word=value with a finite number, e.g. --reweight smiling=5.");
        return (text[..eq], value);
    }

    static JsonNode WindowJson(string text)
    {
        var parts = text.Split(',');
        var numbers = parts.Select(p => Numbers.TryParseFinite(p, out var v)
            ? v : throw new UserError($"'{text}': expected a fraction like 0.8 or a pair like 0.2,0.8.")).ToArray();
        return numbers.Length switch
        {
            1 => numbers[0],
            2 => new JsonArray(numbers[0], numbers[1]),
            _ => throw new UserError($"'{text}': expected a fraction like 0.8 or a pair like 0.2,0.8."),
        };
    }

    static JsonNode? CrossJson(string? text)
    {
        if (text is null) return 0.8;
        if (!text.Contains('=')) return WindowJson(text);
        var o = new JsonObject();
        foreach (var part in text.Split(',', StringSplitOptions.TrimEntries))
        {
            var eq = part.IndexOf('=');
            if (eq <= 0) throw new UserError($"--cross-replace {text}: per-word windows are word=fraction pairs, e.g. default=1.0,car=0.2.");
            var word = part[..eq];
            o[word == "default" ? "default_" : word] = WindowJson(part[(eq + 1)..].Replace(':', ','));
        }
        return o;
    }
}
