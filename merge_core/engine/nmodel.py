"""Merged keys of an n-model plan (``plan.models``): the base and every model's tensor through the method.

The plan's settings do the per-key math: they give `method` (its name, for errors; compute_bound) and
`merge_key(key, alpha, base, models, fallbacks)` (merge_core/combine/settings.py), so the engine does not import
the combine package, which imports the engine for its entry points."""
from __future__ import annotations

from typing import Optional, Protocol, cast

import torch

from .. import threads as thread_policy
from ..nonfinite import check_result, count_inputs as count_nonfinite_inputs
from ..plan import KeyPlan
from .job import MergeJob, Put


class NamedMethod(Protocol):
    """A method as errors name it, and whether its math is compute-bound (matrix decompositions)."""

    @property
    def name(self) -> str: ...

    @property
    def compute_bound(self) -> bool: ...


class KeyCombiner(Protocol):
    """What the engine reads from an n-model plan's settings (CombineSettings, or any object with these)."""

    @property
    def method(self) -> NamedMethod: ...

    def merge_key(self, key: str, alpha: float, base: torch.Tensor, models: list,
                  fallbacks: Optional[list] = None) -> torch.Tensor: ...


def is_compute_bound(plan) -> bool:
    """An n-model plan whose method decomposes matrices (seconds of math per key): the stream then loads only the
    next key ahead and keeps no read buffers for reuse, which would hold memory beside the decompositions for
    nothing, and the math takes every idle core."""
    return bool(plan.models) and cast(KeyCombiner, plan.settings).method.compute_bound


def combine_tensor(kp: KeyPlan, settings: KeyCombiner, base: torch.Tensor, models: list, out_dtype: torch.dtype,
                   fallbacks: Optional[list] = None) -> torch.Tensor:
    """One key through the n-model method: base + alpha * delta, whole tensors (the methods rank, trim
    and take norms over the whole key). An inpainting base merges its first input channels only."""
    n = kp.input_channels
    part = settings.merge_key(kp.key, kp.alpha, base if n is None else base[:, :n], models, fallbacks)
    if n is None:
        return part.to(out_dtype)
    out = base.to(out_dtype, copy=True)
    out[:, :n] = part.to(out_dtype)
    return out


class CombineKey:
    """The handler of merged keys of an n-model plan; the math stays on the host."""

    def __init__(self, job: MergeJob):
        self.job = job
        self.names = ("a", *job.plan.models)  # the base, then M1..Mn

    def reads(self, kp: KeyPlan) -> tuple[str, ...]:
        return self.names

    def load(self, kp: KeyPlan):
        """The base and the models' tensors, with their NaN/inf counts."""
        base, *models = (self.job.sources[name].get(kp.key) for name in self.names)
        return base, models, count_nonfinite_inputs({"base": base} | {f"M{j + 1}": m for j, m in enumerate(models)})

    def compute(self, kp: KeyPlan, loaded) -> Put:
        job, settings = self.job, cast(KeyCombiner, self.job.plan.settings)
        base, models, nonfinite = loaded
        job.note_nonfinite(kp.key, nonfinite)
        notes: list = []
        # the stream runs its math on one thread (memory-bound); an SVD gains from every core that is idle
        threads = thread_policy.compute_threads() if is_compute_bound(job.plan) else thread_policy.MERGE_THREADS
        with thread_policy.torch_threads(threads):
            result = combine_tensor(kp, settings, base, models, job.dtypes[kp.key], notes)
        job.note_fallback(kp.key, notes)
        check_result(result, kp.key, settings.method.name, not nonfinite, "method", result.dtype)
        job.give_back(zip(self.names, (base, *models)), result)
        return Put(job.sink.put, kp.key, result)
