using System.CommandLine;
using PromptToPrompt.Control;
using PromptToPrompt.Editing;
using PromptToPrompt.Imaging;
using PromptToPrompt.Loading;
using PromptToPrompt.Pipelines;

namespace PromptToPrompt.Cli;

/// <summary><c>p2p attention</c>: generate an image and show its per-token cross-attention (and self-attention components).</summary>
static class AttentionCommand
{
    public static Command Create()
    {
        var model = CliSupport.Model();
        var prompt = new Option<string>("--prompt", "-p") { Description = "Prompt.", Required = true };
        var sampling = CliSupport.SamplingOptions.Create();
        var view = ViewOptions.Create();
        var saveMaps = new Option<string?>("--save-maps") { Description = "Write the raw maps as tensors (cross_avg [tokens, H, W] on the --res grid, and per step / layer / components when asked)." };
        var overwrite = CliSupport.Overwrite();
        var output = new Option<string>("--out", "-o") { Description = "Output folder: image.png, tokens.png, step_NNN.png, layer_*.png, self_components.png.", Required = true };
        var modelOptions = CliSupport.ModelOptions.Create();
        var excite = ExciteOptions.Create();
        var boxes = BoxOptions.Create();

        var command = new Command("attention", "Generate an image and show where each token attends (cross-attention maps).")
        {
            model, prompt, saveMaps, overwrite, output,
        };
        foreach (var o in sampling.All.Concat(view.All).Concat(modelOptions.All).Concat(excite.All).Concat(boxes.All)) command.Options.Add(o);
        command.SetAction(r => CliSupport.Run(() =>
        {
            var options = view.Parse(r);
            var outDir = r.GetValue(output)!;
            bool replace = r.GetValue(overwrite);
            var saveMapsPath = r.GetValue(saveMaps);
            var fixedFiles = new[] { "image.png", "tokens.png", "self_components.png" }.Concat((options.PerStep ?? []).Select(s => $"step_{s:D3}.png"));
            foreach (var f in fixedFiles.Select(f => Path.Combine(outDir, f)).Append(saveMapsPath).OfType<string>()) AtomicFile.EnsureWritable(f, replace);
            if (options.PerLayer && !replace && Directory.Exists(outDir) && Directory.EnumerateFiles(outDir, "layer_*.png").Any())
                throw new UserError($"{outDir} already holds layer_*.png maps. Choose another folder or pass --overwrite.");
            var (initial, seedValue) = sampling.Prepare(r);
            using var _ = initial;
            using var sd = modelOptions.Load(r, r.GetValue(model));
            var text = r.GetValue(prompt)!;
            var source = sampling.Source(r, text, initial, seedValue) with { Excite = excite.Settings(r, sd, [text]), Boxes = boxes.Settings(r, sd, [text]) };
            var (session, resolved) = new EditSession(sd, source, log: CliSupport.Warn).ForViews(options);
            options = resolved;
            using var result = session.Edit(new EditRequest([], new EditDescription { Edit = EditKind.Store }), options,
                new ConsoleProgress("denoising"), CliSupport.Cancellation);
            var store = result.Controller;
            var metadata = new Dictionary<string, string>(result.Metadata);
            var written = new List<string>();
            Png.Save(Path.Combine(outDir, "image.png"), result.Images[0], metadata);
            written.Add(Path.Combine(outDir, "image.png"));
            foreach (var (name, image) in AttentionReport.Images(store, sd.Tokenizer, text, 0, result.Images[0], options))
            {
                Png.Save(Path.Combine(outDir, name), image, metadata);
                written.Add(Path.Combine(outDir, name));
            }
            if (saveMapsPath is not null)
            {
                var (tensors, about) = AttentionReport.Tensors(store, sd.Tokenizer, text, 0, options);
                foreach (var (k, v) in metadata) about[k] = v;
                SafetensorsFile.Write(saveMapsPath, tensors, about);
                foreach (var t in tensors.Values) t.Dispose();
                written.Add(saveMapsPath);
            }
            foreach (var f in written) Console.WriteLine(f);
            return 0;
        }));
        return command;
    }
}

/// <summary>The attention-view options shared by <c>p2p attention</c> and <c>p2p edit --show-attention</c>.</summary>
sealed record ViewOptions(Option<int?> Res, Option<string> From, Option<string?> PerStep, Option<bool> PerLayer, Option<int> SelfComponents, Option<int> CellSize, Option<bool> FullPrecision)
{
    public static ViewOptions Create() => new(
        new Option<int?>("--res")
        {
            Description = "Resolution R of the maps: aggregate the layers whose query grid has R on its shorter side (R x R for square images). " +
                          "Default: the coarsest grid with cross-attention outside the middle block (16 for SD at 512x512).",
        },
        new Option<string>("--from") { Description = "UNet places to aggregate: down, mid, up (comma-separated).", DefaultValueFactory = _ => "up,down" },
        new Option<string?>("--per-step") { Description = "UNet evaluations to show one by one, e.g. 0,5,10,25,50." },
        new Option<bool>("--per-layer") { Description = "Also show each cross-attention layer (averaged over steps)." },
        new Option<int>("--self-components") { Description = "Show the top K principal components of the self-attention at R." },
        new Option<int>("--cell-size") { Description = "Pixel size of the longer side of each map in the grids.", DefaultValueFactory = _ => 256 },
        new Option<bool>("--full-precision") { Description = "Keep per-step maps in float32 instead of float16 (twice the memory)." });

    public IEnumerable<Option> All => [Res, From, PerStep, PerLayer, SelfComponents, CellSize, FullPrecision];

    public AttentionViewOptions Parse(ParseResult r)
    {
        List<int>? steps = null;
        if (r.GetValue(PerStep) is { } text)
            steps = text.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
                .Select(s => int.TryParse(s, out var v) ? v : throw new UserError($"--per-step {text}: expected step numbers like 0,5,10.")).Distinct().ToList();
        int cell = r.GetValue(CellSize);
        if (cell is < 16 or > 2048) throw new UserError($"--cell-size must be between 16 and 2048 pixels; got {cell}.");
        return new AttentionViewOptions(r.GetValue(Res), AttentionViewOptions.ParsePlaces(r.GetValue(From)!), steps, r.GetValue(PerLayer), r.GetValue(SelfComponents), cell,
            r.GetValue(FullPrecision));
    }
}
