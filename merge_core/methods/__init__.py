"""Per-tensor merge math: the merge modes (and their fused native kernel), calc modes, smoothAdd's filters
with the native median kernel, and Adjust."""
