"""Damaged GGUF tensor tables: each kind of damage is a one-line error naming the file and the
tensor when the file is opened, never a merge of other tensors' bytes. The files are real GGUFs written by
the gguf package, then damaged in place with the file size unchanged, as the probes did."""
from __future__ import annotations

import os
import struct

import numpy as np
import pytest
import torch

from merge_core.errors import MergeInputError
from merge_core.io import gguf_file
from merge_core.io.sources import open_source

gguf = pytest.importorskip("gguf")
Q = gguf.GGMLQuantizationType

# tensors in file order; rows of 256 values are whole Q8_0 (32) and Q4_0 blocks
MODEL = {"blk.0.weight": (4, 256), "blk.1.weight": (2, 256), "blk.1.bias": (256,), "blk.2.weight": (8, 256)}


def write_model(path, extra_fields=None):
    """A small Q8_0 GGUF (biases F32), as ComfyUI-GGUF's converter writes them; returns the float values."""
    rng = np.random.default_rng(0)
    w = gguf.GGUFWriter(str(path), "flux")
    for key, value in (extra_fields or {}).items():
        w.add_array(key, value) if isinstance(value, list) else w.add_string(key, value)
    values = {}
    for name, shape in MODEL.items():
        arr = rng.standard_normal(shape).astype(np.float32)
        values[name] = torch.from_numpy(arr)
        if len(shape) == 2:
            w.add_tensor(name, gguf.quants.quantize(arr, Q.Q8_0), raw_dtype=Q.Q8_0)
        else:
            w.add_tensor(name, arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return values


def entry_offsets(path, name):
    """Byte offsets of a tensor's n_dims, dims, type and offset in its table entry."""
    reader = gguf.GGUFReader(str(path))
    field = next(t.field for t in reader.tensors if t.name == name)
    at = field.offset + sum(p.nbytes for p in field.parts[:2])
    n_dims = int(field.parts[2][0])
    return {"n_dims": at, "dims": at + 4, "type": at + 4 + 8 * n_dims, "offset": at + 8 + 8 * n_dims}


def damaged(tmp_path, patch, extra_fields=None):
    """A copy of the model with patch(data, path) applied in place; the size must stay the same."""
    good = tmp_path / "good.gguf"
    write_model(good, extra_fields)
    data = bytearray(good.read_bytes())
    patch(data, good)
    assert len(data) == good.stat().st_size
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(bytes(data))
    return bad


def put(data, at, fmt, value):
    data[at:at + struct.calcsize(fmt)] = struct.pack(fmt, value)


def set_type(name, qtype):
    return lambda data, path: put(data, entry_offsets(path, name)["type"], "<I", int(qtype))


def set_offset(name, value):
    return lambda data, path: put(data, entry_offsets(path, name)["offset"], "<Q", value)


def offset_of(path, name):
    return next(int(t.data_offset) for t in gguf.GGUFReader(str(path)).tensors if t.name == name) - \
        gguf.GGUFReader(str(path)).data_offset


def copy_offset(name, source):
    return lambda data, path: put(data, entry_offsets(path, name)["offset"], "<Q", offset_of(path, source))


def set_dim(name, index, value):
    return lambda data, path: put(data, entry_offsets(path, name)["dims"] + 8 * index, "<Q", value)


def set_header(at, value):
    return lambda data, path: put(data, at, "<Q", value)


def set_name_length(name, value):
    def patch(data, path):
        reader = gguf.GGUFReader(str(path))
        put(data, next(t.field for t in reader.tensors if t.name == name).offset, "<Q", value)
    return patch


def set_array_length(key, value):
    def patch(data, path):
        field = gguf.GGUFReader(str(path)).fields[key]
        put(data, field.offset + 8 + len(key.encode()) + 4 + 4, "<Q", value)  # key, value type, element type
    return patch


CASES = [  # (damage, patch, words the error must hold)
    ("Q8_0 -> F16 mid-table", set_type("blk.1.weight", Q.F16), ["blk.1.weight", "F16", "overlap"]),
    ("Q8_0 -> F16 last tensor", set_type("blk.2.weight", Q.F16), ["blk.2.weight", "F16", "past the end"]),
    ("Q8_0 -> Q4_0 (fewer bytes)", set_type("blk.0.weight", Q.Q4_0), ["blk.0.weight", "Q4_0", "unused bytes"]),
    ("offset 2**64-8", set_offset("blk.1.weight", 2**64 - 8), ["blk.1.weight", "past the end"]),
    ("offset not aligned", set_offset("blk.2.weight", 8), ["blk.2.weight", "alignment"]),
    ("offset of another tensor", copy_offset("blk.2.weight", "blk.0.weight"), ["blk.2.weight", "overlap"]),
    ("a larger dimension", set_dim("blk.0.weight", 1, 5), ["blk.0.weight", "overlap"]),
    ("a smaller dimension", set_dim("blk.2.weight", 1, 1), ["blk.2.weight", "unused bytes"]),
    ("a dimension of 2**63", set_dim("blk.1.weight", 1, 2**63), ["blk.1.weight", "past the end"]),
    ("rows not whole blocks", set_dim("blk.1.weight", 0, 250), ["blk.1.weight", "blocks"]),
    ("n_dims of 2**31", lambda d, p: put(d, entry_offsets(p, "blk.1.bias")["n_dims"], "<I", 2**31),
     ["blk.1.bias", "dimensions"]),
    ("tensor count 2**60", set_header(8, 2**60), ["tensors", "damaged"]),
    ("field count 2**60", set_header(16, 2**60), ["fields", "damaged"]),
    ("tensor name length 2**62", set_name_length("blk.1.bias", 2**62), ["tensor #3", "bytes long"]),
    ("array length 2**62", set_array_length("test.list", 2**62), ["test.list", "limit"]),
]


@pytest.mark.parametrize("damage,patch,words", CASES, ids=[c[0] for c in CASES])
def test_damaged_table_is_a_one_line_error_naming_file_and_tensor(tmp_path, damage, patch, words):
    bad = damaged(tmp_path, patch, {"test.list": [1, 2, 3]})
    before = bad.read_bytes()
    with pytest.raises(MergeInputError) as info:
        open_source(str(bad), input_name="model_b")
    text = str(info.value)
    assert "\n" not in text and "'bad.gguf'" in text and "model_b" in text, text
    for word in words:
        assert word in text, (damage, text)
    assert bad.read_bytes() == before


def test_intact_file_opens_and_reads_its_values(tmp_path):
    values = write_model(tmp_path / "good.gguf", {"test.list": [1, 2, 3]})
    src = open_source(str(tmp_path / "good.gguf"))
    assert src.shapes() == {k: tuple(v.shape) for k, v in values.items()}
    for k, v in values.items():
        assert float((src.get(k) - v).abs().max()) <= 0.02 * float(v.abs().max()), k
    src.close()


def test_nested_arrays_and_huge_strings_are_refused_without_recursion(tmp_path):
    """A header field of arrays nested 100,000 deep (the gguf package recurses once per level)."""
    path = tmp_path / "nested.gguf"
    key = b"x.nested"
    body = struct.pack("<IIQQ", 0x46554747, 3, 0, 1) + struct.pack("<Q", len(key)) + key + struct.pack("<I", 9)
    body += struct.pack("<IQ", 9, 1) * 100_000 + struct.pack("<IQ", 4, 0)
    path.write_bytes(body)
    with pytest.raises(MergeInputError, match="x.nested.*nests arrays"):
        open_source(str(path))
    path.write_bytes(struct.pack("<IIQQ", 0x46554747, 3, 0, 1) + struct.pack("<Q", len(key)) + key
                     + struct.pack("<IQ", 8, 2**40))
    with pytest.raises(MergeInputError, match="x.nested.*over"):
        open_source(str(path))


def test_counts_are_bounded_by_the_file_not_by_the_header(tmp_path):
    """A count within the limits but beyond the bytes left is refused as soon as the bytes run out."""
    bad = damaged(tmp_path, set_header(8, gguf_file.MAX_TENSORS))
    with pytest.raises(MergeInputError, match="bad.gguf.*(past the end|bytes long)"):
        open_source(str(bad))


def test_every_tensor_of_a_real_file_tiles_the_data(tmp_path):
    """The rule the check relies on: writers pad every tensor, the last one included, to the alignment."""
    write_model(tmp_path / "good.gguf")
    table = gguf_file.read_table(tmp_path / "good.gguf")
    gguf_file.check_table(table, gguf)
    assert len(table.entries) == len(MODEL) and table.alignment == 32
    assert os.path.getsize(tmp_path / "good.gguf") % table.alignment == table.data_offset % table.alignment
