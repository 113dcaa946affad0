"""ComfyUI 0.33's block-scaled formats (mxfp8, nvfp4) in file merges: read as 0.33 dequantises them, written
"as A" in each layer's own format as 0.33 quantises, A's input scales kept, and the explicit mxfp8/nvfp4
precisions. Parity with 0.33's own functions needs its comfy_kitchen package (0.33's venv; skipped on
0.3.75); the rest runs on both hosts with files built by merge_core's quantisers."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from merge_core import merge_files
from merge_core.errors import MergeInputError
from merge_core.io import microscaling as ms
from merge_core.io.quantized import QuantizedFileSource
from merge_core.io.safetensors_file import SafetensorsReader

UNET = "model.diffusion_model."
FORMATS = {UNET + "input_blocks.1.1.proj_in.weight": "mxfp8", UNET + "input_blocks.1.1.proj_out.weight": "nvfp4",
           UNET + "output_blocks.3.1.proj_in.weight": "nvfp4", UNET + "output_blocks.3.1.proj_out.weight": "mxfp8"}
REPO = Path(__file__).resolve().parents[2]


def kitchen():
    return pytest.importorskip("comfy_kitchen", reason="ComfyUI 0.33's comfy_kitchen (only in 0.33's venv)")


def own_quantise(fmt, w):
    """(values, block scales, tensor scale or None) by merge_core's quantisers."""
    if fmt == "mxfp8":
        return (*ms.quantize_mxfp8(w), None)
    scale = ms.nvfp4_tensor_scale(w)
    return (*ms.quantize_nvfp4(w, scale), scale)


def kitchen_quantise(fmt, w):
    """The same by comfy_kitchen's layouts (0.33's TensorCore*Layout.quantize without stochastic rounding)."""
    from comfy_kitchen.tensor import TensorCoreMXFP8Layout, TensorCoreNVFP4Layout
    if fmt == "mxfp8":
        values, params = TensorCoreMXFP8Layout.quantize(w)
        return values, params.scale, None
    values, params = TensorCoreNVFP4Layout.quantize(w, scale="recalculate")
    return values, params.block_scale, params.scale


def config(fmt, **extra):
    return torch.tensor(list(json.dumps({"format": fmt, **extra}).encode()), dtype=torch.uint8)


def block_model(keys, seed, quantise, input_scale=0.25):
    """The SD1 key set in tiny sizes, FORMATS' layers in 0.33's comfy_quant layout (with an input scale).
    Returns (tensors, dequantised values of the padded shapes)."""
    gen = torch.Generator().manual_seed(seed)
    out, deq = {}, {}
    for k, s in keys.items():
        v = torch.randn((4, 8) if len(s) > 1 else (8,), generator=gen) * (0.05 if k.startswith(UNET) else 0.5)
        fmt = FORMATS.get(k)
        if fmt is None:
            out[k] = deq[k] = v
            continue
        layer = k[: -len("weight")]
        values, scales, tensor_scale = quantise(fmt, v)
        out[k], out[layer + "weight_scale"] = values, scales
        if tensor_scale is not None:
            out[layer + "weight_scale_2"] = tensor_scale
        out[layer + "input_scale"] = torch.tensor(input_scale + seed)
        out[layer + "comfy_quant"] = config(fmt, kept="yes")
        deq[k] = ms.dequantize_mxfp8(values, scales) if fmt == "mxfp8" else \
            ms.dequantize_nvfp4(values, scales, tensor_scale)
    return out, deq


def read(path):
    with SafetensorsReader(path) as r:
        return {k: r.get(k) for k in r.tensors}, r.metadata


def bits(t):
    return t.view(torch.uint8) if t.element_size() == 1 else t.view(torch.int32)


def test_tiled_order_is_cublas_block_scaling_layout():
    m = torch.arange(200 * 7, dtype=torch.int32).reshape(200, 7)
    tiled = ms.to_tiled(m)
    assert tiled.shape == (256, 8)
    flat = tiled.reshape(-1)
    for r, c in ((0, 0), (31, 3), (32, 0), (127, 3), (128, 4), (199, 6)):
        tile = (r // 128) * 2 + c // 4
        assert int(flat[tile * 512 + (r % 32) * 16 + (r % 128) // 32 * 4 + c % 4]) == int(m[r, c])
    assert torch.equal(ms.from_tiled(tiled, 200, 7), m)


@pytest.mark.parametrize("shape", [(32, 32), (40, 72), (300, 96), (7, 5), (1, 33)])
@pytest.mark.parametrize("magnitude", [1.0, 1e-3, 1e-30, 1e4])
def test_quantise_and_dequantise_match_comfy_kitchen_bit_for_bit(shape, magnitude):
    ck = kitchen()
    x = torch.randn(shape, generator=torch.Generator().manual_seed(3)) * magnitude
    x[0, :3] = 0
    ours, theirs = own_quantise("mxfp8", x), kitchen_quantise("mxfp8", x)
    assert all(bits(a).equal(bits(b)) and a.dtype == b.dtype for a, b in zip(ours[:2], theirs[:2]))
    assert bits(ms.dequantize_mxfp8(*theirs[:2])).equal(bits(ck.dequantize_mxfp8(*theirs[:2], torch.float32)))
    ours, theirs = own_quantise("nvfp4", x), kitchen_quantise("nvfp4", x)
    assert all(bits(a).equal(bits(b)) and a.dtype == b.dtype for a, b in zip(ours, theirs))
    values, scales, tensor_scale = theirs
    assert bits(ms.dequantize_nvfp4(values, scales, tensor_scale)).equal(
        bits(ck.dequantize_nvfp4(values, tensor_scale, scales, torch.float32)))
    assert values.shape == ms.storage_shape("nvfp4", shape) and scales.shape == ms.scale_shape("nvfp4", shape)


def test_e2m1_rounding_matches_comfy_kitchen_ties_included():
    kitchen()
    from comfy_kitchen.float_utils import _f32_to_floatx_unpacked
    v = torch.cat([torch.linspace(-6, 6, 120001), torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, -0.0])])
    assert torch.equal(ms._e2m1_codes(v), _f32_to_floatx_unpacked(v, 2, 1))


def test_zero_tensor_writes_zeros_not_nan():
    values, scales = ms.quantize_nvfp4(torch.zeros(16, 32), ms.nvfp4_tensor_scale(torch.zeros(16, 32)))
    assert not ms.dequantize_nvfp4(values, scales, torch.tensor(0.0)).any()


def merge_pair(tmp_path, sd1_keys, quantise, **kw):
    built = [block_model(sd1_keys, seed, quantise) for seed in (1, 2)]
    paths = []
    for name, (tensors, _) in zip("ab", built):
        save_file(tensors, tmp_path / f"{name}.safetensors")
        paths.append(str(tmp_path / f"{name}.safetensors"))
    merge_files(*paths, None, str(tmp_path / "f32.safetensors"), dtype="fp32", alpha=0.3)
    merge_files(*paths, None, str(tmp_path / "as_a.safetensors"), alpha=0.3, **kw)
    return built, read(tmp_path / "f32.safetensors")[0], read(tmp_path / "as_a.safetensors")[0]


@pytest.mark.parametrize("by", ["merge_core", "comfy_kitchen"])
def test_block_scaled_inputs_merge_and_write_as_a(tmp_path, sd1_keys, by):
    """Inputs quantised by 0.33's functions (or merge_core's): the fp32 merge is the formula on the dequantised
    values, and "as A" writes each layer in its format, equal bit for bit to quantising that fp32 merge."""
    if by == "comfy_kitchen":
        kitchen()
    quantise = kitchen_quantise if by == "comfy_kitchen" else own_quantise
    built, f32, out = merge_pair(tmp_path, sd1_keys, quantise)
    (a, da), (_, db) = built
    for k, w in f32.items():
        assert torch.allclose(w, 0.7 * da[k] + 0.3 * db[k], rtol=1e-6, atol=1e-7), k
    for k, fmt in FORMATS.items():
        layer = k[: -len("weight")]
        assert f32[k].shape == ((32, 32) if fmt == "mxfp8" else (16, 16))  # the padded shape
        for got, want in zip((out[k], out[layer + "weight_scale"], out.get(layer + "weight_scale_2")),
                             quantise(fmt, f32[k])):
            assert (got is None) == (want is None) and (got is None or (bits(got).equal(bits(want))
                                                                     and got.dtype == want.dtype)), k
        assert json.loads(out[layer + "comfy_quant"].numpy().tobytes()) == {"format": fmt, "kept": "yes"}
        assert torch.equal(out[layer + "input_scale"], a[layer + "input_scale"])  # A's, kept
    assert not [k for k in out if k.endswith(("pre_quant_scale", "scaled_fp8", "scale_weight"))]


def test_explicit_block_precisions_quantise_the_merge(tmp_path, sd1_keys):
    gen = torch.Generator().manual_seed(5)
    models = [{k: torch.randn((40, 72) if len(s) > 1 else (8,), generator=gen) for k, s in sd1_keys.items()}
              for _ in range(2)]
    for name, sd in zip("ab", models):
        save_file(sd, tmp_path / f"{name}.safetensors")
    a, b = (str(tmp_path / f"{n}.safetensors") for n in "ab")
    merge_files(a, b, None, str(tmp_path / "f32.safetensors"), dtype="fp32", alpha=0.5)
    f32 = read(tmp_path / "f32.safetensors")[0]
    for fmt in ("mxfp8", "nvfp4"):
        merge_files(a, b, None, str(tmp_path / f"{fmt}.safetensors"), dtype=fmt, alpha=0.5)
        out, meta = read(tmp_path / f"{fmt}.safetensors")
        assert "_quantization_metadata" not in meta
        for k, w in f32.items():
            if k.startswith(UNET) and k.endswith(".weight") and w.dim() == 2:
                layer = k[: -len("weight")]
                for got, want in zip((out[k], out[layer + "weight_scale"], out.get(layer + "weight_scale_2")),
                                     own_quantise(fmt, w)):
                    assert (got is None) == (want is None) and (got is None or bits(got).equal(bits(want))), k
                assert json.loads(out[layer + "comfy_quant"].numpy().tobytes()) == {"format": fmt}
                assert layer + "input_scale" not in out
            elif w.dtype.is_floating_point:
                assert out[k].dtype == torch.bfloat16, k


def test_smoothed_nvfp4_layer_folds_its_pre_quant_scale(tmp_path, sd1_keys):
    """0.33 multiplies an nvfp4 layer's input by pre_quant_scale: the same as scaling the weight's columns."""
    tensors, deq = block_model(sd1_keys, 1, own_quantise)
    key = UNET + "input_blocks.1.1.proj_out.weight"
    smoothing = torch.linspace(0.5, 2.0, 8)
    tensors[key[: -len("weight")] + "pre_quant_scale"] = smoothing
    save_file(tensors, tmp_path / "a.safetensors")
    src = QuantizedFileSource(tmp_path / "a.safetensors")
    try:
        want = deq[key].clone()
        want[:, :8] *= smoothing
        assert torch.equal(src.get(key), want) and src.shapes()[key] == (16, 16)
        assert not [k for k in src.shapes() if k.endswith(("_scale", "_scale_2", "comfy_quant"))]
    finally:
        src.close()
    other, _ = block_model(sd1_keys, 2, own_quantise)
    save_file(other, tmp_path / "b.safetensors")
    merge_files(str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors"), None,
                str(tmp_path / "o.safetensors"), alpha=0.3)
    out = read(tmp_path / "o.safetensors")[0]
    layer = key[: -len("weight")]
    # its input scale was measured after the smoothing, which the output no longer has
    assert layer + "pre_quant_scale" not in out and layer + "input_scale" not in out
    assert json.loads(out[layer + "comfy_quant"].numpy().tobytes()) == {
        "format": "nvfp4", "kept": "yes", "full_precision_matrix_mult": True}


@pytest.mark.parametrize("fmt,dtype,extra", [
    ("int8_tensorwise", torch.int8, {}), ("convrot_w4a4", torch.int8, {}), ("asym_w4a8_int8", torch.int8, {}),
    ("nvfp4", torch.uint8, {"no": "weight_scale_2"}), ("mxfp8", torch.float8_e4m3fn, {"shape": (32, 8)})])
def test_unreadable_layers_are_one_line_errors_before_writing(tmp_path, sd1_keys, fmt, dtype, extra):
    tensors, _ = block_model(sd1_keys, 1, own_quantise)
    key = next(k for k, f in FORMATS.items() if f == (fmt if fmt in ("mxfp8", "nvfp4") else "mxfp8"))
    layer = key[: -len("weight")]
    tensors[layer + "comfy_quant"] = config(fmt)
    if fmt not in ("mxfp8", "nvfp4"):
        tensors[key], tensors[layer + "weight_scale"] = torch.zeros((4, 8), dtype=dtype), torch.tensor(0.01)
    tensors.pop(layer + extra.get("no", "-"), None)
    if "shape" in extra:
        tensors[key] = torch.zeros(extra["shape"], dtype=dtype)
    save_file(tensors, tmp_path / "a.safetensors")
    save_file(block_model(sd1_keys, 2, own_quantise)[0], tmp_path / "b.safetensors")
    with pytest.raises(MergeInputError) as err:
        merge_files(str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors"), None,
                    str(tmp_path / "o.safetensors"))
    text = str(err.value)
    assert "model_a" in text and fmt in text and key in text and "\n" not in text, text
    assert sorted(os.listdir(tmp_path)) == ["a.safetensors", "b.safetensors"]


def test_cli_as_a_and_block_precisions(tmp_path, sd1_keys):
    for name, seed in (("a", 1), ("b", 2)):
        save_file(block_model(sd1_keys, seed, own_quantise)[0], tmp_path / f"{name}.safetensors")
    a, b = str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors")
    key = UNET + "input_blocks.1.1.proj_out.weight"
    for dtype, fmt in ((None, "nvfp4"), ("mxfp8", "mxfp8"), ("nvfp4", "nvfp4")):
        out = tmp_path / f"{dtype}.safetensors"
        res = subprocess.run([sys.executable, "-m", "merge_core", "merge", a, b, "-q", "-o", str(out),
                              *(["--dtype", dtype] if dtype else [])], cwd=REPO, capture_output=True, text=True)
        assert res.returncode == 0, res.stderr
        stored = read(out)[0]
        assert json.loads(stored[key[: -len("weight")] + "comfy_quant"].numpy().tobytes())["format"] == fmt
