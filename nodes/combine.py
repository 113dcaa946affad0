"""Combine Models: a base and up to eight models through an n-model method (TIES, DARE, Model Stock, ...).

Thin: merge_core.combine plans (block weights, elemental, include/exclude) and merge_core.combine computes.
Every method is per key, so the result is a lazy clone of the base: each merged key is a weight adapter that
computes base + alpha * delta from the models' effective weights when the sampler loads the model.

Why fixed model inputs: ComfyUI 0.3.75's io.AutogrowDynamic only pretends to grow: it expands to its `max`
optional inputs with generated ids such as ``model1_$models_ag$`` and the frontend of that release does not
add or remove slots; eight optional inputs with plain names are the same for users and stable in saved
workflows.
"""
from __future__ import annotations

from typing import Any

from comfy_api.latest import io

from ..merge_core.blocks.presets import preset_names
from ..merge_core.combine.deltas import combine_key
from ..merge_core.combine.methods import METHOD_NAMES, METHODS, MethodParams, get_method
from ..merge_core.combine.params import PARAMETER_BY_FIELD, PARAMETERS, Parameter
from ..merge_core.combine.planning import plan_combine
from ..merge_core.combine.settings import make_combine_settings
from ..merge_core.report import applied_report
from .comfy_models import (apply_plan, architecture_of, base_layout, check_loaded, effective_weight, key_patches,
                           lazy_adapter, note_fallbacks, shapes_of)
from .errors import named_errors
from .history_log import record_merge
from .merge_fields import (BLOCKS_TIP, CUSTOM, PRESET_TIP, RECIPE_TIP, REPORT_TIP, merge_params, options_input,
                           resolve_block_weights)
from .nonfinite_watch import watch_inputs
from .recipe_tags import loader_file_names, set_recipe, source_of
from .shared import CATEGORY, node_label
from .ui import text_ui
from .validation import number_problems

MAX_MODELS = 8
METHOD_TIP = "Task vectors t_i = model_i - base; result = base + alpha * d. " + "  ".join(
    f"{m.name}: {m.formula}." for m in METHODS.values())
# Checked against their widgets' ranges before the run; whole numbers (iterations, seed, rank) are refused by the
# node itself, with the same one-line error as the CLI (ComfyUI skips widget limits where a node validates).
NUMBERS = ("alpha", *(p.name for p in PARAMETERS if p.kind is float))
# Key of the method input's spec that tells the frontend which inputs each method reads (web/js/method_inputs.js).
METHOD_INPUTS_KEY = "merge_suite_method_inputs"


def method_inputs() -> dict[str, list[str]]:
    """The method-specific inputs each method reads, by input name (from the method's own list of the parameters
    it uses, so the frontend can never hide one it reads). Method, alpha and block weights apply to every method."""
    return {m.name: [PARAMETER_BY_FIELD[p].name if p in PARAMETER_BY_FIELD else p for p in m.uses]
            for m in METHODS.values()}


def method_input() -> io.Combo.Input:
    """The method combo, carrying method_inputs() in its spec: the frontend shows only the chosen method's inputs.
    They are hidden there, never removed, so the node's inputs, saved workflows and API prompts stay as they are."""
    combo = io.Combo.Input("method", options=METHOD_NAMES, default="ties", tooltip=METHOD_TIP)
    combo.extra_dict[METHOD_INPUTS_KEY] = method_inputs()  # 0.3.75's Combo.Input takes no extra_dict argument
    return combo


def parameter_tip(row: Parameter) -> str:
    """The row's help, the methods that read it and its domain: one tooltip per parameter, from the table."""
    users = ", ".join(m.name for m in METHODS.values() if row.field in m.uses) or "no method"
    return f"{users}: {row.help} ({row.domain()})."


def parameter_input(row: Parameter):
    """A method parameter's widget; the late ones are optional (API prompts saved before them lack them)."""
    late = {"optional": True} if row.late else {}
    if row.choices:
        return io.Combo.Input(row.name, options=list(row.choices), default=row.default, tooltip=parameter_tip(row),
                              **late)
    low = row.widget_low if row.widget_low is not None else row.low
    if row.kind is int:
        extra = {"control_after_generate": False} if row.field == "seed" else {}
        return io.Int.Input(row.name, default=row.default, min=low, max=row.high, tooltip=parameter_tip(row),
                            **extra, **late)
    bounds = {"min": low} | ({"max": row.high} if row.high is not None else {"max": 1e6})
    exact = {"round": False} if row.step < 0.01 else {}
    return io.Float.Input(row.name, default=row.default, step=row.step, tooltip=parameter_tip(row), **bounds,
                          **exact, **late)


def combine_inputs() -> list:
    presets = [CUSTOM] + preset_names()
    return [
        method_input(),
        io.Float.Input("alpha", default=1.0, min=-2.0, max=4.0, step=0.01,
                       tooltip="Scale of the combined delta: 0 gives the base. model_stock: 1 is the paper's ratio."),
        io.String.Input("weights", default="", tooltip="One weight per connected model, in order, comma-separated "
                        "(e.g. 1,0.5,0.8). Empty: 1 each. Scales each task vector before the method; a negative weight "
                        "subtracts that task vector, except for geometric_median, a weighted mean: weights >= 0 "
                        "with a positive sum."),
        *(parameter_input(row) for row in PARAMETERS if not row.late),
        io.Combo.Input("blocks_alpha_preset", options=presets, default=CUSTOM, tooltip=PRESET_TIP.format(what="alpha")),
        io.String.Input("blocks_alpha", default="", tooltip=BLOCKS_TIP.format(what="alpha", scalar="alpha")),
        # after the block inputs and optional: saved workflows list widget values by position, and API
        # prompts saved before they existed lack them (the default applies)
        *(parameter_input(row) for row in PARAMETERS if row.late),
        options_input(),
    ]


def _connected(inputs: dict, kind: str) -> list[tuple[str, Any]]:
    """The connected model inputs in order; unconnected ones are dropped from inputs."""
    found = [(f"{kind}_{i}", inputs.pop(f"{kind}_{i}", None)) for i in range(1, MAX_MODELS + 1)]
    return [(name, obj) for name, obj in found if obj is not None]


def plan_models(base: Any, models: list[tuple[str, Any]], params: dict, kind: str = "model"):
    """(plan, the models' patch lists by source name) for a base and connected MODELs (kind "model") or CLIPs."""
    from ..merge_core.architectures import require_compatible
    from ..merge_core.errors import MergeInputError
    unused = [k for k in ("calcmode", "adjust") if params.get(k) not in (None, "", "normal")]
    if unused:
        raise MergeInputError("options", f"sets {unused[0]}, which Combine Models does not apply.",
                              "connect only Elemental, Include/Exclude and Report options here.")
    patches = {f"m{i + 1}": key_patches(obj, kind, name) for i, (name, obj) in enumerate(models)}
    base_shapes, base_dtypes = base_layout(base, kind)
    arch = architecture_of(base_shapes, "base")
    model_shapes = []
    for (input_name, _), p in zip(models, patches.values()):
        model_shapes.append(shapes_of(p))
        require_compatible(arch, architecture_of(model_shapes[-1], input_name), input_name)
    settings = make_combine_settings(
        arch, len(models), params["method"], params["alpha"], params.get("weights", ""), params["density"],
        params["drop_rate"], _epsilon(params), params["top"],
        params["bottom"], params["iterations"], params["seed"],
        resolve_block_weights(params)["blocks_alpha"],
        params.get("elemental", ""), params.get("include_exclude", ""),
        **{row.field: params.get(row.name) for row in PARAMETERS if row.late and row.field != "median_eps"})
    dtypes = {"a": base_dtypes} | {n: {k: v[0][0].dtype for k, v in p.items()} for n, p in patches.items()}
    plan = plan_combine(settings, arch, base_shapes, model_shapes, dtypes)
    plan.base_dtypes = base_dtypes  # the layers' dtypes, which ComfyUI rounds each merged key into at load
    return plan, patches


def _epsilon(params: dict):
    """The epsilon the chosen method reads (the CLI has one --epsilon for both): DELLA's spread or the
    geometric median's smallest distance; None for the other methods."""
    uses = get_method(params["method"]).uses
    if "median_eps" in uses:
        return params.get("median_epsilon", MethodParams.median_eps)
    return params["epsilon"] if "epsilon" in uses else None


def combine_adapter(plan, kp, lists: list, label: str = "Combine"):
    """base + alpha * delta of one key at load time (per key, so lazy: nothing is held but patch lists).
    An inpainting base's offset patch hands over weight[:, :n] already narrowed. A NaN/inf result, or one beyond
    the layer's dtype, from finite inputs is an error naming the node (label), the key and the method."""
    s = plan.settings
    dtype = getattr(plan, "base_dtypes", {}).get(kp.key)

    def compute(weight):
        models = [effective_weight(plist, weight.device) for plist in lists]
        notes: list = []
        result = combine_key(s.method, s.method_params, kp.key, kp.alpha, weight, models, notes)
        note_fallbacks(plan.fallbacks, kp.key, notes)
        check_loaded(result, [weight, *models], kp.key, s.method.name, "method", label, dtype)
        return result

    return lazy_adapter("merge_suite_combine", compute)


def combine_models(base: Any, models: list[tuple[str, Any]], params: dict, kind: str = "model",
                   node: tuple = ("Combine", None)):
    plan, patches = plan_models(base, models, params, kind)
    patches, observers = watch_inputs(plan, base, kind, patches, *node)
    prepared = {kp.key: (1.0, combine_adapter(plan, kp, [patches[n][kp.key] for n in plan.models], node[0]))
                for kp in plan.merged()}
    return apply_plan(base, plan, {}, prepared, first=observers), plan


class _Combine(io.ComfyNode):
    """Shared shape of the MODEL and CLIP combine nodes; subclasses only declare data."""

    KIND, IO, NODE_ID, DISPLAY, DESCRIPTION = "model", io.Model, "", "", ""

    @classmethod
    def define_schema(cls):
        k = cls.KIND
        models = [cls.IO.Input(f"{k}_{i}", optional=i > 1, tooltip=f"{k.upper()} {i}: a fine-tune of the base"
                               + (" (required)." if i == 1 else " (optional; connect in order).")) for i in
                  range(1, MAX_MODELS + 1)]
        return io.Schema(
            node_id=cls.NODE_ID, display_name=cls.DISPLAY, category=CATEGORY, description=cls.DESCRIPTION,
            inputs=[cls.IO.Input("base", tooltip="The base the fine-tunes were trained from."),
                    *combine_inputs(), *models],
            outputs=[cls.IO.Output(display_name=k.upper()),
                     io.String.Output(display_name="report", tooltip=REPORT_TIP),
                     io.String.Output(display_name="recipe", tooltip=RECIPE_TIP)],
            hidden=[io.Hidden.prompt, io.Hidden.unique_id],
        )

    @classmethod
    def validate_inputs(cls, **values) -> bool | str:
        return number_problems(cls, {k: values.get(k) for k in NUMBERS})

    @classmethod
    def execute(cls, base, **inputs) -> io.NodeOutput:
        models = _connected(inputs, cls.KIND)
        params, per_key = merge_params(inputs)
        with named_errors(cls.DISPLAY):
            merged, plan = combine_models(base, models, params, cls.KIND, node_label(cls, cls.DISPLAY))
            recipe = tag_combine(merged, plan, base, models, getattr(cls, "hidden", None), cls.KIND)
            report = applied_report(plan, per_key)
            record_merge(cls.DISPLAY, {cls.KIND: merged}, "combine")
            return io.NodeOutput(merged, report, recipe, ui=text_ui(report, recipe))


class CombineModels(_Combine):
    KIND, IO, NODE_ID, DISPLAY = "model", io.Model, "MergeSuite_CombineModels", "Combine Models"
    DESCRIPTION = ("Merge a base and up to eight fine-tunes with TIES, DARE, DARE-TIES, DELLA, Model Breadcrumbs, "
                   "Model Stock, geometric median or task arithmetic, with block weights and elemental rules. The "
                   "result is a lazy patch of the base.")


class CombineCLIP(_Combine):
    KIND, IO, NODE_ID, DISPLAY = "clip", io.Clip, "MergeSuite_CombineCLIP", "Combine CLIP"
    DESCRIPTION = ("The text encoders of a base and up to eight fine-tunes through the same n-model methods; the "
                   "text encoder is the BASE block, so block weights contribute their first value.")


def tag_combine(merged, plan, base, models, hidden, kind: str = "model") -> str:
    """Attach the combine step's recipe to the result (it chains into later merges and saves); returns its text."""
    from ..merge_core import recipe as core
    files = loader_file_names(hidden)
    inputs = [source_of(base, kind, "base", files)] + [source_of(obj, kind, name, files) for name, obj in models]
    tree = core.combine_step(plan.settings, inputs)
    set_recipe(merged, kind, tree)
    return core.recipe_text(tree)


NODES = [CombineModels, CombineCLIP]
