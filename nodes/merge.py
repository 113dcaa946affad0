"""Merge nodes: SuperMerger's four merge modes with block weights, on MODEL and CLIP.

alpha is the weight of model B (0 gives A, 1 gives B), as in SuperMerger; ComfyUI's
own ModelMergeSimple uses the reverse. Results are lazy clones of A: nothing is
computed or copied until a sampler loads the model.
"""
from __future__ import annotations

from typing import Any, Optional

from comfy_api.latest import io

from ..merge_core.api import make_settings as core_settings
from ..merge_core.engine import cosine_statistics
from ..merge_core.errors import MergeInputError
from ..merge_core.input_names import renamed
from ..merge_core.methods.calcmodes import get_calc_mode, resolve_modes, smooth_delta
from ..merge_core.methods.modes import get_mode
from ..merge_core.plan import MERGE, MergeSettings, build_plan, require_targets, target_keys
from ..merge_core.report import applied_report
from .comfy_models import (apply_plan, architecture_of, base_layout, base_weights, check_same_architecture,
                           effective_weight, key_patches, make_calc_adapter, shapes_of, value_dtype)
from .errors import named_errors
from .merge_fields import (RECIPE_TIP, REPORT_TIP, alpha_beta_problems, merge_params, resolve_block_weights,
                           settings_inputs)
from .nonfinite_watch import result_check, watch_inputs
from .recipe_tags import loader_file_names, set_recipe, source_of
from .search import search_fields
from .shared import CATEGORY, node_label, progress_bar
from .ui import merge_ui


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


class _PairMerge(io.ComfyNode):
    """Shared shape of the MODEL and CLIP merge nodes; subclasses only declare data."""

    KIND = ""
    IO = io.Model
    NODE_ID = DISPLAY = DESCRIPTION = ""
    TIPS = {"a": "", "b": "", "c": ""}

    @classmethod
    def define_schema(cls):
        k = cls.KIND
        return io.Schema(
            node_id=cls.NODE_ID, display_name=cls.DISPLAY, category=CATEGORY, description=cls.DESCRIPTION,
            inputs=[cls.IO.Input(f"{k}_a", tooltip=cls.TIPS["a"]), cls.IO.Input(f"{k}_b", tooltip=cls.TIPS["b"]),
                    *settings_inputs(), cls.IO.Input(f"{k}_c", optional=True, tooltip=cls.TIPS["c"])],
            outputs=[cls.IO.Output(display_name=k.upper()),
                     io.String.Output(display_name="report", tooltip=REPORT_TIP),
                     io.String.Output(display_name="recipe", tooltip=RECIPE_TIP)],
            hidden=[io.Hidden.prompt, io.Hidden.unique_id], **search_fields(cls.NODE_ID),
        )

    @classmethod
    def validate_inputs(cls, alpha=None, beta=None) -> bool | str:
        return alpha_beta_problems(cls, alpha, beta)

    @classmethod
    def execute(cls, **inputs) -> io.NodeOutput:
        k = cls.KIND
        a, b, c = inputs.pop(f"{k}_a"), inputs.pop(f"{k}_b"), inputs.pop(f"{k}_c", None)
        inputs, per_key = merge_params(inputs)
        with named_errors(cls.DISPLAY):
            merged, plan = merge_objects(k, a, b, c, inputs, node=node_label(cls, cls.DISPLAY))
            recipe = tag_recipe(k, merged, plan, inputs, {"a": a, "b": b, "c": c}, getattr(cls, "hidden", None))
            report = applied_report(plan, per_key)
            return io.NodeOutput(merged, report, recipe, ui=merge_ui(report, recipe, plan.arch))


class ModelMerge(_PairMerge):
    KIND, IO = "model", io.Model
    NODE_ID, DISPLAY = "MergeSuite_ModelMerge", "Merge Models"
    DESCRIPTION = ("Merge two or three diffusion models with SuperMerger's merge modes and per-block weights. "
                   "alpha = weight of B. The result is a lazy patch of A: no weights are copied.")
    TIPS = {"a": "Model A: the base. The result keeps its sampling settings.", "b": "Model B.",
            "c": "Model C: required by Add difference, Triple sum and sum Twice."}


class CLIPMerge(_PairMerge):
    KIND, IO = "clip", io.Clip
    NODE_ID, DISPLAY = "MergeSuite_CLIPMerge", "Merge CLIP"
    DESCRIPTION = ("Merge two or three text encoders with SuperMerger's merge modes. The text encoder is "
                   "SuperMerger's BASE block: block weights contribute their first (BASE) value. alpha = weight of B.")
    TIPS = {"a": "CLIP A: the base.", "b": "CLIP B.",
            "c": "CLIP C: required by Add difference, Triple sum and sum Twice."}


class CheckpointMerge(io.ComfyNode):
    DISPLAY = "Merge Checkpoints"

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MergeSuite_CheckpointMerge", display_name=cls.DISPLAY, category=CATEGORY,
            description="Merge MODEL and CLIP of two or three checkpoints in one node, as SuperMerger does: "
                        "the U-Net by block, the text encoder with the BASE ratio. alpha = weight of B.",
            inputs=[io.Model.Input("model_a", tooltip="Model A: the base."), io.Clip.Input("clip_a", tooltip="CLIP A."),
                    io.Model.Input("model_b", tooltip="Model B."), io.Clip.Input("clip_b", tooltip="CLIP B."),
                    *settings_inputs(),
                    io.Model.Input("model_c", optional=True, tooltip="Required by Add difference, Triple sum, sum Twice."),
                    io.Clip.Input("clip_c", optional=True, tooltip="Required by Add difference, Triple sum, sum Twice.")],
            outputs=[io.Model.Output(display_name="MODEL"), io.Clip.Output(display_name="CLIP"),
                     io.String.Output(display_name="report", tooltip=REPORT_TIP),
                     io.String.Output(display_name="recipe", tooltip=RECIPE_TIP)],
            hidden=[io.Hidden.prompt, io.Hidden.unique_id], **search_fields("MergeSuite_CheckpointMerge"),
        )

    @classmethod
    def validate_inputs(cls, alpha=None, beta=None) -> bool | str:
        return alpha_beta_problems(cls, alpha, beta)

    @classmethod
    def execute(cls, model_a, clip_a, model_b, clip_b, model_c=None, clip_c=None, **inputs) -> io.NodeOutput:
        params, per_key = merge_params(inputs)
        with named_errors(cls.DISPLAY):
            planned = {"model": plan_objects("model", model_a, model_b, model_c, params, check_targets=False)}
            planned["clip"] = plan_objects("clip", clip_a, clip_b, clip_c, params, like=planned["model"][0].arch,
                                           check_targets=False)
            # include/exclude targets and elemental rules select keys of the U-Net or of the text encoder
            require_targets(planned["model"][0].arch, planned["model"][0].settings,
                            [pair for k in ("model", "clip") for pair in
                             target_keys(planned[k][0].arch, [kp.key for kp in planned[k][0].keys])])
            stats = None
            if planned["model"][0].settings.calc is not None and planned["model"][0].settings.calc.needs_stats:
                stats = shared_cosine_statistics([(planned[k][0], a, k, planned[k][1])
                                                  for k, a in (("model", model_a), ("clip", clip_a))])
            model, model_plan = merge_objects("model", model_a, model_b, model_c, params, planned["model"], stats,
                                              node_label(cls, cls.DISPLAY + " (MODEL)"))
            clip, clip_plan = merge_objects("clip", clip_a, clip_b, clip_c, params, planned["clip"], stats,
                                            node_label(cls, cls.DISPLAY + " (CLIP)"))
            report = (applied_report(model_plan, per_key) + "\n\ntext encoder:\n"
                      + applied_report(clip_plan, per_key))
            hidden = getattr(cls, "hidden", None)
            recipe = tag_recipe("model", model, model_plan, params, {"a": model_a, "b": model_b, "c": model_c},
                                hidden, "checkpoint")
            tag_recipe("clip", clip, clip_plan, params, {"a": clip_a, "b": clip_b, "c": clip_c}, hidden, "checkpoint")
            return io.NodeOutput(model, clip, report, recipe, ui=merge_ui(report, recipe, model_plan.arch))


NODES = [ModelMerge, CLIPMerge, CheckpointMerge]
