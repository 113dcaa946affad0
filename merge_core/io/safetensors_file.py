"""Streaming safetensors reader and writer.

The format is an 8-byte little-endian header length, a JSON header
(``{key: {dtype, shape, data_offsets}}`` plus ``__metadata__``), then the raw
tensor bytes. Reading one tensor with a positioned read keeps a file's pages
out of the process's resident memory (the command line maps its inputs instead,
and lets each key's pages go once done: io/mapped_file.py); writing the header first
and then each tensor as it is produced means no merged state dict ever exists
in RAM. The header is checked in full at open (a damaged file is a one-line
error naming it, not a traceback later). The writer goes through
output_file.OutputFile: complete file or none, never onto an input.
"""
from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Optional

import torch

from ..errors import MergeInputError
from .buffers import BufferPool
from . import mapped_file
from .json_limits import loads_bounded
from .output_file import OutputFile

DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
    "F8_E8M0": torch.float8_e8m0fnu,  # mxfp8 block scales, as ComfyUI 0.33 saves them
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
MAX_HEADER = 100 * 1024 * 1024  # the safetensors reference refuses larger headers too


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
    """Lazy access to one file: headers at open, tensors one at a time.

    input_name: the input or option that named the file, for the error of a damaged file.
    mapped: read through a mapping (io/mapped_file.py); by default where the command line enabled it.
    """

    def __init__(self, path: str | os.PathLike, input_name: str = "file", mapped: Optional[bool] = None):
        self.path, self.input_name = Path(path), input_name
        self.mapping: Optional[mapped_file.MappedFile] = None
        try:
            self._fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            raise MergeInputError(input_name, f"'{self.path}' does not exist.", "check the path.") from None
        except OSError as exc:
            raise MergeInputError(input_name, f"cannot open '{self.path}': {exc.strerror or exc}.",
                                  "check the path and its permissions.") from None
        try:
            header, base = self._header()
            self.metadata, self.tensors = self._entries(header, base, os.fstat(self._fd).st_size)
        except (ValueError, OSError) as exc:
            os.close(self._fd)
            self._fd = -1
            problem = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise MergeInputError(input_name, f"'{self.path}' is not a readable safetensors file: {problem}.",
                                  "the file is damaged or truncated (an unfinished download?); download or save "
                                  "it again.") from None
        if mapped_file.enabled() if mapped is None else mapped:
            try:
                self.mapping = mapped_file.MappedFile(self._fd)
            except (OSError, ValueError):  # a file that cannot be mapped (a pipe, a special file system) is read
                self.mapping = None

    def _header(self) -> tuple[dict, int]:
        head = os.pread(self._fd, 8, 0)
        if len(head) != 8:
            raise ValueError("it is shorter than the 8-byte header length")
        (n,) = struct.unpack("<Q", head)
        size = os.fstat(self._fd).st_size
        if n > MAX_HEADER:
            raise ValueError(f"the header length {n} is absurd (over {MAX_HEADER // 2**20} MB)")
        if n > size - 8:
            raise ValueError(f"the header length {n} runs past the end of the file ({size} bytes)")
        raw = os.pread(self._fd, n, 8)
        header = loads_bounded(raw, "the header")  # a ValueError naming the damage, never RecursionError
        if not isinstance(header, dict):
            raise ValueError(f"the header is a JSON {type(header).__name__}, not an object")
        return header, 8 + n

    def _entries(self, header: dict, base: int, size: int):
        metadata = header.pop("__metadata__", None) or {}
        if not isinstance(metadata, dict):
            raise ValueError("__metadata__ is not a JSON object")
        tensors: dict[str, TensorInfo] = {}
        for key, info in header.items():
            where = f"tensor '{key}'"
            if not isinstance(info, dict):
                raise ValueError(f"{where}: its entry is not a JSON object")
            name = info.get("dtype")
            dtype = DTYPES.get(name) if isinstance(name, str) else None  # a list here must not raise TypeError
            if dtype is None:
                raise ValueError(f"{where}: unknown dtype {info.get('dtype')!r}")
            shape, offsets = info.get("shape"), info.get("data_offsets")
            if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
                raise ValueError(f"{where}: bad shape {shape!r}")
            if (not isinstance(offsets, list) or len(offsets) != 2
                    or not all(type(o) is int for o in offsets) or not 0 <= offsets[0] <= offsets[1]):
                raise ValueError(f"{where}: bad data_offsets {offsets!r}")
            begin, end = base + offsets[0], base + offsets[1]
            if end > size:
                raise ValueError(f"{where}: its data ends at byte {end}, past the end of the file ({size} bytes; "
                                 "truncated?)")
            expected = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
            if end - begin != expected:
                raise ValueError(f"{where}: {end - begin} bytes of data for shape {shape} in {info['dtype']} "
                                 f"({expected} expected)")
            tensors[key] = TensorInfo(dtype, tuple(shape), begin, end)
        return {str(k): str(v) for k, v in metadata.items()}, tensors

    def keys(self) -> list[str]:
        return list(self.tensors)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: v.shape for k, v in self.tensors.items()}

    def raw(self, key: str, buffers: Optional[BufferPool] = None) -> memoryview:
        """The stored bytes of one tensor (a view of a fresh uint8 buffer, from ``buffers`` when given; of the
        mapping when mapped)."""
        if self.mapping is not None:
            info = self.tensors[key]
            return self._mapped(self.mapping.view, info)
        return memoryview(self._read(key, buffers).numpy())  # type: ignore[arg-type]  # see _tensor_bytes

    def _read(self, key: str, buffers: Optional[BufferPool] = None) -> torch.Tensor:
        """One tensor's bytes into a new uint8 tensor (from ``buffers`` when given); mapped, a view of the mapping.

        torch.empty, not bytearray: a bytearray is zero-filled while the GIL is held (about 0.7 s per
        GB), which stalls the merge thread on every key; torch's buffer is not touched until preadv
        fills it, and preadv releases the GIL (bench/RESULTS.md, busy-machine section)."""
        info = self.tensors[key]
        if self.mapping is not None:
            return self._mapped(self.mapping.tensor, info)
        buf = torch.empty(info.nbytes, dtype=torch.uint8) if buffers is None else buffers.take(info.nbytes)
        view = memoryview(buf.numpy())  # type: ignore[arg-type]  # see _tensor_bytes
        done = 0
        while done < info.nbytes:  # pread may return short reads on huge tensors
            got = os.preadv(self._fd, [view[done:]], info.begin + done)
            if got <= 0:
                raise OSError(f"unexpected end of file reading '{key}' from {self.path}")
            done += got
        return buf

    def _mapped(self, view, info: TensorInfo):
        """``view(begin, end)`` of the mapping; a file shortened since it was opened is the input's error."""
        try:
            return view(info.begin, info.end)
        except OSError as exc:
            raise MergeInputError(self.input_name, f"'{self.path}' changed while it was read ({exc.strerror}).",
                                  "leave the inputs alone while a merge reads them, and run it again.") from None

    def prefetch(self, key: str) -> None:
        """Ask the kernel to start reading one tensor's bytes now (asynchronously, into the page cache,
        not into this process): the engine calls it a key ahead of the read, so disk reads overlap
        the math instead of stalling it."""
        info = self.tensors.get(key)
        if info is not None and info.nbytes and self._fd >= 0 and hasattr(os, "posix_fadvise"):
            try:
                os.posix_fadvise(self._fd, info.begin, info.nbytes, os.POSIX_FADV_WILLNEED)
            except OSError:  # only a hint
                pass

    def get(self, key: str, buffers: Optional[BufferPool] = None) -> torch.Tensor:
        info = self.tensors[key]
        if info.nbytes == 0:
            return torch.empty(info.shape, dtype=info.dtype)
        return self._read(key, buffers).view(info.dtype).reshape(info.shape)

    def release(self, key: str, part: Optional[tuple[int, int]] = None) -> None:
        """Done with ``key`` for now: a mapped reader lets its pages go (views of it stay valid). ``part``: only
        the bytes [lo, hi) of the tensor, which the math has passed (whole pages inside them)."""
        info = self.tensors.get(key)
        if self.mapping is None or info is None or not info.nbytes:
            return
        if part is None:
            self.mapping.release(info.begin, info.end)
        else:
            self.mapping.release_within(info.begin + max(part[0], 0), info.begin + min(part[1], info.nbytes))

    def close(self) -> None:
        if self.mapping is not None:
            self.mapping.close()
            self.mapping = None
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
    # reshape first: a 0-d tensor cannot be viewed. The ignore: numpy's stubs give ndarray the buffer protocol
    # (__buffer__) only from Python 3.12, but every ndarray is a buffer.
    return memoryview(t.reshape(-1).view(torch.uint8).numpy())  # type: ignore[arg-type]


class SafetensorsWriter:
    """Writes tensors in a declared order; the header is written before any data.

    inputs: the files being read (the output may never be one of them); input_name: the option
    or node input that named the path, for errors; renumber: for an automatic numbered name, the next
    name to take if another save commits this one first (OutputFile); ``commit`` returns the name used.
    """

    def __init__(self, path: str | os.PathLike, layout: Iterable[tuple[str, torch.dtype, tuple[int, ...]]],
                 metadata: Optional[Mapping[str, str]] = None, overwrite: bool = False,
                 inputs: Iterable = (), input_name: str = "output", renumber=None):
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
        self._out = OutputFile(path, inputs, overwrite, input_name, size=8 + len(blob) + offset,
                               renumber=renumber).__enter__()
        self.path = self._out.path
        try:
            self._out.write(struct.pack("<Q", len(blob)) + blob)
        except BaseException:
            self._out.discard()
            raise
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
        self._out.write(data)

    def write_raw(self, key: str, data: bytes | bytearray | memoryview) -> None:
        data = memoryview(data)
        self._expect(key, data.nbytes)
        self._out.write(data)

    def commit(self) -> Path:
        """Make the file appear (fsynced, never over a file that appeared meanwhile); on failure nothing is left."""
        if self._next != len(self.order):
            self._out.discard()
            raise RuntimeError(f"only {self._next} of {len(self.order)} tensors were written")
        self._out.__exit__(None, None, None)
        path = self._out.path  # another name when the automatic one was taken meanwhile (renumber)
        assert path is not None  # set when the output file was opened
        self.path = path
        return path

    def abort(self) -> None:
        self._out.discard()
