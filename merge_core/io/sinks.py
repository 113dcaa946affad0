"""Where the engine writes: a sink takes the output layout, then every key's tensor (or stored bytes) in order.

The abilities some sinks have (writing a key before ``put`` returns, taking a key straight in its stored
fp8 dtype) have defaults here that a sink overrides, so that the engine asks any sink directly."""
from __future__ import annotations

from typing import Optional, Protocol

import torch

from .safetensors_file import SafetensorsWriter


class Sink(Protocol):
    @property
    def keeps_tensors(self) -> bool:
        """False when ``put`` keeps no reference to its tensor once it returns (a file sink writes it): the
        engine then computes later keys into the same memory. A property, so a sink may ask its inner sink."""
        return True

    def begin(self, layout: list[tuple[str, torch.dtype, tuple[int, ...]]]) -> None: ...

    def put(self, key: str, tensor: torch.Tensor) -> None: ...

    def put_raw(self, key: str, data) -> None:
        """Stored bytes, copied or written before the call returns (the engine reuses the buffer)."""

    def encoded_dtype(self, key: str) -> Optional[torch.dtype]:
        """The plain fp8 dtype this sink writes ``key`` in and takes as it is from ``put``, or None: the engine
        then computes that key straight into fp8 (io/fp8.py says why)."""
        return None

    def commit(self): ...

    def abort(self) -> None: ...


class DictSink(Sink):
    """Collects results in memory (tests and small models)."""

    def __init__(self) -> None:
        self.tensors: dict[str, torch.Tensor] = {}

    def begin(self, layout) -> None:
        self.layout = {k: (d, s) for k, d, s in layout}

    def put(self, key: str, tensor: torch.Tensor) -> None:
        self.tensors[key] = tensor

    def put_raw(self, key: str, data) -> None:
        dtype, shape = self.layout[key]
        self.tensors[key] = torch.frombuffer(bytearray(data), dtype=dtype).reshape(shape)

    def commit(self):
        return self.tensors

    def abort(self) -> None:
        self.tensors.clear()


class FileSink(Sink):
    """Streams into a safetensors file through a temporary name."""

    keeps_tensors = False  # each tensor is written before put returns

    def __init__(self, path, metadata=None, overwrite: bool = False, inputs=(), input_name: str = "output"):
        self.path, self.metadata, self.overwrite = path, metadata, overwrite
        self.inputs, self.input_name = inputs, input_name  # the output may never be one of the inputs
        self.writer: Optional[SafetensorsWriter] = None  # from begin() on

    def begin(self, layout) -> None:
        self.writer = SafetensorsWriter(self.path, layout, self.metadata, self.overwrite, self.inputs, self.input_name)

    def _open(self) -> SafetensorsWriter:
        assert self.writer is not None, "begin() first"
        return self.writer

    def put(self, key, tensor) -> None:
        self._open().write(key, tensor)

    def put_raw(self, key, data) -> None:
        self._open().write_raw(key, data)

    def commit(self):
        return self._open().commit()

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.abort()
