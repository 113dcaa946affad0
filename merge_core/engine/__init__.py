"""The per-key streaming engine: plan in, one tensor at a time through a method, out to a sink.

At any moment it holds the input tensors of one key (plus the next keys', read ahead on a helper thread
while this one computes) and one output tensor. Inputs are read-only: every result is a new tensor. The
math runs on one torch thread, scoped to the merge (merge_core/threads.py says why: many short parallel
regions collapse when another process holds a core); a large key's second half runs on a thread of its own.

stream.py holds the loop (run_merge); each key goes to the handler of its action: copied.py (kept from A,
taken from B), linear.py (a merge mode's formula), calc.py (a calc mode), nmodel.py (n-model combine).
"""
from __future__ import annotations

from ..io.sinks import DictSink, FileSink, Sink
from .calc import apply_calc, calc_tensor, cosine_statistics, key_context
from .linear import CHUNK_ELEMENTS, SPLIT_ELEMENTS, fused_merge, fuses, in_halves, merge_tensor, split_work
from .nmodel import combine_tensor
from .progress import MergeCancelled, ProgressFn, StopFn
from .stream import output_layout, run_merge

__all__ = ["CHUNK_ELEMENTS", "SPLIT_ELEMENTS", "DictSink", "FileSink", "MergeCancelled", "ProgressFn", "Sink",
           "StopFn", "apply_calc", "calc_tensor", "combine_tensor", "cosine_statistics", "fused_merge", "fuses",
           "in_halves", "key_context", "merge_tensor", "output_layout", "run_merge", "split_work"]
