using System.Runtime;

namespace PromptToPrompt.Models;

/// <summary>
/// Holds off garbage collections for the duration of one denoising, inversion or training step. TorchSharp 0.107
/// passes implicitly converted <c>Scalar</c>s (the <c>alpha</c> of <c>a + b</c>, the <c>0.5</c> of <c>x * 0.5</c>) to
/// libtorch without keeping them alive, so a collection during the native call can finalise one while libtorch reads
/// it: "Expected false to be true" or "Unknown scalar type" (dotnet/TorchSharp#1434). With a pause around each step,
/// a step's scalars can only be collected after the step. Under a thread allocating 200 KB every millisecond, a
/// training loop crashed 45 times in a minute without the pause and never with it.
/// <para>Starting a pause runs one full collection, which is cheap for this library's small managed heap. An
/// application with a large managed heap may prefer to set <see cref="Enabled"/> to false and retry a failed step
/// instead. Pauses nest and may be taken by several threads; a step that allocates more than
/// <see cref="BudgetBytes"/> simply ends the pause early.</para>
/// </summary>
public static class CollectionPause
{
    public static bool Enabled { get; set; } = true;
    public const long BudgetBytes = 64L << 20;

    static readonly Lock Gate = new();
    static int _holders;

    /// <summary>Starts a pause (or joins the current one); dispose the result at the end of the step.</summary>
    public static Scope Begin()
    {
        if (!Enabled) return new Scope(false);
        lock (Gate)
        {
            if (_holders++ == 0 && GCSettings.LatencyMode != GCLatencyMode.NoGCRegion)
                try { GC.TryStartNoGCRegion(BudgetBytes); }
                catch (InvalidOperationException) { }     // a pause started outside this class
                catch (ArgumentOutOfRangeException) { }   // a runtime whose ephemeral space is smaller than the budget
        }
        return new Scope(true);
    }

    static void End()
    {
        lock (Gate)
        {
            if (--_holders == 0 && GCSettings.LatencyMode == GCLatencyMode.NoGCRegion)
                try { GC.EndNoGCRegion(); }
                catch (InvalidOperationException) { }     // the step outgrew the budget: collections already resumed
        }
    }

    public struct Scope(bool held) : IDisposable
    {
        bool _held = held;

        public void Dispose()
        {
            if (!_held) return;
            _held = false;
            End();
        }
    }
}
