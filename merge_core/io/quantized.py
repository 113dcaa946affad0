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

Only the per-tensor fp8 formats (``float8_e4m3fn``, ``float8_e5m2``) are dequantised; a layer in
another of 0.33's formats (mxfp8, nvfp4, int8, ...) is a one-line error naming the input, the
layer and the format, raised when the file is opened. Every weight is handed out as float32 (its
scale applied); scale, marker and config tensors are consumed here and never reach the merge plan.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..errors import MergeInputError
from .dtype_names import dtype_name
from .file_source import FileSource
from .fp8 import FP8, widen
from .json_limits import loads_bounded

MARKER = "scaled_fp8"
QUANT_METADATA = "_quantization_metadata"
# per-layer tensors: (weight scale, input scale) of each layout
LEGACY = ("scale_weight", "scale_input")
MIXED = ("weight_scale", "input_scale")
LAYER_CONFIG = "comfy_quant"
# buffers of 0.33's other formats: consumed with their weight, never merged as weights
OTHER_BUFFERS = ("weight_scale_2", "pre_quant_scale")
# stored formats besides plain dtype names: the legacy layout's scaled weight, and a weight_scale one
SCALED, MIXED_FP8, MIXED_FP8_E5M2 = "scaled_fp8", "mixed_fp8", "mixed_fp8_e5m2"
# layouts of a file's scaled weights (see the module docstring)
LEGACY_LAYOUT, HEADER_LAYOUT, PER_LAYER_LAYOUT = "scaled_fp8", "quantization_metadata", "comfy_quant"
FP8_FORMATS = {"float8_e4m3fn": torch.float8_e4m3fn, "float8_e5m2": torch.float8_e5m2}
UNET_PREFIX = "model.diffusion_model."


def _sibling(key: str, name: str) -> Optional[str]:
    return key[: -len("weight")] + name if key.endswith("weight") else None


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
        """Only per-tensor fp8 is dequantised here: any other format is refused before any work."""
        fmt = (config or {}).get("format")
        stored = self.reader.tensors[key].dtype
        if fmt is None and stored in FP8:
            return
        if fmt in FP8_FORMATS and stored in FP8:
            return
        what = f"ComfyUI's quantised format '{fmt}'" if fmt else f"a {dtype_name(stored)} weight with a scale"
        raise MergeInputError(self.input_name, f"'{self.name}' stores '{key}' as {what}, which this version "
                              "cannot dequantise (per-tensor fp8 only).",
                              "use an fp8, scaled-fp8, GGUF or unquantised version of the model.")

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: v.shape for k, v in self.reader.tensors.items() if k not in self.consumed}

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
