"""Quantised inputs (fp8, ComfyUI's scaled fp8 and mixed layouts, GGUF) and every output precision,
through merge_files on the full SD1 key set: each reload equals the float32 merge within its rounding."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from merge_core import merge_files, merge_state_dicts
from merge_core.errors import MergeInputError
from merge_core.io.precision import PRECISIONS, quantize_scaled
from merge_core.io.sources import open_source

gguf = pytest.importorskip("gguf")
UNET = "model.diffusion_model."
E4M3 = torch.float8_e4m3fn


def float_model(keys, seed):
    """SD1 keys; 2-D weights (the linear layers here) 2x256, 1-D 256 values (GGUF blocks need 256)."""
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for k, s in keys.items():
        shape = (2, 256) if len(s) > 1 else (256,)
        sd[k] = torch.randn(shape, generator=gen) * (0.05 if k.startswith(UNET) else 0.5)
    sd["alphas_cumprod"] = torch.rand(10, generator=gen)
    sd["v_pred"] = torch.tensor([])
    sd["ztsnr"] = torch.tensor([])
    return sd


def is_linear(key, t):
    return key.startswith(UNET) and key.endswith(".weight") and t.dim() == 2


def scaled_legacy(sd):
    """ComfyUI's scaled-fp8 layout: fp8 linear weights with scale_weight, the marker key, the rest as is."""
    out = {UNET + "scaled_fp8": torch.zeros(2, dtype=E4M3)}
    for k, v in sd.items():
        if is_linear(k, v):
            out[k], out[k[:-6] + "scale_weight"] = quantize_scaled(v)
            out[k[:-6] + "scale_input"] = torch.tensor(1.0)
        else:
            out[k] = v
    return out


def scaled_mixed(sd):
    """The mixed-precision layout: weight_scale per quantised layer, layers listed in the metadata."""
    out, layers = {}, {}
    for k, v in sd.items():
        if is_linear(k, v):
            out[k], out[k[:-6] + "weight_scale"] = quantize_scaled(v)
            layers[k[len(UNET):-7]] = {"format": "float8_e4m3fn"}
        else:
            out[k] = v
    return out, {"_quantization_metadata": json.dumps({"format_version": "1.0", "layers": layers})}


def dequantised(path):
    src = open_source(path)
    try:
        return {k: src.get(k).float() for k in src.shapes()}
    finally:
        src.close()


def raw_file(path):
    from merge_core.io.safetensors_file import SafetensorsReader
    with SafetensorsReader(path) as r:
        return {k: r.get(k) for k in r.tensors}, r.metadata


@pytest.fixture(scope="module")
def pair(sd1_keys):
    return float_model(sd1_keys, 1), float_model(sd1_keys, 2)


def close_within(got, want, rel, floor, what):
    for k, w in want.items():
        if not w.dtype.is_floating_point or w.numel() == 0:
            continue
        err = (got[k].float() - w.float()).abs()
        bound = rel * w.float().abs() + floor
        assert bool((err <= bound).all()), f"{what}: {k} off by {float(err.max())}"


def close_per_tensor(got, want, rel, what):
    """A per-tensor scale bounds the error by a fraction of the tensor's largest value."""
    for k, w in want.items():
        if w.dtype.is_floating_point and w.numel():
            assert float((got[k].float() - w.float()).abs().max()) <= rel * float(w.abs().max()) + 1e-30, (what, k)


def test_fp8_inputs_merge_as_their_float32_values(tmp_path, pair):
    a, b = ({k: (v.to(E4M3) if v.dtype.is_floating_point and v.numel() else v) for k, v in m.items()} for m in pair)
    save_file(a, tmp_path / "a.safetensors")
    save_file(b, tmp_path / "b.safetensors")
    merge_files(str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors"), None,
                str(tmp_path / "o.safetensors"), dtype="fp32", alpha=0.3)
    ref = merge_state_dicts(*({k: (v.float() if v.dtype == E4M3 else v) for k, v in m.items()} for m in (a, b)),
                            alpha=0.3)
    got, _ = raw_file(tmp_path / "o.safetensors")
    assert set(got) == set(ref)
    close_within(got, ref, 1e-6, 1e-7, "fp8 inputs")
    # as in A: fp8 stays fp8 (saturating cast), the file is no bigger than its inputs
    merge_files(str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors"), None,
                str(tmp_path / "as_a.safetensors"), alpha=0.3)
    got, _ = raw_file(tmp_path / "as_a.safetensors")
    assert got[UNET + "out.2.weight"].dtype == E4M3
    close_within(got, ref, 2 ** -3, 2 ** -9, "fp8 as A")


@pytest.mark.parametrize("layout", ["legacy", "mixed"])
def test_scaled_fp8_inputs_dequantise_and_round_trip_as_a(tmp_path, pair, layout):
    meta = None
    files = []
    for name, m in zip("ab", pair):
        q = scaled_legacy(m) if layout == "legacy" else scaled_mixed(m)
        q, meta = (q, None) if layout == "legacy" else q
        save_file(q, tmp_path / f"{name}.safetensors", metadata=meta)
        files.append(str(tmp_path / f"{name}.safetensors"))
    src = open_source(files[0])
    assert not [k for k in src.shapes() if k.endswith(("scale_weight", "scale_input", "weight_scale", "scaled_fp8"))]
    src.close()
    ref = merge_state_dicts(dequantised(files[0]), dequantised(files[1]), alpha=0.4)
    close_per_tensor(ref, merge_state_dicts(*pair, alpha=0.4), 2 ** -4, "dequantised vs originals")
    merge_files(*files, None, str(tmp_path / "f32.safetensors"), dtype="fp32", alpha=0.4)
    close_within(raw_file(tmp_path / "f32.safetensors")[0], ref, 1e-6, 1e-7, f"{layout} -> fp32")
    merge_files(*files, None, str(tmp_path / "as_a.safetensors"), alpha=0.4)
    out, out_meta = raw_file(tmp_path / "as_a.safetensors")
    linear = UNET + "input_blocks.1.1.proj_in.weight"
    assert out[linear].dtype == E4M3
    if layout == "legacy":
        assert out[UNET + "scaled_fp8"].dtype == E4M3 and linear[:-6] + "scale_weight" in out
        assert linear[:-6] + "scale_input" not in out  # input scales are the old model's: dropped
    else:
        assert linear[:-6] + "weight_scale" in out and "_quantization_metadata" in out_meta
    close_per_tensor(dequantised(tmp_path / "as_a.safetensors"), ref, 2 ** -4, f"{layout} as A")


TOLERANCE = {"fp32": (1e-6, 0), "fp16": (2 ** -11, 2 ** -24), "bf16": (2 ** -8, 1e-38),
             "fp8_e4m3fn": (2 ** -4, 2 ** -9), "scaled_fp8": (2 ** -4, 2e-4)}


@pytest.mark.parametrize("precision", PRECISIONS)
def test_each_output_precision_reloads_as_the_float32_merge(tmp_path, pair, precision):
    a, b = pair
    save_file(a, tmp_path / "a.safetensors", metadata={"modelspec.architecture": "stable-diffusion-v1",
                                                       "modelspec.predict_key": "v"})
    save_file(b, tmp_path / "b.safetensors")
    out = tmp_path / f"{precision}.safetensors"
    merge_files(str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors"), None, str(out),
                dtype=precision, alpha=0.3)
    ref = merge_state_dicts(a, b, alpha=0.3)
    rel, floor = TOLERANCE[precision]
    stored, meta = raw_file(out)
    assert meta["modelspec.architecture"] == "stable-diffusion-v1" and meta["modelspec.predict_key"] == "v"
    assert "v_pred" in stored and "ztsnr" in stored
    if precision == "scaled_fp8":
        assert stored[UNET + "scaled_fp8"].shape == (2,)
        for k, v in ref.items():
            if is_linear(k, v):
                assert stored[k].dtype == E4M3 and stored[k[:-6] + "scale_weight"].dtype == torch.float32
            elif v.dtype.is_floating_point:
                assert stored[k].dtype == torch.bfloat16, k
        close_within(dequantised(out), {k: v for k, v in ref.items() if not is_linear(k, v)}, 2 ** -8, 1e-38, "rest")
        for k, v in ref.items():  # the scale is per tensor: the error bound is relative to its largest value
            if is_linear(k, v):
                assert float((dequantised_key(out, k) - v).abs().max()) <= float(v.abs().max()) * 2 ** -4, k
    else:
        close_within(stored, ref, rel, floor, precision)
        if precision == "fp8_e4m3fn":
            assert stored[UNET + "out.2.weight"].dtype == E4M3


def dequantised_key(path, key):
    src = open_source(path)
    try:
        return src.get(key)
    finally:
        src.close()


def test_fp8_output_saturates_instead_of_nan(tmp_path, pair):
    a, b = pair
    a = dict(a, **{UNET + "out.2.bias": torch.full((256,), 400.0)})
    b = dict(b, **{UNET + "out.2.bias": torch.full((256,), 300.0)})
    save_file(a, tmp_path / "a.safetensors")
    save_file(b, tmp_path / "b.safetensors")
    merge_files(str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors"), None,
                str(tmp_path / "o.safetensors"), dtype="fp8_e4m3fn", alpha=-0.5)  # 1.5*400 - 0.5*300 = 450
    bias = raw_file(tmp_path / "o.safetensors")[0][UNET + "out.2.bias"].float()
    assert torch.isfinite(bias).all() and float(bias.max()) == 448.0


# --- GGUF -----------------------------------------------------------------------------

Q = gguf.GGMLQuantizationType


def write_gguf(path, sd, qtype):
    """Floats quantised with the gguf package (Q8_0/Q5_0/Q4_0); 0-d and odd tensors stay F32/F16."""
    w = gguf.GGUFWriter(str(path), "sd1")
    for k, v in sd.items():
        arr = v.numpy()
        if v.dtype.is_floating_point and v.numel() and v.shape[-1] % 256 == 0:
            w.add_tensor(k, gguf.quants.quantize(arr.astype(np.float32), qtype), raw_dtype=qtype)
        elif v.numel() == 0:
            continue  # GGUF has no empty tensors
        else:
            w.add_tensor(k, arr.astype(np.float32) if v.dtype.is_floating_point else arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def random_kquant_gguf(path, sd, qtype, seed):
    """K-quant blocks the gguf package can read but not write: valid random blocks (fp16 scales kept small);
    returns the float32 model they stand for (dequantised by gguf itself)."""
    rng = np.random.default_rng(seed)
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    w = gguf.GGUFWriter(str(path), "sd1")
    values = {}
    for k, v in sd.items():
        if not (v.dtype.is_floating_point and v.numel() and v.shape[-1] % block == 0):
            if v.numel():
                w.add_tensor(k, v.numpy())
                values[k] = v
            continue
        rows = v.numel() // v.shape[-1]
        raw = rng.integers(0, 256, size=(rows, v.shape[-1] // block, size), dtype=np.uint8)
        if qtype == Q.Q6_K:  # ql, qh, int8 scales, then d
            raw[..., -2:] = np.frombuffer(np.float16(0.001).tobytes(), np.uint8)
        else:  # d, dmin, packed scales, quants
            raw[..., 0:2] = np.frombuffer(np.float16(0.001).tobytes(), np.uint8)
            raw[..., 2:4] = np.frombuffer(np.float16(0.0005).tobytes(), np.uint8)
        raw = raw.reshape(rows, -1)
        w.add_tensor(k, raw, raw_dtype=qtype)
        values[k] = torch.from_numpy(gguf.quants.dequantize(raw, qtype)).reshape(v.shape)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return values


@pytest.mark.parametrize("qtype,err", [(Q.Q8_0, 0.01), (Q.Q5_0, 0.05), (Q.Q4_0, 0.1)])
def test_gguf_inputs_merge_as_their_float_originals(tmp_path, pair, qtype, err):
    a, b = ({k: v for k, v in m.items() if v.numel()} for m in pair)
    write_gguf(tmp_path / "a.gguf", a, qtype)
    write_gguf(tmp_path / "b.gguf", b, qtype)
    merge_files(str(tmp_path / "a.gguf"), str(tmp_path / "b.gguf"), None, str(tmp_path / "o.safetensors"),
                dtype="fp32", alpha=0.3)
    got, _ = raw_file(tmp_path / "o.safetensors")
    ref = merge_state_dicts(a, b, alpha=0.3)
    assert set(got) == set(ref)
    for k, v in ref.items():
        if v.dtype.is_floating_point:
            scale = max(float(a[k].abs().max()), float(b[k].abs().max()))
            assert float((got[k] - v).abs().max()) <= err * scale, k
    merge_files(str(tmp_path / "a.gguf"), str(tmp_path / "b.gguf"), None, str(tmp_path / "as_a.safetensors"))
    assert raw_file(tmp_path / "as_a.safetensors")[0][UNET + "out.2.weight"].dtype == torch.bfloat16


@pytest.mark.parametrize("qtype", [Q.Q4_K, Q.Q5_K, Q.Q6_K])
def test_gguf_k_quants_merge_as_their_dequantised_values(tmp_path, pair, qtype):
    a = random_kquant_gguf(tmp_path / "a.gguf", {k: v for k, v in pair[0].items() if v.numel()}, qtype, 1)
    b = random_kquant_gguf(tmp_path / "b.gguf", {k: v for k, v in pair[1].items() if v.numel()}, qtype, 2)
    merge_files(str(tmp_path / "a.gguf"), str(tmp_path / "b.gguf"), None, str(tmp_path / "o.safetensors"),
                dtype="fp32", alpha=0.7)
    close_within(raw_file(tmp_path / "o.safetensors")[0], merge_state_dicts(a, b, alpha=0.7), 1e-6, 1e-7, qtype.name)


def test_gguf_orig_shape_field_restores_flattened_tensors(tmp_path):
    w = gguf.GGUFWriter(str(tmp_path / "c.gguf"), "sd1")
    x = np.random.default_rng(0).standard_normal((1, 512)).astype(np.float32)
    w.add_array("comfy.gguf.orig_shape.conv.weight", [4, 2, 8, 8])
    w.add_tensor("conv.weight", x)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    src = open_source(str(tmp_path / "c.gguf"))
    assert src.shapes() == {"conv.weight": (4, 2, 8, 8)}
    assert torch.equal(src.get("conv.weight").reshape(-1), torch.from_numpy(x).reshape(-1))
    src.close()


def _type_code_offset(path, name):
    reader = gguf.GGUFReader(str(path))
    field = next(t.field for t in reader.tensors if t.name == name)
    return field.offset + sum(p.nbytes for p in field.parts[:4])  # name len, name, n_dims, dims -> type


def test_bad_gguf_inputs_are_one_line_errors_naming_the_input(tmp_path, pair):
    a = {k: v for k, v in pair[0].items() if v.numel()}
    write_gguf(tmp_path / "a.gguf", a, Q.Q8_0)
    write_gguf(tmp_path / "b.gguf", a, Q.Q8_0)
    data = bytearray((tmp_path / "b.gguf").read_bytes())
    at = _type_code_offset(tmp_path / "b.gguf", UNET + "out.2.weight")
    data[at:at + 4] = (250).to_bytes(4, "little")
    (tmp_path / "unknown.gguf").write_bytes(bytes(data))
    with pytest.raises(MergeInputError, match="model_b.*unknown GGUF quantisation type 250"):
        merge_files(str(tmp_path / "a.gguf"), str(tmp_path / "unknown.gguf"), None, str(tmp_path / "o.safetensors"))
    data[at:at + 4] = int(Q.Q8_K).to_bytes(4, "little")  # known to gguf, no dequantiser
    (tmp_path / "q8k.gguf").write_bytes(bytes(data))
    with pytest.raises(MergeInputError, match="model_b.*Q8_K"):
        merge_files(str(tmp_path / "a.gguf"), str(tmp_path / "q8k.gguf"), None, str(tmp_path / "o.safetensors"))
    (tmp_path / "cut.gguf").write_bytes((tmp_path / "b.gguf").read_bytes()[:5000])
    with pytest.raises(MergeInputError, match="model_a.*not a readable GGUF"):
        merge_files(str(tmp_path / "cut.gguf"), str(tmp_path / "a.gguf"), None, str(tmp_path / "o.safetensors"))
    assert not (tmp_path / "o.safetensors").exists()
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".part")]
    run = subprocess.run([sys.executable, "-m", "merge_core", "merge", str(tmp_path / "a.gguf"),
                          str(tmp_path / "unknown.gguf"), "-o", str(tmp_path / "o.safetensors"), "--device", "cpu"],
                         capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(os.path.dirname(
                             os.path.abspath(__file__)))))
    assert run.returncode != 0 and "Traceback" not in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1 and "model B" in run.stderr and "250" in run.stderr


def test_scale_without_weight_is_a_one_line_error(tmp_path, pair):
    a = scaled_legacy(pair[0])
    key = UNET + "out.2.weight"
    a[key[:-6] + "xweight"] = a.pop(key)
    save_file(a, tmp_path / "a.safetensors")
    save_file(pair[1], tmp_path / "b.safetensors")
    with pytest.raises(MergeInputError, match="model_a.*scale"):
        merge_files(str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors"), None,
                    str(tmp_path / "o.safetensors"))
