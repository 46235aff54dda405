using static PromptToPrompt.Tests.Unit.TestProcess;
using System.Net;
using System.Text;
using PromptToPrompt.Datasets;

namespace PromptToPrompt.Tests.Unit;

/// <summary>
/// The cluster deployments of p2p dataset generate: deploy/slurm/generate.sbatch run as a job array on a real one-node
/// Slurm (Debian's slurmctld, slurmd and munge, started by deploy/slurm/local-cluster.sh), and the Kubernetes Indexed
/// Job accepted by kubectl.
/// </summary>
public class DeployTests
{


    static void Require(string tool, string package)
    {
        if (Run("sh", ["-c", $"command -v {tool}"]).Code != 0)
            throw new InvalidOperationException($"{tool} is not installed: apt-get install {package} (.ci/run does).");
    }

    [Fact]
    public void The_sbatch_job_array_on_a_one_node_slurm_equals_a_single_shard_run()
    {
        foreach (var (tool, package) in new[] { ("slurmctld", "slurmctld"), ("slurmd", "slurmd"), ("sbatch", "slurm-client"), ("munged", "munge") }) Require(tool, package);
        if (Run("id", ["-u"]).Out.Trim() != "0") throw new InvalidOperationException("The Slurm test starts slurmctld and slurmd, which needs root.");
        using var dir = new TempDir();
        var prompts = dir.File("t.jsonl");
        ShapeTriplets.Write(prompts, 5, 2);
        var p2p = $"dotnet {Path.Combine(AppContext.BaseDirectory, "p2p.dll")}";
        const string args = "--samples-per-prompt 2 --keep 1 --steps 8 --seed 11";
        var (code, _, err) = CliTests.RunP2P(["dataset", "generate", "--model", ShippedModelTests.Folder, "--prompts", prompts, "--out", dir.File("single"), .. args.Split(' ')]);
        Assert.True(code == 0, err);

        var cluster = Path.Combine(RepositoryRoot, "deploy", "slurm", "local-cluster.sh");
        var state = dir.File("slurm");
        var ports = new Dictionary<string, string?> { ["SLURMCTLD_PORT"] = "16817", ["SLURMD_PORT"] = "16818" };
        var up = Run(cluster, ["start", state], ports);
        try
        {
            Assert.True(up.Code == 0, up.Out + up.Err);
            var env = new Dictionary<string, string?>
            {
                ["SLURM_CONF"] = Path.Combine(state, "slurm.conf"), ["P2P"] = p2p, ["P2P_PROMPTS"] = prompts, ["P2P_OUT"] = dir.File("slurm-out"),
                ["P2P_MODEL"] = ShippedModelTests.Folder, ["P2P_ARGS"] = args,
            };
            var job = Run("sbatch", ["--wait", "--array=0-2", $"--output={dir.File("task-%a.log")}", Path.Combine(RepositoryRoot, "deploy", "slurm", "generate.sbatch")], env, dir.Path);
            Assert.True(job.Code == 0, $"sbatch: {job.Out}{job.Err}\n{string.Join("\n", Directory.GetFiles(dir.Path, "task-*.log").Select(File.ReadAllText))}");
            Assert.Contains("shard 1 of 3", File.ReadAllText(dir.File("task-1.log")));
        }
        finally { Run(cluster, ["stop", state]); }

        foreach (var d in new[] { dir.File("single"), dir.File("slurm-out") }) Assert.Equal(0, CliTests.RunP2P("dataset", "merge", "--out", d).Code);
        var a = Directory.GetFiles(dir.File("single"), "*", SearchOption.AllDirectories).ToDictionary(f => Path.GetRelativePath(dir.File("single"), f), File.ReadAllBytes);
        var b = Directory.GetFiles(dir.File("slurm-out"), "*", SearchOption.AllDirectories).ToDictionary(f => Path.GetRelativePath(dir.File("slurm-out"), f), File.ReadAllBytes);
        Assert.Equal(a.Keys.Order(), b.Keys.Order());
        foreach (var (name, bytes) in a) Assert.True(bytes.SequenceEqual(b[name]), $"{name} differs between the single-shard and the Slurm run");
    }

    [Fact]
    public void The_indexed_job_is_accepted_by_kubectl_and_its_shard_count_matches_its_completions()
    {
        Require("kubectl", "kubernetes-client");
        var manifest = Path.Combine(RepositoryRoot, "deploy", "k8s", "indexed-job.yaml");
        var text = File.ReadAllText(manifest);
        var completions = System.Text.RegularExpressions.Regex.Match(text, @"\n  completions: (\d+)").Groups[1].Value;
        Assert.Matches(@"\n  completionMode: Indexed", text);
        Assert.Matches($@"name: P2P_SHARD_COUNT\s+value: ""{completions}""", text);
        Assert.Contains("nvidia.com/gpu", text);

        // kubectl maps the manifest's kinds through the API server's discovery even for a client-side dry run: a stub answers
        // discovery for batch/v1 and says the Job does not exist yet (schema validation needs the server's OpenAPI: off).
        using var dir = new TempDir();
        using var stub = new HttpListener();
        int port = 18000 + Random.Shared.Next(1000);
        stub.Prefixes.Add($"http://127.0.0.1:{port}/");
        stub.Start();
        // A thread of its own: under the parallel test run the thread pool can be starved for longer than kubectl's 32 s timeout.
        var serving = new Thread(() =>
        {
            while (stub.IsListening)
            {
                HttpListenerContext c;
                try { c = stub.GetContext(); } catch (HttpListenerException) { return; }
                var path = c.Request.Url!.AbsolutePath;
                (int status, string body) = path switch
                {
                    "/api" => (200, "{\"kind\":\"APIVersions\",\"versions\":[\"v1\"],\"serverAddressByClientCIDRs\":[]}"),
                    "/api/v1" => (200, "{\"kind\":\"APIResourceList\",\"groupVersion\":\"v1\",\"resources\":[]}"),
                    "/apis" => (200, "{\"kind\":\"APIGroupList\",\"apiVersion\":\"v1\",\"groups\":[{\"name\":\"batch\",\"versions\":[{\"groupVersion\":\"batch/v1\",\"version\":\"v1\"}],\"preferredVersion\":{\"groupVersion\":\"batch/v1\",\"version\":\"v1\"}}]}"),
                    "/apis/batch/v1" => (200, "{\"kind\":\"APIResourceList\",\"apiVersion\":\"v1\",\"groupVersion\":\"batch/v1\",\"resources\":[{\"name\":\"jobs\",\"singularName\":\"job\",\"namespaced\":true,\"kind\":\"Job\",\"verbs\":[\"create\",\"delete\",\"get\",\"list\",\"patch\",\"update\",\"watch\"]}]}"),
                    _ => (404, "{\"kind\":\"Status\",\"apiVersion\":\"v1\",\"status\":\"Failure\",\"reason\":\"NotFound\",\"code\":404}"),
                };
                var bytes = Encoding.UTF8.GetBytes(body);
                c.Response.StatusCode = status;
                c.Response.ContentType = "application/json";
                c.Response.OutputStream.Write(bytes);
                c.Response.Close();
            }
        }) { IsBackground = true };
        serving.Start();
        File.WriteAllText(dir.File("kubeconfig"), $"apiVersion: v1\nkind: Config\nclusters:\n- name: stub\n  cluster:\n    server: http://127.0.0.1:{port}\n" +
            "contexts:\n- name: stub\n  context:\n    cluster: stub\n    namespace: default\ncurrent-context: stub\nusers: []\n");
        var env = new Dictionary<string, string?> { ["KUBECONFIG"] = dir.File("kubeconfig") };
        var (code, stdout, stderr) = Run("kubectl", ["apply", "--dry-run=client", "--validate=false", "-f", manifest], env);
        // The same command refuses a manifest whose kind the API does not have.
        File.WriteAllText(dir.File("broken.yaml"), text.Replace("kind: Job", "kind: Jobb"));
        var broken = Run("kubectl", ["apply", "--dry-run=client", "--validate=false", "-f", dir.File("broken.yaml")], env);
        stub.Stop();
        Assert.True(code == 0, stdout + stderr);
        Assert.Contains("job.batch/p2p-dataset created (dry run)", stdout);
        Assert.NotEqual(0, broken.Code);
        Assert.Contains("Jobb", broken.Err);
    }
}
