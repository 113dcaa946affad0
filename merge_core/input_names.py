"""What each front end calls the inputs the engine names in its errors.

merge_core names an input as the MODEL-merge nodes do (``model_b``, ``blocks_alpha``, ``output``); the
command line, the file-merge nodes and the CLIP merges call some of them otherwise. A front end renames the
error (MergeInputError.input_name) before it shows it, reading this one table; a name it lacks is kept.
Only strings live here: the nodes and the CLI both read it, and merge_core never imports ComfyUI.
"""
from __future__ import annotations

from types import MappingProxyType
from typing import Mapping

from .errors import MergeInputError

CLI = "cli"                  # the merge command line (merge_core/cli): options and positional files
FILE_NODE = "file node"      # the file-merge nodes: file widgets and a filename prefix
MODEL_NODE = "model node"    # Merge Models and Merge Checkpoints' U-Net: the engine's own names
CLIP_NODE = "clip node"      # Merge CLIP and Merge Checkpoints' text encoder: clip_a, clip_b, clip_c
CLI_COMBINE = "cli combine"  # the combine command: --base and MODEL files (its other options are named after
                             # their parameters: cli/combine.py adds the dashes)
CLI_LORA = "cli lora"        # the lora-merge and lora-extract commands

FRONT_END_NAMES: Mapping[str, Mapping[str, str]] = MappingProxyType({
    CLI: MappingProxyType({
        "blocks_alpha": "--blocks", "blocks_beta": "--blocks-beta", "dtype": "--dtype",
        "calcmode": "--calc", "gamma": "--gamma", "block": "--block", "include": "--include",
        "elemental": "--elemental", "adjust": "--adjust", "include_exclude": "--include/--exclude",
        "alpha": "--alpha", "beta": "--beta", "seed": "--seed", "mode": "--mode",
        "model_a": "model A (1st file)", "model_b": "model B (2nd file)", "model_c": "model C (3rd file)",
        "output": "-o", "file": "FILE"}),
    FILE_NODE: MappingProxyType({"model_a": "file_a", "model_b": "file_b", "model_c": "file_c",
                                 "output": "filename_prefix"}),
    MODEL_NODE: MappingProxyType({}),
    CLIP_NODE: MappingProxyType({"model_a": "clip_a", "model_b": "clip_b", "model_c": "clip_c"}),
    CLI_COMBINE: MappingProxyType({
        "model_a": "--base", "base": "--base", "models": "MODEL", "blocks_alpha": "--blocks",
        "drop_rate": "--drop-rate", "include_exclude": "--include/--exclude"}),
    CLI_LORA: MappingProxyType({
        "lora_list": "the LoRA list", "lora_1": "LoRA 1", "lora_2": "LoRA 2", "rank": "--rank",
        "model_a": "TUNED", "model_b": "ORIGINAL", "filename": "-o", "alpha": "--alpha", "beta": "--beta",
        "gamma": "--gamma", "block_weights": "the LoRA list", "lbw_presets": "--presets",
        "conv_rank": "--conv-rank", "clamp_quantile": "--clamp", "te_min_diff": "--te-min-diff"}),
})


def front_end_name(input_name: str, front_end: str) -> str:
    """What `front_end` calls the engine's input `input_name` (the same name where it has no other)."""
    return FRONT_END_NAMES[front_end].get(input_name, input_name)


def renamed(exc: MergeInputError, front_end: str) -> MergeInputError:
    """`exc` naming its input as `front_end` does (changed in place, so its traceback stays; returned)."""
    exc.input_name = front_end_name(exc.input_name, front_end)
    return exc
