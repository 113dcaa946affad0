"""Recipes riding along with MODEL and CLIP objects.

A merge node stores its recipe tree (merge_core.recipe) as a JSON string in the
result's ModelPatcher attachments. Attachments are copied by clone(), so the
recipe follows the model through later merges, LoRA loaders and into Save
Checkpoint without extra wiring; a JSON string cannot be mutated by a consumer.
The patches_uuid at tagging time is stored too: a clone patched afterwards
(a LoRA on top of a merge) is reported as "modified after the merge".

Inputs with no tag are named from the graph: when model_a comes straight from a
CheckpointLoaderSimple (or any node with a constant ckpt_name), its file name.
"""
from __future__ import annotations

import json
from typing import Any, Mapping, Optional

from ..merge_core import recipe as core

TAG = "merge_suite_recipe"


def _patcher(obj: Any, kind: str):
    return obj if kind == "model" else getattr(obj, "patcher", None)


def get_recipe(obj: Any, kind: str) -> Optional[dict]:
    """The recipe tree carried by a MODEL ("model") or CLIP ("clip"), or None."""
    patcher = _patcher(obj, kind)
    raw = patcher.get_attachment(TAG) if patcher is not None and hasattr(patcher, "get_attachment") else None
    if not raw:
        return None
    tag = json.loads(raw)
    tree = tag["tree"]
    if tag.get("uuid") is not None and str(getattr(patcher, "patches_uuid", "")) != tag["uuid"]:
        tree = dict(tree, modified_after=True)
    return tree


def set_recipe(obj: Any, kind: str, tree: Mapping) -> None:
    patcher = _patcher(obj, kind)
    patcher.set_attachments(TAG, json.dumps({"tree": tree, "uuid": str(getattr(patcher, "patches_uuid", ""))}))


def loader_file_names(hidden: Any) -> dict[str, str]:
    """{input name: checkpoint file} for this node's inputs fed directly by a loader with a constant ckpt_name."""
    prompt = getattr(hidden, "prompt", None) if hidden is not None else None
    node_id = getattr(hidden, "unique_id", None) if hidden is not None else None
    if not isinstance(prompt, dict) or node_id is None or str(node_id) not in prompt:
        return {}
    names = {}
    for name, value in prompt[str(node_id)].get("inputs", {}).items():
        if isinstance(value, list) and len(value) == 2:
            source = prompt.get(str(value[0]), {})
            ckpt = source.get("inputs", {}).get("ckpt_name")
            if isinstance(ckpt, str):
                names[name] = ckpt
    return names


def source_of(obj: Any, kind: str, input_name: str, file_names: Mapping[str, str]) -> dict:
    """The recipe node of one merge input: its own recipe, its file, or 'unknown'."""
    tree = get_recipe(obj, kind)
    if tree is not None:
        return tree
    if input_name in file_names:
        return core.leaf(file_names[input_name])
    return core.unknown(input_name)
