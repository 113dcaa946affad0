"""Quantised safetensors inputs: fp8 tensors and ComfyUI's scaled-fp8 layouts, dequantised per tensor.

Three layouts describe a scaled fp8 weight (``weight = fp8 * scale``); each is read here, and
``layout`` tells which one a file uses, which is what "as in A" writes again (io/precision.py):

- ``scaled_fp8`` (ComfyUI 0.3.75's own, read by 0.33 too, which converts it on load): a marker
  tensor ``<prefix>scaled_fp8`` (its dtype is the fp8 type) and, per linear layer,
  ``<layer>.scale_weight`` (float32, one value; optional ``scale_input``);
- ``quantization_metadata``: header metadata ``_quantization_metadata`` ({"layers": {layer:
  {"format": ...}}}) and, per quantised layer, ``<layer>.weight_scale`` (optional ``input_scale``).
  0.3.75 names a checkpoint's layers without the diffusion model's prefix, 0.33 with it;
- ``comfy_quant`` (what ComfyUI 0.33 writes): the same tensors, each layer's config in a
  ``<layer>.comfy_quant`` uint8 tensor holding its JSON. 0.3.75 does not read it.

Dequantised: the per-tensor fp8 formats (``float8_e4m3fn``, ``float8_e5m2``) and 0.33's block-scaled
float formats ``mxfp8`` and ``nvfp4`` (io/microscaling.py: the same values as 0.33 computes, bit for
bit). A block-scaled weight is stored padded (to multiples of 32 or 16) and is handed out in that
padded shape, so it merges with inputs stored with the same padding (an unpadded input of another
shape is the plan's shape error). An nvfp4 layer's ``pre_quant_scale`` (smoothing: 0.33 multiplies
the layer's input by it) is folded into the weight's columns, which is the same product; that layer's
input scale, measured on the smoothed input, is then not kept. A fp8 layer's ``pre_quant_scale`` is
ignored, as 0.33 ignores it. A layer in another of 0.33's formats (int8, w4a4, w4a8, ...) or a
malformed block-scaled layer is a one-line error naming the input, the layer and the format, raised
when the file is opened. Every weight is handed out as float32 (its scales applied); scale, marker
and config tensors are consumed here and never reach the merge plan.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from ..errors import MergeInputError
from .dtype_names import dtype_name
from .file_source import FileSource
from .fp8 import FP8, widen
from .json_limits import loads_bounded
from .microscaling import (BLOCK, MXFP8, NVFP4, dequantize_mxfp8, dequantize_nvfp4, scale_shape,
                           values_shape)

MARKER = "scaled_fp8"
QUANT_METADATA = "_quantization_metadata"
# per-layer tensors: (weight scale, input scale) of each layout
LEGACY = ("scale_weight", "scale_input")
MIXED = ("weight_scale", "input_scale")
LAYER_CONFIG = "comfy_quant"
# buffers of 0.33's other formats: consumed with their weight, never merged as weights
TENSOR_SCALE, SMOOTHING = "weight_scale_2", "pre_quant_scale"
OTHER_BUFFERS = (TENSOR_SCALE, SMOOTHING)
BLOCK_STORAGE = {MXFP8: torch.float8_e4m3fn, NVFP4: torch.uint8}  # how 0.33 stores each block format's values
# stored formats besides plain dtype names: the legacy layout's scaled weight, and a weight_scale one
SCALED, MIXED_FP8, MIXED_FP8_E5M2 = "scaled_fp8", "mixed_fp8", "mixed_fp8_e5m2"
# layouts of a file's scaled weights (see the module docstring)
LEGACY_LAYOUT, HEADER_LAYOUT, PER_LAYER_LAYOUT = "scaled_fp8", "quantization_metadata", "comfy_quant"
FP8_FORMATS = {"float8_e4m3fn": torch.float8_e4m3fn, "float8_e5m2": torch.float8_e5m2}
UNET_PREFIX = "model.diffusion_model."


def _sibling(key: str, name: str) -> Optional[str]:
    return key[: -len("weight")] + name if key.endswith("weight") else None


def _buffer(weight_key: str, name: str) -> str:
    """A buffer of a weight's layer: ``<layer>.weight`` -> ``<layer>.<name>``."""
    return weight_key[: -len("weight")] + name


def _is_marker(key: str) -> bool:
    return key == MARKER or key.endswith("." + MARKER)


def _layer(key: str) -> Optional[str]:
    return key[: -len(".weight")] if key.endswith(".weight") else None


def mixed_format(dtype: torch.dtype) -> str:
    """The stored format of a weight_scale weight of this fp8 dtype."""
    return MIXED_FP8_E5M2 if dtype == torch.float8_e5m2 else MIXED_FP8


class QuantizedFileSource(FileSource):
    """A safetensors file with fp8 and/or scaled weights; every tensor reads as float32 (ints as stored)."""

    def __init__(self, path, input_name: str = "file"):
        super().__init__(path, input_name)
        self.input_name = input_name
        tensors = self.reader.tensors
        self.scales: dict[str, str] = {}  # weight key -> its scale key
        self.formats: dict[str, str] = {}  # weight key -> SCALED or MIXED_FP8(_E5M2)
        self.configs: dict[str, dict] = {}  # weight key -> its layer's config (comfy_quant or header)
        self.inputs_scaled: set[str] = set()  # weight keys that came with an input scale
        self.blocks: dict[str, str] = {}  # weight key -> MXFP8 or NVFP4
        self.smoothed: dict[str, str] = {}  # nvfp4 weight key -> its pre_quant_scale key (folded in)
        consumed = {k for k in tensors if _is_marker(k) or k.endswith("." + LAYER_CONFIG)}
        self.marker = next((k for k in tensors if _is_marker(k)), None)
        self.quant_metadata = self.reader.metadata.get(QUANT_METADATA)
        header = layer_config(self.reader.metadata) or {}
        self.header_full_names = any(n.startswith(UNET_PREFIX) for n in header)
        per_layer = any(k.endswith("." + LAYER_CONFIG) for k in tensors)
        for key in tensors:
            layer = _layer(key)
            if layer is None:
                continue
            config = self._config(layer, header)
            if config is not None:
                self.configs[key] = config
            for layout, (weight_scale, input_scale) in ((SCALED, LEGACY), (MIXED_FP8, MIXED)):
                scale = _sibling(key, weight_scale)
                if scale is not None and scale in tensors:
                    self.scales[key] = scale
                    self.formats[key] = layout if layout == SCALED else mixed_format(tensors[key].dtype)
                    consumed.add(scale)
                    if _sibling(key, input_scale) in tensors:
                        consumed.add(_sibling(key, input_scale))
                        self.inputs_scaled.add(key)
            if config is not None or key in self.scales:
                consumed.update(s for s in (_sibling(key, n) for n in OTHER_BUFFERS) if s in tensors)
                self._check_format(key, config)
        orphans = [k for k in tensors if k.endswith(("." + LEGACY[0], "." + MIXED[0])) and k not in consumed]
        if orphans:
            raise MergeInputError(input_name, f"'{self.name}' has the scale '{orphans[0]}' without its weight.",
                                  "the file is damaged or of a layout this version does not read; use an "
                                  "unquantised file.")
        self.consumed = consumed & set(tensors)
        mixed = any(f != SCALED for f in self.formats.values())
        self.layout = (PER_LAYER_LAYOUT if per_layer or (mixed and not header) else HEADER_LAYOUT) if mixed else \
            LEGACY_LAYOUT if self.formats or self.marker else None

    def _config(self, layer: str, header: dict) -> Optional[dict]:
        """A layer's quantisation config: its comfy_quant tensor, else its header entry (either naming)."""
        key = layer + "." + LAYER_CONFIG
        if key in self.reader.tensors:
            try:
                config = loads_bounded(self.reader.get(key).numpy().tobytes(), f"'{key}'")
            except ValueError:
                config = None
            if not isinstance(config, dict):
                raise MergeInputError(self.input_name, f"'{self.name}': '{key}' is not a JSON object.",
                                      "the file is damaged; use another copy.")
            return config
        entry = header.get(layer)
        if entry is None and layer.startswith(UNET_PREFIX):
            entry = header.get(layer[len(UNET_PREFIX):])
        return entry if isinstance(entry, dict) else None

    def _check_format(self, key: str, config: Optional[dict]) -> None:
        """Per-tensor fp8, mxfp8 and nvfp4 are dequantised here: any other format is refused before any work."""
        fmt = (config or {}).get("format")
        stored = self.reader.tensors[key].dtype
        if fmt is None and stored in FP8:
            return
        if fmt in FP8_FORMATS and stored in FP8:
            return
        if fmt in BLOCK:
            self._check_blocks(key, fmt)
            return
        what = f"ComfyUI's quantised format '{fmt}'" if fmt else f"a {dtype_name(stored)} weight with a scale"
        raise MergeInputError(self.input_name, f"'{self.name}' stores '{key}' as {what}, which this version "
                              "cannot dequantise (per-tensor fp8, mxfp8 and nvfp4 only).",
                              "use an fp8, scaled-fp8, mxfp8, nvfp4, GGUF or unquantised version of the model.")

    def _check_blocks(self, key: str, fmt: str) -> None:
        """A block-scaled layer as 0.33 stores it: values of the padded shape, tiled block scales (and the
        tensor scale of nvfp4); anything else is refused, naming what does not fit."""
        tensors, info = self.reader.tensors, self.reader.tensors[key]
        scale, tensor_scale, smoothing = (_buffer(key, n) for n in (MIXED[0], TENSOR_SCALE, SMOOTHING))
        problem = None
        if info.dtype != BLOCK_STORAGE[fmt] or len(info.shape) != 2:
            problem = f"a {len(info.shape)}-D {dtype_name(info.dtype)} weight"
        elif any(d % BLOCK[fmt] for d in values_shape(fmt, info.shape)):
            problem = f"the shape {list(info.shape)}, not padded to multiples of {BLOCK[fmt]}"
        elif scale not in tensors or tensors[scale].shape != scale_shape(fmt, values_shape(fmt, info.shape)):
            problem = f"block scales of shape {list(tensors[scale].shape) if scale in tensors else None}"
        elif fmt == NVFP4 and (tensor_scale not in tensors or math.prod(tensors[tensor_scale].shape) != 1):
            problem = f"no single-value '{TENSOR_SCALE}'"
        elif fmt == NVFP4 and smoothing in tensors and (
                len(tensors[smoothing].shape) != 1 or tensors[smoothing].shape[0] > values_shape(fmt, info.shape)[1]):
            problem = f"a '{SMOOTHING}' of shape {list(tensors[smoothing].shape)}"
        if problem is not None:
            raise MergeInputError(self.input_name, f"'{self.name}' stores '{key}' in ComfyUI's quantised format "
                                  f"'{fmt}' with {problem}, which this version cannot read.",
                                  "the file is damaged or of a newer layout; use another version of the model.")
        self.blocks[key] = self.formats[key] = fmt
        self.scales.setdefault(key, scale)
        if fmt == NVFP4 and smoothing in tensors:
            self.smoothed[key] = smoothing

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: values_shape(self.blocks[k], v.shape) if k in self.blocks else v.shape
                for k, v in self.reader.tensors.items() if k not in self.consumed}

    def dtype(self, key: str) -> torch.dtype:
        own = self.reader.tensors[key].dtype
        return torch.float32 if (key in self.scales or own in FP8) else own

    def stored_format(self, key: str) -> str:
        """What "as in A" writes: SCALED / MIXED_FP8(_E5M2) for scaled weights, else the stored dtype's name."""
        if key in self.formats:
            return self.formats[key]
        return dtype_name(self.reader.tensors[key].dtype)

    def quant_config(self, key: str) -> Optional[dict]:
        """The layer config a 0.33-style file gave this weight (None for other keys and layouts)."""
        return self.configs.get(key)

    def had_input_scale(self, key: str) -> bool:
        return key in self.inputs_scaled

    def input_scale(self, key: str) -> Optional[torch.Tensor]:
        """The layer's stored ``input_scale`` (the weight_scale layouts), which "as in A" writes again: it was
        measured on the layer's activations, which no weight merge can recompute. None without one, for the
        legacy layout's ``scale_input`` (its 2-value marker means no fp8 activations), and for a smoothed
        nvfp4 layer (its scale was measured after the smoothing that the merge folds away)."""
        name = _buffer(key, MIXED[1])
        if key not in self.inputs_scaled or self.formats.get(key) == SCALED or key in self.smoothed:
            return None
        return self.reader.get(name).clone() if name in self.reader.tensors else None

    def get(self, key: str) -> torch.Tensor:
        if key in self.blocks:
            return self._blocks(key)
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

    def _blocks(self, key: str) -> torch.Tensor:
        values, scales = self.reader.get(key), self.reader.get(self.scales[key])
        if self.blocks[key] == MXFP8:
            return dequantize_mxfp8(values, scales)
        weight = dequantize_nvfp4(values, scales, self.reader.get(_buffer(key, TENSOR_SCALE)).reshape(()))
        if key in self.smoothed:  # 0.33 computes (input * s) @ weight.T, which is input @ (weight * s).T
            smoothing = self.reader.get(self.smoothed[key]).float()
            weight[:, :smoothing.shape[0]] *= smoothing
        return weight

    def stored(self, key: str) -> Optional[torch.Tensor]:
        """A plain (unscaled) fp8 weight as stored, for the engine's linear modes, which widen it to
        float32 chunk by chunk (a whole float32 copy costs a page fault per 1024 values); else None."""
        if key in self.scales or self.reader.tensors[key].dtype not in FP8:
            return None
        return self.reader.get(key, self.buffers)

    def stored_scaled(self, key: str) -> Optional[tuple[torch.Tensor, float]]:
        """A per-tensor scaled fp8 weight as stored, with its scale as a float32 value: ``get`` would hand out
        ``widen(values) * scale``, which the fused linear kernel computes chunk by chunk instead (a whole
        float32 copy per input cost 4 ns per value and 0.9 GB for a 226 M-value weight). None for every
        other tensor (per-row or block scales, plain tensors)."""
        if key not in self.scales or key in self.blocks or self.reader.tensors[key].dtype not in FP8:
            return None
        scale_key = self.scales[key]
        if math.prod(self.reader.tensors[scale_key].shape) != 1:
            return None
        scale = float(self.reader.get(scale_key).float().reshape(()))
        return self.reader.get(key, self.buffers), scale

    def raw(self, key: str):
        return None if key in self.scales or self.reader.tensors[key].dtype in FP8 else self.reader.raw(key)


def _broadcast(scale: torch.Tensor, weight: torch.Tensor) -> tuple[int, ...]:
    """Per-row scales ([out] or [out, 1]) broadcast over the weight's other dimensions."""
    if scale.numel() == weight.shape[0]:
        return (weight.shape[0],) + (1,) * (weight.dim() - 1)
    return tuple(scale.shape)


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
        layers = loads_bounded(metadata.get(QUANT_METADATA, ""), QUANT_METADATA).get("layers")
    except (ValueError, AttributeError):
        return None
    return layers if isinstance(layers, dict) else None
