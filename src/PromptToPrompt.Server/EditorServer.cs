using System.Net;
using System.Net.NetworkInformation;
using System.Reflection;
using System.Text.Json;
using System.Text.Json.Nodes;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using PromptToPrompt.Editing;
using PromptToPrompt.Imaging;
using PromptToPrompt.Pipelines;

namespace PromptToPrompt.Server;

/// <summary>Where the editor listens. Loopback by default; any other address is the user's explicit choice.</summary>
public sealed record ServerOptions(string Listen = "127.0.0.1", int Port = 7860);

/// <summary>
/// <c>p2p serve</c>: the browser editor. A minimal-API ASP.NET Core app over an <see cref="Editor"/>: the JSON API
/// (which the page uses, and nothing else), the embedded page, and the guard that refuses requests from other
/// sites. Endpoints parse and check, then call the editor; no editing logic lives here.
/// </summary>
public static class EditorServer
{
    static readonly JsonSerializerOptions Json = new() { PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower };

    public static WebApplication Build(Editor editor, ServerOptions options)
    {
        if (!IPAddress.TryParse(options.Listen, out var address))
            throw new UserError($"--listen {options.Listen} is not an IP address; use 127.0.0.1 (the default) or 0.0.0.0 for every interface.");
        if (options.Port is < 0 or > 65535) throw new UserError($"--port must be 0..65535; got {options.Port}.");
        var builder = WebApplication.CreateSlimBuilder();
        builder.Logging.ClearProviders();
        builder.WebHost.UseKestrel(k =>
        {
            k.Listen(address, options.Port);
            k.Limits.MaxRequestBodySize = editor.Limits.MaxUploadBytes + (1 << 20);
        });
        var app = builder.Build();
        var allowed = new HostGuard(address);
        app.Use(async (context, next) =>
        {
            if (allowed.Refusal(context.Request) is { } why)
            {
                await Error(context, StatusCodes.Status403Forbidden, why);
                return;
            }
            try { await next(context); }
            catch (UserError e) { await Error(context, StatusCodes.Status400BadRequest, e.Message); }
            catch (QueueFullException e) { await Error(context, StatusCodes.Status429TooManyRequests, e.Message); }
            catch (BadHttpRequestException e) { await Error(context, e.StatusCode, e.Message); }
        });
        MapPage(app);
        MapApi(app, editor);
        return app;
    }

    /// <summary>The addresses a started server listens on (with the real port when 0 was asked for).</summary>
    public static IReadOnlyList<string> Urls(WebApplication app) =>
        app.Services.GetRequiredService<Microsoft.AspNetCore.Hosting.Server.IServer>().Features
            .Get<Microsoft.AspNetCore.Hosting.Server.Features.IServerAddressesFeature>()!.Addresses.Select(a => a.TrimEnd('/') + "/").ToList();

    static Task Error(HttpContext context, int status, string message)
    {
        context.Response.StatusCode = status;
        return context.Response.WriteAsJsonAsync(new { error = message });
    }

    static void MapPage(WebApplication app)
    {
        var assembly = typeof(EditorServer).Assembly;
        foreach (var (route, name, type) in new[] { ("/", "index.html", "text/html"), ("/app.js", "app.js", "text/javascript"), ("/app.css", "app.css", "text/css") })
        {
            var bytes = Resource(assembly, "wwwroot/" + name);
            app.MapGet(route, () => Results.Bytes(bytes, type + "; charset=utf-8"));
        }
    }

    static byte[] Resource(Assembly assembly, string name)
    {
        using var stream = assembly.GetManifestResourceStream(name) ?? throw new InvalidOperationException($"resource {name} missing from the build");
        using var copy = new MemoryStream();
        stream.CopyTo(copy);
        return copy.ToArray();
    }

    static void MapApi(WebApplication app, Editor editor)
    {
        var model = editor.Model;
        app.MapGet("/api/info", () => Results.Json(new
        {
            model = editor.ModelName, width = model.DefaultImageSize, height = model.DefaultImageSize, steps = 50, guidance_scale = 7.5,
            schedulers = Schedulers.Schedulers.Names.Where(n => !Schedulers.Schedulers.IsAncestral(n)), scheduler = Schedulers.Schedulers.DefaultFor(model.Scheduler),
            max_tokens = model.Tokenizer.MaxLength, queue_capacity = editor.Limits.QueueCapacity, max_upload_bytes = editor.Limits.MaxUploadBytes,
        }, Json));

        app.MapPost("/api/generate", async (HttpRequest request) =>
        {
            var body = await ReadObject(request);
            var prompt = body["prompt"] ?? throw new UserError("\"prompt\" is required.");
            body.Remove("prompt");
            body["prompts"] = new JsonArray(prompt.DeepClone());
            body["edit"] = "store";
            return Queued(editor.Edit(EditSpec.Parse(body, "request")));
        });

        app.MapPost("/api/edit", async (HttpRequest request) =>
        {
            var (spec, photo, sampling) = ReadSpec(await ReadObject(request));
            return Queued(editor.Edit(spec, photo, sampling));
        });

        app.MapPost("/api/sweep", async (HttpRequest request) =>
        {
            var body = await ReadObject(request);
            var axes = (body["axes"] as JsonArray ?? throw new UserError("\"axes\" must be a list of one or two {\"parameter\", \"values\", \"word\"} objects."))
                .Select(Axis).ToList();
            body.Remove("axes");
            var (spec, photo, sampling) = ReadSpec(body);
            return Queued(editor.Sweep(spec, axes, photo, sampling));
        });

        app.MapPost("/api/attention", async (HttpRequest request) =>
        {
            var body = await ReadObject(request);
            var job = Text(body, "job");
            int? Number(string field) => body[field] is null ? null
                : body[field] is JsonValue v && v.TryGetValue<int>(out var n) ? n : throw new UserError($"\"{field}\" must be an integer.");
            return Queued(editor.Views(job, new AttentionViewOptions(Number("res"), SelfComponents: Number("self_components") ?? 0)));
        });

        app.MapPost("/api/invert", async (HttpRequest request) =>
        {
            if (!request.HasFormContentType) throw new UserError("Send the photo as multipart/form-data with fields image, prompt and method.");
            var form = await request.ReadFormAsync();
            var file = form.Files["image"] ?? throw new UserError("The form has no 'image' file.");
            using var bytes = new MemoryStream();
            await file.CopyToAsync(bytes);
            var method = (string?)form["method"] switch
            {
                null or "" or "null-text" => InversionMethod.NullText,
                "negative-prompt" => InversionMethod.NegativePrompt,
                "ddim" => InversionMethod.Ddim,
                "direct" => InversionMethod.Direct,
                var m => throw new UserError($"Unknown inversion method '{m}'. Choose null-text, negative-prompt, ddim or direct."),
            };
            var settings = new InversionSettings(method, Int(form, "steps") ?? 50, Int(form, "inner_steps") ?? 10, Double(form, "guidance_scale") ?? 7.5);
            return Queued(editor.Invert(bytes.ToArray(), form["prompt"].ToString(), settings));
        });

        app.MapGet("/api/jobs", () => Results.Json(editor.Jobs.All.Select(Describe), Json));
        app.MapGet("/api/jobs/{id}", (string id) => Find(editor, id) is { } job ? Results.Json(Describe(job), Json) : NotFound(id));
        app.MapDelete("/api/jobs/{id}", (string id) =>
        {
            if (Find(editor, id) is not { } job) return NotFound(id);
            job.Cancel();
            return Results.Json(Describe(job), Json, statusCode: StatusCodes.Status202Accepted);
        });
        app.MapGet("/api/jobs/{id}/files/{name}", (string id, string name) =>
            Find(editor, id) is { Outcome: { } outcome } job && outcome.Files.Any(f => f.Name == name)
                ? Results.File(Path.Combine(job.Folder, name), "image/png", name)
                : Results.Json(new { error = $"Job {id} has no file {name}." }, statusCode: StatusCodes.Status404NotFound));
        app.MapGet("/api/jobs/{id}/preview", (string id) =>
            Find(editor, id) is { Preview: { } png } ? Results.Bytes(png, "image/png") : Results.Json(new { error = $"Job {id} has no preview." }, statusCode: StatusCodes.Status404NotFound));
        app.MapGet("/api/jobs/{id}/attention", (string id, int prompt, int token, int? step, int? res) =>
            Find(editor, id) is null ? NotFound(id) : Results.Bytes(editor.AttentionMap(id, prompt, token, step, res), "image/png"));

        app.MapPost("/api/diff", async (HttpRequest request) =>
        {
            var body = await ReadObject(request);
            var source = Text(body, "source");
            var target = Text(body, "target");
            var diff = Editor.Diff(source, target);
            return Results.Json(new
            {
                edit = diff.Edit.ToString().ToLowerInvariant(), words = diff.Words.Select(w => new { word = w.Word, change = w.Change }),
                removed = diff.Removed, note = diff.Note,
                source_tokens = editor.Tokens(source), target_tokens = editor.Tokens(target),
            }, Json);
        });

        // Server-sent events: every change of any job, as the job's JSON (the page's progress and history).
        app.MapGet("/api/events", async (HttpContext context) =>
        {
            context.Response.ContentType = "text/event-stream";
            context.Response.Headers.CacheControl = "no-cache";
            var seen = new Dictionary<string, long>();
            var cancel = context.RequestAborted;
            try
            {
                while (!cancel.IsCancellationRequested)
                {
                    foreach (var job in editor.Jobs.All)
                    {
                        if (seen.TryGetValue(job.Id, out var v) && v == job.Version) continue;
                        seen[job.Id] = job.Version;
                        await context.Response.WriteAsync($"event: job\ndata: {JsonSerializer.Serialize(Describe(job), Json)}\n\n", cancel);
                    }
                    await context.Response.Body.FlushAsync(cancel);
                    await Task.Delay(50, cancel);
                }
            }
            catch (OperationCanceledException) { }
        });
    }

    static Job? Find(Editor editor, string id) => editor.Jobs.Find(id);

    static IResult NotFound(string id) => Results.Json(new { error = $"No job {id}." }, statusCode: StatusCodes.Status404NotFound);

    static IResult Queued(Job job) => Results.Json(new { job = job.Id }, statusCode: StatusCodes.Status202Accepted);

    /// <summary>The JSON of a job: the API's <c>GET /api/jobs/ID</c>.</summary>
    public static object Describe(Job job) => new
    {
        id = job.Id, kind = job.Kind, state = job.State.ToString().ToLowerInvariant(),
        progress = job.Progress is { } p ? new
        {
            phase = p.Phase, step = p.Step, total = p.Total, it_per_s = Math.Round(p.StepsPerSecond, 2), eta_s = Math.Round(p.RemainingSeconds, 1),
            inner = p.Inner, inner_total = p.InnerTotal, loss = p.Loss,
        } : null,
        preview = job.Preview is null ? null : $"/api/jobs/{job.Id}/preview?v={job.Version}",
        images = job.Outcome?.Files.Select(f => $"/api/jobs/{job.Id}/files/{f.Name}") ?? [],
        labels = job.Outcome?.Files.Select(f => f.Label) ?? [],
        details = job.Outcome?.Details,
        error = job.Error,
    };

    static async Task<JsonObject> ReadObject(HttpRequest request)
    {
        try
        {
            return await JsonNode.ParseAsync(request.Body, documentOptions: EditSpec.JsonOptions) as JsonObject ?? throw new UserError("The request body must be a JSON object.");
        }
        catch (JsonException e)
        {
            throw new UserError($"The request body is not valid JSON: {e.Message}");
        }
    }

    /// <summary>A sweep axis of a request: <c>{"parameter": "cross_replace", "values": [0.2, 0.8]}</c> (re-weighting with <c>"word"</c>).</summary>
    static SweepAxis Axis(JsonNode? node)
    {
        if (node is not JsonObject o) throw new UserError("Each sweep axis must be an object like {\"parameter\": \"cross_replace\", \"values\": [0.2, 0.8]}.");
        var parameter = (o["parameter"] as JsonValue)?.ToString() switch
        {
            "cross_replace" => SweepParameter.CrossReplace,
            "self_replace" => SweepParameter.SelfReplace,
            "reweight" => SweepParameter.Reweight,
            "blend_threshold" => SweepParameter.BlendThreshold,
            var p => throw new UserError($"Unknown sweep parameter '{p}'. Use cross_replace, self_replace, reweight or blend_threshold."),
        };
        var values = (o["values"] as JsonArray)?.Select(v => v is JsonValue x && x.TryGetValue<double>(out var d) ? d
            : throw new UserError("Sweep values must be numbers.")).ToList() ?? throw new UserError("A sweep axis needs \"values\", a list of numbers.");
        var word = (o["word"] as JsonValue)?.ToString();
        if (parameter == SweepParameter.Reweight && string.IsNullOrEmpty(word)) throw new UserError("A reweight sweep names its \"word\".");
        return new SweepAxis(parameter, values, parameter == SweepParameter.Reweight ? word : null);
    }

    /// <summary>
    /// A request's edit spec (the JSON of <c>p2p edit --spec</c>), the inversion job it edits (<c>"photo"</c>) and whether
    /// it set steps or guidance itself.
    /// </summary>
    static (EditSpec Spec, string? Photo, bool SamplingGiven) ReadSpec(JsonObject body)
    {
        var photo = body["photo"] is null ? null : Text(body, "photo");
        body.Remove("photo");
        return (EditSpec.Parse(body, "request"), photo, body.ContainsKey("steps") || body.ContainsKey("guidance_scale"));
    }

    static string Text(JsonObject body, string field) =>
        body[field] is JsonValue v && v.TryGetValue<string>(out var s) ? s : throw new UserError($"\"{field}\" must be a string.");

    static int? Int(IFormCollection form, string field) =>
        form[field].ToString() is { Length: > 0 } s ? int.TryParse(s, out var v) ? v : throw new UserError($"{field} must be an integer; got '{s}'.") : null;

    static double? Double(IFormCollection form, string field) =>
        form[field].ToString() is { Length: > 0 } s
            ? Numbers.TryParseFinite(s, out var v) ? v
            : throw new UserError($"{field} must be a finite number; got '{s}'.") : null;

    /// <summary>
    /// Refuses requests whose Host is not one of this server's own names (DNS rebinding) and requests whose Origin is
    /// another site (cross-site requests from pages the user happens to have open).
    /// </summary>
    sealed class HostGuard(IPAddress listen)
    {
        readonly HashSet<string> _names = Names(listen);

        static HashSet<string> Names(IPAddress listen)
        {
            var names = new HashSet<string>(StringComparer.OrdinalIgnoreCase) { "localhost", "127.0.0.1", "[::1]" };
            if (listen.Equals(IPAddress.Any) || listen.Equals(IPAddress.IPv6Any))
            {
                foreach (var nic in NetworkInterface.GetAllNetworkInterfaces())
                    foreach (var a in nic.GetIPProperties().UnicastAddresses)
                        names.Add(Format(a.Address));
                names.Add(Dns.GetHostName());
            }
            else names.Add(Format(listen));
            return names;
        }

        static string Format(IPAddress a) => a.AddressFamily == System.Net.Sockets.AddressFamily.InterNetworkV6 ? $"[{a}]" : a.ToString();

        public string? Refusal(HttpRequest request)
        {
            int port = request.HttpContext.Connection.LocalPort;
            var host = request.Host;
            if (!host.HasValue || !_names.Contains(host.Host.Contains(':') && !host.Host.StartsWith('[') ? $"[{host.Host}]" : host.Host) || (host.Port ?? 80) != port)
                return $"Refused: the Host header '{host}' is not this server's address. Open the editor at http://127.0.0.1:{port}/.";
            if (request.Headers.Origin.ToString() is { Length: > 0 } origin &&
                !(Uri.TryCreate(origin, UriKind.Absolute, out var o) && o.Scheme == "http" && _names.Contains(o.IsLoopback && o.HostNameType == UriHostNameType.IPv6 ? "[::1]" : o.Host) && o.Port == port))
                return $"Refused: a request from another site ({origin}). The editor's API answers its own page only.";
            return null;
        }
    }
}
