using System.Net;
using System.Net.Http.Headers;
using System.Net.Http.Json;
using System.Text.Json.Nodes;
using Microsoft.AspNetCore.Builder;
using PromptToPrompt.Editing;
using PromptToPrompt.Imaging;
using PromptToPrompt.Loading;
using PromptToPrompt.Server;
using PromptToPrompt.Tests.Unit;

namespace PromptToPrompt.Tests.Server;

/// <summary>A running editor (real Kestrel on a free loopback port) over the shipped model, with its own output folder.</summary>
public sealed class RunningEditor : IDisposable
{
    public TempDir Dir { get; } = new();
    public StableDiffusionModel Model { get; }
    public Editor Editor { get; }
    public WebApplication App { get; }
    public HttpClient Http { get; }
    public string Url { get; }

    public RunningEditor(EditorLimits? limits = null)
    {
        // As p2p serve does: the model is loaded on the job thread (see JobQueue).
        Editor = new Editor(() => StableDiffusionModel.Load(ShippedModelTests.Folder, ModelPlacement.Cpu), Dir.File("out"), limits);
        Model = Editor.Model;
        App = EditorServer.Build(Editor, new ServerOptions(Port: 0));
        App.StartAsync().GetAwaiter().GetResult();
        Url = EditorServer.Urls(App)[0];
        Http = new HttpClient { BaseAddress = new Uri(Url), Timeout = TimeSpan.FromMinutes(5) };
    }

    public async Task<string> Post(string path, object body, HttpStatusCode expected = HttpStatusCode.Accepted)
    {
        using var response = await Http.PostAsJsonAsync(path, body);
        var text = await response.Content.ReadAsStringAsync();
        Assert.True(response.StatusCode == expected, $"{path}: {(int)response.StatusCode} {text}");
        return expected == HttpStatusCode.Accepted ? JsonNode.Parse(text)!["job"]!.GetValue<string>() : text;
    }

    public async Task<JsonObject> Job(string id) => (JsonObject)JsonNode.Parse(await Http.GetStringAsync($"api/jobs/{id}"))!;

    /// <summary>Polls the job until it has finished; returns its JSON.</summary>
    public async Task<JsonObject> Finished(string id, int timeoutSeconds = 120)
    {
        var clock = System.Diagnostics.Stopwatch.StartNew();
        while (true)
        {
            var job = await Job(id);
            if (job["state"]!.GetValue<string>() is "done" or "failed" or "cancelled") return job;
            if (clock.Elapsed.TotalSeconds > timeoutSeconds) throw new TimeoutException($"job {id} still {job["state"]} after {timeoutSeconds} s");
            await Task.Delay(50);
        }
    }

    public async Task<byte[]> File(JsonObject job, int index) => await Http.GetByteArrayAsync(job["images"]![index]!.GetValue<string>());

    public void Dispose()
    {
        Http.Dispose();
        App.StopAsync().GetAwaiter().GetResult();
        Editor.Dispose();   // and its model
        Dir.Dispose();
    }
}

/// <summary>The editor's JSON API against the running server: what the page does, and what the server must refuse.</summary>
public sealed class EditorServerTests : IClassFixture<EditorServerTests.Shared>
{
    public sealed class Shared : IDisposable
    {
        public RunningEditor Server { get; } = new();
        public void Dispose() => Server.Dispose();
    }

    const string Source = "a large red circle on a white background";
    const string Target = "a large blue circle on a white background";
    readonly RunningEditor _s;

    public EditorServerTests(Shared shared) => _s = shared.Server;

    static object Spec(int seed, int steps, string target = Target) => new { prompts = new[] { Source, target }, seed, steps, scheduler = "ddim" };

    [Fact]
    public async Task Generate_then_edit_reuses_the_source_and_equals_p2p_edit()
    {
        var gen = await _s.Finished(await _s.Post("api/generate", new { prompt = Source, seed = 11, steps = 12, scheduler = "ddim" }));
        Assert.Equal("done", gen["state"]!.GetValue<string>());
        Assert.Equal("generate", gen["kind"]!.GetValue<string>());
        Assert.False(gen["details"]!["source_cached"]!.GetValue<bool>());
        Assert.Equal(12, gen["progress"]!["total"]!.GetValue<int>());
        var sourcePng = await _s.File(gen, 0);
        using (var dir = new TempDir())
        {
            System.IO.File.WriteAllBytes(dir.File("s.png"), sourcePng);
            var text = Png.ReadText(dir.File("s.png"));
            Assert.Contains("\"seed\":11", text["prompt-to-prompt"]);
            Assert.Equal("source", text["role"]);
        }

        var edit = await _s.Finished(await _s.Post("api/edit", Spec(11, 12)));
        Assert.Equal("done", edit["state"]!.GetValue<string>());
        // Previews exist once a finished run has taught the latent-to-RGB map (the generation above did): latent size x4.
        var preview = await _s.Http.GetByteArrayAsync(edit["preview"]!.GetValue<string>());
        var previewImage = RgbImage.Decode(new MemoryStream(preview), "preview");
        int side = _s.Model.DefaultImageSize / _s.Model.VaeScale * 4;
        Assert.Equal((side, side), (previewImage.Width, previewImage.Height));
        Assert.True(edit["details"]!["source_cached"]!.GetValue<bool>(), "the edit recomputed the source the generation recorded");
        Assert.Equal(3, edit["images"]!.AsArray().Count); // source, target, grid
        Assert.Equal(Pixels(sourcePng), Pixels(await _s.File(edit, 0)));

        // The same spec through p2p edit with a source cache: the same pixels.
        using var cli = new TempDir();
        var specFile = cli.File("spec.json");
        System.IO.File.WriteAllText(specFile, System.Text.Json.JsonSerializer.Serialize(Spec(11, 12)));
        var (code, _, err) = CliTests.RunP2P("edit", "--spec", specFile, "--cache", cli.File("cache"), "--out", cli.File("out"));
        Assert.True(code == 0, err);
        Assert.Equal(RgbImage.Load(cli.File("out/prompt_1.png")).Pixels, Pixels(await _s.File(edit, 1)));
    }

    static byte[] Pixels(byte[] png) => RgbImage.Decode(new MemoryStream(png), "png").Pixels;

    [Fact]
    public async Task Attention_of_a_token_is_a_heat_map_of_the_edit()
    {
        var edit = await _s.Finished(await _s.Post("api/edit", Spec(12, 6)));
        var id = edit["id"]!.GetValue<string>();
        var diff = JsonNode.Parse(await _s.Post("api/diff", new { source = Source, target = Target }, HttpStatusCode.OK))!;
        Assert.Equal("replace", diff["edit"]!.GetValue<string>());
        Assert.Equal("swapped", diff["words"]![2]!["change"]!.GetValue<string>());
        var blue = diff["target_tokens"]!.AsArray().First(t => t!["text"]!.GetValue<string>() == "blue")!["position"]!.GetValue<int>();
        Assert.Equal(3, blue);
        using var all = await _s.Http.GetAsync($"api/jobs/{id}/attention?prompt=1&token={blue}");
        Assert.Equal(HttpStatusCode.OK, all.StatusCode);
        Assert.Equal("image/png", all.Content.Headers.ContentType!.MediaType);
        using var step = await _s.Http.GetAsync($"api/jobs/{id}/attention?prompt=1&token={blue}&step=5");
        Assert.Equal(HttpStatusCode.OK, step.StatusCode);
        Assert.NotEqual(await all.Content.ReadAsByteArrayAsync(), await step.Content.ReadAsByteArrayAsync());
        using var outside = await _s.Http.GetAsync($"api/jobs/{id}/attention?prompt=1&token={blue}&step=6");
        Assert.Equal(HttpStatusCode.BadRequest, outside.StatusCode);
        Assert.Contains("UNet evaluations 0..5", await outside.Content.ReadAsStringAsync());

        // Every grid the job lists can be viewed; another is refused naming the ones there are.
        var grids = edit["details"]!["attention_grids"]!.AsArray().Select(g => g!.GetValue<int>()).ToList();
        Assert.Contains(edit["details"]!["attention_grid"]!.GetValue<int>(), grids);
        foreach (var g in grids)
        {
            using var at = await _s.Http.GetAsync($"api/jobs/{id}/attention?prompt=0&token=2&res={g}");
            Assert.True(at.StatusCode == HttpStatusCode.OK, $"res {g}: {await at.Content.ReadAsStringAsync()}");
        }
        using var badGrid = await _s.Http.GetAsync($"api/jobs/{id}/attention?prompt=0&token=2&res=3");
        Assert.Equal(HttpStatusCode.BadRequest, badGrid.StatusCode);
        Assert.Contains("Use one of: --res", await badGrid.Content.ReadAsStringAsync());

        // Self-attention components on demand: a views job over both prompts.
        var views = await _s.Finished(await _s.Post("api/attention", new { job = id, self_components = 3 }));
        Assert.True(views["state"]!.GetValue<string>() == "done", views.ToJsonString());
        var names = views["images"]!.AsArray().Select(u => u!.GetValue<string>().Split('/')[^1]).ToList();
        Assert.Equal(["attention_0_tokens.png", "attention_0_self_components.png", "attention_1_tokens.png", "attention_1_self_components.png"], names);
    }

    [Fact]
    public async Task Several_targets_and_a_sweep_take_the_one_recorded_source()
    {
        var edit = await _s.Finished(await _s.Post("api/edit", new
        {
            prompts = new[] { Source, Target, Source.Replace("red", "green") }, seed = 13, steps = 6, scheduler = "ddim",
        }));
        Assert.True(edit["state"]!.GetValue<string>() == "done", edit.ToJsonString());
        Assert.Equal(["prompt_0.png", "prompt_1.png", "prompt_2.png", "grid.png"], edit["images"]!.AsArray().Select(u => u!.GetValue<string>().Split('/')[^1]));

        var sweep = await _s.Finished(await _s.Post("api/sweep", new
        {
            prompts = new[] { Source, Target }, seed = 13, steps = 6, scheduler = "ddim",
            axes = new object[] { new { parameter = "cross_replace", values = new[] { 0.2, 0.8 } }, new { parameter = "reweight", word = "blue", values = new[] { 1.0, 3.0 } } },
        }));
        Assert.True(sweep["state"]!.GetValue<string>() == "done", sweep.ToJsonString());
        Assert.True(sweep["details"]!["source_cached"]!.GetValue<bool>());
        var labels = sweep["labels"]!.AsArray().Select(l => l!.GetValue<string>()).ToList();
        Assert.Equal(["cross_replace 0.2, reweight blue 1", "cross_replace 0.2, reweight blue 3", "cross_replace 0.8, reweight blue 1",
                      "cross_replace 0.8, reweight blue 3", Source, "grid"], labels);
        using var dir = new TempDir();
        System.IO.File.WriteAllBytes(dir.File("cell.png"), await _s.File(sweep, 3));
        Assert.Equal("cross_replace 0.8, reweight blue 3", Png.ReadText(dir.File("cell.png"))["sweep_cell"]);
        // The sweep's source is the edit's (same seed and settings): the same pixels.
        Assert.Equal(Pixels(await _s.File(edit, 0)), Pixels(await _s.File(sweep, 4)));

        var bad = await _s.Post("api/sweep", new { prompts = new[] { Source, Target }, axes = new object[] { new { parameter = "cross_replace", values = new[] { 0.2, 1.5 } } } },
            HttpStatusCode.BadRequest);
        Assert.Contains("cross_replace sweep value 1.5 is outside [0, 1]", bad);
        var unknown = await _s.Post("api/sweep", new { prompts = new[] { Source, Target }, axes = new object[] { new { parameter = "guidance", values = new[] { 1 } } } },
            HttpStatusCode.BadRequest);
        Assert.Contains("Unknown sweep parameter 'guidance'", unknown);
    }

    [Fact]
    public async Task A_refinement_diff_names_added_and_removed_words()
    {
        var diff = JsonNode.Parse(await _s.Post("api/diff", new { source = "a red circle on a white background", target = "a large red circle on a black background" }, HttpStatusCode.OK))!;
        Assert.Equal("refine", diff["edit"]!.GetValue<string>());
        var changes = diff["words"]!.AsArray().Select(w => $"{w!["word"]}:{w["change"]}").ToList();
        Assert.Equal(["a:same", "large:added", "red:same", "circle:same", "on:same", "a:same", "black:added", "background:same"], changes);
        Assert.Equal(["white"], diff["removed"]!.AsArray().Select(w => w!.GetValue<string>()));
        Assert.Contains("a word swap needs the same number of words", diff["note"]!.GetValue<string>());
    }

    [Fact]
    public async Task A_photo_is_inverted_and_then_edited()
    {
        const string prompt = "a large purple square and a small white circle on a blue background";
        var photo = Path.Combine(Path.GetDirectoryName(ShippedModelTests.Folder)!, "..", "examples", "shapes_photo.png");
        using var form = new MultipartFormDataContent
        {
            { new ByteArrayContent(System.IO.File.ReadAllBytes(photo)) { Headers = { ContentType = new MediaTypeHeaderValue("image/png") } }, "image", "photo.png" },
            { new StringContent(prompt), "prompt" }, { new StringContent("direct"), "method" }, { new StringContent("8"), "steps" },
        };
        using var response = await _s.Http.PostAsync("api/invert", form);
        Assert.Equal(HttpStatusCode.Accepted, response.StatusCode);
        var id = JsonNode.Parse(await response.Content.ReadAsStringAsync())!["job"]!.GetValue<string>();
        var inv = await _s.Finished(id);
        Assert.Equal("done", inv["state"]!.GetValue<string>());
        // Direct inversion reconstructs up to the VAE (the shipped model's VAE: about 28 dB on its scenes).
        Assert.True(inv["details"]!["psnr"]!.GetValue<double>() > 24, inv.ToJsonString());

        var edit = await _s.Finished(await _s.Post("api/edit", new { prompts = new[] { prompt, prompt.Replace("purple", "orange") }, photo = id }));
        Assert.True(edit["state"]!.GetValue<string>() == "done", edit.ToJsonString());
        Assert.Contains("\"steps\":8", edit["details"]!["spec"]!.GetValue<string>());

        var wrong = await _s.Post("api/edit", new { prompts = new[] { "a small red circle on a white background", prompt }, photo = id }, HttpStatusCode.BadRequest);
        Assert.Contains("an edit of it must start from that prompt", wrong);
    }

    [Fact]
    public async Task A_running_job_is_cancelled_within_a_step()
    {
        var id = await _s.Post("api/generate", new { prompt = "a small green star on a black background", seed = 1, steps = 900, scheduler = "ddim" });
        int Step(JsonObject j) => j["progress"]?["step"]?.GetValue<int>() ?? 0;
        for (var j = await _s.Job(id); Step(j) < 3; j = await _s.Job(id))
        {
            Assert.True(j["state"]!.GetValue<string>() is "queued" or "running", j.ToJsonString());
            await Task.Delay(20);
        }
        var clock = System.Diagnostics.Stopwatch.StartNew();
        using var cancel = await _s.Http.DeleteAsync($"api/jobs/{id}");
        Assert.Equal(HttpStatusCode.Accepted, cancel.StatusCode);
        int atCancel = Step(JsonNode.Parse(await cancel.Content.ReadAsStringAsync())!.AsObject());
        var job = await _s.Finished(id, 30);
        Assert.Equal("cancelled", job["state"]!.GetValue<string>());
        // The run stops at the next step boundary: at most the step in flight completes (a step takes about 50 ms here).
        Assert.InRange(Step(job), atCancel, atCancel + 1);
        Assert.True(clock.Elapsed.TotalSeconds < 5, $"cancelling took {clock.Elapsed.TotalSeconds:F1} s");
    }

    [Theory]
    [InlineData("{\"prompts\": [\"a red circle\"], \"bogus\": 1}", "unknown field 'bogus'")]
    [InlineData("{\"prompts\": [\"a red circle\"", "not valid JSON")]
    [InlineData("[1, 2]", "must be a JSON object")]
    [InlineData("{\"prompts\": [\"a red circle\", \"a blue circle\"], \"model\": \"/etc/passwd\"}", "drop \"model\" from the request")]
    [InlineData("{\"prompts\": [\"a red circle\", \"a blue circle\"], \"latent\": \"x.safetensors\"}", "names a file")]
    [InlineData("{\"prompts\": [\"a red circle\", \"a blue circle\"], \"width\": 100000, \"height\": 100000}", "larger than this server makes")]
    [InlineData("{\"prompts\": [\"a red circle\", \"a blue circle\"], \"local_blend\": {\"words\": [[\"dog\"], [\"dog\"]]}}", "'dog' is not in the prompt")]
    [InlineData("{\"prompts\": [\"a red circle\", \"a blue circle\"], \"scheduler\": \"magic\"}", "Unknown scheduler 'magic'")]
    [InlineData("{\"prompts\": [\"a red circle\", \"a blue circle\"], \"photo\": \"nope\"}", "No inverted photo has the job id 'nope'")]
    public async Task Bad_edits_are_refused_with_one_line(string body, string message)
    {
        using var response = await _s.Http.PostAsync("api/edit", new StringContent(body, System.Text.Encoding.UTF8, "application/json"));
        var text = await response.Content.ReadAsStringAsync();
        Assert.Equal(HttpStatusCode.BadRequest, response.StatusCode);
        var error = JsonNode.Parse(text)!["error"]!.GetValue<string>();
        Assert.Contains(message, error);
        Assert.DoesNotContain("\n", error);
    }

    [Fact]
    public async Task Bad_uploads_and_unknown_jobs_are_refused()
    {
        using var form = new MultipartFormDataContent { { new ByteArrayContent("not an image"u8.ToArray()), "image", "x.png" }, { new StringContent("a red circle"), "prompt" } };
        using var bad = await _s.Http.PostAsync("api/invert", form);
        Assert.Equal(HttpStatusCode.BadRequest, bad.StatusCode);
        Assert.Contains("could not be read as an image", await bad.Content.ReadAsStringAsync());
        // A small file whose header claims 10000x10000 pixels is refused from the header, never decoded.
        var bombBytes = System.IO.File.ReadAllBytes(Path.Combine(Path.GetDirectoryName(ShippedModelTests.Folder)!, "..", "examples", "shapes_photo.png"));
        byte[] huge = [0, 0, 0x27, 0x10];
        huge.CopyTo(bombBytes, 16); // IHDR width
        huge.CopyTo(bombBytes, 20); // IHDR height
        using var bombForm = new MultipartFormDataContent { { new ByteArrayContent(bombBytes), "image", "bomb.png" }, { new StringContent("a red circle"), "prompt" } };
        using var bomb = await _s.Http.PostAsync("api/invert", bombForm);
        Assert.Equal(HttpStatusCode.BadRequest, bomb.StatusCode);
        Assert.Contains("The photo has 10000x10000 pixels; at most 16777216 are read.", await bomb.Content.ReadAsStringAsync());
        using var missing = await _s.Http.GetAsync("api/jobs/19700101-000000-9999");
        Assert.Equal(HttpStatusCode.NotFound, missing.StatusCode);
        using var file = await _s.Http.GetAsync("api/jobs/19700101-000000-9999/files/..%2F..%2Fetc%2Fpasswd");
        Assert.Equal(HttpStatusCode.NotFound, file.StatusCode);
    }

    [Theory]
    [InlineData("Host", "rebinding.example:7860", "the Host header")]
    [InlineData("Origin", "http://evil.example", "a request from another site")]
    public async Task Requests_from_other_sites_are_refused(string header, string value, string message)
    {
        using var request = new HttpRequestMessage(HttpMethod.Post, "api/generate") { Content = JsonContent.Create(new { prompt = Source }) };
        if (header == "Host") request.Headers.Host = value;
        else request.Headers.Add(header, value);
        using var response = await _s.Http.SendAsync(request);
        Assert.Equal(HttpStatusCode.Forbidden, response.StatusCode);
        Assert.Contains(message, await response.Content.ReadAsStringAsync());
        // The page's own origin is accepted.
        using var own = new HttpRequestMessage(HttpMethod.Get, "api/info");
        own.Headers.Add("Origin", _s.Url.TrimEnd('/'));
        using var ok = await _s.Http.SendAsync(own);
        Assert.Equal(HttpStatusCode.OK, ok.StatusCode);
    }

    [Fact]
    public async Task The_page_is_served_from_the_assembly()
    {
        var html = await _s.Http.GetStringAsync("");
        Assert.Contains("<script src=\"/app.js\">", html);
        Assert.Contains("EventSource", await _s.Http.GetStringAsync("app.js"));
    }
}

/// <summary>A server with room for one waiting job: the next one is refused with 429.</summary>
public sealed class EditorQueueTests
{
    [Fact]
    public async Task A_full_queue_refuses_with_429()
    {
        using var s = new RunningEditor(new EditorLimits(QueueCapacity: 1));
        var running = await s.Post("api/generate", new { prompt = "a small green star on a black background", seed = 1, steps = 900, scheduler = "ddim" });
        for (var j = await s.Job(running); j["state"]!.GetValue<string>() != "running"; j = await s.Job(running))
        {
            Assert.Equal("queued", j["state"]!.GetValue<string>());
            await Task.Delay(20);
        }
        var waiting = await s.Post("api/generate", new { prompt = "a small green star on a black background", seed = 2, steps = 5, scheduler = "ddim" });
        var refused = await s.Post("api/generate", new { prompt = "a small green star on a black background", seed = 3, steps = 5, scheduler = "ddim" }, HttpStatusCode.TooManyRequests);
        Assert.Contains("The job queue is full (1 jobs waiting)", refused);
        // Cancelling the queued job first means it never starts; then the running one stops.
        await s.Http.DeleteAsync($"api/jobs/{waiting}");
        await s.Http.DeleteAsync($"api/jobs/{running}");
        Assert.Equal("cancelled", (await s.Finished(running, 30))["state"]!.GetValue<string>());
        var w = await s.Finished(waiting, 30);
        Assert.Equal("cancelled", w["state"]!.GetValue<string>());
        Assert.Null(w["progress"]);
    }
}
