namespace PromptToPrompt;

/// <summary>
/// A problem the user can fix (a missing file, a bad option, an unsupported config). The message names the
/// problem and the fix; front ends print it as one line, without a stack trace.
/// </summary>
public sealed class UserError(string message, Exception? inner = null) : Exception(message, inner);
