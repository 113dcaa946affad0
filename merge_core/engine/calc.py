"""Merged keys under a calc mode (methods/calcmodes.py), and the cosine modes' statistics over a whole plan."""
from __future__ import annotations

from typing import Callable, Optional, cast

import torch

from .. import threads as thread_policy
from ..architectures import fused_tensor_of
from ..methods.calcmodes import CalcMode, KeyContext, column_sums, cosine_stats, similarities_from_sums
from ..nonfinite import check_result, count_inputs as count_nonfinite_inputs
from ..plan import KeyPlan, MergePlan, MergeSettings
from .job import MergeJob, Put
from .linear import CHUNK_ELEMENTS
from .progress import ProgressFn, StopFn, stop_if_asked


def key_context(kp: KeyPlan, settings: MergeSettings, stats=None, fallbacks: Optional[list] = None) -> KeyContext:
    """stats: cosine modes' ((s_min, s_max), {key: combined similarity}) from cosine_statistics;
    fallbacks: a list the calc mode appends to where its documented fallback applied."""
    bounds, combined = stats if stats is not None else (None, {})
    return KeyContext(kp.key, kp.alpha, kp.beta, settings.gamma, settings.seed, bounds,
                      settings.tensor2_corrected, combined.get(kp.key), fallbacks)


def calc_mode(settings: MergeSettings) -> CalcMode:
    """The settings' calc mode: the functions here run only for a plan that has one."""
    assert settings.calc is not None, "a calc-mode key of a plan without a calc mode"
    return settings.calc


def apply_calc(kp: KeyPlan, settings: MergeSettings, a: torch.Tensor, b: torch.Tensor,
               c: Optional[torch.Tensor], stats=None, fallbacks: Optional[list] = None) -> Optional[torch.Tensor]:
    """One key through the plan's calc mode, in float32; None means "keep A".

    For an inpainting A (kp.input_channels set) only A[:, :n] takes part and the
    result covers those channels only.
    """
    n = kp.input_channels
    a32 = a.float() if n is None else a[:, :n].float()
    return calc_mode(settings).fn(a32, b.float(), None if c is None else c.float(),
                            key_context(kp, settings, stats, fallbacks))


def calc_tensor(kp: KeyPlan, settings: MergeSettings, a, b, c, out_dtype, stats=None,
                chunk: int = CHUNK_ELEMENTS, fallbacks: Optional[list] = None) -> torch.Tensor:
    """One key through the calc mode into a new tensor of out_dtype, chunked where the mode allows."""
    calc = calc_mode(settings)
    chunking = calc.chunking if kp.input_channels is None else ""
    if chunking == "rows" and (a.dim() < 2 or (calc.needs_stats and stats is None)):
        chunking = ""  # cosine rows need the key's similarity from stage 0; 1-D extract is one row
    if chunking:
        ctx = key_context(kp, settings, stats)
        out = torch.empty(a.shape, dtype=out_dtype, device=a.device)
        if chunking == "flat":
            views = [a.reshape(-1), b.reshape(-1), None if c is None else c.reshape(-1), out.view(-1)]
            step = chunk
        else:
            views = [a, b, c, out]
            step = max(1, chunk // max(1, a[0].numel()))
        va, vb, vc, vo = views
        for start in range(0, va.shape[0], step):
            part_a = va[start:start + step].float()
            r = calc.fn(part_a, vb[start:start + step].float(),
                        None if vc is None else vc[start:start + step].float(), ctx)
            vo[start:start + step].copy_(part_a if r is None else r)
        return out
    result = apply_calc(kp, settings, a, b, c, stats, fallbacks)
    if result is None:
        return a.to(out_dtype, copy=True)
    if kp.input_channels is None:
        return result.to(out_dtype)
    out = a.to(out_dtype, copy=True)
    out[:, :kp.input_channels] = result.to(out_dtype)
    return out


def cosine_statistics(plan: MergePlan, fetch: Callable[[str], tuple[torch.Tensor, torch.Tensor]],
                      progress: Optional[ProgressFn] = None, should_stop: Optional[StopFn] = None,
                      also: tuple = ()):
    """Stage 0 of cosineA/B: similarity statistics over every merged key, streamed.

    ``fetch(key)`` returns A's and B's tensors of one key. Kept: per-column sums (far
    smaller than the weights) per checkpoint tensor, a tensor that ComfyUI splits into
    parts being summed over its parts (fused_tensor_of), which give (s_min, s_max) and
    each key's combined similarity, which stage 1 reuses. ``also``: more (plan, fetch)
    pairs sharing the statistics, as a checkpoint's U-Net and text encoder do in SuperMerger.
    """
    with thread_policy.torch_threads(thread_policy.MERGE_THREADS):
        return _cosine_statistics(plan, fetch, progress, should_stop, also)


def _cosine_statistics(plan, fetch, progress, should_stop, also):
    variant = plan.settings.calc.name
    jobs = [(kp, f) for p, f in ((plan, fetch), *also) for kp in p.merged()]
    sums, members = {}, {}
    for i, (kp, fetch_key) in enumerate(jobs):
        stop_if_asked(should_stop)
        a, b = fetch_key(kp.key)
        if kp.input_channels is not None:
            a = a[:, :kp.input_channels]
        whole = fused_tensor_of(kp.key)
        part = column_sums(a, b)
        sums[whole] = part if whole not in sums else tuple(x + y for x, y in zip(sums[whole], part))
        members.setdefault(whole, []).append(kp.key)
        if progress is not None:
            progress(i + 1, len(jobs))
    values, combined = [], {}
    for whole, total in sums.items():
        stage0, similarity = similarities_from_sums(*total, variant)
        values.append(stage0.detach().reshape(-1).to(torch.float64))
        combined.update((key, similarity) for key in members[whole])
    return cosine_stats(torch.cat(values) if values else torch.empty(0, dtype=torch.float64)), combined


class CalcKey:
    """The handler of merged keys under a calc mode. stats: the cosine modes' stage 0 (``statistics``)."""

    def __init__(self, job: MergeJob, stats=None):
        settings = cast(MergeSettings, job.plan.settings)  # a two-model merge's plan, with a calc mode
        self.job, self.settings, self.calc, self.stats = job, settings, calc_mode(settings), stats

    @classmethod
    def with_statistics(cls, job: MergeJob, should_stop: Optional[StopFn]) -> CalcKey:
        """The handler, with stage 0 computed first where the calc mode needs it (a pass over A and B)."""
        if not calc_mode(cast(MergeSettings, job.plan.settings)).needs_stats:
            return cls(job)
        sources, move = job.sources, job.move

        def pair(key: str):
            return move.inputs(move.prepare(sources["a"].get(key)), move.prepare(sources["b"].get(key)))
        return cls(job, cosine_statistics(job.plan, pair, should_stop=should_stop))

    def reads(self, kp: KeyPlan) -> tuple[str, ...]:
        return ("a", "b", "c") if self.settings.needs_c else ("a", "b")

    def load(self, kp: KeyPlan):
        """A, B (and C), moved toward the math device, with their NaN/inf counts: counted here, on the
        read-ahead thread, overlapping the previous key's math."""
        sources = self.job.sources
        a, b = sources["a"].get(kp.key), sources["b"].get(kp.key)
        c = sources["c"].get(kp.key) if self.settings.needs_c else None
        nonfinite = count_nonfinite_inputs({"A": a, "B": b, "C": c})
        move = self.job.move
        return move.prepare(a), move.prepare(b), move.prepare(c), nonfinite

    def compute(self, kp: KeyPlan, loaded) -> Put:
        job = self.job
        *inputs, nonfinite = loaded
        a, b, c = job.move.inputs(*inputs)
        job.note_nonfinite(kp.key, nonfinite)
        notes: list = []
        result = calc_tensor(kp, self.settings, a, b, c, job.dtypes[kp.key], self.stats, fallbacks=notes)
        job.note_fallback(kp.key, notes)
        check_result(result, kp.key, self.calc.name, not nonfinite, "calcmode", result.dtype)
        return job.merged_put(kp, inputs, result)
