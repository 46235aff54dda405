using static TorchSharp.torch;

namespace PromptToPrompt.Imaging;

/// <summary>
/// A cheap look at latents while they are sampled: a per-model affine map from the latent channels to RGB at the
/// latent's resolution (like AUTOMATIC1111's "approx cheap" previews, whose fixed coefficients fit SD 1.x only). The
/// map is learned by least squares from finished runs (final latents beside their decoded images), so it fits whatever
/// VAE the model has; before the first run there is no preview.
/// </summary>
public sealed class LatentPreview
{
    readonly object _gate = new();
    double[,]? _xtx; // [C+1, C+1]: sums of z z^T over latent pixels (z with a trailing 1)
    double[,]? _xty; // [C+1, 3]
    double[,]? _map; // [C+1, 3]

    public bool Ready { get { lock (_gate) return _map is not null; } }

    /// <summary>Adds finished latents [N, C, h, w] and their images (one per row, h*s x w*s pixels) to the fit.</summary>
    public void Learn(Tensor latents, IReadOnlyList<RgbImage> images)
    {
        using var scope = NewDisposeScope();
        var z = latents.detach().to(ScalarType.Float64).cpu();
        long n = z.shape[0], c = z.shape[1], h = z.shape[2], w = z.shape[3];
        var values = z.data<double>().ToArray();
        lock (_gate)
        {
            _xtx ??= new double[c + 1, c + 1];
            _xty ??= new double[c + 1, 3];
            var v = new double[c + 1];
            for (int b = 0; b < n && b < images.Count; b++)
            {
                var img = images[b];
                int s = img.Width / (int)w;
                if (s < 1 || img.Height / s != h) continue;
                for (int y = 0; y < h; y++)
                    for (int x = 0; x < w; x++)
                    {
                        for (int k = 0; k < c; k++) v[k] = values[((b * c + k) * h + y) * w + x];
                        v[c] = 1;
                        var rgb = BlockMean(img, x * s, y * s, s);
                        for (int i = 0; i <= c; i++)
                        {
                            for (int j = 0; j <= c; j++) _xtx[i, j] += v[i] * v[j];
                            for (int j = 0; j < 3; j++) _xty[i, j] += v[i] * rgb[j];
                        }
                    }
            }
            _map = Solve(_xtx, _xty);
        }
    }

    /// <summary>The preview of latents [C, h, w] at the latent's resolution, or null before anything was learned.</summary>
    public RgbImage? Render(Tensor latent)
    {
        double[,] map;
        lock (_gate)
        {
            if (_map is null) return null;
            map = _map;
        }
        using var scope = NewDisposeScope();
        var z = latent.detach().to(ScalarType.Float64).cpu();
        int c = (int)z.shape[0], h = (int)z.shape[1], w = (int)z.shape[2];
        if (c + 1 != map.GetLength(0)) return null;
        var values = z.data<double>().ToArray();
        var pixels = new byte[h * w * 3];
        for (int p = 0; p < h * w; p++)
            for (int j = 0; j < 3; j++)
            {
                double sum = map[c, j];
                for (int k = 0; k < c; k++) sum += values[k * h * w + p] * map[k, j];
                pixels[p * 3 + j] = (byte)Math.Clamp(Math.Round(sum), 0, 255);
            }
        return new RgbImage(w, h, pixels);
    }

    static double[] BlockMean(RgbImage img, int x0, int y0, int s)
    {
        var sum = new double[3];
        for (int y = y0; y < y0 + s; y++)
            for (int x = x0; x < x0 + s; x++)
                for (int j = 0; j < 3; j++) sum[j] += img.Pixels[(y * img.Width + x) * 3 + j];
        for (int j = 0; j < 3; j++) sum[j] /= s * s;
        return sum;
    }

    /// <summary>Solves (A + eps I) X = B by Gauss-Jordan elimination; A is symmetric positive semi-definite.</summary>
    static double[,] Solve(double[,] a, double[,] b)
    {
        int n = a.GetLength(0), m = b.GetLength(1);
        var aa = new double[n, n + m];
        double scale = 0;
        for (int i = 0; i < n; i++) scale = Math.Max(scale, a[i, i]);
        for (int i = 0; i < n; i++)
        {
            for (int j = 0; j < n; j++) aa[i, j] = a[i, j] + (i == j ? 1e-9 * scale + 1e-12 : 0);
            for (int j = 0; j < m; j++) aa[i, n + j] = b[i, j];
        }
        for (int col = 0; col < n; col++)
        {
            int pivot = col;
            for (int r = col + 1; r < n; r++) if (Math.Abs(aa[r, col]) > Math.Abs(aa[pivot, col])) pivot = r;
            for (int j = 0; j < n + m; j++) (aa[col, j], aa[pivot, j]) = (aa[pivot, j], aa[col, j]);
            double d = aa[col, col];
            for (int j = 0; j < n + m; j++) aa[col, j] /= d;
            for (int r = 0; r < n; r++)
            {
                if (r == col || aa[r, col] == 0) continue;
                double f = aa[r, col];
                for (int j = 0; j < n + m; j++) aa[r, j] -= f * aa[col, j];
            }
        }
        var x = new double[n, m];
        for (int i = 0; i < n; i++) for (int j = 0; j < m; j++) x[i, j] = aa[i, n + j];
        return x;
    }
}
