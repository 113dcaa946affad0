"""Library entry points of n-model merges (TIES, DARE, Model Stock, ...): a base C and models M1..Mn into
C + alpha * delta, key by key, in memory or from files to a file."""
from __future__ import annotations

import json
from typing import Mapping, Optional, Sequence, cast

import torch

from ..api import OUTPUT_DTYPES, open_files
from ..engine import DictSink, FileSink, ProgressFn, StopFn, run_merge
from ..errors import MergeInputError
from ..io.output_file import check_target
from ..io.sources import open_source
from ..plan import MergePlan
from .planning import BASE, model_names, plan_sources
from .settings import CombineSettings


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
    s = cast(CombineSettings, plan.settings)  # an n-model plan's
    p = s.method_params
    used = {name: getattr(p, name) for name in s.method.uses if name != "weights"}
    recipe = {"type": "merge-suite-combine", "method": s.method.name, "alpha": s.alpha,
              "weights": list(p.weights) if p.weights is not None else None, **used,
              "blocks_alpha": s.blocks_alpha.as_text() if s.blocks_alpha else None,
              "elemental": ",".join(r.text for r in s.elemental) or None,
              "include_exclude": s.selection.text if s.selection else None,
              "architecture": plan.arch.name, "models": dict(names)}
    from .. import recipe as recipes
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
