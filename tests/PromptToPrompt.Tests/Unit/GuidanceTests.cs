using PromptToPrompt.Pipelines;
using PromptToPrompt.Tests.Conformance;
using static TorchSharp.torch;

namespace PromptToPrompt.Tests.Unit;

/// <summary>Attend-and-Excite's per-subject peak on small hand-made maps: the token window and the smoothing.</summary>
[Collection("conformance")]
public class GuidanceTests(ConformanceData data)
{
    [Fact]
    public void The_peak_is_a_smoothed_softmax_over_the_text_window_and_normalize_eot_drops_padding()
    {
        // 4x4 map over 8 positions: start 0, "a" 1, "cat" 2, end 3, padding 4..7. The cat owns pixel (1, 2); padding
        // dominates everywhere else.
        var a = zeros(4, 4, 8);
        a[.., .., 5] = tensor(0.2f);
        a[1, 2, 2] = tensor(0.15f);
        var cond = zeros(1, 8, 32);
        var plain = new AttendAndExcite(data.Model, cond, new ExciteSettings { TokenIndices = [2] }, 10, 16, 16);
        var eot = new AttendAndExcite(data.Model, cond, new ExciteSettings { TokenIndices = [2], NormalizeEot = true }, 10, 16, 16, endToken: 3);
        double Peak(AttendAndExcite e) => e.MaxAttention(a).item<float>();
        // Window 1..6: at (1,2) the cat's share is e^15 / (e^15 + e^20 + 4) ~ 0.0067, then smoothed by the centre weight.
        double centre = 1 / Math.Pow(1 + 2 * Math.Exp(-1), 2);
        double share = Math.Exp(15) / (Math.Exp(15) + Math.Exp(20) + 4);
        Assert.Equal(share * centre + (1 - centre) * (1 / (Math.Exp(20) + 5)), Peak(plain), 4);
        // Window 1..2 ("a", "cat"): the cat takes e^15 / (e^15 + 1) ~ 1 at its pixel, 1/2 elsewhere.
        double cat = Math.Exp(15) / (Math.Exp(15) + 1);
        Assert.Equal(cat * centre + 0.5 * (1 - centre), Peak(eot), 4);
        Assert.Contains("at or after the prompt's end token", Assert.Throws<UserError>(() =>
            new AttendAndExcite(data.Model, cond, new ExciteSettings { TokenIndices = [3], NormalizeEot = true }, 10, 16, 16, endToken: 3)).Message);
    }
}
