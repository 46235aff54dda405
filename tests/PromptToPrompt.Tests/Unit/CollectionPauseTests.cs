using System.Runtime;
using PromptToPrompt.Models;

namespace PromptToPrompt.Tests.Unit;

[Collection(RunsAlone.Name)]
public class CollectionPauseTests
{
    static bool Paused => GCSettings.LatencyMode == GCLatencyMode.NoGCRegion;

    [Fact]
    public void Pauses_nest_end_with_the_outermost_and_survive_a_step_that_outgrows_the_budget()
    {
        using (CollectionPause.Begin())
        {
            Assert.True(Paused);
            using (CollectionPause.Begin()) Assert.True(Paused);
            Assert.True(Paused);
        }
        Assert.False(Paused);

        var outgrown = CollectionPause.Begin();
        var garbage = new List<byte[]>();
        for (long allocated = 0; allocated < 2 * CollectionPause.BudgetBytes; allocated += 1 << 20) garbage.Add(new byte[1 << 20]);
        Assert.False(Paused);
        outgrown.Dispose();
        Assert.False(Paused);

        CollectionPause.Enabled = false;
        try { using (CollectionPause.Begin()) Assert.False(Paused); }
        finally { CollectionPause.Enabled = true; }
    }

    /// <summary>
    /// What avoids the TorchSharp 0.107 race (dotnet/TorchSharp#1434): while a step runs, another thread's allocations
    /// do not start a collection, so nothing can finalise the step's implicit scalars during a native call.
    /// </summary>
    [Fact]
    public void Another_threads_allocations_start_no_collection_during_a_pause()
    {
        static int CollectionsWhile(long bytes, bool paused)
        {
            using var pause = paused ? CollectionPause.Begin() : default;
            int before = GC.CollectionCount(0);
            var churn = new Thread(() => { for (long n = 0; n < bytes; n += 16_000) GC.KeepAlive(new byte[16_000]); });
            churn.Start();
            churn.Join();
            return GC.CollectionCount(0) - before;
        }
        Assert.True(CollectionsWhile(4 * CollectionPause.BudgetBytes, paused: false) > 0);   // such churn, unpaused, makes the collector run
        Assert.Equal(0, CollectionsWhile(CollectionPause.BudgetBytes / 2, paused: true));
    }
}
