"""LoRA files: reading their modules, and saving a result atomically with the network hashes kohya tools read."""
from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Optional

import torch

from ..architectures import Architecture
from ..errors import MergeInputError
from ..io.output_file import check_target, disk_error
from ..io.safetensors_file import SafetensorsReader, SafetensorsWriter
from .keys import lora_arch
from .linalg import LoraModule
from .result import LoraResult


SAVE_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
_UP = (".lora_up.weight", ".lora_B.weight", ".lora.up.weight")
_DOWN = (".lora_down.weight", ".lora_A.weight", ".lora.down.weight")
_OTHER_TYPES = (("hada_", "LoHa"), ("lokr_", "LoKr"), ("oft_", "OFT"), ("glora", "GLoRA"), ("dora_scale", "DoRA"),
                ("lora_mid", "LoCon (Tucker)"), ("w_norm", "Norm"), ("b_norm", "Norm"), (".diff", "full diff"),
                ("set_weight", "set"))
Progress = Optional[Callable[[int, int], None]]


@dataclass
class LoraFile:
    name: str
    modules: dict[str, LoraModule]
    unsupported: dict[str, str]  # module -> LyCORIS type name
    metadata: dict[str, str]
    arch: Optional[Architecture]


def module_names(keys) -> set[str]:
    """The module names of a LoRA file's tensor keys."""
    return {_split(k)[0] for k in keys}


def _split(key: str) -> tuple[str, str]:
    for kind, suffixes in (("up", _UP), ("down", _DOWN), ("alpha", (".alpha",))):
        for suffix in suffixes:
            if key.endswith(suffix):
                return key[:-len(suffix)], kind
    return (key.split(".")[0] if key.startswith("lora_") else key.rsplit(".", 1)[0]), "other"


def read_lora(path: str | os.PathLike, name: Optional[str] = None, input_name: str = "lora_list") -> LoraFile:
    """Modules of a LoRA file; LyCORIS and other module types are listed, not loaded."""
    name = name or Path(path).stem
    parts: dict[str, dict[str, torch.Tensor]] = {}
    unsupported: dict[str, str] = {}
    with SafetensorsReader(path, input_name) as reader:
        for key in reader.keys():
            module, kind = _split(key)
            if kind == "other":
                unsupported[module] = next((t for marker, t in _OTHER_TYPES if marker in key), "unknown")
                continue
            parts.setdefault(module, {})[kind] = reader.get(key)
        metadata = dict(reader.metadata)
    modules = {}
    for module, p in parts.items():
        if module in unsupported:
            continue
        if "up" not in p or "down" not in p:
            unsupported[module] = "incomplete (no up/down pair)"
            continue
        modules[module] = LoraModule(p["up"], p["down"], float(p["alpha"]) if "alpha" in p else None)
    return LoraFile(name, modules, unsupported, metadata, lora_arch(list(modules) + list(unsupported), metadata))


def require_plain(lora: LoraFile, what: str, input_name: str = "lora_list") -> None:
    if lora.unsupported:
        module, kind = next(iter(lora.unsupported.items()))
        raise MergeInputError(
            input_name, f"LoRA '{lora.name}' has {len(lora.unsupported)} {kind} module(s) (e.g. '{module}'); "
            f"{what} handles plain LoRA/LoCon (up/down/alpha) only.",
            "apply that LoRA with 'Apply LoRA with Block Weights' (it supports LoHa, LoKr, DoRA via ComfyUI), "
            "bake it and extract a new LoRA from the result, or leave it out.")


def common_architecture(loras: list[LoraFile], input_name: str = "lora_list") -> Architecture:
    """The one family of these LoRAs (the widest layout when they name different block counts)."""
    archs = {lora.arch.name: lora.arch for lora in loras if lora.arch is not None}
    if len(archs) > 1:
        names = ", ".join(f"'{lora.name}' ({lora.arch.label})" for lora in loras if lora.arch is not None)
        raise MergeInputError(input_name, f"the LoRAs are for different architectures: {names}.",
                              "merge LoRAs trained for the same base model family (e.g. all SDXL or all Flux.1).")
    if not archs:
        raise MergeInputError(input_name, f"LoRA '{loras[0].name}' is not a recognised LoRA of a known family "
                              "(no kohya lora_unet_/lora_te_, diffusers transformer. or diffusion_model. modules).",
                              "use a LoRA for SD1/SD2, SDXL, Flux, SD3, HiDream, Z-Image, Qwen-Image or Wan.")
    widest = max((lora.arch for lora in loras if lora.arch is not None), key=lambda a: a.n_blocks)
    return widest


def _write(path: Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str], overwrite: bool,
           inputs=(), input_name: str = "filename", renumber=None) -> Path:
    writer = SafetensorsWriter(path, [(k, t.dtype, tuple(t.shape)) for k, t in tensors.items()], metadata,
                               overwrite, inputs, input_name, renumber)
    try:
        for k, t in tensors.items():
            writer.write(k, t)
        return writer.commit()
    except BaseException:
        writer.abort()
        raise


def network_hashes(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> dict[str, str]:
    """additional-networks' hashes of the file as it would be saved with ss_* metadata only: sha256 of
    the bytes after the header, and the legacy 8-hex hash of 64 KiB at offset 1 MiB."""
    ss_only = {k: v for k, v in metadata.items() if k.startswith("ss_")}
    with tempfile.TemporaryDirectory() as tmp:
        path = _write(Path(tmp) / "h.safetensors", tensors, ss_only, True)
        data = path.read_bytes()
    header_len = 8 + int.from_bytes(data[:8], "little")
    return {"sshs_model_hash": hashlib.sha256(data[header_len:]).hexdigest(),
            "sshs_legacy_hash": hashlib.sha256(data[0x100000:0x110000]).hexdigest()[:8]}


def save_lora(result: LoraResult, path: str | os.PathLike, metadata: Mapping[str, str], save_dtype: str = "fp16",
              overwrite: bool = False, hashes: bool = True, inputs=(), input_name: str = "filename",
              renumber=None) -> Path:
    """Written through output_file.OutputFile: complete or absent, never onto one of ``inputs``, an existing
    file replaced only with ``overwrite``; returns the path written (renumber: see SafetensorsWriter)."""
    if save_dtype not in SAVE_DTYPES:
        raise MergeInputError("save_dtype", f"'{save_dtype}' is not a save precision.", "use fp16, bf16 or fp32.")
    path = Path(path)
    check_target(path, inputs, overwrite, input_name)
    dtype = SAVE_DTYPES[save_dtype]
    tensors = {k: (t.float() if k.endswith(".alpha") else t.to(dtype)).contiguous() for k, t in result.tensors.items()}
    meta = dict(metadata)
    meta["ss_mixed_precision"] = save_dtype
    if hashes:
        meta.update(network_hashes(tensors, meta))
    return _write(path, tensors, meta, overwrite, inputs, input_name, renumber)


def next_free_path(folder: str | os.PathLike, prefix: str, create: bool = True) -> Path:
    """``<folder>/<prefix>_00001_.safetensors``, the first counter not taken (ComfyUI's save naming).
    The prefix is checked before any folder is created (create=False: none is)."""
    folder = Path(folder)
    base = folder / prefix
    inside = os.path.abspath(folder)
    if os.path.isabs(prefix) or os.path.commonpath([os.path.abspath(base.parent), inside]) != inside:
        raise MergeInputError("filename_prefix", f"'{prefix}' leaves the LoRA folder.",
                              "use a plain name or a sub-folder such as merged/my_lora.")
    if create:
        try:
            base.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise disk_error(exc, base.parent, "filename_prefix") from None
    counter = 1
    while (path := base.parent / f"{base.name}_{counter:05d}_.safetensors").exists():
        counter += 1
    return path
