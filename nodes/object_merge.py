"""Merging two or three loaded MODELs or CLIPs: plan, lazy patches on a clone of A, the checks that run
when the model loads, and the recipe. The merge nodes and Load Recipe share it; no node is declared here.
"""
from __future__ import annotations

from typing import Any, Optional

from ..merge_core.api import make_settings as core_settings
from ..merge_core.engine import cosine_statistics
from ..merge_core.errors import MergeInputError
from ..merge_core.input_names import renamed
from ..merge_core.methods.calcmodes import get_calc_mode, resolve_modes, smooth_delta
from ..merge_core.methods.modes import get_mode
from ..merge_core.plan import MERGE, MergeSettings, build_plan
from .comfy_models import (apply_plan, architecture_of, base_layout, base_weights, check_same_architecture,
                           effective_weight, key_patches, make_calc_adapter, shapes_of, value_dtype)
from .merge_fields import resolve_block_weights
from .nonfinite_watch import result_check, watch_inputs
from .recipe_tags import loader_file_names, set_recipe, source_of
from .shared import progress_bar


def make_settings(arch, **params) -> MergeSettings:
    """MergeSettings from a merge node's settings (block weights read from their preset combo or text)."""
    return core_settings(arch, **resolve_block_weights(params))


def tag_recipe(kind: str, merged: Any, plan, params: dict, objects: dict, hidden: Any, scope: str = "") -> str:
    """Attach the merge's recipe to the result (it chains into later merges and saves); returns its text."""
    from ..merge_core import recipe as core
    resolved = resolve_block_weights(params)
    files = loader_file_names(hidden)
    used = ("a", "b", "c") if plan.settings.needs_c else ("a", "b")
    inputs = {n: source_of(objects[n], kind, f"{kind}_{n}", files) for n in used if objects.get(n) is not None}
    tree = core.merge_step(scope or kind, resolved, plan.settings, inputs)
    set_recipe(merged, kind, tree)
    return core.recipe_text(tree)


def prepare_calc(plan, a, kind: str, patches: dict, dtypes_a: dict, stats=None, label: str = "Merge") -> dict:
    """Per-key patches for a non-linear calc mode.

    smoothAdd is computed here, once: its filters take seconds per large tensor,
    and a lazy adapter would redo them at every load of the model (each sampler
    run that switches models). The filtered delta is kept in A's dtype and added
    as a plain diff. Every other calc mode is a few elementwise passes per key,
    about what a nested patch costs at load, so it stays lazy (a weight adapter,
    no memory held); cosineA/B first need global statistics, streamed here over
    the effective weights of A and B.
    """
    settings = plan.settings
    merged = [kp for kp in plan.keys if kp.action == MERGE]
    prepared = {}
    if settings.calc.name == "smoothAdd":
        import torch

        import comfy.model_management
        device = comfy.model_management.get_torch_device()  # the GPU when there is one: filters run there
        progress = progress_bar(len(merged))
        for i, kp in enumerate(merged):
            b = effective_weight(patches["b"][kp.key], device)
            c = effective_weight(patches["c"][kp.key], device)
            delta = smooth_delta(b, c).to(device=torch.device("cpu"), dtype=value_dtype(dtypes_a[kp.key]))
            prepared[kp.key] = (kp.alpha, ("diff", (delta,)))
            progress(i + 1, len(merged))
        return prepared
    if settings.calc.needs_stats and stats is None:
        stats = shared_cosine_statistics([(plan, a, kind, patches)])
    for kp in merged:
        c_list = patches["c"][kp.key] if "c" in patches else None
        prepared[kp.key] = (1.0, make_calc_adapter(settings, kp, patches["b"][kp.key], c_list, stats, plan.fallbacks,
                                                   label, dtypes_a[kp.key]))
    return prepared


def shared_cosine_statistics(jobs: list) -> tuple:
    """cosineA/B statistics over every (plan, A, kind, patches of B) job together: Merge Checkpoints
    takes them over U-Net and text encoder at once, as SuperMerger and the CLI do."""
    def fetcher(a, kind, patches):
        a_patches = key_patches(a, kind)
        return lambda k: (effective_weight(a_patches[k]), effective_weight(patches["b"][k]))
    pairs = [(plan, fetcher(a, kind, patches)) for plan, a, kind, patches in jobs]
    total = sum(len(plan.merged()) for plan, *_ in jobs)
    return cosine_statistics(*pairs[0], progress=progress_bar(total), also=tuple(pairs[1:]))


def plan_objects(kind: str, a: Any, b: Any, c: Optional[Any], params: dict, like=None, check_targets: bool = True):
    """The merge plan of two or three MODELs (kind "model") or CLIPs (kind "clip"):
    (plan, B/C patches, A's dtypes, A's weights).

    like: the architecture of the MODEL merged alongside (Merge Checkpoints); a CLIP of its family takes
    that model's layout, so one block list (sized to the model: a tiny or pruned Flux) serves both."""
    mode, calc = resolve_modes(get_mode(params["mode"]), get_calc_mode(params.get("calcmode", "normal")))
    needs_c = mode.needs_c or (calc is not None and calc.needs_c)
    if needs_c and c is None:
        what = calc.name if calc is not None else mode.label
        raise MergeInputError(f"{kind}_c", f"is required by '{what}' but is not connected.",
                              f"connect a {kind.upper()} C, or choose Weight sum.")
    others = {"b": b} | ({"c": c} if (c is not None and needs_c) else {})
    patches = {name: key_patches(obj, kind, f"{kind}_{name}") for name, obj in others.items()}
    weights_a = base_weights(a, kind)
    shapes_a, dtypes_a = base_layout(a, kind, weights_a)
    shapes = {"a": shapes_a} | {name: shapes_of(p) for name, p in patches.items()}
    archs = {name: architecture_of(s, f"{kind}_{name}") for name, s in shapes.items()}
    arch = check_same_architecture(archs, kind)
    if like is not None and like.name == arch.name:
        arch = like
    settings = make_settings(arch, **params)
    try:
        dtypes = {"a": dtypes_a} | {name: {k: v[0][0].dtype for k, v in p.items()} for name, p in patches.items()}
        plan = build_plan(arch, settings, shapes["a"], shapes["b"], shapes.get("c"), dtypes=dtypes,
                          check_targets=check_targets)
    except MergeInputError as exc:  # plan errors speak of model_*; name this node's input
        raise renamed(exc, f"{kind} node") from None
    return plan, patches, dtypes_a, weights_a


def merge_objects(kind: str, a: Any, b: Any, c: Optional[Any], params: dict, planned=None, stats=None,
                  node: tuple[str, Optional[str]] = ("Merge", None)):
    """Merge two or three MODELs or CLIPs; returns (patched clone of A, plan).
    planned: plan_objects' result when already made; stats: shared cosine statistics;
    node: (label, node id) the load-time NaN/inf warning names and is shown on."""
    plan, patches, dtypes_a, weights_a = planned or plan_objects(kind, a, b, c, params)
    patches, observers = watch_inputs(plan, a, kind, patches, *node, a_weights=weights_a)
    if plan.settings.calc is None:
        last = later_checks(plan, dtypes_a) | linear_checks(plan, patches, dtypes_a)
        return apply_plan(a, plan, patches, first=observers, last=last), plan
    prepared = prepare_calc(plan, a, kind, patches, dtypes_a, stats, node[0])
    return apply_plan(a, plan, patches, prepared, first=observers, last=later_checks(plan, dtypes_a)), plan


def later_checks(plan, dtypes_a: dict) -> dict:
    """{key: result check} for what no adapter checks when the model loads: smoothAdd's delta, computed once
    here and added as a plain diff (every merged key), and Adjust's scale or shift (its few keys)."""
    smooth = plan.settings.calc is not None and plan.settings.calc.name == "smoothAdd"
    return {kp.key: result_check(plan.input_watch, kp.key, *(("smoothAdd", "calcmode") if smooth else
                                                             ("adjust", "adjust")), dtypes_a[kp.key])
            for kp in plan.merged() if smooth or kp.adjust}


def linear_checks(plan, patches: dict, dtypes_a: dict) -> dict:
    """{key: result check} for the merged keys whose linear merge could leave the range of A's dtype (ComfyUI
    rounds the merged weight into it): alpha or beta outside [0, 1], or inputs wider than A
    (nonfinite.may_leave_range); none for a weight sum of equal dtypes with alpha in [0, 1]."""
    import torch

    from ..merge_core.nonfinite import may_leave_range
    mode, watch = plan.settings.mode, plan.input_watch
    merged, lists = plan.merged(), list(patches.values())
    # the node's hot path (ms on a 1000-key model): first the worst case over the whole plan, once per distinct
    # (alpha, beta): the widest input dtype into the narrowest A dtype; only if that can leave the range, per key
    outs = {dtypes_a[kp.key] for kp in merged}
    widest = {*outs, *(d for per_key in lists for plist in per_key.values()
                       if (d := plist[0][0].dtype).is_floating_point)}
    narrowest = min(outs, key=lambda d: torch.finfo(d).max) if outs else None
    if narrowest is None or not any(may_leave_range(mode.name, alpha, beta, tuple(widest), narrowest)
                                    for alpha, beta in {(kp.alpha, kp.beta) for kp in merged}):
        return {}
    checks = {}
    for kp in merged:
        dtype = dtypes_a[kp.key]
        inputs = (dtype, *(per_key[kp.key][0][0].dtype for per_key in lists if kp.key in per_key))
        if may_leave_range(mode.name, kp.alpha, kp.beta, inputs, dtype):
            checks[kp.key] = result_check(watch, kp.key, mode.name, "mode", dtype)
    return checks
