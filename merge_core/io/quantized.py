"""Quantised safetensors inputs: fp8 tensors and ComfyUI's scaled-fp8 layouts, dequantised per tensor.

ComfyUI 0.3.75 reads two scaled layouts (comfy/ops.py, comfy/model_detection.py):

- legacy scaled fp8: a marker tensor ``<prefix>scaled_fp8`` (its dtype is the fp8 type) and, per
  linear layer, ``<layer>.scale_weight`` (float32, one value; optional ``scale_input``); the weight
  is ``fp8 * scale_weight``;
- mixed precision: header metadata ``_quantization_metadata`` ({"layers": {layer: {"format": ...}}})
  and, per quantised layer, ``<layer>.weight_scale`` (and optional ``input_scale``); the weight is
  again ``fp8 * weight_scale``. Later ComfyUI releases put each layer's config in a
  ``<layer>.comfy_quant`` tensor instead: it is read the same way.

Every weight is handed out as float32 (its scale applied); scale, marker and config tensors are
consumed here and never reach the merge plan. ``stored_format(key)`` tells what the tensor was
stored as, which is what "output as in A" writes again (merge_core/io/precision.py).
"""
from __future__ import annotations

import json
from typing import Optional

import torch

from ..errors import MergeInputError
from .fp8 import FP8, widen
from .sources import FileSource

MARKER = "scaled_fp8"
QUANT_METADATA = "_quantization_metadata"
# per-layer tensors: (weight scale, input scale) of each layout
LEGACY = ("scale_weight", "scale_input")
MIXED = ("weight_scale", "input_scale")
LAYER_CONFIG = "comfy_quant"
SCALED, MIXED_FP8 = "scaled_fp8", "mixed_fp8"  # stored formats besides plain dtype names


def _sibling(key: str, name: str) -> Optional[str]:
    return key[: -len("weight")] + name if key.endswith("weight") else None


def _is_marker(key: str) -> bool:
    return key == MARKER or key.endswith("." + MARKER)


class QuantizedFileSource(FileSource):
    """A safetensors file with fp8 and/or scaled weights; every tensor reads as float32 (ints as stored)."""

    def __init__(self, path, input_name: str = "file"):
        super().__init__(path, input_name)
        self.input_name = input_name
        tensors = self.reader.tensors
        self.scales: dict[str, str] = {}  # weight key -> its scale key
        self.formats: dict[str, str] = {}  # weight key -> SCALED or MIXED_FP8
        consumed = {k for k in tensors if _is_marker(k) or k.endswith("." + LAYER_CONFIG)}
        self.marker = next((k for k in tensors if _is_marker(k)), None)
        for key in tensors:
            for layout, (weight_scale, input_scale) in ((SCALED, LEGACY), (MIXED_FP8, MIXED)):
                scale = _sibling(key, weight_scale)
                if scale is not None and scale in tensors:
                    self.scales[key], self.formats[key] = scale, layout
                    consumed.add(scale)
                    consumed.add(_sibling(key, input_scale))
        orphans = [k for k in tensors if k.endswith(("." + LEGACY[0], "." + MIXED[0])) and k not in consumed]
        if orphans:
            raise MergeInputError(input_name, f"'{self.name}' has the scale '{orphans[0]}' without its weight.",
                                  "the file is damaged or of a layout this version does not read; use an "
                                  "unquantised file.")
        self.consumed = consumed & set(tensors)
        self.quant_metadata = self.reader.metadata.get(QUANT_METADATA)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: v.shape for k, v in self.reader.tensors.items() if k not in self.consumed}

    def dtype(self, key: str) -> torch.dtype:
        own = self.reader.tensors[key].dtype
        return torch.float32 if (key in self.scales or own in FP8) else own

    def stored_format(self, key: str) -> str:
        """What "as in A" writes: SCALED / MIXED_FP8 for scaled weights, else the stored dtype's name."""
        if key in self.formats:
            return self.formats[key]
        return dtype_name(self.reader.tensors[key].dtype)

    def get(self, key: str) -> torch.Tensor:
        tensor = self.reader.get(key, self.buffers)
        if key not in self.scales:
            return widen(tensor) if tensor.dtype in FP8 else tensor
        scale = self.reader.get(self.scales[key]).float()
        weight = widen(tensor)
        try:
            return weight * scale if scale.numel() == 1 else weight * scale.reshape(_broadcast(scale, weight))
        except RuntimeError:
            raise MergeInputError(self.input_name, f"'{self.name}': the scale of '{key}' has shape "
                                  f"{tuple(scale.shape)}, which does not fit the weight {tuple(weight.shape)} "
                                  "(a block-wise quantisation this version does not read).",
                                  "use an fp8 scaled-per-tensor, GGUF or unquantised file.") from None

    def stored(self, key: str) -> Optional[torch.Tensor]:
        """A plain (unscaled) fp8 weight as stored, for the engine's linear modes, which widen it to
        float32 chunk by chunk (a whole float32 copy costs a page fault per 1024 values); else None."""
        if key in self.scales or self.reader.tensors[key].dtype not in FP8:
            return None
        return self.reader.get(key, self.buffers)

    def raw(self, key: str):
        return None if key in self.scales or self.reader.tensors[key].dtype in FP8 else self.reader.raw(key)


def _broadcast(scale: torch.Tensor, weight: torch.Tensor) -> tuple[int, ...]:
    """Per-row scales ([out] or [out, 1]) broadcast over the weight's other dimensions."""
    if scale.numel() == weight.shape[0]:
        return (weight.shape[0],) + (1,) * (weight.dim() - 1)
    return tuple(scale.shape)


DTYPE_FORMATS = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16",
                 torch.float8_e4m3fn: "fp8_e4m3fn", torch.float8_e5m2: "fp8_e5m2"}


def dtype_name(dtype: torch.dtype) -> str:
    return DTYPE_FORMATS.get(dtype, str(dtype).replace("torch.", ""))


def needs_dequantising(reader) -> bool:
    """True when a file holds fp8 tensors or any scale/marker tensor (a plain FileSource would hand
    out fp8 values and merge the scales as weights)."""
    for key, info in reader.tensors.items():
        if info.dtype in FP8 or _is_marker(key) or key.endswith(
                tuple("." + n for n in (*LEGACY, *MIXED, LAYER_CONFIG))):
            return True
    return False


def layer_config(metadata: dict) -> Optional[dict]:
    """The mixed-precision layer table of a file's metadata (None when absent or malformed)."""
    try:
        layers = json.loads(metadata.get(QUANT_METADATA, "")).get("layers")
    except (ValueError, AttributeError):
        return None
    return layers if isinstance(layers, dict) else None
