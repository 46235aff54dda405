using Microsoft.Playwright;
using PromptToPrompt.Tests.Server;
using PromptToPrompt.Tests.Unit;

namespace PromptToPrompt.Tests.Browser;

/// <summary>
/// The editor page in real Chromium (Debian's <c>chromium</c>, which <c>.ci/run</c> installs; <c>P2P_CHROMIUM</c> names
/// another binary) against a running server on the shipped model. Screenshots go to <c>screenshots/</c> beside the
/// test assembly.
/// </summary>
public sealed class EditorBrowserTests(ITestOutputHelper output) : IAsyncLifetime
{
    const string Source = "a large red circle on a white background";
    readonly RunningEditor _server = new();
    IPlaywright? _playwright;
    IBrowser? _browser;
    IPage _page = null!;

    static string Chromium => Environment.GetEnvironmentVariable("P2P_CHROMIUM") ?? "/usr/bin/chromium";
    static readonly string Shots = Path.Combine(AppContext.BaseDirectory, "screenshots");

    public async Task InitializeAsync()
    {
        Assert.True(File.Exists(Chromium), $"Chromium not found at {Chromium}: install it (apt-get install chromium; .ci/run does) or set P2P_CHROMIUM.");
        _playwright = await Playwright.CreateAsync();
        _browser = await _playwright.Chromium.LaunchAsync(new() { ExecutablePath = Chromium, Headless = true, Args = ["--no-sandbox"] });
        _page = await _browser.NewPageAsync(new() { ViewportSize = new() { Width = 1280, Height = 900 } });
        _page.Console += (_, m) => output.WriteLine($"console: {m.Text}");
        await _page.GotoAsync(_server.Url);
        await Until("() => document.querySelector('#scheduler').options.length > 0", 30);
    }

    public async Task DisposeAsync()
    {
        if (_browser is not null) await _browser.DisposeAsync();
        _playwright?.Dispose();
        _server.Dispose();
    }

    async Task Shot(string name)
    {
        Directory.CreateDirectory(Shots);
        var path = Path.Combine(Shots, name + ".png");
        await _page.ScreenshotAsync(new() { Path = path, FullPage = true });
        output.WriteLine($"screenshot {path}");
    }

    /// <summary>Waits until the page shows <paramref name="count"/> result images, all loaded; returns their sources.</summary>
    async Task<string[]> Images(int count)
    {
        await Until($"() => {{ const i = [...document.querySelectorAll('#images figure img')]; return i.length === {count} && i.every(x => x.complete && x.naturalWidth > 0); }}");
        return [.. await _page.Locator("#images figure img").EvaluateAllAsync<string[]>("i => i.map(x => x.src)")];
    }

    /// <summary>Waits for a condition of the page; on a timeout, says what the page and the server's jobs showed.</summary>
    async Task Until(string condition, int seconds = 120)
    {
        try { await _page.WaitForFunctionAsync(condition, null, new() { Timeout = seconds * 1000 }); }
        catch (TimeoutException)
        {
            var shown = await _page.EvaluateAsync<string>("() => `progress '${document.querySelector('#progressText').textContent}', error '${document.querySelector('#error').textContent}', ${document.querySelectorAll('#images figure img').length} images`");
            var jobs = string.Join("; ", _server.Editor.Jobs.All.Select(j => $"{j.Kind} {j.Id} {j.State}"));
            throw new TimeoutException($"Waited {seconds} s for {condition}. The page shows {shown}; the server's jobs: {jobs}.");
        }
    }

    async Task<string> Pixels(int index) =>
        await _page.EvaluateAsync<string>($$"""
            async () => {
              const img = document.querySelectorAll('#images figure img')[{{index}}];
              const blob = await (await fetch(img.dataset.src)).blob();
              const bitmap = await createImageBitmap(blob);
              const c = document.createElement('canvas'); c.width = bitmap.width; c.height = bitmap.height;
              const g = c.getContext('2d'); g.drawImage(bitmap, 0, 0);
              return Array.from(g.getImageData(0, 0, c.width, c.height).data).join(',');
            }
            """);

    async Task Fill(string selector, string value) => await _page.Locator(selector).FillAsync(value);

    async Task Generate()
    {
        await Fill("#prompt", Source);
        await Fill("#seed", "7");
        await Fill("#steps", "50");
        await _page.Locator("#generate").ClickAsync();
        await Images(1);
    }

    [Fact]
    public async Task Generate_swap_a_word_see_its_attention_and_reweight()
    {
        await Generate();
        await _page.Locator("#target").FillAsync(Source.Replace("red", "blue"));
        await Until("() => document.querySelector('#diff .word.swapped')?.textContent.trim() === 'blue'", 30);
        Assert.Contains("replace: 1 word swapped", await _page.Locator("#diff .note").TextContentAsync());
        // Responsiveness (README): from the click on Edit of a generated source to the edited image on screen.
        var clock = System.Diagnostics.Stopwatch.StartNew();
        await _page.Locator("#edit").ClickAsync();
        var first = await Images(2);
        output.WriteLine($"click on Edit -> edited image shown: {clock.Elapsed.TotalSeconds:F2} s (50 steps, source cached)");
        await Shot("edit");
        var swapped = await Pixels(1);
        Assert.NotEqual(await Pixels(0), swapped);

        // Hovering a token of the edited prompt overlays its attention map on that image.
        var token = _page.Locator("#images figure").Nth(1).Locator(".token", new() { HasText = "blue" });
        await token.HoverAsync();
        await Until("() => { const i = document.querySelectorAll('#images figure img')[1]; return i.src.includes('/attention?prompt=1&token=3') && i.complete && i.naturalWidth > 0; }", 30);
        await Shot("attention");

        // Re-weighting "blue" with its slider and running again changes the edit.
        await _page.Locator(".wordrow", new() { HasText = "blue" }).Locator("input.weight").FillAsync("5");
        clock.Restart();
        await _page.Locator("#edit").ClickAsync();
        await Until($"() => document.querySelectorAll('#images figure img')[1]?.dataset.src !== '{new Uri(first[1]).PathAndQuery}'");
        await Images(2);
        output.WriteLine($"a second edit: click on Edit -> edited image shown: {clock.Elapsed.TotalSeconds:F2} s");
        Assert.NotEqual(swapped, await Pixels(1));
        Assert.Equal(3, await _page.Locator("#jobs li.done").CountAsync()); // generate and two edits in the history

        // Self-attention components on demand, at the chosen grid.
        await _page.Locator("#grid").SelectOptionAsync("8");
        await _page.Locator("#selfComponents").ClickAsync();
        await Until("() => [...document.querySelectorAll('#images figcaption')].some(c => c.textContent.endsWith('self components'))");
        await Images(4); // tokens and components of both prompts
        await Shot("self-components");
    }

    [Fact]
    public async Task A_photo_is_inverted_and_edited_and_a_result_png_restores_its_settings()
    {
        const string prompt = "a large purple square and a small white circle on a blue background";
        var examples = Path.Combine(Path.GetDirectoryName(ShippedModelTests.Folder)!, "..", "examples");
        await Fill("#prompt", prompt);
        await Fill("#steps", "10");
        await _page.Locator("#method").SelectOptionAsync("direct");
        await _page.Locator("#photo").SetInputFilesAsync(Path.Combine(examples, "shapes_photo.png"));
        await Images(2); // the photo as fitted, and its reconstruction
        Assert.Matches(@"reconstruction PSNR \d+\.\d+ dB", await _page.Locator("#progressText").TextContentAsync());
        await _page.Locator("#target").FillAsync(prompt.Replace("purple", "orange"));
        await _page.Locator("#edit").ClickAsync();
        await Until("() => document.querySelector('#jobs li.done:first-child a')?.textContent.startsWith('edit') === true");
        await Images(2);
        await Shot("photo-edit");

        // Dropping one of our PNGs onto the page brings its settings back.
        var png = Path.Combine(_server.Editor.Jobs.All.Last(j => j.Kind == "edit").Folder, "prompt_1.png");
        await Fill("#prompt", "something else");
        await Fill("#steps", "33");
        await DropFile(png);
        await Until("() => document.querySelector('#progressText').textContent.includes('restored')", 30);
        Assert.Equal(prompt, await _page.Locator("#prompt").InputValueAsync());
        Assert.Equal(prompt.Replace("purple", "orange"), await _page.Locator("#target").InputValueAsync());
        Assert.Equal("10", await _page.Locator("#steps").InputValueAsync());

        // So does an AUTOMATIC1111 PNG (its "parameters" text).
        using var dir = new TempDir();
        var a1111 = dir.File("a1111.png");
        PromptToPrompt.Imaging.Png.Save(a1111, new PromptToPrompt.Imaging.RgbImage(8, 8, new byte[8 * 8 * 3]), new Dictionary<string, string>
        {
            ["parameters"] = "a small red star on a black background\nNegative prompt: blurry\nSteps: 23, Sampler: Euler a, CFG scale: 6.5, Seed: 42, Size: 64x64, Model: x",
        });
        await _page.EvaluateAsync("() => { document.querySelector('#progressText').textContent = ''; }");
        await DropFile(a1111);
        await Until("() => document.querySelector('#progressText').textContent.includes('restored')", 30);
        Assert.Equal("a small red star on a black background", await _page.Locator("#prompt").InputValueAsync());
        Assert.Equal("blurry", await _page.Locator("#negative").InputValueAsync());
        Assert.Equal(("23", "6.5", "42", "64"), (await _page.Locator("#steps").InputValueAsync(), await _page.Locator("#guidance").InputValueAsync(),
            await _page.Locator("#seed").InputValueAsync(), await _page.Locator("#width").InputValueAsync()));
    }

    [Fact]
    public async Task Cancel_stops_a_generation()
    {
        await Fill("#prompt", Source);
        await Fill("#steps", "900");
        await _page.Locator("#generate").ClickAsync();
        await Until("() => /sampling [1-9]\\d*\\/900/.test(document.querySelector('#progressText').textContent)", 30);
        Assert.Contains("it/s", await _page.Locator("#progressText").TextContentAsync());
        await _page.Locator("#cancel").ClickAsync();
        await Until("() => document.querySelector('#progressText').textContent === 'cancelled'", 10);
        Assert.Equal(1, await _page.Locator("#jobs li.cancelled").CountAsync());
    }

    /// <summary>Drops a file onto the page as a user's drag and drop does (a drop event carrying it).</summary>
    async Task DropFile(string path)
    {
        var data = Convert.ToBase64String(File.ReadAllBytes(path));
        await _page.EvaluateAsync(@"([name, data]) => {
            const bytes = Uint8Array.from(atob(data), c => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], name, { type: 'image/png' }));
            document.dispatchEvent(new DragEvent('drop', { dataTransfer: transfer, bubbles: true, cancelable: true }));
        }", new object[] { Path.GetFileName(path), data });
    }
}
