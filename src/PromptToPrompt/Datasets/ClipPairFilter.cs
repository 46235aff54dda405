using PromptToPrompt.Imaging;
using PromptToPrompt.Models;
using static TorchSharp.torch;

namespace PromptToPrompt.Datasets;

/// <summary>The InstructPix2Pix filter's thresholds (the authors' defaults).</summary>
public sealed record ClipThresholds(double Caption = 0.2, double Image = 0.7, double Direction = 0.2);

/// <summary>
/// The InstructPix2Pix CLIP filter (the authors' <c>ClipSimilarity</c>): unit image features of both images, unit text
/// features of both captions; image-caption similarity of each image (≥ <see cref="ClipThresholds.Caption"/>), image-image
/// similarity (≥ Image), and directional similarity cos(f_img1 − f_img0, f_txt1 − f_txt0) (≥ Direction), which ranks
/// the kept pairs.
/// </summary>
public sealed class ClipPairFilter(ClipModel clip, ClipThresholds thresholds)
{
    public ClipModel Model => clip;
    public ClipThresholds Thresholds => thresholds;

    /// <summary>The four similarities of the authors' filter for one pair.</summary>
    public (double Caption0, double Caption1, double Direction, double Image) Similarities(Triplet triplet, RgbImage source, RgbImage edit)
    {
        using var scope = NewDisposeScope();
        Tensor ToUnit(RgbImage image) => tensor(image.Pixels, [1, image.Height, image.Width, 3]).permute(0, 3, 1, 2).to(ScalarType.Float32) / 255f;
        var images = clip.EncodeImages(cat([ToUnit(source), ToUnit(edit)], 0));
        var texts = clip.EncodeTexts([triplet.Input, triplet.Output]);
        double Cos(Tensor a, Tensor b) => nn.functional.cosine_similarity(a.unsqueeze(0), b.unsqueeze(0)).item<float>();
        return (Cos(images[0], texts[0]), Cos(images[1], texts[1]), Cos(images[1] - images[0], texts[1] - texts[0]), Cos(images[0], images[1]));
    }

    public PairScore Score(Triplet triplet, RgbImage source, RgbImage edit)
    {
        var (c0, c1, direction, image) = Similarities(triplet, source, edit);
        bool keep = c0 >= thresholds.Caption && c1 >= thresholds.Caption && image >= thresholds.Image && direction >= thresholds.Direction;
        return new PairScore(keep, direction, new Dictionary<string, double>
        {
            ["clip_sim_0"] = Math.Round(c0, 6), ["clip_sim_1"] = Math.Round(c1, 6), ["clip_sim_dir"] = Math.Round(direction, 6), ["clip_sim_image"] = Math.Round(image, 6),
        });
    }
}
