using System.Text.Json;
using System.Text.Json.Nodes;
using PromptToPrompt.Loading;
using PromptToPrompt.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace PromptToPrompt.Training;

/// <summary>Writes models in the diffusers folder layout (configs + safetensors), loadable by this project and by diffusers.</summary>
public static class ModelFolderWriter
{
    public static JsonObject UNetJson(UNetConfig c) => new()
    {
        ["_class_name"] = "UNet2DConditionModel", ["_diffusers_version"] = "0.3.0", ["act_fn"] = "silu",
        ["attention_head_dim"] = Array(c.HeadsPerBlock), ["block_out_channels"] = Array(c.BlockOutChannels),
        ["center_input_sample"] = c.CenterInputSample, ["cross_attention_dim"] = c.CrossAttentionDim,
        ["down_block_types"] = Array(c.DownBlockTypes), ["downsample_padding"] = c.DownsamplePadding,
        ["flip_sin_to_cos"] = c.FlipSinToCos, ["freq_shift"] = c.FreqShift, ["in_channels"] = c.InChannels,
        ["layers_per_block"] = c.LayersPerBlock, ["mid_block_scale_factor"] = c.MidBlockScaleFactor, ["norm_eps"] = c.NormEps,
        ["norm_num_groups"] = c.NormNumGroups, ["out_channels"] = c.OutChannels, ["sample_size"] = c.SampleSize,
        ["up_block_types"] = Array(c.UpBlockTypes), ["use_linear_projection"] = c.UseLinearProjection, ["upcast_attention"] = c.UpcastAttention,
    };

    public static JsonObject VaeJson(VaeConfig c) => new()
    {
        ["_class_name"] = "AutoencoderKL", ["_diffusers_version"] = "0.3.0", ["act_fn"] = "silu",
        ["block_out_channels"] = Array(c.BlockOutChannels),
        ["down_block_types"] = Array(Enumerable.Repeat("DownEncoderBlock2D", c.BlockOutChannels.Length).ToArray()),
        ["up_block_types"] = Array(Enumerable.Repeat("UpDecoderBlock2D", c.BlockOutChannels.Length).ToArray()),
        ["in_channels"] = c.InChannels, ["out_channels"] = c.OutChannels, ["latent_channels"] = c.LatentChannels,
        ["layers_per_block"] = c.LayersPerBlock, ["norm_num_groups"] = c.NormNumGroups, ["sample_size"] = c.SampleSize,
        ["scaling_factor"] = c.ScalingFactor,
    };

    public static JsonObject TextJson(ClipTextConfig c) => new()
    {
        ["architectures"] = new JsonArray("CLIPTextModel"), ["model_type"] = "clip_text_model", ["hidden_act"] = c.HiddenAct,
        ["hidden_size"] = c.HiddenSize, ["intermediate_size"] = c.IntermediateSize, ["num_hidden_layers"] = c.NumLayers,
        ["num_attention_heads"] = c.NumHeads, ["max_position_embeddings"] = c.MaxPositions, ["layer_norm_eps"] = c.LayerNormEps,
        ["vocab_size"] = c.VocabSize, ["torch_dtype"] = "float32",
    };

    public static JsonObject SchedulerJson(SchedulerConfig c) => new()
    {
        ["_class_name"] = c.ClassName, ["_diffusers_version"] = "0.3.0", ["beta_start"] = c.BetaStart, ["beta_end"] = c.BetaEnd,
        ["beta_schedule"] = c.BetaSchedule, ["num_train_timesteps"] = c.NumTrainTimesteps, ["skip_prk_steps"] = c.SkipPrkSteps,
        ["steps_offset"] = c.StepsOffset, ["set_alpha_to_one"] = c.SetAlphaToOne, ["clip_sample"] = c.ClipSample,
        ["prediction_type"] = c.PredictionType,
    };

    static JsonArray Array<T>(T[] values) => new(values.Select(v => JsonValue.Create(v)!).ToArray<JsonNode?>());

    static readonly JsonSerializerOptions Indented = new() { WriteIndented = true };

    public static void WriteJson(string path, JsonNode node)
    {
        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        var text = node.ToJsonString(Indented);
        AtomicFile.Write(path, s => s.Write(System.Text.Encoding.UTF8.GetBytes(text)));
    }

    /// <summary>Saves a module's parameters (keys = module paths) in <paramref name="dtype"/>.</summary>
    public static void SaveWeights(string path, nn.Module module, ScalarType dtype)
    {
        using var scope = NewDisposeScope();
        var tensors = module.named_parameters().ToDictionary(p => p.name, p => p.parameter.detach().to(dtype).cpu());
        SafetensorsFile.Write(path, tensors);
    }

    /// <summary>Writes model_index.json and every component's config and weights (fp16 weights are written as the fp16 variant).</summary>
    public static void Save(string folder, ClipTextModel text, UNet2DConditionModel unet, AutoencoderKL vae, SchedulerConfig scheduler, ScalarType dtype,
                            string pipelineClass = "StableDiffusionPipeline")
    {
        string variant = dtype == ScalarType.Float16 ? ".fp16" : "";
        WriteJson(Path.Combine(folder, "model_index.json"), new JsonObject
        {
            ["_class_name"] = pipelineClass, ["_diffusers_version"] = "0.3.0",
            ["scheduler"] = new JsonArray("diffusers", scheduler.ClassName), ["text_encoder"] = new JsonArray("transformers", "CLIPTextModel"),
            ["tokenizer"] = new JsonArray("transformers", "CLIPTokenizer"), ["unet"] = new JsonArray("diffusers", "UNet2DConditionModel"),
            ["vae"] = new JsonArray("diffusers", "AutoencoderKL"),
        });
        WriteJson(Path.Combine(folder, "text_encoder", "config.json"), TextJson(text.Config));
        SaveWeights(Path.Combine(folder, "text_encoder", $"model{variant}.safetensors"), text, dtype);
        WriteJson(Path.Combine(folder, "unet", "config.json"), UNetJson(unet.Config));
        SaveWeights(Path.Combine(folder, "unet", $"diffusion_pytorch_model{variant}.safetensors"), unet, dtype);
        WriteJson(Path.Combine(folder, "vae", "config.json"), VaeJson(vae.Config));
        SaveWeights(Path.Combine(folder, "vae", $"diffusion_pytorch_model{variant}.safetensors"), vae, dtype);
        WriteJson(Path.Combine(folder, "scheduler", "scheduler_config.json"), SchedulerJson(scheduler));
    }

    /// <summary>Copies a tokenizer folder's files (vocab, merges, configs) into <paramref name="to"/>.</summary>
    public static void CopyTokenizer(string from, string to)
    {
        Directory.CreateDirectory(to);
        foreach (var file in Directory.GetFiles(from))
        {
            var bytes = File.ReadAllBytes(file);
            AtomicFile.Write(Path.Combine(to, Path.GetFileName(file)), s => s.Write(bytes));
        }
    }
}
