using PromptToPrompt.Loading;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace PromptToPrompt.Models;

/// <summary>
/// Single-head spatial self-attention of the VAE mid block, with diffusers' original parameter names
/// (<c>group_norm, query, key, value, proj_attn</c>); newer names are mapped on loading.
/// </summary>
public sealed class VaeAttentionBlock : nn.Module<Tensor, Tensor>
{
    readonly Norm32 group_norm;
    readonly Linear query, key, value, proj_attn;

    public VaeAttentionBlock(int channels, int groups) : base("vae_attention")
    {
        group_norm = new Norm32(groups, channels, 1e-6);
        query = nn.Linear(channels, channels);
        key = nn.Linear(channels, channels);
        value = nn.Linear(channels, channels);
        proj_attn = nn.Linear(channels, channels);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)
    {
        using var scope = NewDisposeScope();
        long b = x.shape[0], c = x.shape[1], h = x.shape[2], w = x.shape[3];
        var hidden = group_norm.forward(x).view(b, c, h * w).transpose(1, 2);
        // One head of dimension C: the fused kernel's default scale C^-0.5 equals the reference's (q*C^-0.25)(k*C^-0.25).
        var q = query.forward(hidden).unsqueeze(1);
        var k = key.forward(hidden).unsqueeze(1);
        var v = value.forward(hidden).unsqueeze(1);
        var o = Attention.Fused(q, k, v, upcast: true).squeeze(1);
        o = proj_attn.forward(o).transpose(1, 2).reshape(b, c, h, w);
        return (o + x).MoveToOuterDisposeScope();
    }
}

/// <summary>UNetMidBlock2D of the VAE: resnet, attention, resnet.</summary>
public sealed class VaeMidBlock : nn.Module<Tensor, Tensor>
{
    readonly ModuleList<ResnetBlock2D> resnets;
    readonly ModuleList<VaeAttentionBlock> attentions;

    public VaeMidBlock(int channels, int groups) : base("mid_block")
    {
        resnets = nn.ModuleList(new ResnetBlock2D(channels, channels, null, groups, 1e-6), new ResnetBlock2D(channels, channels, null, groups, 1e-6));
        attentions = nn.ModuleList(new VaeAttentionBlock(channels, groups));
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)
    {
        using var scope = NewDisposeScope();
        var h = resnets[0].forward(x, null);
        h = attentions[0].forward(h);
        return resnets[1].forward(h, null).MoveToOuterDisposeScope();
    }
}

/// <summary>DownEncoderBlock2D / UpDecoderBlock2D: resnets, then an optional down- or upsampler.</summary>
public sealed class VaeBlock : nn.Module<Tensor, Tensor>
{
    readonly ModuleList<ResnetBlock2D> resnets;
    readonly ModuleList<Downsample2D>? downsamplers;
    readonly ModuleList<Upsample2D>? upsamplers;

    public VaeBlock(int inChannels, int outChannels, int layers, int groups, bool downsample, bool upsample) : base("vae_block")
    {
        resnets = nn.ModuleList(Enumerable.Range(0, layers)
            .Select(i => new ResnetBlock2D(i == 0 ? inChannels : outChannels, outChannels, null, groups, 1e-6)).ToArray());
        if (downsample) downsamplers = nn.ModuleList(new Downsample2D(outChannels, padding: 0));
        if (upsample) upsamplers = nn.ModuleList(new Upsample2D(outChannels));
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)
    {
        using var scope = NewDisposeScope();
        var h = x;
        foreach (var r in resnets) h = r.forward(h, null);
        if (downsamplers is not null) h = downsamplers[0].forward(h);
        if (upsamplers is not null) h = upsamplers[0].forward(h);
        return h.MoveToOuterDisposeScope();
    }
}

public sealed class VaeEncoder : nn.Module<Tensor, Tensor>
{
    readonly Conv2d conv_in, conv_out;
    readonly ModuleList<VaeBlock> down_blocks;
    readonly VaeMidBlock mid_block;
    readonly Norm32 conv_norm_out;

    public VaeEncoder(VaeConfig c) : base("encoder")
    {
        var ch = c.BlockOutChannels;
        conv_in = nn.Conv2d(c.InChannels, ch[0], 3, padding: 1);
        down_blocks = nn.ModuleList(Enumerable.Range(0, ch.Length)
            .Select(i => new VaeBlock(i == 0 ? ch[0] : ch[i - 1], ch[i], c.LayersPerBlock, c.NormNumGroups, i < ch.Length - 1, false)).ToArray());
        mid_block = new VaeMidBlock(ch[^1], c.NormNumGroups);
        conv_norm_out = new Norm32(c.NormNumGroups, ch[^1], 1e-6);
        conv_out = nn.Conv2d(ch[^1], 2 * c.LatentChannels, 3, padding: 1);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)
    {
        using var scope = NewDisposeScope();
        var h = conv_in.forward(x);
        foreach (var b in down_blocks) h = b.forward(h);
        h = mid_block.forward(h);
        return conv_out.forward(F.silu(conv_norm_out.forward(h))).MoveToOuterDisposeScope();
    }
}

public sealed class VaeDecoder : nn.Module<Tensor, Tensor>
{
    readonly Conv2d conv_in, conv_out;
    readonly VaeMidBlock mid_block;
    readonly ModuleList<VaeBlock> up_blocks;
    readonly Norm32 conv_norm_out;

    public VaeDecoder(VaeConfig c) : base("decoder")
    {
        var rev = c.BlockOutChannels.Reverse().ToArray();
        conv_in = nn.Conv2d(c.LatentChannels, rev[0], 3, padding: 1);
        mid_block = new VaeMidBlock(rev[0], c.NormNumGroups);
        up_blocks = nn.ModuleList(Enumerable.Range(0, rev.Length)
            .Select(i => new VaeBlock(i == 0 ? rev[0] : rev[i - 1], rev[i], c.LayersPerBlock + 1, c.NormNumGroups, false, i < rev.Length - 1)).ToArray());
        conv_norm_out = new Norm32(c.NormNumGroups, rev[^1], 1e-6);
        conv_out = nn.Conv2d(rev[^1], c.OutChannels, 3, padding: 1);
        RegisterComponents();
    }

    public override Tensor forward(Tensor z)
    {
        using var scope = NewDisposeScope();
        var h = mid_block.forward(conv_in.forward(z));
        foreach (var b in up_blocks) h = b.forward(h);
        return conv_out.forward(F.silu(conv_norm_out.forward(h))).MoveToOuterDisposeScope();
    }
}

/// <summary>The Stable Diffusion VAE (diffusers AutoencoderKL).</summary>
public sealed class AutoencoderKL : nn.Module
{
    readonly VaeEncoder encoder;
    readonly VaeDecoder decoder;
    readonly Conv2d quant_conv, post_quant_conv;

    public VaeConfig Config { get; }

    public AutoencoderKL(VaeConfig c) : base("vae")
    {
        Config = c;
        encoder = new VaeEncoder(c);
        decoder = new VaeDecoder(c);
        quant_conv = nn.Conv2d(2 * c.LatentChannels, 2 * c.LatentChannels, 1);
        post_quant_conv = nn.Conv2d(c.LatentChannels, c.LatentChannels, 1);
        RegisterComponents();
    }

    /// <summary>Posterior mean and standard deviation of an image in [-1, 1] (NCHW), unscaled.</summary>
    public (Tensor Mean, Tensor Std) Encode(Tensor image)
    {
        using var scope = NewDisposeScope();
        var moments = quant_conv.forward(encoder.forward(image)).chunk(2, 1);
        var logvar = moments[1].clamp(-30.0, 20.0);
        var std = exp(0.5 * logvar);
        return (moments[0].MoveToOuterDisposeScope(), std.MoveToOuterDisposeScope());
    }

    /// <summary>Decodes unscaled latents (divide the diffusion latents by <see cref="VaeConfig.ScalingFactor"/> first).</summary>
    public Tensor Decode(Tensor z)
    {
        using var h = post_quant_conv.forward(z);
        return decoder.forward(h);
    }
}
