"""Per-tensor merge math: the merge modes, calc modes, smoothAdd's filters with the native median kernel, and Adjust."""
