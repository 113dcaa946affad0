"""Output precisions of a merged file: fp32, fp16, bf16, fp8 e4m3fn, ComfyUI's scaled fp8, mxfp8, nvfp4, or as in A.

The engine computes in float32; plain fp32/fp16/bf16 are a cast it does itself. The fp8 formats
need more than a cast, so the engine then hands float32 tensors to ``EncodingSink``, which writes
each key in its format:

- ``fp8_e4m3fn``: every float tensor cast to fp8 after clamping to +-448 (a plain cast turns larger
  values into NaN);
- ``scaled_fp8``: the diffusion model's 2-D weights (its linear layers) as fp8 e4m3fn with a
  float32 scale = max|w| / 448 each, every other float tensor in bf16, in one of two layouts
  (``scaled_layout``, io/quantized.py describes both):

  - ``scaled_fp8`` (the default): ``<layer>.scale_weight`` plus the ``scaled_fp8`` marker
    (2 elements: dequantise, then multiply; no fp8 matrix multiply that would need input scales).
    ComfyUI 0.3.75 reads it natively and 0.33 converts it on load, so a file in it loads on both:
    that is why the CLI and the API write it unless told otherwise;
  - ``comfy_quant``: ``<layer>.weight_scale`` and a ``<layer>.comfy_quant`` config, the layout
    ComfyUI 0.33 itself writes (its loader's own, kept when it saves the model again). 0.3.75
    ignores the config and would read the fp8 values unscaled, so the file node writes it only in
    a host whose loader reads it (nodes/file_merge.py), and the CLI only when asked;

- ``mxfp8`` / ``nvfp4``: ComfyUI 0.33's block-scaled formats (io/microscaling.py), for the same 2-D
  weights, every other float tensor in bf16, in the ``comfy_quant`` layout (the only one that has
  them; 0.3.75 cannot load them). The values and scales are what 0.33's own quantisation computes
  from the merged float32 tensor, bit for bit (nvfp4's tensor scale recalculated: max|w| / (448 x 6)).
  The config is ``{"format": ...}``: these formats quantise activations with scales computed per call,
  so no input scale is needed;

- as in A (no precision given): each key as A stored it. Plain dtypes are kept (kept keys byte for
  byte); an fp8 key of A is written as fp8; a scaled key is scaled again with a fresh scale, and an
  mxfp8 or nvfp4 key quantised again in its format (as 0.33 quantises, scales recalculated), every
  scaled key in A's layout (legacy marker, ``_quantization_metadata`` header named as A names its
  layers, or per-layer ``comfy_quant`` configs with A's config for each layer), so that the file
  loads wherever A loads (the legacy layout has no block formats: such keys become scaled fp8 there);
  a quantised GGUF tensor of A is written as bf16 (io/gguf_file.py). Keys copied from B take B's
  stored format (a scaled one in A's layout, or B's when A has none).

Input scales (``input_scale``) are copied from the layer's input, A for a merged key: they were
calibrated on activations, which cannot be recomputed from weights, and a merge of similar models
feeds its layers similar activations, so A's calibration is the best one there is. A layer whose
input had none stays without one, and its config is kept as is. The legacy layout's ``scale_input``
is not written (its 2-value marker makes ComfyUI compute in full precision, never using it). A
``comfy_quant`` layer whose input scale cannot be kept (a smoothed nvfp4 layer, io/quantized.py),
or that has no config from its input, is marked ``full_precision_matrix_mult`` (as 0.33 marks a
converted ``scaled_fp8`` file), so that ComfyUI does not cast its activations to fp8 unscaled.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Mapping, Optional

import torch

from ..errors import MergeInputError
from ..plan import Action
from .fp8 import abs_max, narrow, narrow_divided
from .json_limits import loads_bounded
from .microscaling import (MXFP8, NVFP4, nvfp4_tensor_scale, quantize_mxfp8, quantize_nvfp4, scale_shape,
                           storage_shape)
from .quantized import (BLOCK_STORAGE, FP8, LAYER_CONFIG, LEGACY_LAYOUT, MARKER, MIXED, MIXED_FP8, MIXED_FP8_E5M2,
                        PER_LAYER_LAYOUT, QUANT_METADATA, SCALED, TENSOR_SCALE, UNET_PREFIX)
from .sinks import Sink

PRECISIONS = ("fp32", "fp16", "bf16", "fp8_e4m3fn", "scaled_fp8")  # what every host's loader reads
BLOCK_FORMATS = (MXFP8, NVFP4)  # written with block scales (io/microscaling.py), in the comfy_quant layout only
ALL_PRECISIONS = PRECISIONS + BLOCK_FORMATS  # the block formats load in ComfyUI 0.33 only
BLOCK_SCALE_DTYPES = {MXFP8: torch.float8_e8m0fnu, NVFP4: torch.float8_e4m3fn}
INPUT_SCALE = MIXED[1]
SCALED_LAYOUTS = (LEGACY_LAYOUT, PER_LAYER_LAYOUT)  # what an explicit scaled_fp8 output can be written as
PLAIN = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16,
         "fp8_e4m3fn": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}
REST_OF_SCALED = torch.bfloat16  # non-linear tensors of a scaled-fp8 file
SCALE_KEYS = {SCALED: "scale_weight", MIXED_FP8: "weight_scale", MIXED_FP8_E5M2: "weight_scale"}
SCALED_DTYPES = {SCALED: torch.float8_e4m3fn, MIXED_FP8: torch.float8_e4m3fn, MIXED_FP8_E5M2: torch.float8_e5m2}
CONFIG_FORMATS = {MIXED_FP8: "float8_e4m3fn", MIXED_FP8_E5M2: "float8_e5m2", MXFP8: MXFP8, NVFP4: NVFP4}


def quantize_scaled(tensor: torch.Tensor, dtype: torch.dtype = torch.float8_e4m3fn):
    """(fp8 tensor, float32 scale) with the tensor's largest magnitude at the format's max: the bytes of
    ``narrow(t / scale)`` with ``scale = max|t| / max``, computed in two chunked passes (io/fp8.py), as whole
    float32 temporaries (|t|, t / scale) cost 0.9 GB each for a 226 M-value weight and most of the writer's time."""
    amax = abs_max(tensor).to(tensor.device) if tensor.numel() else torch.zeros(())
    scale = per_tensor_scale(amax, dtype)
    return narrow_divided(tensor, scale, dtype), scale.to(torch.float32)


def per_tensor_scale(amax: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The scale that puts a tensor's largest magnitude ``amax`` (float32, 0-dim) at fp8 ``dtype``'s max."""
    return (amax / torch.finfo(dtype).max).clamp_min(torch.finfo(torch.float32).tiny).reshape(())


def config_tensor(config: Mapping) -> torch.Tensor:
    """A layer's comfy_quant entry: its JSON as uint8 bytes."""
    return torch.tensor(list(json.dumps(dict(config)).encode("utf-8")), dtype=torch.uint8)


@dataclass
class OutputFormat:
    """engine_dtype: what the engine computes into (None: each key in its source's dtype);
    encode: {key: format} for EncodingSink, or None when the engine's cast is all there is;
    configs: {weight key: comfy_quant config} of the layers written in that layout;
    input_scales: {weight key: input scale} kept from the layer's input."""
    engine_dtype: Optional[torch.dtype]
    encode: Optional[dict[str, str]] = None
    marker: Optional[str] = None  # key of the scaled_fp8 marker to write
    metadata: dict = field(default_factory=dict)
    configs: dict = field(default_factory=dict)
    input_scales: dict = field(default_factory=dict)

    def wrap(self, sink):
        return sink if self.encode is None else EncodingSink(sink, self.encode, self.marker, self.configs,
                                                             self.input_scales)


def _stored(source, key: str) -> str:
    fmt = getattr(source, "stored_format", None)
    if fmt is not None:
        return fmt(key)
    from .quantized import dtype_name
    return dtype_name(source.dtype(key))


def _unet_prefix(keys) -> str:
    return UNET_PREFIX if any(k.startswith(UNET_PREFIX) for k in keys) else ""


def output_format(precision: Optional[str], plan, sources: Mapping, input_name: str = "dtype",
                  scaled_layout: str = LEGACY_LAYOUT) -> OutputFormat:
    """The format of every output key for a precision name (None: as in A); scaled_layout: the
    layout of an explicit scaled_fp8 output (SCALED_LAYOUTS; the module docstring says which when)."""
    if precision is not None and precision not in ALL_PRECISIONS:
        raise MergeInputError(input_name, f"unknown output precision '{precision}'.",
                              "use " + ", ".join(ALL_PRECISIONS) + " (or nothing: as in A).")
    if scaled_layout not in SCALED_LAYOUTS:
        raise MergeInputError("scaled_layout", f"unknown scaled-fp8 layout '{scaled_layout}'.",
                              "use " + " or ".join(SCALED_LAYOUTS) + ".")
    if precision in ("fp32", "fp16", "bf16"):
        return OutputFormat(PLAIN[precision])
    keys = [kp.key for kp in plan.keys]
    if precision == "fp8_e4m3fn":
        return OutputFormat(torch.float32, {k: precision for k in keys})
    if precision in ("scaled_fp8", *BLOCK_FORMATS):
        prefix = _unet_prefix(keys)
        scaled = precision if precision in BLOCK_FORMATS else SCALED if scaled_layout == LEGACY_LAYOUT else MIXED_FP8
        encode, shapes = {}, {n: sources[n].shapes() for n in ("a", "b")}
        for kp in plan.keys:
            shape = shapes["b" if kp.action is Action.FROM_B else "a"][kp.key]
            linear = kp.key.startswith(prefix) and kp.key.endswith(".weight") and len(shape) == 2
            encode[kp.key] = scaled if linear else "bf16"
        if scaled == SCALED:
            return OutputFormat(torch.float32, encode, prefix + MARKER)
        return OutputFormat(torch.float32, encode, configs={
            k: _fresh_config(f) for k, f in encode.items() if f in CONFIG_FORMATS})
    return _as_in_a(plan, sources)


def _fresh_config(fmt: str) -> dict:
    """A layer without input scale: fp8 formats would cast its activations to fp8 unscaled, so ComfyUI
    computes in full precision; the block formats scale activations per call on their own."""
    if fmt in BLOCK_FORMATS:
        return {"format": fmt}
    return {"format": CONFIG_FORMATS[fmt], "full_precision_matrix_mult": True}


def _as_in_a(plan, sources: Mapping) -> OutputFormat:
    origin = {kp.key: sources["b" if kp.action is Action.FROM_B else "a"] for kp in plan.keys}
    formats = {k: _stored(s, k) for k, s in origin.items()}
    special = {f for f in formats.values() if f not in ("fp32", "fp16", "bf16")} & {
        SCALED, MIXED_FP8, MIXED_FP8_E5M2, *BLOCK_FORMATS, *(n for n, d in PLAIN.items() if d in FP8)}
    # a source read under released names wraps the file's own source (io/released_names.py)
    quantised_gguf = any(type(getattr(s, "inner", s)).__name__ == "GGUFSource" for s in sources.values())
    if not special and not quantised_gguf:
        return OutputFormat(None)  # the engine's own path: kept keys byte for byte
    fmt = OutputFormat(torch.float32, formats)
    if not set(formats.values()) & {*SCALE_KEYS, *BLOCK_FORMATS}:
        return fmt
    # one layout for every scaled key: A's, else the first other input's that has one
    model = next((s for s in (sources[n] for n in ("a", "b", "c") if n in sources) if getattr(s, "layout", None)),
                 None)
    if model is None or model.layout == LEGACY_LAYOUT:
        formats.update({k: SCALED for k, f in formats.items() if f in SCALE_KEYS or f in BLOCK_FORMATS})
        fmt.marker = getattr(model, "marker", None) or _unet_prefix(formats) + MARKER
        return fmt
    formats.update({k: MIXED_FP8 for k, f in formats.items() if f == SCALED})
    for k, f in formats.items():
        kept = getattr(origin[k], "input_scale", lambda _k: None)(k) if f in CONFIG_FORMATS else None
        if kept is not None:
            fmt.input_scales[k] = kept
    configs = {k: _kept_config(origin[k], k, f, k in fmt.input_scales) for k, f in formats.items()
               if f in CONFIG_FORMATS}
    if model.layout == PER_LAYER_LAYOUT:
        fmt.configs = configs
    else:
        fmt.metadata[QUANT_METADATA] = _header(model, configs)
    return fmt


def _kept_config(source, key: str, fmt: str, input_scale_kept: bool) -> dict:
    """The layer's config as its input gave it (a fresh one when it had none), with the format
    written; an input scale that could not be kept means ComfyUI must not cast activations unscaled."""
    kept = getattr(source, "quant_config", lambda k: None)(key)
    if kept is None:
        return _fresh_config(fmt)
    config = dict(kept, format=CONFIG_FORMATS[fmt])
    if getattr(source, "had_input_scale", lambda k: False)(key) and not input_scale_kept:
        config["full_precision_matrix_mult"] = True
    return config


def _header(model, configs: Mapping[str, dict]) -> str:
    """``_quantization_metadata`` for the written layers, named as the model file names its layers
    (0.3.75 names a checkpoint's layers without the diffusion model's prefix, 0.33 with it)."""
    try:
        table = loads_bounded(getattr(model, "quant_metadata", None) or "{}", "model A's _quantization_metadata")
    except ValueError:
        table = {}
    full = getattr(model, "header_full_names", False)

    def name(key: str) -> str:
        layer = key[: -len(".weight")]
        return layer if full or not layer.startswith(UNET_PREFIX) else layer[len(UNET_PREFIX):]
    table = dict(table if isinstance(table, dict) else {}, layers={name(k): c for k, c in configs.items()})
    table.setdefault("format_version", "1.0")
    return json.dumps(table)


class EncodingSink(Sink):
    """Wraps a sink: float32 tensors in, each key written in its format (scale and config tensors added)."""

    def __init__(self, inner, encode: Mapping[str, str], marker: Optional[str] = None,
                 configs: Optional[Mapping[str, dict]] = None, input_scales: Optional[Mapping] = None):
        self.inner, self.encode, self.marker = inner, encode, marker
        self.configs = {k: config_tensor(c) for k, c in (configs or {}).items()}
        self.input_scales = dict(input_scales or {})

    @property
    def keeps_tensors(self) -> bool:
        """Whether a tensor given to ``put`` is referenced after it returns: as the inner sink does."""
        return self.inner.keeps_tensors

    def begin(self, layout) -> None:
        self.layout = {k: (d, s) for k, d, s in layout}
        out: list[tuple[str, torch.dtype, tuple[int, ...]]] = \
            [(self.marker, torch.float8_e4m3fn, (2,))] if self.marker else []
        for key, dtype, shape in layout:
            fmt = self.encode.get(key)
            if not dtype.is_floating_point or fmt is None:
                out.append((key, dtype, shape))
            elif fmt in SCALE_KEYS or fmt in BLOCK_FORMATS:
                out += self._quantised_layout(key, fmt, shape)
            else:
                out.append((key, PLAIN[fmt], shape))
        self.inner.begin(out)
        if self.marker:
            self.inner.put(self.marker, torch.zeros(2, dtype=torch.float8_e4m3fn))

    def _quantised_layout(self, key: str, fmt: str, shape) -> list:
        """The tensors a quantised layer is written as, in the order ``put`` writes them."""
        out: list[tuple[str, torch.dtype, tuple[int, ...]]]
        if fmt in BLOCK_FORMATS:
            out = [(key, BLOCK_STORAGE[fmt], storage_shape(fmt, shape)),
                   (_sibling(key, MIXED[0]), BLOCK_SCALE_DTYPES[fmt], scale_shape(fmt, shape))]
            if fmt == NVFP4:
                out.append((_sibling(key, TENSOR_SCALE), torch.float32, ()))
        else:
            out = [(key, SCALED_DTYPES[fmt], shape), (_scale_key(key, fmt), torch.float32, ())]
        if key in self.input_scales:
            scale = self.input_scales[key]
            out.append((_sibling(key, INPUT_SCALE), scale.dtype, tuple(scale.shape)))
        if key in self.configs:
            out.append((_config_key(key), torch.uint8, tuple(self.configs[key].shape)))
        return out

    def _put_quantised(self, key: str, fmt: str, tensor: torch.Tensor) -> None:
        if fmt in BLOCK_FORMATS:
            t = tensor.float()
            if fmt == MXFP8:
                values, scales = quantize_mxfp8(t)
                extra = {}
            else:
                tensor_scale = nvfp4_tensor_scale(t)
                values, scales = quantize_nvfp4(t, tensor_scale)
                extra = {_sibling(key, TENSOR_SCALE): tensor_scale}
            self.inner.put(key, values)
            self.inner.put(_sibling(key, MIXED[0]), scales)
            for name, value in extra.items():
                self.inner.put(name, value)
        else:
            weight, scale = quantize_scaled(tensor, SCALED_DTYPES[fmt])
            self.put_scaled(key, weight, scale)
            return
        self._put_layer_buffers(key)

    def _put_layer_buffers(self, key: str) -> None:
        if key in self.input_scales:
            self.inner.put(_sibling(key, INPUT_SCALE), self.input_scales[key])
        if key in self.configs:
            self.inner.put(_config_key(key), self.configs[key])

    def scaled_encoding(self, key: str) -> Optional[torch.dtype]:
        """The fp8 dtype of a key written as per-tensor scaled fp8, which ``put_scaled`` then takes already
        quantised (the engine computes ``quantize_scaled`` of its result in two passes over its inputs,
        without the float32 result); else None."""
        fmt = self.encode.get(key)
        return SCALED_DTYPES[fmt] if fmt in SCALE_KEYS else None

    def put_scaled(self, key: str, values: torch.Tensor, scale: torch.Tensor) -> None:
        """A per-tensor scaled fp8 key already quantised: ``quantize_scaled``'s (values, scale) of its result."""
        fmt = self.encode[key]
        assert fmt in SCALE_KEYS and values.dtype == SCALED_DTYPES[fmt], (key, fmt, values.dtype)
        self.inner.put(key, values)
        self.inner.put(_scale_key(key, fmt), scale.to(torch.float32))
        self._put_layer_buffers(key)

    def encoded_dtype(self, key: str) -> Optional[torch.dtype]:
        """The plain fp8 dtype a key is written in, which ``put`` also takes as it is (the engine then
        computes that key straight into fp8, without a float32 copy of the whole tensor); else None."""
        fmt = self.encode.get(key)
        dtype = PLAIN.get(fmt) if fmt is not None else None
        return dtype if dtype in FP8 else None

    def put(self, key: str, tensor: torch.Tensor) -> None:
        fmt = self.encode.get(key)
        if not tensor.dtype.is_floating_point or fmt is None:
            self.inner.put(key, tensor)
        elif fmt in SCALE_KEYS or fmt in BLOCK_FORMATS:
            self._put_quantised(key, fmt, tensor)
        elif PLAIN[fmt] in FP8:
            self.inner.put(key, narrow(tensor, PLAIN[fmt]))  # fp8 from the engine: as it is
        else:
            self.inner.put(key, tensor.to(PLAIN[fmt]))

    def put_raw(self, key: str, data) -> None:
        dtype, shape = self.layout[key]
        if self.encode.get(key) is None or not dtype.is_floating_point:
            self.inner.put_raw(key, data)
            return
        self.put(key, torch.frombuffer(bytearray(data), dtype=dtype).reshape(shape) if len(data) else
                 torch.empty(shape, dtype=dtype))

    def commit(self):
        return self.inner.commit()

    def abort(self) -> None:
        self.inner.abort()


def _scale_key(key: str, fmt: str) -> str:
    return key[: -len("weight")] + SCALE_KEYS[fmt]


def _sibling(key: str, name: str) -> str:
    return key[: -len("weight")] + name


def _config_key(key: str) -> str:
    return key[: -len("weight")] + LAYER_CONFIG
