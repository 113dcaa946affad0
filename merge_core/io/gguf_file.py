"""GGUF inputs (the llama.cpp format ComfyUI-GGUF loads): each tensor dequantised to float32 when read.

The ``gguf`` package (PyPI, optional: ``pip install merge-suite[gguf]``) parses the file and
dequantises its block types (Q8_0, Q5_0/Q4_0, the K-quants Q6_K/Q5_K/Q4_K/...). GGUF stores
dimensions innermost first; tensors come out in torch order. Tensors whose shape was flattened
on conversion (convolutions) carry their real shape in the ``comfy.gguf.orig_shape.<name>``
field, as ComfyUI-GGUF's converter writes it. The file is memory-mapped: its pages are the page
cache's, and only the tensor being merged is copied.

"As in A" for a GGUF A: quantised tensors are written as bf16 (a GGUF cannot be written here;
bf16 keeps fp32's range), F32/F16/BF16 tensors in their own dtype.
"""
from __future__ import annotations

import os
import re
from typing import Optional

import numpy as np
import torch

from ..errors import MergeInputError

ORIG_SHAPE = "comfy.gguf.orig_shape."
PLAIN = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64,
         "I8": torch.int8, "I16": torch.int16, "I32": torch.int32, "I64": torch.int64}
QUANTISED_AS = "bf16"  # what "as in A" writes for a quantised GGUF tensor


def _gguf(input_name: str):
    try:
        import gguf
    except ImportError:
        raise MergeInputError(input_name, "is a GGUF file, which needs the 'gguf' package.",
                              "pip install gguf (or merge-suite[gguf]).") from None
    return gguf


def _field_ints(field) -> list[int]:
    return [int(field.parts[i][0]) for i in field.data]


class GGUFSource:
    """A .gguf file as a key source: shapes from the header, float32 tensors one at a time."""

    def __init__(self, path, input_name: str = "file"):
        gguf = _gguf(input_name)
        self.name, self.input_name = os.path.basename(str(path)), input_name
        if not os.path.isfile(path):
            raise MergeInputError(input_name, f"'{path}' does not exist.", "check the path.")
        try:
            self.reader = gguf.GGUFReader(str(path), "r")
        except ValueError as exc:
            text = str(exc)
            if "is not a valid GGMLQuantizationType" in text:
                code = re.sub(r"^\w+\.\w+\((\d+)\)$", r"\1", text.split()[0])  # np.uint32(250) -> 250
                raise MergeInputError(input_name, f"'{self.name}' uses the unknown GGUF quantisation type "
                                      f"{code}.", "convert it with a quantisation type the gguf "
                                      "package reads (Q8_0, Q5_K, Q4_K, ...) or use a safetensors file.") from None
            raise self._damaged(text) from None
        except (OSError, IndexError, KeyError, EOFError, TypeError) as exc:
            raise self._damaged(str(exc) or type(exc).__name__) from None
        self.tensors = {t.name: t for t in self.reader.tensors}
        self._shapes = {name: self._shape(t) for name, t in self.tensors.items()}
        self._check_types(gguf)

    def _damaged(self, why: str) -> MergeInputError:
        return MergeInputError(self.input_name, f"'{self.name}' is not a readable GGUF file: {why}.",
                               "the file is damaged or truncated (an unfinished download?); download it again.")

    def _shape(self, t) -> tuple[int, ...]:
        field = self.reader.fields.get(ORIG_SHAPE + t.name)
        shape = tuple(_field_ints(field)) if field is not None else tuple(int(d) for d in reversed(t.shape.tolist()))
        if int(np.prod(shape, dtype=np.int64)) != int(t.n_elements):
            raise self._damaged(f"tensor '{t.name}' has {t.n_elements} values, its shape {list(shape)} needs "
                                f"{int(np.prod(shape))}")
        return shape

    def _check_types(self, gguf) -> None:
        """Every block type must be one the gguf package can dequantise: say which one is not, up front."""
        for qtype in {t.tensor_type for t in self.tensors.values()}:
            if qtype.name in PLAIN:
                continue
            block, size = gguf.GGML_QUANT_SIZES[qtype]
            try:
                gguf.quants.dequantize(np.zeros((1, size), dtype=np.uint8), qtype)
            except NotImplementedError:
                raise MergeInputError(self.input_name, f"'{self.name}' uses the GGUF quantisation type "
                                      f"{qtype.name}, which the gguf package cannot dequantise.",
                                      "use a file quantised as Q8_0, Q6_K, Q5_K, Q4_K (or F16/BF16).") from None

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return dict(self._shapes)

    def dtype(self, key: str) -> torch.dtype:
        name = self.tensors[key].tensor_type.name
        return PLAIN.get(name, torch.float32) if name != "BF16" else torch.float32

    def stored_format(self, key: str) -> str:
        name = self.tensors[key].tensor_type.name
        return {"F32": "fp32", "F16": "fp16", "BF16": "bf16"}.get(name, QUANTISED_AS if name not in PLAIN else
                                                                   str(PLAIN[name]).replace("torch.", ""))

    def get(self, key: str) -> torch.Tensor:
        import gguf
        t = self.tensors[key]
        shape = self._shapes[key]
        name = t.tensor_type.name
        try:
            if name in PLAIN and name != "BF16":
                return torch.from_numpy(np.array(t.data)).reshape(shape)
            values = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type)
        except (ValueError, OSError, IndexError) as exc:
            raise self._damaged(f"tensor '{key}': {exc}") from None
        return torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32)).reshape(shape)

    def raw(self, key: str) -> Optional[bytes]:
        return None

    def close(self) -> None:
        mm = getattr(self.reader, "data", None)
        mmap_obj = getattr(mm, "_mmap", None)
        self.tensors = {}
        self.reader = None
        if mmap_obj is not None:
            try:
                mmap_obj.close()
            except (BufferError, ValueError):
                pass  # a tensor view is still alive: the map goes with it
