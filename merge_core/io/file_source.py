"""A safetensors file as a key source, opened lazily (the base of the quantised file source)."""
from __future__ import annotations

import os
from typing import Optional

import torch

from .buffers import BufferPool
from .dtype_names import dtype_name
from .key_source import KeySource
from .safetensors_file import SafetensorsReader


class FileSource(KeySource):
    """A safetensors file, opened lazily."""

    def __init__(self, path: str | os.PathLike, input_name: str = "file"):
        self.reader = SafetensorsReader(path, input_name)
        self.name = os.path.basename(str(path))
        self.buffers: Optional[BufferPool] = None  # set by run_merge while it streams (io/buffers.py)

    def stored_format(self, key: str) -> str:
        """The stored dtype's name ("fp16", ...): what "output as in A" writes (io/precision.py)."""
        return dtype_name(self.dtype(key))

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

    def release(self, key: str, part: Optional[tuple[int, int]] = None) -> None:
        self.reader.release(key, part)

    @property
    def mapped(self) -> bool:
        """Whether its tensors are views of the file's mapping (which no buffer pool may take back)."""
        return self.reader.mapping is not None

    def close(self) -> None:
        self.reader.close()
