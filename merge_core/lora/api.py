"""Library entry points for LoRA files: merge LoRAs, extract one from two checkpoints or from two LoRAs.

Each checks its output path first (never one of its inputs, never an existing file unless overwrite), reads
its inputs, runs the LoRA operation, writes the output atomically and returns the written path with the
LoraResult (its ``report`` lines say what was done). The CLI's lora-* commands
are these functions plus option parsing.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from ..architectures import detect_or_auto, require_compatible
from ..errors import MergeInputError
from ..io.output_file import check_target
from .blocks import LoraItem, block_values, parse_lora_list, parse_presets
from .files import LoraFile, common_architecture, read_lora, save_lora
from .metadata import extraction_metadata, merged_metadata
from .operations import LoraResult, extract_from_loras, extract_from_models, merge_loras

PathLike = str | os.PathLike


def read_lora_list(text: str, input_name: str = "lora_list") -> list[tuple[LoraItem, LoraFile]]:
    """'file:ratio[:blocks]' items, comma-separated, each with its file read."""
    loaded = []
    for item in parse_lora_list(text, input_name):
        if not Path(item.name).is_file():
            raise MergeInputError(input_name, f"LoRA file '{item.name}' does not exist.",
                                  "give a path to a .safetensors LoRA.")
        loaded.append((item, read_lora(item.name, Path(item.name).stem, input_name)))
    return loaded


def _list_files(*lists: tuple[str, str]) -> list[str]:
    """The files named by 'file:ratio[:blocks]' lists, for the output check before any work."""
    return [item.name for text, name in lists for item in parse_lora_list(text, name)]


def _merged_metadata(items, lbw_presets: str, mode: str, output: PathLike, save_dtype: str, dims) -> dict[str, str]:
    arch = common_architecture([f for _, f in items])
    presets = parse_presets(lbw_presets)
    inputs = [(i, f, block_values(i.blocks, i.ratio, arch, presets, "lora_list", i.name)) for i, f in items]
    return merged_metadata(inputs, mode, Path(output).stem, save_dtype, dims)


def merge_lora_files(loras: str, output: PathLike, *, method: str = "exact", rank: int = 0, svd: str = "full",
                     clamp_quantile: Optional[float] = None, kohya_strength: bool = False,
                     metadata: str = "create new", lbw_presets: str = "", save_dtype: str = "fp16",
                     overwrite: bool = False) -> tuple[Path, LoraResult]:
    """Merge LoRA files listed as 'file:ratio[:blocks]' (comma-separated) into ``output``.

    method "exact": SVD of the ratio-weighted sum to ``rank`` (0: the largest input rank); "naive": kohya's
    factor-wise sum (equal ranks; ratio squared with kohya_strength). lbw_presets: extra 'NAME:values' lines.
    """
    inputs = _list_files((loras, "lora_list"))
    check_target(output, inputs, overwrite, "filename")
    items = read_lora_list(loras)
    result = merge_loras(items, method, rank, svd, clamp_quantile, not kohya_strength, lbw_presets)
    meta = _merged_metadata(items, lbw_presets, metadata, output, save_dtype, result.dims)
    return save_lora(result, output, meta, save_dtype, overwrite=overwrite, inputs=inputs), result


def extract_lora_from_loras(lora_1: str, lora_2: str, output: PathLike, *, alpha: float = 1.0, beta: float = 1.0,
                            gamma: float = 1.0, lbw_presets: str = "", save_dtype: str = "fp16",
                            overwrite: bool = False) -> tuple[Path, LoraResult]:
    """SuperMerger's extract between two LoRAs, each given as 'file:ratio[:blocks]': alpha 0 leans to
    LoRA 1, 1 to LoRA 2; beta 1 keeps dissimilar features; gamma sharpens the similarity."""
    inputs = _list_files((lora_1, "lora_1"), (lora_2, "lora_2"))
    check_target(output, inputs, overwrite, "filename")
    items = read_lora_list(lora_1, "lora_1") + read_lora_list(lora_2, "lora_2")
    if len(items) != 2:
        raise MergeInputError("lora_1", "A and B must name one LoRA each.", "give 'file:ratio' twice.")
    result = extract_from_loras(items[0], items[1], alpha, beta, gamma, True, lbw_presets)
    meta = _merged_metadata(items, lbw_presets, "create new", output, save_dtype, result.dims)
    return save_lora(result, output, meta, save_dtype, overwrite=overwrite, inputs=inputs), result


def extract_lora_files(tuned: PathLike, original: PathLike, output: PathLike, *, alpha: float = 1.0,
                       beta: float = 1.0, rank: int = 64, conv_rank: int = 0, svd: str = "full",
                       clamp_quantile: Optional[float] = None, te_min_diff: float = 0.1, save_dtype: str = "fp16",
                       overwrite: bool = False) -> tuple[Path, LoraResult]:
    """A LoRA of alpha*tuned - beta*original from two checkpoint files, reading one tensor pair at a time:
    linear and 1x1 layers to ``rank``, 3x3 convolutions to ``conv_rank`` (0: skipped).

    The files are opened as merges open them (safetensors, fp8/scaled fp8, GGUF; released parameter names),
    and a tensor whose shapes differ is refused as merge refuses it: a LoRA without that module would be
    a silently partial difference."""
    inputs = [tuned, original]
    check_target(output, inputs, overwrite, "filename")
    from ..api import open_files  # merge's own opening of input files (lazy: merge_core.api is large)
    sources = open_files({"a": str(tuned), "b": str(original)})
    try:
        sa, sb = sources["a"].shapes(), sources["b"].shapes()
        arch, arch_b = detect_or_auto(sa), detect_or_auto(sb)
        if arch is None or arch_b is None:
            raise MergeInputError("model_b" if arch is not None else "model_a", "has no diffusion-model weights.",
                                  "extract from a fine-tune and its base model (checkpoint or diffusion-model files).")
        require_compatible(arch, arch_b, "model_b")
        differing = next((k for k, s in sa.items() if k in sb and tuple(sb[k]) != tuple(s)), None)
        if differing is not None:
            raise MergeInputError("model_b", f"tensor '{differing}' has shape {list(sb[differing])} but model A "
                                  f"has {list(sa[differing])}.", "extract from a fine-tune and its own base model "
                                  "(same architecture and size).")
        shapes = {k: s for k, s in sa.items() if k in sb}
        result = extract_from_models(shapes, sources["a"].get, sources["b"].get, arch, alpha, beta, rank,
                                     conv_rank, svd, clamp_quantile, te_min_diff)
    finally:
        for source in sources.values():
            source.close()
    meta = extraction_metadata(arch, rank, conv_rank, Path(output).stem)
    meta["ss_output_name"] = Path(output).stem
    return save_lora(result, output, meta, save_dtype, overwrite=overwrite, inputs=inputs), result
