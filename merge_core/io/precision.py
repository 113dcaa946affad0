"""Output precisions of a merged file: fp32, fp16, bf16, fp8 e4m3fn, ComfyUI's scaled fp8, or as in A.

The engine computes in float32; plain fp32/fp16/bf16 are a cast it does itself. The fp8 formats
need more than a cast, so the engine then hands float32 tensors to ``EncodingSink``, which writes
each key in its format:

- ``fp8_e4m3fn``: every float tensor cast to fp8 after clamping to +-448 (a plain cast turns larger
  values into NaN);
- ``scaled_fp8`` (ComfyUI's legacy scaled-fp8 layout, which its stock loaders read): the diffusion
  model's 2-D weights (its linear layers) as fp8 e4m3fn with a float32 ``<layer>.scale_weight`` =
  max|w| / 448 each, plus the ``scaled_fp8`` marker (2 elements: ComfyUI then dequantises and
  multiplies, no fp8 matrix multiply that would need input scales); every other float tensor in bf16;
- as in A (no precision given): each key as A stored it. Plain dtypes are kept (kept keys byte for
  byte); an fp8 key of A is written as fp8; a scaled key of A is scaled again with a fresh scale
  (legacy layout with ``scale_weight``, or mixed-precision layout with ``weight_scale`` and A's
  ``_quantization_metadata``); a quantised GGUF tensor of A is written as bf16 (io/gguf_file.py).
  Keys copied from B take B's stored format.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Optional

import torch

from ..errors import MergeInputError
from .fp8 import narrow
from .quantized import FP8, MARKER, MIXED_FP8, QUANT_METADATA, SCALED

PRECISIONS = ("fp32", "fp16", "bf16", "fp8_e4m3fn", "scaled_fp8")
PLAIN = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16,
         "fp8_e4m3fn": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}
REST_OF_SCALED = torch.bfloat16  # non-linear tensors of a scaled-fp8 file
UNET_PREFIX = "model.diffusion_model."
SCALE_KEYS = {SCALED: "scale_weight", MIXED_FP8: "weight_scale"}


def quantize_scaled(tensor: torch.Tensor, dtype: torch.dtype = torch.float8_e4m3fn):
    """(fp8 tensor, float32 scale) with the tensor's largest magnitude at the format's max."""
    t = tensor.float()
    amax = t.abs().max() if t.numel() else torch.zeros(())
    scale = (amax / torch.finfo(dtype).max).clamp_min(torch.finfo(torch.float32).tiny).reshape(())
    return narrow(t / scale, dtype), scale.to(torch.float32)


@dataclass
class OutputFormat:
    """engine_dtype: what the engine computes into (None: each key in its source's dtype);
    encode: {key: format} for EncodingSink, or None when the engine's cast is all there is."""
    engine_dtype: Optional[torch.dtype]
    encode: Optional[dict[str, str]] = None
    marker: Optional[str] = None  # key of the scaled_fp8 marker to write
    metadata: dict = field(default_factory=dict)

    def wrap(self, sink):
        return sink if self.encode is None else EncodingSink(sink, self.encode, self.marker)


def _stored(source, key: str) -> str:
    fmt = getattr(source, "stored_format", None)
    if fmt is not None:
        return fmt(key)
    from .quantized import dtype_name
    return dtype_name(source.dtype(key))


def _unet_prefix(keys) -> str:
    return UNET_PREFIX if any(k.startswith(UNET_PREFIX) for k in keys) else ""


def output_format(precision: Optional[str], plan, sources: Mapping, input_name: str = "dtype") -> OutputFormat:
    """The format of every output key for a precision name (None: as in A)."""
    if precision is not None and precision not in PRECISIONS:
        raise MergeInputError(input_name, f"unknown output precision '{precision}'.",
                              "use " + ", ".join(PRECISIONS) + " (or nothing: as in A).")
    if precision in ("fp32", "fp16", "bf16"):
        return OutputFormat(PLAIN[precision])
    keys = [kp.key for kp in plan.keys]
    if precision == "fp8_e4m3fn":
        return OutputFormat(torch.float32, {k: precision for k in keys})
    if precision == "scaled_fp8":
        prefix = _unet_prefix(keys)
        encode, shapes = {}, {n: sources[n].shapes() for n in ("a", "b")}
        for kp in plan.keys:
            shape = shapes["b" if kp.action == "from_b" else "a"][kp.key]
            linear = kp.key.startswith(prefix) and kp.key.endswith(".weight") and len(shape) == 2
            encode[kp.key] = SCALED if linear else "bf16"
        return OutputFormat(torch.float32, encode, prefix + MARKER)
    return _as_in_a(plan, sources)


def _as_in_a(plan, sources: Mapping) -> OutputFormat:
    formats = {kp.key: _stored(sources["b" if kp.action == "from_b" else "a"], kp.key) for kp in plan.keys}
    special = {f for f in formats.values() if f not in ("fp32", "fp16", "bf16")} & {
        SCALED, MIXED_FP8, *(n for n, d in PLAIN.items() if d in FP8)}
    quantised_gguf = any(type(s).__name__ == "GGUFSource" for s in sources.values())
    if not special and not quantised_gguf:
        return OutputFormat(None)  # the engine's own path: kept keys byte for byte
    fmt = OutputFormat(torch.float32, formats)
    a = sources["a"]
    if SCALED in formats.values():
        fmt.marker = getattr(a, "marker", None) or _unet_prefix(formats) + MARKER
    if MIXED_FP8 in formats.values() and getattr(a, "quant_metadata", None):
        fmt.metadata[QUANT_METADATA] = a.quant_metadata
    return fmt


class EncodingSink:
    """Wraps a sink: float32 tensors in, each key written in its format (scale tensors added)."""

    def __init__(self, inner, encode: Mapping[str, str], marker: Optional[str] = None):
        self.inner, self.encode, self.marker = inner, encode, marker

    @property
    def keeps_tensors(self) -> bool:
        """Whether a tensor given to ``put`` is referenced after it returns: as the inner sink does."""
        return getattr(self.inner, "keeps_tensors", True)

    def begin(self, layout) -> None:
        self.layout = {k: (d, s) for k, d, s in layout}
        out = [(self.marker, torch.float8_e4m3fn, (2,))] if self.marker else []
        for key, dtype, shape in layout:
            fmt = self.encode.get(key)
            if not dtype.is_floating_point or fmt is None:
                out.append((key, dtype, shape))
            elif fmt in SCALE_KEYS:
                out += [(key, torch.float8_e4m3fn, shape), (_scale_key(key, fmt), torch.float32, ())]
            else:
                out.append((key, PLAIN[fmt], shape))
        self.inner.begin(out)
        if self.marker:
            self.inner.put(self.marker, torch.zeros(2, dtype=torch.float8_e4m3fn))

    def encoded_dtype(self, key: str) -> Optional[torch.dtype]:
        """The plain fp8 dtype a key is written in, which ``put`` also takes as it is (the engine then
        computes that key straight into fp8, without a float32 copy of the whole tensor); else None."""
        dtype = PLAIN.get(self.encode.get(key))
        return dtype if dtype in FP8 else None

    def put(self, key: str, tensor: torch.Tensor) -> None:
        fmt = self.encode.get(key)
        if not tensor.dtype.is_floating_point or fmt is None:
            self.inner.put(key, tensor)
        elif fmt in SCALE_KEYS:
            weight, scale = quantize_scaled(tensor)
            self.inner.put(key, weight)
            self.inner.put(_scale_key(key, fmt), scale)
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

