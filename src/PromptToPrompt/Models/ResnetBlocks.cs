using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace PromptToPrompt.Models;

/// <summary>Small helpers shared by the model parts.</summary>
static class Ops
{
    /// <summary>Nearest-neighbour upsampling to <paramref name="size"/> (computed in float32 for bfloat16).</summary>
    public static Tensor UpsampleNearest(Tensor x, long[] size)
    {
        if (x.dtype == ScalarType.BFloat16)
            return F.interpolate(x.to(ScalarType.Float32), size, mode: InterpolationMode.Nearest).to(x.dtype);
        return F.interpolate(x, size, mode: InterpolationMode.Nearest);
    }
}

/// <summary>
/// torch.nn.GroupNorm with parameters <c>weight</c> / <c>bias</c>, computed in float32 for half-precision inputs
/// (as diffusers does) and returned in the input dtype.
/// </summary>
public sealed class Norm32 : nn.Module<Tensor, Tensor>
{
    readonly Parameter weight, bias;
    readonly int _groups;
    readonly double _eps;

    public Norm32(int groups, int channels, double eps) : base("group_norm")
    {
        if (channels % groups != 0)
            throw new UserError($"GroupNorm: {channels} channels cannot be split into {groups} groups; the model config is inconsistent.");
        weight = new Parameter(ones(channels));
        bias = new Parameter(zeros(channels));
        _groups = groups;
        _eps = eps;
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)
    {
        if (x.dtype == ScalarType.Float32 && weight.dtype == ScalarType.Float32)
            return F.group_norm(x, _groups, weight, bias, _eps);
        using var scope = NewDisposeScope();
        return F.group_norm(x.to(ScalarType.Float32), _groups, weight.to(ScalarType.Float32), bias.to(ScalarType.Float32), _eps)
            .to(x.dtype).MoveToOuterDisposeScope();
    }
}

/// <summary>diffusers ResnetBlock2D (time embedding added after the first conv; optional 1x1 shortcut).</summary>
public sealed class ResnetBlock2D : nn.Module
{
    readonly Norm32 norm1, norm2;
    readonly Conv2d conv1, conv2;
    readonly Linear? time_emb_proj;
    readonly Conv2d? conv_shortcut;
    readonly double _outputScale;

    public ResnetBlock2D(int inChannels, int outChannels, int? tembChannels, int groups, double eps, double outputScale = 1.0)
        : base("resnet")
    {
        norm1 = new Norm32(groups, inChannels, eps);
        conv1 = nn.Conv2d(inChannels, outChannels, 3, padding: 1);
        if (tembChannels is int t) time_emb_proj = nn.Linear(t, outChannels);
        norm2 = new Norm32(groups, outChannels, eps);
        conv2 = nn.Conv2d(outChannels, outChannels, 3, padding: 1);
        if (inChannels != outChannels) conv_shortcut = nn.Conv2d(inChannels, outChannels, 1);
        _outputScale = outputScale;
        RegisterComponents();
    }

    public Tensor forward(Tensor x, Tensor? temb)
    {
        using var scope = NewDisposeScope();
        var h = conv1.forward(F.silu(norm1.forward(x)));
        if (time_emb_proj is not null && temb is not null)
            h = h + time_emb_proj.forward(F.silu(temb)).unsqueeze(-1).unsqueeze(-1);
        h = conv2.forward(F.silu(norm2.forward(h)));
        var shortcut = conv_shortcut is null ? x : conv_shortcut.forward(x);
        var result = shortcut + h;
        if (_outputScale != 1.0) result = result / _outputScale;
        return result.MoveToOuterDisposeScope();
    }
}

/// <summary>Stride-2 3x3 convolution. The VAE encoder pads (0,1,0,1) and uses padding 0; the UNet uses padding 1.</summary>
public sealed class Downsample2D : nn.Module<Tensor, Tensor>
{
    readonly Conv2d conv;
    readonly bool _asymmetricPad;

    public Downsample2D(int channels, int padding) : base("downsample")
    {
        conv = nn.Conv2d(channels, channels, 3, stride: 2, padding: padding);
        _asymmetricPad = padding == 0;
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)
    {
        if (!_asymmetricPad) return conv.forward(x);
        using var padded = F.pad(x, [0, 1, 0, 1]);
        return conv.forward(padded);
    }
}

/// <summary>Nearest-neighbour x2 (or to an explicit size) followed by a 3x3 convolution.</summary>
public sealed class Upsample2D : nn.Module
{
    readonly Conv2d conv;

    public Upsample2D(int channels) : base("upsample")
    {
        conv = nn.Conv2d(channels, channels, 3, padding: 1);
        RegisterComponents();
    }

    public Tensor forward(Tensor x, long[]? size = null)
    {
        using var up = Ops.UpsampleNearest(x, size ?? [x.shape[2] * 2, x.shape[3] * 2]);
        return conv.forward(up);
    }
}
