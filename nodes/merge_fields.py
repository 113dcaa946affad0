"""The fields the merge nodes share (Merge Models, Merge CLIP, Merge Checkpoints, the file merges, Combine):
mode, alpha, beta, block weights as a preset or a text, the options input, their tooltips, and how a node
reads them into merge settings."""
from __future__ import annotations

from typing import Any, Mapping

from comfy_api.latest import io

from ..merge_core.blocks.presets import preset_names
from ..merge_core.errors import MergeInputError
from ..merge_core.methods.modes import MODE_LABELS
from .validation import number_problems

CUSTOM = "custom"  # the preset combos' choice that reads the text field
BLOCK_WEIGHTS = ("blocks_alpha", "blocks_beta")  # each text field with its preset combo, name + "_preset"
OPTIONS = io.Custom("MERGE_OPTIONS")

OPTIONS_TIP = ("Merge options from other 'Merge Option' nodes (chain them); this node adds its own. Each setting "
               "may come from one option node only.")
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
RECIPE_TIP = ("What was merged, compactly: models, mode, calc mode, alpha/beta, blocks, elemental, adjust; "
              "chains through successive merges ([1], [2] ...). For grid labels, notes and saved files.")
REPORT_TIP = ("What was applied: per block the ratios and how many keys were merged or kept, and per "
              "elemental rule how many keys it set. Connect to 'Preview as Text'.")
PRESET_TIP = ("Fill the {what} block weights from a SuperMerger preset. '" + CUSTOM + "' uses the text field; "
              "choose a preset only when the text field is empty.")


def options_input() -> io.Input:
    return OPTIONS.Input("options", optional=True, tooltip=OPTIONS_TIP)


def settings_inputs() -> list:
    """The widgets of SuperMerger's merge: mode, alpha, beta, both block weights, then the options input."""
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
        options_input(),
    ]


def merge_params(inputs: dict) -> tuple[dict, bool]:
    """(settings for merge_objects, report_keys) from a merge node's widgets and its options input."""
    inputs = dict(inputs)
    params = dict(inputs.pop("options", None) or {}) | inputs
    return params, bool(params.pop("report_keys", False))


def resolve_block_weights(params: Mapping[str, Any]) -> dict:
    """The settings with each block-weight field holding what the merge runs with: the preset chosen in its
    combo, else its text (stripped); the combos themselves are dropped. A preset and a different text at once
    are refused rather than one silently winning."""
    resolved = {k: v for k, v in params.items() if k not in {name + "_preset" for name in BLOCK_WEIGHTS}}
    for name in BLOCK_WEIGHTS:
        preset, text = params.get(name + "_preset", CUSTOM), (params.get(name, "") or "").strip()
        if preset and preset != CUSTOM:
            if text and text != preset:
                raise MergeInputError(
                    name, f"has text '{text[:40]}' while preset '{preset}' is also chosen.",
                    f"clear the text field, or set {name}_preset to '{CUSTOM}'.")
            text = preset
        resolved[name] = text
    return resolved


def alpha_beta_problems(cls, alpha, beta) -> bool | str:
    """validate_inputs of a node with alpha and beta widgets (number_problems on both)."""
    return number_problems(cls, {"alpha": alpha, "beta": beta})
