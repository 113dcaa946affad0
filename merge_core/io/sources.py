"""Key sources: anything that hands out one tensor at a time by key.

The engine only needs shapes up front (to plan and to write a header) and one
tensor at a time afterwards. A file source reads lazily; a dict source serves
tests and small in-memory models.
"""
from __future__ import annotations

import os
from typing import Mapping, Optional, Protocol

import torch

from ..errors import MergeInputError
from .buffers import BufferPool
from .safetensors_file import SafetensorsReader


class KeySource(Protocol):
    name: str

    def shapes(self) -> dict[str, tuple[int, ...]]: ...

    def dtype(self, key: str) -> torch.dtype: ...

    def get(self, key: str) -> torch.Tensor: ...

    def raw(self, key: str) -> Optional[bytes | bytearray | memoryview]:
        """The stored bytes, for byte-exact copies; None when not available."""


class FileSource:
    """A safetensors file, opened lazily."""

    def stored_format(self, key: str) -> str:
        """The stored dtype's name ("fp16", ...): what "output as in A" writes (io/precision.py)."""
        from .quantized import dtype_name
        return dtype_name(self.dtype(key))

    def __init__(self, path: str | os.PathLike, input_name: str = "file"):
        self.reader = SafetensorsReader(path, input_name)
        self.name = os.path.basename(str(path))
        self.buffers: Optional[BufferPool] = None  # set by run_merge while it streams (io/buffers.py)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return self.reader.shapes()

    def dtype(self, key: str) -> torch.dtype:
        return self.reader.tensors[key].dtype

    def get(self, key: str) -> torch.Tensor:
        return self.reader.get(key, self.buffers)

    def raw(self, key: str) -> memoryview:
        return self.reader.raw(key, self.buffers)

    def prefetch(self, key: str) -> None:
        self.reader.prefetch(key)

    def close(self) -> None:
        self.reader.close()


class DictSource:
    """An in-memory state dict (tests, small models). Tensors are never modified."""

    def __init__(self, tensors: Mapping[str, torch.Tensor], name: str = "dict"):
        self.tensors = tensors
        self.name = name

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: tuple(v.shape) for k, v in self.tensors.items()}

    def dtype(self, key: str) -> torch.dtype:
        return self.tensors[key].dtype

    def get(self, key: str) -> torch.Tensor:
        return self.tensors[key]

    def raw(self, key: str) -> None:
        return None

    def close(self) -> None:
        pass


def open_source(path_or_dict, name: str = "model", input_name: str = "file") -> KeySource:
    if isinstance(path_or_dict, Mapping):
        return DictSource(path_or_dict, name)
    path = str(path_or_dict)
    if path.lower().endswith(".gguf"):
        from .gguf_file import GGUFSource
        return GGUFSource(path, input_name)
    if not path.endswith(".safetensors"):
        raise MergeInputError(input_name, f"'{path}' is neither a .safetensors nor a .gguf file (pickled .ckpt "
                              "and .pt files can run code when read).", "convert it to safetensors first.")
    source = FileSource(path, input_name)
    from .quantized import QuantizedFileSource, needs_dequantising
    if needs_dequantising(source.reader):  # fp8 or scaled weights: float32 out, scale tensors consumed
        source.close()
        return QuantizedFileSource(path, input_name)
    return source
