"""Key sources: anything that hands out one tensor at a time by key, and the opener of a model file.

The engine only needs shapes up front (to plan and to write a header) and one
tensor at a time afterwards. A file source reads lazily; a dict source serves
tests and small in-memory models.
"""
from __future__ import annotations

from typing import Mapping

import torch

from ..errors import MergeInputError
from .file_source import FileSource
from .gguf_file import GGUFSource
from .key_source import KeySource
from .quantized import QuantizedFileSource, needs_dequantising

__all__ = ["DictSource", "FileSource", "KeySource", "open_source"]


class DictSource(KeySource):
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


def open_source(path_or_dict, name: str = "model", input_name: str = "file") -> KeySource:
    if isinstance(path_or_dict, Mapping):
        return DictSource(path_or_dict, name)
    path = str(path_or_dict)
    if path.lower().endswith(".gguf"):
        return GGUFSource(path, input_name)
    if not path.endswith(".safetensors"):
        raise MergeInputError(input_name, f"'{path}' is neither a .safetensors nor a .gguf file (pickled .ckpt "
                              "and .pt files can run code when read).", "convert it to safetensors first.")
    source = FileSource(path, input_name)
    if needs_dequantising(source.reader):  # fp8 or scaled weights: float32 out, scale tensors consumed
        source.close()
        return QuantizedFileSource(path, input_name)
    return source
