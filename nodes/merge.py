"""Merge nodes: SuperMerger's four merge modes with block weights, on MODEL and CLIP.

alpha is the weight of model B (0 gives A, 1 gives B), as in SuperMerger; ComfyUI's
own ModelMergeSimple uses the reverse. Results are lazy clones of A: nothing is
computed or copied until a sampler loads the model.
"""
from __future__ import annotations

from typing import Any, Optional

from comfy_api.latest import io

from ..merge_core.block_weights import parse_block_weights
from ..merge_core.errors import MergeInputError
from ..merge_core.methods import MODE_LABELS, get_mode
from ..merge_core.plan import MergeSettings, build_plan
from ..merge_core.presets import preset_names
from .comfy_models import (apply_plan, architecture_of, base_shapes, check_same_architecture, key_patches,
                           shapes_of)
from .errors import named_errors

CATEGORY = "merge_suite"
CUSTOM = "custom"

ALPHA_TIP = ("Weight of model B: 0 gives A, 1 gives B (SuperMerger's convention; ComfyUI's "
             "ModelMergeSimple uses the reverse). Ignored when block weights are given.")
BETA_TIP = ("Weight of model C for Triple sum and sum Twice (0 gives no C). Ignored by Weight sum and "
            "Add difference.")
MODE_TIP = ("Weight sum: (1-a)A + aB.  Add difference: A + a(B-C).  Triple sum: (1-a-b)A + aB + bC.  "
            "sum Twice: (1-b)((1-a)A + aB) + bC.")
BLOCKS_TIP = ("Per-block {what}: 26 comma-separated values for SD1/SD2 (BASE, IN00-IN11, M00, OUT00-OUT11) or "
              "20 for SDXL (BASE, IN00-IN08, M00, OUT00-OUT08; a 26-value list is converted), or a preset name. "
              "Empty: the scalar {scalar} applies everywhere. BASE is the text encoder's ratio. "
              "Overrides the scalar {scalar}.")
PRESET_TIP = ("Fill the {what} block weights from a SuperMerger preset. '" + CUSTOM + "' uses the text field; "
              "choose a preset only when the text field is empty.")


def settings_inputs() -> list:
    presets = [CUSTOM] + preset_names()
    return [
        io.Combo.Input("mode", options=MODE_LABELS, default=MODE_LABELS[0], tooltip=MODE_TIP),
        io.Float.Input("alpha", default=0.5, min=-1.0, max=2.0, step=0.01, tooltip=ALPHA_TIP),
        io.Float.Input("beta", default=0.25, min=-1.0, max=2.0, step=0.01, tooltip=BETA_TIP),
        io.Combo.Input("blocks_alpha_preset", options=presets, default=CUSTOM,
                       tooltip=PRESET_TIP.format(what="alpha")),
        io.String.Input("blocks_alpha", default="", multiline=False,
                        tooltip=BLOCKS_TIP.format(what="alpha (weight of B)", scalar="alpha")),
        io.Combo.Input("blocks_beta_preset", options=presets, default=CUSTOM,
                       tooltip=PRESET_TIP.format(what="beta")),
        io.String.Input("blocks_beta", default="", multiline=False,
                        tooltip=BLOCKS_TIP.format(what="beta (weight of C, Triple sum / sum Twice only)",
                                                  scalar="beta")),
    ]


def _block_text(preset: str, text: str, input_name: str) -> str:
    text = (text or "").strip()
    if preset and preset != CUSTOM:
        if text and text != preset:
            raise MergeInputError(
                input_name, f"has text '{text[:40]}' while preset '{preset}' is also chosen.",
                f"clear the text field, or set {input_name}_preset to '{CUSTOM}'.")
        return preset
    return text


def make_settings(arch, mode: str, alpha: float, beta: float, blocks_alpha_preset: str = CUSTOM,
                  blocks_alpha: str = "", blocks_beta_preset: str = CUSTOM, blocks_beta: str = "") -> MergeSettings:
    return MergeSettings(
        mode=get_mode(mode), alpha=float(alpha), beta=float(beta),
        blocks_alpha=parse_block_weights(_block_text(blocks_alpha_preset, blocks_alpha, "blocks_alpha"),
                                         arch, "blocks_alpha"),
        blocks_beta=parse_block_weights(_block_text(blocks_beta_preset, blocks_beta, "blocks_beta"),
                                        arch, "blocks_beta"),
    )


def merge_objects(kind: str, a: Any, b: Any, c: Optional[Any], params: dict) -> Any:
    """Merge two or three MODELs (kind "model") or CLIPs (kind "clip"); returns a patched clone of A."""
    mode = get_mode(params["mode"])
    if mode.needs_c and c is None:
        raise MergeInputError(f"{kind}_c", f"is required by '{mode.label}' but is not connected.",
                              f"connect a {kind.upper()} C, or choose Weight sum.")
    others = {"b": b} | ({"c": c} if (c is not None and mode.needs_c) else {})
    patches = {name: key_patches(obj, kind) for name, obj in others.items()}
    shapes = {"a": base_shapes(a, kind)} | {name: shapes_of(p) for name, p in patches.items()}
    archs = {name: architecture_of(s, f"{kind}_{name}") for name, s in shapes.items()}
    arch = check_same_architecture(archs, kind)
    settings = make_settings(arch, **params)
    try:
        plan = build_plan(arch, settings, shapes["a"], shapes["b"], shapes.get("c"))
    except MergeInputError as exc:  # plan errors speak of model_*; name this node's input
        if exc.input_name.startswith("model_"):
            exc = MergeInputError(kind + exc.input_name[5:], exc.problem, exc.fix)
        raise exc from None
    return apply_plan(a, plan, patches)


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
            outputs=[cls.IO.Output(display_name=k.upper())],
        )

    @classmethod
    def execute(cls, **inputs) -> io.NodeOutput:
        k = cls.KIND
        a, b, c = inputs.pop(f"{k}_a"), inputs.pop(f"{k}_b"), inputs.pop(f"{k}_c", None)
        with named_errors(cls.DISPLAY):
            return io.NodeOutput(merge_objects(k, a, b, c, inputs))


class ModelMerge(_PairMerge):
    KIND, IO = "model", io.Model
    NODE_ID, DISPLAY = "MergeSuite_ModelMerge", "Merge Models (SuperMerger modes)"
    DESCRIPTION = ("Merge two or three diffusion models with SuperMerger's merge modes and per-block weights. "
                   "alpha = weight of B. The result is a lazy patch of A: no weights are copied.")
    TIPS = {"a": "Model A: the base. The result keeps its sampling settings.", "b": "Model B.",
            "c": "Model C: required by Add difference, Triple sum and sum Twice."}


class CLIPMerge(_PairMerge):
    KIND, IO = "clip", io.Clip
    NODE_ID, DISPLAY = "MergeSuite_CLIPMerge", "Merge CLIP (SuperMerger modes)"
    DESCRIPTION = ("Merge two or three text encoders with SuperMerger's merge modes. The text encoder is "
                   "SuperMerger's BASE block: block weights contribute their first (BASE) value. alpha = weight of B.")
    TIPS = {"a": "CLIP A: the base.", "b": "CLIP B.",
            "c": "CLIP C: required by Add difference, Triple sum and sum Twice."}


class CheckpointMerge(io.ComfyNode):
    DISPLAY = "Merge Checkpoints (SuperMerger modes)"

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MergeSuite_CheckpointMerge", display_name=cls.DISPLAY, category=CATEGORY,
            description="Merge MODEL and CLIP of two or three checkpoints in one node, as SuperMerger does: "
                        "the U-Net by block, the text encoder with the BASE ratio. alpha = weight of B.",
            inputs=[io.Model.Input("model_a"), io.Clip.Input("clip_a"),
                    io.Model.Input("model_b"), io.Clip.Input("clip_b"),
                    *settings_inputs(),
                    io.Model.Input("model_c", optional=True, tooltip="Required by Add difference, Triple sum, sum Twice."),
                    io.Clip.Input("clip_c", optional=True, tooltip="Required by Add difference, Triple sum, sum Twice.")],
            outputs=[io.Model.Output(display_name="MODEL"), io.Clip.Output(display_name="CLIP")],
        )

    @classmethod
    def execute(cls, model_a, clip_a, model_b, clip_b, model_c=None, clip_c=None, **params) -> io.NodeOutput:
        with named_errors(cls.DISPLAY):
            return io.NodeOutput(merge_objects("model", model_a, model_b, model_c, params),
                                 merge_objects("clip", clip_a, clip_b, clip_c, params))


NODES = [ModelMerge, CLIPMerge, CheckpointMerge]
