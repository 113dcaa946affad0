"""n-model merges (TIES, DARE, Model Stock, ...): a base C and models M1..Mn into C + alpha * delta, key by key.

The plan is the two-model plan with A = the base and B = the models' common keys, so block weights,
elemental rules, include/exclude and the report work as for every other merge; the engine streams the
keys (engine.run_merge, read-ahead included) and hands each merged key's n + 1 tensors to the method.
"""
from __future__ import annotations

import json
from typing import Mapping, Optional, Sequence

import torch

from .api import OUTPUT_DTYPES, _seed, open_files
from .architectures import Architecture, detect, require_compatible
from .blocks.elemental import parse_elemental
from .blocks.selection import parse_selection
from .blocks.weights import parse_block_weights
from .engine import DictSink, FileSink, ProgressFn, StopFn, run_merge
from .errors import MergeInputError, require_finite, require_ratio
from .io.output_file import check_target
from .io.sources import KeySource, open_source
from .methods.modes import MODES  # the plan needs a mode: weight_sum needs no C (unused by the engine here)
from .methods.nway import MethodParams, check_params, get_method
from .plan import KEEP_A, MergePlan, MergeSettings, Reason, build_plan

BASE = "a"


def model_names(n: int) -> tuple[str, ...]:
    """Source names of M1..Mn."""
    return tuple(f"m{i + 1}" for i in range(n))


def parse_weights(text, input_name: str = "weights") -> Optional[tuple[float, ...]]:
    """'0.6,0.4' (or a sequence of numbers) as a tuple; empty or None: 1 per model."""
    if text is None or (isinstance(text, str) and not text.strip()):
        return None
    items = text.replace(";", ",").split(",") if isinstance(text, str) else list(text)
    out = []
    for i, item in enumerate(items):
        try:
            out.append(require_ratio(input_name, float(item), f"value #{i + 1} "))
        except ValueError as exc:
            if isinstance(exc, MergeInputError):
                raise
            raise MergeInputError(input_name, f"value #{i + 1} '{str(item).strip()}' is not a number.",
                                  "give numbers separated by commas, e.g. 0.6,0.4.") from None
    return tuple(out)


def make_combine_settings(arch: Architecture, n_models: int, method: str, alpha: float = 1.0,
                          weights=None, density: float = 0.2, drop_rate: float = 0.9,
                          epsilon: Optional[float] = None, top: float = 0.01, bottom: float = 0.1,
                          iterations: int = 100, seed: int = 0, blocks: Optional[str] = None,
                          elemental: str = "", include_exclude: str = "") -> MergeSettings:
    """Parse and check user-facing combine settings. epsilon: DELLA's spread (default 0.1), or the geometric
    median's smallest distance (default 1e-6), whichever the method uses."""
    chosen = get_method(method)
    defaults = MethodParams()
    eps = {} if epsilon is None else ({"median_eps": epsilon} if chosen.name == "geometric_median"
                                      else {"epsilon": epsilon})
    params = MethodParams(weights=parse_weights(weights), density=density, drop_rate=drop_rate,
                          top=top, bottom=bottom, seed=_seed(seed), iterations=_count("iterations", iterations),
                          **{"epsilon": defaults.epsilon, "median_eps": defaults.median_eps, **eps})
    check_params(chosen, params, n_models)
    return MergeSettings(mode=MODES["weight_sum"], alpha=require_ratio("alpha", alpha),
                         blocks_alpha=parse_block_weights(blocks, arch, "blocks_alpha"), seed=params.seed,
                         elemental=parse_elemental(elemental, arch), selection=parse_selection(include_exclude, arch),
                         method=chosen, method_params=params)


def _count(input_name: str, value) -> int:
    """A whole number of steps (a float such as 100.0 is taken; NaN, inf or 2.5 are refused)."""
    number = require_finite(input_name, value, "give a whole number such as 100.")
    if number != int(number):
        raise MergeInputError(input_name, f"is {number:g}, not a whole number.", "give a whole number such as 100.")
    return int(value) if isinstance(value, int) else int(number)


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


def plan_combine(settings: MergeSettings, arch: Architecture, base_shapes: Mapping[str, Sequence[int]],
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


def combine_state_dicts(base: Mapping[str, torch.Tensor], models: Sequence[Mapping[str, torch.Tensor]], *,
                        method: str = "task_arithmetic", dtype: Optional[torch.dtype] = None,
                        **options) -> dict[str, torch.Tensor]:
    """In-memory n-model merge; returns a new dict (inputs are not modified)."""
    sources = {BASE: open_source(base, "base")} | {n: open_source(m, n.upper())
                                                   for n, m in zip(model_names(len(models)), models)}
    return run_merge(plan_sources(sources, method, **options), sources, DictSink(), dtype)


def combine_metadata(plan: MergePlan, names: Mapping[str, str]) -> dict[str, str]:
    """merge_suite_recipe: the method, its parameters (those it uses) and the models, as flat JSON; and the
    recipe tree in sd_merge_recipe, which Load Recipe replays (names: base first, then the models in order)."""
    s, p = plan.settings, plan.settings.method_params
    used = {name: getattr(p, name) for name in s.method.uses if name != "weights"}
    recipe = {"type": "merge-suite-combine", "method": s.method.name, "alpha": s.alpha,
              "weights": list(p.weights) if p.weights is not None else None, **used,
              "blocks_alpha": s.blocks_alpha.as_text() if s.blocks_alpha else None,
              "elemental": ",".join(r.text for r in s.elemental) or None,
              "include_exclude": s.selection.text if s.selection else None,
              "architecture": plan.arch.name, "models": dict(names)}
    from . import recipe as recipes
    tree = recipes.combine_step(s, [recipes.leaf(name) for name in names.values()])
    return {"merge_suite_recipe": json.dumps({k: v for k, v in recipe.items() if v is not None}, sort_keys=True),
            **recipes.file_metadata(tree, tree)}


def combine_files(base: str, models: Sequence[str], output: str, *, method: str = "task_arithmetic",
                  dtype: Optional[str] = None, overwrite: bool = False, progress: Optional[ProgressFn] = None,
                  should_stop: Optional[StopFn] = None, **options) -> MergePlan:
    """Combine safetensors files key by key into ``output`` (written atomically, never onto an input)."""
    if dtype is not None and dtype not in OUTPUT_DTYPES:
        raise MergeInputError("dtype", f"unknown output dtype '{dtype}'.", "use fp16, bf16 or fp32.")
    paths = {BASE: base} | dict(zip(model_names(len(models)), models))
    check_target(output, paths.values(), overwrite)
    sources = open_files(paths)
    try:
        plan = plan_sources(sources, method, **options)
        names = {"base": sources[BASE].name} | {n.upper(): sources[n].name for n in plan.models}
        run_merge(plan, sources, FileSink(output, combine_metadata(plan, names), overwrite, list(paths.values())),
                  OUTPUT_DTYPES[dtype] if dtype else None, progress, should_stop)
        return plan
    finally:
        for src in sources.values():
            src.close()
