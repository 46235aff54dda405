using PromptToPrompt.Loading;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace PromptToPrompt.Models;

/// <summary>CrossAttnDownBlock2D (with attentions) or DownBlock2D (without).</summary>
public sealed class UNetDownBlock : nn.Module
{
    public readonly ModuleList<ResnetBlock2D> resnets;
    public readonly ModuleList<Transformer2DModel>? attentions;
    readonly ModuleList<Downsample2D>? downsamplers;

    public UNetDownBlock(UNetConfig c, int inChannels, int outChannels, int heads, int depth, bool cross, bool downsample, AttentionHookSlot slot)
        : base("down_block")
    {
        resnets = nn.ModuleList(Enumerable.Range(0, c.LayersPerBlock)
            .Select(i => new ResnetBlock2D(i == 0 ? inChannels : outChannels, outChannels, c.TimeEmbedDim, c.NormNumGroups, c.NormEps)).ToArray());
        if (cross)
            attentions = nn.ModuleList(Enumerable.Range(0, c.LayersPerBlock)
                .Select(_ => new Transformer2DModel(outChannels, heads, c.CrossAttentionDim, c.NormNumGroups, c.UseLinearProjection, c.UpcastAttention, slot, depth)).ToArray());
        if (downsample) downsamplers = nn.ModuleList(new Downsample2D(outChannels, c.DownsamplePadding));
        RegisterComponents();
    }

    /// <summary>Runs the block; appends every output the up path will read as a skip connection.</summary>
    public Tensor forward(Tensor h, Tensor temb, Tensor context, List<Tensor> skips)
    {
        for (int i = 0; i < resnets.Count; i++)
        {
            h = resnets[i].forward(h, temb);
            if (attentions is not null) h = attentions[i].forward(h, context);
            skips.Add(h);
        }
        if (downsamplers is not null)
        {
            h = downsamplers[0].forward(h);
            skips.Add(h);
        }
        return h;
    }
}

/// <summary>UNetMidBlock2DCrossAttn: resnet, (transformer, resnet).</summary>
public sealed class UNetMidBlock : nn.Module
{
    public readonly ModuleList<ResnetBlock2D> resnets;
    public readonly ModuleList<Transformer2DModel> attentions;

    public UNetMidBlock(UNetConfig c, int channels, int heads, AttentionHookSlot slot) : base("mid_block")
    {
        resnets = nn.ModuleList(Enumerable.Range(0, 2)
            .Select(_ => new ResnetBlock2D(channels, channels, c.TimeEmbedDim, c.NormNumGroups, c.NormEps, c.MidBlockScaleFactor)).ToArray());
        attentions = nn.ModuleList(new Transformer2DModel(channels, heads, c.CrossAttentionDim, c.NormNumGroups, c.UseLinearProjection, c.UpcastAttention, slot,
                                                          c.TransformerDepth(c.BlockOutChannels.Length - 1)));
        RegisterComponents();
    }

    public Tensor forward(Tensor h, Tensor temb, Tensor context)
    {
        h = resnets[0].forward(h, temb);
        for (int i = 0; i < attentions.Count; i++)
        {
            h = attentions[i].forward(h, context);
            h = resnets[i + 1].forward(h, temb);
        }
        return h;
    }
}

/// <summary>CrossAttnUpBlock2D (with attentions) or UpBlock2D (without).</summary>
public sealed class UNetUpBlock : nn.Module
{
    public readonly ModuleList<ResnetBlock2D> resnets;
    public readonly ModuleList<Transformer2DModel>? attentions;
    readonly ModuleList<Upsample2D>? upsamplers;

    public UNetUpBlock(UNetConfig c, int inChannels, int outChannels, int prevOutChannels, int heads, int depth, bool cross, bool upsample, AttentionHookSlot slot)
        : base("up_block")
    {
        int layers = c.LayersPerBlock + 1;
        resnets = nn.ModuleList(Enumerable.Range(0, layers).Select(i =>
        {
            int skip = i == layers - 1 ? inChannels : outChannels;
            int resIn = i == 0 ? prevOutChannels : outChannels;
            return new ResnetBlock2D(resIn + skip, outChannels, c.TimeEmbedDim, c.NormNumGroups, c.NormEps);
        }).ToArray());
        if (cross)
            attentions = nn.ModuleList(Enumerable.Range(0, layers)
                .Select(_ => new Transformer2DModel(outChannels, heads, c.CrossAttentionDim, c.NormNumGroups, c.UseLinearProjection, c.UpcastAttention, slot, depth)).ToArray());
        if (upsample) upsamplers = nn.ModuleList(new Upsample2D(outChannels));
        RegisterComponents();
    }

    /// <summary>Consumes skip connections from the end of <paramref name="skips"/>; upsamples to <paramref name="upsampleSize"/>.</summary>
    public Tensor forward(Tensor h, Tensor temb, Tensor context, List<Tensor> skips, long[]? upsampleSize)
    {
        for (int i = 0; i < resnets.Count; i++)
        {
            var skip = skips[^1];
            skips.RemoveAt(skips.Count - 1);
            h = resnets[i].forward(cat([h, skip], 1), temb);
            if (attentions is not null) h = attentions[i].forward(h, context);
        }
        if (upsamplers is not null) h = upsamplers[0].forward(h, upsampleSize);
        return h;
    }
}

/// <summary>
/// diffusers UNet2DConditionModel for Stable Diffusion 1.x / 2.x and SDXL, built from its config.json. Parameter names are
/// the diffusers checkpoint keys. Every attention layer shares <see cref="Hooks"/>, through which an attention
/// controller sees (and may edit) attention probabilities.
/// </summary>
public sealed class UNet2DConditionModel : nn.Module
{
    readonly Conv2d conv_in;
    readonly TimestepEmbedding time_embedding;
    readonly TimestepEmbedding? add_embedding;
    public readonly ModuleList<UNetDownBlock> down_blocks;
    public readonly UNetMidBlock mid_block;
    public readonly ModuleList<UNetUpBlock> up_blocks;
    readonly Norm32 conv_norm_out;
    readonly Conv2d conv_out;

    public UNetConfig Config { get; }
    public AttentionHookSlot Hooks { get; } = new();
    /// <summary>Every attention layer in forward order (the order the reference's controller sees them).</summary>
    public IReadOnlyList<AttentionLayer> AttentionLayers { get; }

    public UNet2DConditionModel(UNetConfig c) : base("unet")
    {
        Config = c;
        var ch = c.BlockOutChannels;
        int n = ch.Length;
        conv_in = nn.Conv2d(c.InChannels, ch[0], 3, padding: 1);
        time_embedding = new TimestepEmbedding(ch[0], c.TimeEmbedDim);
        if (c.TextTimeConditioning) add_embedding = new TimestepEmbedding(c.ProjectionClassEmbeddingsInputDim, c.TimeEmbedDim);

        var down = new List<UNetDownBlock>();
        int output = ch[0];
        for (int i = 0; i < n; i++)
        {
            int input = output;
            output = ch[i];
            down.Add(new UNetDownBlock(c, input, output, c.HeadsPerBlock[i], c.TransformerDepth(i), c.DownBlockTypes[i] == "CrossAttnDownBlock2D", i < n - 1, Hooks));
        }
        down_blocks = nn.ModuleList(down.ToArray());
        mid_block = new UNetMidBlock(c, ch[^1], c.HeadsPerBlock[^1], Hooks);

        var reversed = ch.Reverse().ToArray();
        var reversedHeads = c.HeadsPerBlock.Reverse().ToArray();
        var up = new List<UNetUpBlock>();
        output = reversed[0];
        for (int i = 0; i < n; i++)
        {
            int prev = output;
            output = reversed[i];
            int input = reversed[Math.Min(i + 1, n - 1)];
            up.Add(new UNetUpBlock(c, input, output, prev, reversedHeads[i], c.TransformerDepth(n - 1 - i), c.UpBlockTypes[i] == "CrossAttnUpBlock2D", i < n - 1, Hooks));
        }
        up_blocks = nn.ModuleList(up.ToArray());
        conv_norm_out = new Norm32(c.NormNumGroups, ch[0], c.NormEps);
        conv_out = nn.Conv2d(ch[0], c.OutChannels, 3, padding: 1);
        RegisterComponents();
        AttentionLayers = NameAttentionLayers();
    }

    List<AttentionLayer> NameAttentionLayers()
    {
        var layers = new List<AttentionLayer>();
        var counts = new Dictionary<(UNetPlace, bool), int>();
        void Add(string prefix, UNetPlace place, int level, ModuleList<Transformer2DModel>? transformers)
        {
            if (transformers is null) return;
            for (int j = 0; j < transformers.Count; j++)
                for (int k = 0; k < transformers[j].transformer_blocks.Count; k++)
                {
                    var block = transformers[j].transformer_blocks[k];
                    foreach (var (attn, name, cross) in new[] { (block.attn1, "attn1", false), (block.attn2, "attn2", true) })
                    {
                        int index = counts.GetValueOrDefault((place, cross));
                        counts[(place, cross)] = index + 1;
                        attn.Layer = new AttentionLayer($"{prefix}.attentions.{j}.transformer_blocks.{k}.{name}", place, cross, index,
                            attn.Heads, level, attn.HeadDim, attn.Upcast);
                        layers.Add(attn.Layer);
                    }
                }
        }
        int deepest = down_blocks.Count - 1;
        for (int i = 0; i < down_blocks.Count; i++) Add($"down_blocks.{i}", UNetPlace.Down, i, down_blocks[i].attentions);
        Add("mid_block", UNetPlace.Mid, deepest, mid_block.attentions);
        for (int i = 0; i < up_blocks.Count; i++) Add($"up_blocks.{i}", UNetPlace.Up, deepest - i, up_blocks[i].attentions);
        return layers;
    }

    /// <summary>
    /// diffusers' text_time embedding: <c>add_embedding(concat(text_embeds, add_time_proj(time_ids).reshape(B, -1)))</c>,
    /// each time id as <see cref="UNetConfig.AdditionTimeEmbedDim"/> sinusoidal features computed in float32, id-major.
    /// </summary>
    public Tensor AddedEmbedding(TextTimeConditioning added)
    {
        using var scope = NewDisposeScope();
        var device = added.TextEmbeds.device;
        long batch = added.TimeIds.shape[0];
        var ids = TimestepEmbedding.Sinusoidal(added.TimeIds.to(ScalarType.Float32).to(device).flatten(), Config.AdditionTimeEmbedDim,
                                               Config.FlipSinToCos, Config.FreqShift).reshape(batch, -1);
        var features = cat([added.TextEmbeds.to(ScalarType.Float32), ids], -1);
        var dtype = time_embedding.parameters().First().dtype;
        return add_embedding!.forward(features.to(dtype)).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// The grid of queries <paramref name="layer"/> sees for latents of <paramref name="latentHeight"/> x
    /// <paramref name="latentWidth"/>: each level down applies the stride-2 downsampling convolution's size rule
    /// (the up blocks upsample back to the same sizes).
    /// </summary>
    public (int Height, int Width) QueryGrid(AttentionLayer layer, int latentHeight, int latentWidth) => QueryGrid(layer.Level, latentHeight, latentWidth);

    /// <summary>The grid of UNet level <paramref name="level"/> (0: the latent's own) for latents of the given size.</summary>
    public (int Height, int Width) QueryGrid(int level, int latentHeight, int latentWidth)
    {
        int Down(int size) => (size + 2 * Config.DownsamplePadding - 3) / 2 + 1;
        for (int i = 0; i < level; i++) (latentHeight, latentWidth) = (Down(latentHeight), Down(latentWidth));
        return (latentHeight, latentWidth);
    }

    /// <summary>Predicts the noise (or v) for <paramref name="sample"/> [B, C, h, w] at <paramref name="timestep"/>.</summary>
    /// <param name="timestep">A scalar or [B] tensor (integer or float), as the scheduler gives it.</param>
    /// <param name="context">[B, tokens, cross_attention_dim] text embeddings.</param>
    public Tensor forward(Tensor sample, Tensor timestep, Tensor context) => forward(sample, timestep, context, null);

    /// <param name="added">SDXL's added conditioning (needed exactly when the config has <c>addition_embed_type: text_time</c>).</param>
    public Tensor forward(Tensor sample, Tensor timestep, Tensor context, TextTimeConditioning? added)
    {
        if (Config.TextTimeConditioning != added is not null)
            throw new InvalidOperationException(Config.TextTimeConditioning ? "This UNet (SDXL) needs the pooled text embedding and the time ids." : "This UNet takes no added conditioning.");
        using var scope = NewDisposeScope();
        long batch = sample.shape[0];
        var t = timestep.dim() == 0 ? timestep.reshape(1).expand(batch) : timestep;
        var tProj = TimestepEmbedding.Sinusoidal(t.to(sample.device), Config.BlockOutChannels[0], Config.FlipSinToCos, Config.FreqShift);
        var temb = time_embedding.forward(tProj.to(sample.dtype));
        if (added is not null) temb = temb + AddedEmbedding(added);

        if (Config.CenterInputSample) sample = 2 * sample - 1.0;
        var h = conv_in.forward(sample);
        var skips = new List<Tensor> { h };
        foreach (var block in down_blocks) h = block.forward(h, temb, context, skips);
        h = mid_block.forward(h, temb, context);
        for (int i = 0; i < up_blocks.Count; i++)
        {
            // Upsample to the size of the skip connection the next block reads, so sizes that are not a multiple
            // of 2^levels (any multiple of 8 pixels) work as in diffusers.
            int consumed = up_blocks[i].resnets.Count;
            long[]? size = i < up_blocks.Count - 1 ? skips[^(consumed + 1)].shape[2..] : null;
            h = up_blocks[i].forward(h, temb, context, skips, size);
        }
        h = conv_out.forward(F.silu(conv_norm_out.forward(h)));
        return h.MoveToOuterDisposeScope();
    }
}

/// <summary>SDXL's added conditioning: the pooled text embedding [B, P] and the time ids [B, 6] (original size, crop top-left, target size; heights first).</summary>
public sealed record TextTimeConditioning(Tensor TextEmbeds, Tensor TimeIds)
{
    /// <summary>Numbers in a row of time ids.</summary>
    public const int TimeIdCount = 6;

    /// <summary>diffusers' <c>_get_add_time_ids</c>: [1, 6] float32 of the original size, the crop's top-left corner and the target size, each (height, width).</summary>
    public static Tensor TimeIdsOf((int Height, int Width) original, (int Top, int Left) crop, (int Height, int Width) target) =>
        tensor(new float[] { original.Height, original.Width, crop.Top, crop.Left, target.Height, target.Width }, [1, 6]);
}

/// <summary>Sinusoidal timestep features followed by linear_1, SiLU, linear_2.</summary>
public sealed class TimestepEmbedding : nn.Module<Tensor, Tensor>
{
    readonly Linear linear_1, linear_2;

    public TimestepEmbedding(int inChannels, int dim) : base("time_embedding")
    {
        linear_1 = nn.Linear(inChannels, dim);
        linear_2 = nn.Linear(dim, dim);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)
    {
        using var h = F.silu(linear_1.forward(x));
        return linear_2.forward(h);
    }

    /// <summary>diffusers <c>get_timestep_embedding</c> in float32: [B, dim].</summary>
    public static Tensor Sinusoidal(Tensor timesteps, int dim, bool flipSinToCos, double downscaleFreqShift, int maxPeriod = 10000)
    {
        using var scope = NewDisposeScope();
        int half = dim / 2;
        var exponent = -Math.Log(maxPeriod) * arange(0, half, ScalarType.Float32, timesteps.device) / (half - downscaleFreqShift);
        var freqs = exp(exponent);
        var args = timesteps.to(ScalarType.Float32).unsqueeze(1) * freqs.unsqueeze(0);
        var emb = flipSinToCos ? cat([cos(args), sin(args)], -1) : cat([sin(args), cos(args)], -1);
        if (dim % 2 == 1) emb = F.pad(emb, [0, 1, 0, 0]);
        return emb.MoveToOuterDisposeScope();
    }
}
