"""LoRA metadata (docs/lora.md#lora-metadata-modes): kohya's ss_* fields and SAI model-spec fields for extracted and
merged LoRAs."""
from __future__ import annotations

import json
from typing import Any

from ..architectures import Architecture
from ..errors import MergeInputError
from ..io.json_limits import loads_bounded
from .blocks import LoraItem, blocks26_text
from .families import base_model_version, modelspec_architecture
from .files import LoraFile

METADATA_MODES = ("create new", "create new without output_name", "merge", "save all", "use first lora")

_COPIED = ("ss_network_module", "ss_network_alpha", "ss_network_dim", "ss_v2", "ss_sd_model_name",
           "ss_base_model_version")


def extraction_metadata(arch: Architecture, rank: int, conv_rank: int, title: str) -> dict[str, str]:
    """kohya's fields for an extracted LoRA (the SD1 'sd_v1_v' quirk fixed) plus SAI model-spec fields."""
    meta = {"ss_network_module": "networks.lora", "ss_network_dim": str(rank), "ss_network_alpha": str(rank),
            "ss_v2": str(arch.name == "sd2"), "ss_base_model_version": base_model_version(arch),
            "modelspec.sai_model_spec": "1.0.0",
            "modelspec.architecture": modelspec_architecture(arch),
            "modelspec.implementation": "https://github.com/Stability-AI/generative-models",
            "modelspec.title": title}
    if conv_rank:
        meta["ss_network_args"] = json.dumps({"conv_dim": str(conv_rank), "conv_alpha": str(conv_rank)})
    return meta


def _tags(value) -> dict:
    if isinstance(value, str):
        try:
            value = loads_bounded(value, "ss_tag_frequency")
        except ValueError:
            return {}
    return value if isinstance(value, dict) else {}


def merged_metadata(inputs: list[tuple[LoraItem, LoraFile, dict[str, float]]], mode: str, output_name: str,
                    save_dtype: str, dims: set) -> dict[str, str]:
    """The metadata modes (docs/lora.md#lora-metadata-modes), on copies (the inputs' metadata is never changed).
    Quirks fixed: dim and alpha follow
    the output's ranks, and ss_tag_frequency is merged from its JSON text."""
    if mode not in METADATA_MODES:
        raise MergeInputError("metadata", f"'{mode}' is not a metadata mode.",
                              "use one of " + ", ".join(METADATA_MODES))
    per_input = []
    for item, lora, ratios in inputs:
        m = dict(lora.metadata)
        m.update(sshs_ratio=item.ratio_text(), sshs_blocks=blocks26_text(ratios), ss_output_name=lora.name)
        per_input.append(m)
    first = per_input[0]
    meta: dict[str, Any]  # text values, and the merged tag frequencies (a dict)
    if mode.startswith("create new"):
        meta = {k: first[k] for k in _COPIED if k in first}
    elif mode == "use first lora":
        meta = dict(first)
    else:
        meta = dict(first)
        for i, m in enumerate(per_input):
            meta[f"sshs_cp{i}"] = json.dumps(m)
        module = next((m["ss_network_module"] for m in per_input if "ss_network_module" in m), None)
        if module:
            meta["ss_network_module"] = module
        if mode == "merge":
            tags: dict = {}
            for m in per_input:
                for dataset, freq in _tags(m.get("ss_tag_frequency")).items():
                    bucket = tags.setdefault(dataset, {})
                    for tag, count in (freq.items() if isinstance(freq, dict) else ()):
                        if isinstance(count, (int, float)) and not isinstance(count, bool):  # skip damaged counts
                            bucket[tag] = bucket.get(tag, 0) + count
            if tags:
                meta["ss_tag_frequency"] = tags
    meta.pop("ss_output_name", None)
    if mode != "create new without output_name":
        meta["ss_output_name"] = output_name
    if len(dims) == 1:
        meta["ss_network_dim"] = meta["ss_network_alpha"] = str(next(iter(dims)))
    meta["ss_mixed_precision"] = save_dtype
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()}
