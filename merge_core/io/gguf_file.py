"""GGUF inputs (the llama.cpp format ComfyUI-GGUF loads): each tensor dequantised to float32 when read.

The ``gguf`` package (PyPI, optional: ``pip install merge-suite[gguf]``) parses the file and
dequantises its block types (Q8_0, Q5_0/Q4_0, the K-quants Q6_K/Q5_K/Q4_K/...). GGUF stores
dimensions innermost first; tensors come out in torch order. Tensors whose shape was flattened
on conversion (convolutions) carry their real shape in the ``comfy.gguf.orig_shape.<name>``
field, as ComfyUI-GGUF's converter writes it. The file is memory-mapped: its pages are the page
cache's, and only the tensor being merged is copied.

"As in A" for a GGUF A: quantised tensors are written as bf16 (a GGUF cannot be written here;
bf16 keeps fp32's range), F32/F16/BF16 tensors in their own dtype.

The gguf package trusts the file's tensor table: a type code changed from Q8_0 to F16, or an offset of
2**64-8 (which its uint64 arithmetic wraps to just before the data), reads other tensors' bytes as
weights and merges garbage. So the header is walked here first, with every count and length bounded by
the bytes left in the file, and the table is checked like a safetensors header (``check_table``): every
type known, every byte range aligned and inside the data section, no overlaps, and the tensors tiling
the data exactly (each one's byte count is what its type and shape need, up to the alignment padding
every writer puts after a tensor). Damage is a one-line error naming the file and the tensor, raised
when the file is opened, before any output exists.
"""
from __future__ import annotations

import os
import re
import struct
from typing import NamedTuple, Optional

import numpy as np
import torch

from ..errors import MergeInputError
from .key_source import KeySource

ORIG_SHAPE = "comfy.gguf.orig_shape."
PLAIN = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64,
         "I8": torch.int8, "I16": torch.int16, "I32": torch.int32, "I64": torch.int64}
QUANTISED_AS = "bf16"  # what "as in A" writes for a quantised GGUF tensor

# Bounds on a header (diffusion models have under 2,000 tensors and a few dozen fields; LLM tokenizers
# hold arrays of ~250k strings): a damaged count must not make the reader loop or allocate for hours.
MAX_TENSORS = 100_000
MAX_FIELDS = 100_000
MAX_ARRAY_VALUES = 1 << 22  # all array elements of all fields together
MAX_STRING = 1 << 24  # bytes of one string value
MAX_NAME = 1 << 16  # bytes of a key or tensor name
MAX_DIMS = 8  # ggml has 4
MAX_NESTING = 8  # arrays of arrays
DEFAULT_ALIGNMENT = 32
# GGUF value types: fixed sizes of the scalars; 8 = string, 9 = array
SCALAR_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
STRING, ARRAY, UINT32 = 8, 9, 4


class TableEntry(NamedTuple):
    name: str
    dims: tuple[int, ...]  # innermost first, as stored
    type_code: int
    offset: int  # from the start of the data section


class Table(NamedTuple):
    entries: list[TableEntry]
    alignment: int
    data_offset: int
    size: int


class _Walker:
    """Reads a GGUF header field by field; every length is checked against the bytes left first."""

    def __init__(self, f, size: int):
        self.f, self.size, self.pos, self.order, self.values = f, size, 0, "<", 0

    def take(self, n: int, what: str) -> bytes:
        if n > self.size - self.pos:
            raise ValueError(f"{what} ({n} bytes) runs past the end of the file ({self.size} bytes; truncated?)")
        data = self.f.read(n)
        if len(data) != n:
            raise ValueError(f"{what} could not be read (the file changed while it was read?)")
        self.pos += n
        return data

    def skip(self, n: int, what: str) -> None:
        if n > self.size - self.pos:
            raise ValueError(f"{what} ({n} bytes) runs past the end of the file ({self.size} bytes; truncated?)")
        self.f.seek(n, os.SEEK_CUR)
        self.pos += n

    def u32(self, what: str) -> int:
        return struct.unpack(self.order + "I", self.take(4, what))[0]

    def u64(self, what: str) -> int:
        return struct.unpack(self.order + "Q", self.take(8, what))[0]

    def string(self, what: str, limit: int) -> str:
        n = self.u64(f"the length of {what}")
        if n > limit:
            raise ValueError(f"{what} is {n} bytes long (over {limit}): the header is damaged")
        try:
            return self.take(n, what).decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError(f"{what} is not UTF-8 text: the header is damaged") from None

    def value(self, vtype: int, what: str, depth: int = 0):
        """One value; scalars and arrays of scalars are decoded (callers need a few), long ones skipped."""
        if vtype in SCALAR_SIZES:
            data = self.take(SCALAR_SIZES[vtype], what)
            return struct.unpack(self.order + {1: "B", 2: "H", 4: "I", 8: "Q"}[SCALAR_SIZES[vtype]], data)[0]
        if vtype == STRING:
            return self.string(what, MAX_STRING)
        if vtype != ARRAY:
            raise ValueError(f"{what} has the unknown value type {vtype}: the header is damaged")
        if depth >= MAX_NESTING:
            raise ValueError(f"{what} nests arrays more than {MAX_NESTING} deep: the header is damaged")
        itype = self.u32(f"the element type of {what}")
        count = self.u64(f"the length of {what}")
        self.values += count
        if self.values > MAX_ARRAY_VALUES:
            raise ValueError(f"{what} holds {count} values, past the limit of {MAX_ARRAY_VALUES} for a header: "
                             "the header is damaged")
        if itype in SCALAR_SIZES:
            width = SCALAR_SIZES[itype]
            if count > 16:
                self.skip(count * width, what)
                return None
            fmt = self.order + {1: "B", 2: "H", 4: "I", 8: "Q"}[width] * count
            return list(struct.unpack(fmt, self.take(count * width, what)))
        if itype not in (STRING, ARRAY):
            raise ValueError(f"{what} has the unknown element type {itype}: the header is damaged")
        if count > (self.size - self.pos) // 8:  # every string or array takes at least 8 bytes
            raise ValueError(f"{what} claims {count} elements, more than the file can hold: the header is damaged")
        for _ in range(count):
            self.value(itype, what, depth + 1)
        return None


def read_table(path) -> Table:
    """The tensor table of a GGUF file, walked with bounded counts (ValueError naming the damage)."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        w = _Walker(f, size)
        if w.take(4, "the magic number") != b"GGUF":
            raise ValueError("it does not start with the GGUF magic number")
        raw_version = w.take(4, "the version")
        version = struct.unpack("<I", raw_version)[0]
        if version & 0xFFFF == 0:  # written on a big-endian machine
            w.order, version = ">", struct.unpack(">I", raw_version)[0]
        if version not in (2, 3):
            raise ValueError(f"it is GGUF version {version}, which is not read here (2 and 3 are)")
        n_tensors, n_fields = w.u64("the tensor count"), w.u64("the field count")
        if n_tensors > MAX_TENSORS or n_fields > MAX_FIELDS:
            raise ValueError(f"it claims {n_tensors} tensors and {n_fields} fields (at most {MAX_TENSORS} and "
                             f"{MAX_FIELDS} are read): the header is damaged")
        alignment, seen = DEFAULT_ALIGNMENT, set()
        for i in range(n_fields):
            key = w.string(f"the name of field #{i + 1}", MAX_NAME)
            if key in seen:
                raise ValueError(f"the field '{key}' appears twice")
            seen.add(key)
            vtype = w.u32(f"the type of field '{key}'")
            value = w.value(vtype, f"field '{key}'")
            if key == "general.alignment":
                if vtype != UINT32 or not value or value & (value - 1):
                    raise ValueError(f"general.alignment is {value!r}, not a power of two")
                alignment = value
        entries, names = [], set()
        for i in range(n_tensors):
            name = w.string(f"the name of tensor #{i + 1}", MAX_NAME)
            if name in names:
                raise ValueError(f"tensor '{name}' appears twice in the table")
            names.add(name)
            n_dims = w.u32(f"the dimension count of tensor '{name}'")
            if n_dims > MAX_DIMS:
                raise ValueError(f"tensor '{name}' claims {n_dims} dimensions (at most {MAX_DIMS}): the header is "
                                 "damaged")
            dims = tuple(w.u64(f"the shape of tensor '{name}'") for _ in range(n_dims))
            entries.append(TableEntry(name, dims, w.u32(f"the type of tensor '{name}'"),
                                      w.u64(f"the offset of tensor '{name}'")))
        data_offset = -(-w.pos // alignment) * alignment
        if entries and data_offset > size:
            raise ValueError(f"its data section would start at byte {data_offset}, past the end of the file "
                             f"({size} bytes; truncated?)")
        return Table(entries, alignment, data_offset, size)


def _describe(e: TableEntry, type_name: str) -> str:
    return f"tensor '{e.name}' ({type_name}, shape {list(reversed(e.dims))})"


def check_table(table: Table, gguf) -> None:
    """Every tensor's type known, its byte range aligned, inside the data section and not overlapping
    another, and the tensors tiling the data (a changed type or shape changes the bytes it needs, which
    then overlap the next tensor or leave a gap no writer leaves). ValueError naming the tensor, else None;
    an unknown type code is UnknownType (callers word it as such)."""
    types = {}
    for e in table.entries:
        try:
            types[e.name] = gguf.GGMLQuantizationType(e.type_code)
            gguf.GGML_QUANT_SIZES[types[e.name]]
        except (ValueError, KeyError):
            raise UnknownType(e.type_code) from None
    for qtype in set(types.values()):  # a type without a dequantiser is named as such, before any range
        if not dequantisable(gguf, qtype):
            raise Undequantisable(qtype.name)
    ranges = []
    data_end = table.size
    for e in table.entries:
        qtype = types[e.name]
        block, type_size = gguf.GGML_QUANT_SIZES[qtype]
        n = 1
        for d in e.dims:
            n *= d
        if e.dims and e.dims[0] % block:
            raise ValueError(f"{_describe(e, qtype.name)}: its rows of {e.dims[0]} values are not whole "
                             f"{qtype.name} blocks of {block}; its type or shape was changed")
        need = n // block * type_size
        begin = table.data_offset + e.offset  # Python integers: 2**64-8 stays huge, it does not wrap
        if begin + need > data_end:
            raise ValueError(f"{_describe(e, qtype.name)}: its {need} bytes at byte {begin} run past the end of "
                             f"the file ({data_end} bytes); its offset, type or shape is damaged")
        if e.offset % table.alignment:
            raise ValueError(f"{_describe(e, qtype.name)}: its offset {e.offset} is not a multiple of the "
                             f"alignment {table.alignment}")
        ranges.append((begin, begin + need, e, qtype.name))
    ranges.sort(key=lambda r: (r[0], r[1]))
    position = table.data_offset
    for i, (begin, end, e, _type_name) in enumerate(ranges):
        if begin < position:
            before = ranges[i - 1]
            raise ValueError(f"{_describe(before[2], before[3])} and tensor '{e.name}' overlap: the first needs "
                             f"bytes {before[0]} to {before[1]}, the second starts at {begin}; a type, shape "
                             "or offset is damaged")
        if begin - position >= table.alignment:
            after = f"after {_describe(ranges[i - 1][2], ranges[i - 1][3])}" if i else "before the first tensor"
            raise ValueError(f"{begin - position} unused bytes lie {after} (up to tensor '{e.name}'); that "
                             "tensor's type or shape was changed, or an offset is damaged")
        position = end
    if ranges and data_end - position >= table.alignment:
        last = ranges[-1]
        raise ValueError(f"{data_end - position} unused bytes follow {_describe(last[2], last[3])} at the end of "
                         "the file; its type or shape was changed, or an offset is damaged")


def dequantisable(gguf, qtype) -> bool:
    """Whether the gguf package can turn this block type into floats (it knows more types than it reads)."""
    if qtype.name in PLAIN:
        return True
    try:
        gguf.quants.dequantize(np.zeros((1, gguf.GGML_QUANT_SIZES[qtype][1]), dtype=np.uint8), qtype)
    except NotImplementedError:
        return False
    return True


class Undequantisable(ValueError):
    """A tensor's block type is one the gguf package knows but cannot dequantise."""


class UnknownType(ValueError):
    """A tensor's type code is no GGML quantisation type."""

    def __init__(self, code: int):
        self.code = code
        super().__init__(f"unknown type {code}")


def _gguf(input_name: str):
    try:
        import gguf
    except ImportError:
        raise MergeInputError(input_name, "is a GGUF file, which needs the 'gguf' package.",
                              "pip install gguf (or merge-suite[gguf]).") from None
    return gguf


def _field_ints(field) -> list[int]:
    return [int(field.parts[i][0]) for i in field.data]


class GGUFSource(KeySource):
    """A .gguf file as a key source: shapes from the header, float32 tensors one at a time."""

    def __init__(self, path, input_name: str = "file"):
        gguf = _gguf(input_name)
        self.name, self.input_name = os.path.basename(str(path)), input_name
        if not os.path.isfile(path):
            raise MergeInputError(input_name, f"'{path}' does not exist.", "check the path.")
        try:
            table = read_table(path)
            check_table(table, gguf)
        except UnknownType as exc:
            raise self._unknown_type(exc.code) from None
        except Undequantisable as exc:
            raise MergeInputError(input_name, f"'{self.name}' uses the GGUF quantisation type {exc}, which the "
                                  "gguf package cannot dequantise.",
                                  "use a file quantised as Q8_0, Q6_K, Q5_K, Q4_K (or F16/BF16).") from None
        except ValueError as exc:  # UnicodeDecodeError included
            raise self._damaged(str(exc)) from None
        except OSError as exc:
            raise self._damaged(exc.strerror or str(exc)) from None
        try:
            self.reader = gguf.GGUFReader(str(path), "r")
        except ValueError as exc:
            text = str(exc)
            if "is not a valid GGMLQuantizationType" in text:
                raise self._unknown_type(re.sub(r"^\w+\.\w+\((\d+)\)$", r"\1", text.split()[0])) from None
            raise self._damaged(text) from None
        except (OSError, IndexError, KeyError, EOFError, TypeError, RecursionError) as exc:
            raise self._damaged(str(exc) or type(exc).__name__) from None
        offsets = {e.name: table.data_offset + e.offset for e in table.entries}
        for t in self.reader.tensors:  # the gguf package must see the table just checked
            if offsets.get(t.name) != int(t.data_offset):
                raise self._damaged(f"tensor '{t.name}': the gguf package reads its data at byte "
                                    f"{int(t.data_offset)}, not {offsets.get(t.name)}")
        self.tensors = {t.name: t for t in self.reader.tensors}
        self._shapes = {name: self._shape(t) for name, t in self.tensors.items()}

    def _unknown_type(self, code) -> MergeInputError:
        return MergeInputError(self.input_name, f"'{self.name}' uses the unknown GGUF quantisation type {code}.",
                               "convert it with a quantisation type the gguf package reads (Q8_0, Q5_K, Q4_K, "
                               "...) or use a safetensors file.")

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
