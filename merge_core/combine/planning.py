"""An n-model merge's per-key plan: the two-model plan with A = the base and B = the keys every model has, so
block weights, elemental rules, include/exclude and the report work as for every other merge. The engine then
streams the keys (engine.run_merge, read-ahead included) and hands each merged key's n + 1 tensors to the method."""
from __future__ import annotations

from typing import Mapping, Optional, Sequence

import torch

from ..architectures import Architecture, detect, require_compatible
from ..errors import MergeInputError
from ..io.sources import KeySource
from ..plan import KEEP_A, MergePlan, Reason, build_plan
from .settings import CombineSettings, make_combine_settings

BASE = "a"  # the base's source name; the models are m1..mn (model_names)


def model_names(n: int) -> tuple[str, ...]:
    """Source names of M1..Mn."""
    return tuple(f"m{i + 1}" for i in range(n))


def combine_architecture(shapes: Sequence[Mapping[str, Sequence[int]]]) -> Architecture:
    """The base's architecture, every model checked against it (model 1 is the first after the base)."""
    arch = detect(shapes[0])
    if arch is None:
        raise MergeInputError("base", "is not a recognised model (no U-Net or text-encoder keys).",
                              "pass a Stable Diffusion checkpoint or U-Net file as the base.")
    for i, s in enumerate(shapes[1:]):
        require_compatible(arch, detect(s), f"model {i + 1}")
    return arch


def common_shapes(model_shapes: Sequence[Mapping[str, Sequence[int]]]) -> dict[str, tuple[int, ...]]:
    """Keys every model has, with their (equal) shape; a key shaped differently in two models is an error."""
    first = model_shapes[0]
    out = {}
    for key, shape in first.items():
        if not all(key in s for s in model_shapes[1:]):
            continue
        for i, s in enumerate(model_shapes[1:]):
            if tuple(s[key]) != tuple(shape):
                raise MergeInputError(f"model {i + 2}", f"tensor '{key}' has shape {list(s[key])} but model 1 has "
                                                        f"{list(shape)}.", "combine models of the same size.")
        out[key] = tuple(shape)
    return out


def plan_combine(settings: CombineSettings, arch: Architecture, base_shapes: Mapping[str, Sequence[int]],
                 model_shapes: Sequence[Mapping[str, Sequence[int]]],
                 dtypes: Optional[Mapping[str, Mapping[str, torch.dtype]]] = None) -> MergePlan:
    """The per-key plan: keys the base and every model have are merged with their block/elemental alpha."""
    try:
        plan = build_plan(arch, settings, base_shapes, common_shapes(model_shapes), None, False, dtypes)
    except MergeInputError as exc:  # the two-model plan speaks of model_b: here that is model 1 (or another)
        if exc.input_name == "model_b":
            raise MergeInputError("models", exc.problem.replace("model A", "the base"), exc.fix) from None
        raise
    for i, kp in enumerate(plan.keys):
        if kp.reason is Reason.ABSENT_FROM_B:
            plan.keys[i] = type(kp)(kp.key, KEEP_A, kp.block, reason=Reason.ABSENT_FROM_MODEL)
    plan.models = model_names(len(model_shapes))
    return plan


def plan_sources(sources: Mapping[str, KeySource], method: str, **options) -> MergePlan:
    """The plan of {"a": base, "m1": ..., "mn": ...}; options: make_combine_settings' keywords."""
    names = [n for n in sources if n != BASE]
    shapes = [sources[BASE].shapes()] + [sources[n].shapes() for n in names]
    arch = combine_architecture(shapes)
    settings = make_combine_settings(arch, len(names), method, **options)
    dtypes = {n: {k: src.dtype(k) for k in src.shapes()} for n, src in sources.items()}
    return plan_combine(settings, arch, shapes[0], shapes[1:], dtypes)
