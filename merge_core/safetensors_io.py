"""Streaming safetensors reader and writer.

The format is an 8-byte little-endian header length, a JSON header
(``{key: {dtype, shape, data_offsets}}`` plus ``__metadata__``), then the raw
tensor bytes. Reading one tensor with a positioned read (no mmap) keeps a
file's pages out of the process's resident memory; writing the header first
and then each tensor as it is produced means no merged state dict ever exists
in RAM. The writer goes to a temporary file renamed into place at the end, so
an interrupted merge leaves no partial output.
"""
from __future__ import annotations

import json
import os
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Optional

import torch

DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}


@dataclass(frozen=True)
class TensorInfo:
    dtype: torch.dtype
    shape: tuple[int, ...]
    begin: int  # absolute file offset
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


class SafetensorsReader:
    """Lazy access to one file: headers at open, tensors one at a time."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._fd = os.open(self.path, os.O_RDONLY)
        try:
            head = os.pread(self._fd, 8, 0)
            if len(head) != 8:
                raise ValueError("file is shorter than a safetensors header")
            (n,) = struct.unpack("<Q", head)
            size = os.fstat(self._fd).st_size
            if n > size - 8:
                raise ValueError("header length is larger than the file")
            header = json.loads(os.pread(self._fd, n, 8))
        except Exception as exc:
            os.close(self._fd)
            raise ValueError(f"'{self.path}' is not a readable safetensors file ({exc})") from None
        self.metadata: dict[str, str] = header.pop("__metadata__", None) or {}
        base = 8 + n
        self.tensors: dict[str, TensorInfo] = {}
        for key, info in header.items():
            begin, end = info["data_offsets"]
            self.tensors[key] = TensorInfo(DTYPES[info["dtype"]], tuple(info["shape"]),
                                           base + begin, base + end)

    def keys(self) -> list[str]:
        return list(self.tensors)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: v.shape for k, v in self.tensors.items()}

    def raw(self, key: str) -> bytearray:
        info = self.tensors[key]
        buf = bytearray(info.nbytes)
        view = memoryview(buf)
        done = 0
        while done < info.nbytes:  # pread may return short reads on huge tensors
            got = os.preadv(self._fd, [view[done:]], info.begin + done)
            if got <= 0:
                raise OSError(f"unexpected end of file reading '{key}' from {self.path}")
            done += got
        return buf

    def get(self, key: str) -> torch.Tensor:
        info = self.tensors[key]
        if info.nbytes == 0:
            return torch.empty(info.shape, dtype=info.dtype)
        return torch.frombuffer(self.raw(key), dtype=info.dtype).reshape(info.shape)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


def _tensor_bytes(t: torch.Tensor) -> memoryview:
    t = t.detach().contiguous().cpu()
    if t.numel() == 0:
        return memoryview(b"")
    return memoryview(t.reshape(-1).view(torch.uint8).numpy())  # reshape first: a 0-d tensor cannot be viewed


class SafetensorsWriter:
    """Writes tensors in a declared order; the header is written before any data."""

    def __init__(self, path: str | os.PathLike, layout: Iterable[tuple[str, torch.dtype, tuple[int, ...]]],
                 metadata: Optional[Mapping[str, str]] = None, overwrite: bool = False):
        self.path = Path(path)
        if self.path.exists() and not overwrite:
            raise FileExistsError(f"'{self.path}' exists; choose another name or allow overwriting")
        self.order: list[str] = []
        self.sizes: dict[str, int] = {}
        header: dict[str, object] = {}
        offset = 0
        for key, dtype, shape in layout:
            nbytes = torch.Size(shape).numel() * torch.empty((), dtype=dtype).element_size()
            header[key] = {"dtype": DTYPE_NAMES[dtype], "shape": list(shape),
                           "data_offsets": [offset, offset + nbytes]}
            self.order.append(key)
            self.sizes[key] = nbytes
            offset += nbytes
        if metadata:
            header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
        blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
        blob += b" " * (-len(blob) % 8)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".part", dir=self.path.parent)
        self._tmp = Path(tmp)
        self._file = os.fdopen(fd, "wb", buffering=0)
        self._file.write(struct.pack("<Q", len(blob)) + blob)
        self._next = 0

    def _expect(self, key: str, nbytes: int) -> None:
        if self._next >= len(self.order) or self.order[self._next] != key:
            expected = self.order[self._next] if self._next < len(self.order) else "nothing"
            raise RuntimeError(f"writer expected '{expected}', got '{key}'")
        if nbytes != self.sizes[key]:
            raise RuntimeError(f"'{key}': {nbytes} bytes, header says {self.sizes[key]}")
        self._next += 1

    def write(self, key: str, tensor: torch.Tensor) -> None:
        data = _tensor_bytes(tensor)
        self._expect(key, data.nbytes)
        self._write_all(data)

    def write_raw(self, key: str, data: bytes | bytearray | memoryview) -> None:
        data = memoryview(data)
        self._expect(key, data.nbytes)
        self._write_all(data)

    def _write_all(self, data: memoryview) -> None:
        done = 0
        while done < data.nbytes:
            done += self._file.write(data[done:])

    def commit(self) -> Path:
        if self._next != len(self.order):
            raise RuntimeError(f"only {self._next} of {len(self.order)} tensors were written")
        self._file.close()
        os.replace(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        try:
            self._file.close()
        finally:
            self._tmp.unlink(missing_ok=True)
