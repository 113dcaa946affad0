"""ComfyUI 0.33's quantised checkpoints in file merges (per-layer ``comfy_quant`` configs or a
``_quantization_metadata`` header, ``weight_scale``/``input_scale`` tensors) beside 0.3.75's
``scaled_fp8`` marker layout: each merge equals the formula on the dequantised inputs, the
quantisation buffers are never merged as weights, and each output layout is what the loaders read.
Files are built here by hand, following the format, on the SD1 key set in tiny sizes."""
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
from merge_core.io.safetensors_file import SafetensorsReader

UNET = "model.diffusion_model."
E4M3, E5M2 = torch.float8_e4m3fn, torch.float8_e5m2
LINEAR = UNET + "input_blocks.1.1.proj_in.weight"  # a 2-D weight: quantised in every layout here
E5M2_LAYER = UNET + "input_blocks.1.1.proj_out.weight"
BUFFERS = ("scale_weight", "scale_input", "weight_scale", "input_scale", "comfy_quant", "scaled_fp8")
REPO = Path(__file__).resolve().parents[2]


def float_model(keys, seed):
    gen = torch.Generator().manual_seed(seed)
    sd = {k: torch.randn((4, 8) if len(s) > 1 else (8,), generator=gen) * (0.05 if k.startswith(UNET) else 0.5)
          for k, s in keys.items()}
    return sd


def is_linear(key, t):
    return key.startswith(UNET) and key.endswith(".weight") and t.dim() == 2


def quantise(w, dtype=E4M3):
    """Per-tensor absmax scaling, written out here rather than taken from the code under test."""
    scale = w.abs().max().float() / torch.finfo(dtype).max
    return (w.float() / scale).clamp(-torch.finfo(dtype).max, torch.finfo(dtype).max).to(dtype), scale.reshape(())


def per_layer(sd, header=False, full_names=True):
    """ComfyUI 0.33's layout: fp8 weight, weight_scale, input_scale and a comfy_quant JSON per layer
    (header=True: the configs in ``_quantization_metadata`` instead, named with or without the prefix).
    Returns (tensors, metadata, dequantised values)."""
    out, deq, layers = {}, {}, {}
    for k, v in sd.items():
        if not is_linear(k, v):
            out[k] = deq[k] = v
            continue
        dtype = E5M2 if k == E5M2_LAYER else E4M3
        q, scale = quantise(v, dtype)
        layer = k[: -len(".weight")]
        config = {"format": "float8_e4m3fn" if dtype == E4M3 else "float8_e5m2", "kept": "yes"}
        out[k], out[layer + ".weight_scale"], out[layer + ".input_scale"] = q, scale, torch.tensor(0.5)
        if header:
            layers[layer if full_names else layer[len(UNET):]] = config
        else:
            out[layer + ".comfy_quant"] = torch.tensor(list(json.dumps(config).encode()), dtype=torch.uint8)
        deq[k] = q.float() * scale
    meta = {"_quantization_metadata": json.dumps({"format_version": "1.0", "layers": layers})} if header else None
    return out, meta, deq


def legacy(sd):
    """ComfyUI 0.3.75's scaled_fp8 layout: marker, fp8 weight with scale_weight (and scale_input)."""
    out, deq = {UNET + "scaled_fp8": torch.zeros(2, dtype=E4M3)}, {}
    for k, v in sd.items():
        if is_linear(k, v):
            q, scale = quantise(v)
            out[k], out[k[:-6] + "scale_weight"], out[k[:-6] + "scale_input"] = q, scale, torch.tensor(1.0)
            deq[k] = q.float() * scale
        else:
            out[k] = deq[k] = v
    return out, None, deq


def save(tmp_path, name, built):
    tensors, meta, deq = built
    path = tmp_path / f"{name}.safetensors"
    save_file(tensors, path, metadata=meta)
    return str(path), deq


def read(path):
    with SafetensorsReader(path) as r:
        return {k: r.get(k) for k in r.tensors}, r.metadata


def dequantise_output(stored, meta):
    """The output read the way ComfyUI reads it: weight * its scale tensor, buffers dropped."""
    out = {}
    for k, v in stored.items():
        if k.endswith(BUFFERS):
            continue
        scale = stored.get(k[:-6] + "weight_scale", stored.get(k[:-6] + "scale_weight")) if k.endswith(
            ".weight") else None
        out[k] = v.float() * scale if scale is not None else v.float()
    return out


def assert_formula(got, want, bound_of, what):
    assert set(got) == set(want), (what, sorted(set(got) ^ set(want))[:5])
    for k, w in want.items():
        err = float((got[k].float() - w).abs().max()) if w.numel() else 0.0
        assert err <= bound_of(k, w), f"{what}: {k} off by {err}"


def exact(_k, w):
    return 1e-6 * float(w.abs().max()) if w.numel() else 0.0


def per_tensor(k, w):
    """A re-quantised layer is within half an fp8 step of its largest value; the rest is exact."""
    step = 2 ** -3 if k == E5M2_LAYER else 2 ** -4
    return step * float(w.abs().max()) if k.endswith(".weight") and w.dim() == 2 and k.startswith(UNET) \
        else exact(k, w)


@pytest.fixture(scope="module")
def models(sd1_keys):
    return [float_model(sd1_keys, seed) for seed in (1, 2, 3)]


@pytest.mark.parametrize("header", [False, True])
def test_033_layout_merges_its_dequantised_values(tmp_path, models, header):
    a, da = save(tmp_path, "a", per_layer(models[0], header))
    b, db = save(tmp_path, "b", per_layer(models[1], header))
    out = tmp_path / "f32.safetensors"
    merge_files(a, b, None, str(out), dtype="fp32", alpha=0.3)
    stored, meta = read(out)
    assert not [k for k in stored if k.endswith(BUFFERS)]  # buffers are not weights
    assert "_quantization_metadata" not in meta
    assert_formula(stored, {k: 0.7 * da[k].float() + 0.3 * db[k].float() for k in da}, exact, "0.33 -> fp32")


def test_mixed_inputs_legacy_033_and_bf16(tmp_path, models):
    a, da = save(tmp_path, "a", legacy(models[0]))
    b, db = save(tmp_path, "b", per_layer(models[1]))
    plain = {k: v.to(torch.bfloat16) for k, v in models[2].items()}
    c, dc = save(tmp_path, "c", (plain, None, plain))
    want = {k: da[k].float() + 0.4 * (db[k].float() - dc[k].float()) for k in da}
    merge_files(a, b, c, str(tmp_path / "f32.safetensors"), mode="Add difference", dtype="fp32", alpha=0.4)
    assert_formula(read(tmp_path / "f32.safetensors")[0], want, exact, "mixed -> fp32")
    # as A (legacy): every scaled key in A's layout, the 0.33 input's buffers gone
    merge_files(a, b, c, str(tmp_path / "as_a.safetensors"), mode="Add difference", alpha=0.4)
    stored, meta = read(tmp_path / "as_a.safetensors")
    assert stored[UNET + "scaled_fp8"].dtype == E4M3 and stored[LINEAR[:-6] + "scale_weight"].dtype == torch.float32
    assert not [k for k in stored if k.endswith(("weight_scale", "input_scale", "comfy_quant", "scale_input"))]
    assert "_quantization_metadata" not in meta
    assert_formula(dequantise_output(stored, meta), want, per_tensor, "mixed -> as legacy A")


def test_as_033_a_keeps_per_layer_configs(tmp_path, models):
    a, da = save(tmp_path, "a", per_layer(models[0]))
    b, db = save(tmp_path, "b", legacy(models[1]))
    want = {k: 0.5 * da[k].float() + 0.5 * db[k].float() for k in da}
    merge_files(a, b, None, str(tmp_path / "as_a.safetensors"), alpha=0.5)
    stored, meta = read(tmp_path / "as_a.safetensors")
    assert "_quantization_metadata" not in meta and UNET + "scaled_fp8" not in stored
    assert not [k for k in stored if k.endswith(("scale_weight", "scale_input"))]
    layers = [k for k, v in models[0].items() if is_linear(k, v)]
    for k in layers:
        layer = k[: -len(".weight")]
        config = json.loads(stored[layer + ".comfy_quant"].numpy().tobytes())
        # A's config kept, and A's input scale with it (activation calibration is not recomputable)
        assert config == {"format": "float8_e5m2" if k == E5M2_LAYER else "float8_e4m3fn", "kept": "yes"}, k
        assert torch.equal(stored[layer + ".input_scale"], torch.tensor(0.5)), k
        assert stored[k].dtype == (E5M2 if k == E5M2_LAYER else E4M3)
        assert stored[layer + ".weight_scale"].dtype == torch.float32 and stored[layer + ".weight_scale"].dim() == 0
    assert len([k for k in stored if k.endswith(".comfy_quant")]) == len(layers)
    assert_formula(dequantise_output(stored, meta), want, per_tensor, "as 0.33 A")


@pytest.mark.parametrize("full_names", [True, False])
def test_as_header_a_keeps_its_header_and_naming(tmp_path, models, full_names):
    a, da = save(tmp_path, "a", per_layer(models[0], header=True, full_names=full_names))
    b, db = save(tmp_path, "b", per_layer(models[1]))
    merge_files(a, b, None, str(tmp_path / "as_a.safetensors"), alpha=0.25)
    stored, meta = read(tmp_path / "as_a.safetensors")
    assert not [k for k in stored if k.endswith(("comfy_quant", "scaled_fp8"))]
    assert all(torch.equal(stored[k[:-6] + "input_scale"], torch.tensor(0.5))
               for k, v in models[0].items() if is_linear(k, v))  # A's input scales kept
    table = json.loads(meta["_quantization_metadata"])
    names = {k[: -len(".weight")] if full_names else k[len(UNET):-len(".weight")]
             for k, v in models[0].items() if is_linear(k, v)}
    assert set(table["layers"]) == names and table["format_version"] == "1.0"
    assert_formula(dequantise_output(stored, meta), {k: 0.75 * da[k].float() + 0.25 * db[k].float() for k in da},
                   per_tensor, "as header A")


@pytest.mark.parametrize("layout", ["scaled_fp8", "comfy_quant"])
def test_explicit_scaled_fp8_in_each_layout(tmp_path, models, layout):
    a, da = save(tmp_path, "a", per_layer(models[0]))
    plain = {k: v.to(torch.bfloat16) for k, v in models[1].items()}
    b, db = save(tmp_path, "b", (plain, None, plain))
    merge_files(a, b, None, str(tmp_path / "o.safetensors"), dtype="scaled_fp8", scaled_layout=layout, alpha=0.5)
    stored, meta = read(tmp_path / "o.safetensors")
    assert "_quantization_metadata" not in meta
    if layout == "scaled_fp8":
        assert stored[UNET + "scaled_fp8"].shape == (2,) and LINEAR[:-6] + "scale_weight" in stored
        assert not [k for k in stored if k.endswith(("weight_scale", "comfy_quant"))]
    else:
        assert UNET + "scaled_fp8" not in stored and not [k for k in stored if k.endswith("scale_weight")]
        assert json.loads(stored[LINEAR[:-6] + "comfy_quant"].numpy().tobytes()) == {
            "format": "float8_e4m3fn", "full_precision_matrix_mult": True}
    assert stored[LINEAR].dtype == stored[E5M2_LAYER].dtype == E4M3  # an explicit precision: e4m3 throughout
    want = {k: 0.5 * da[k].float() + 0.5 * db[k].float() for k in da}
    rest = {k for k, v in want.items() if not is_linear(k, v)}
    assert all(stored[k].dtype == torch.bfloat16 for k in rest)  # the rest in bf16, linear layers e4m3

    def bound(k, w):
        return (2 ** -8 if k in rest else 2 ** -4) * float(w.abs().max())
    assert_formula(dequantise_output(stored, meta), want, bound, f"scaled_fp8/{layout}")


def test_bare_033_file_keeps_bare_names(tmp_path, models):
    bare = {k[len(UNET):]: v for k, v in models[0].items() if k.startswith(UNET)}
    other = {k[len(UNET):]: v for k, v in models[1].items() if k.startswith(UNET)}
    tensors, _, da = per_layer({UNET + k: v for k, v in bare.items()})
    a = tmp_path / "a.safetensors"
    save_file({k[len(UNET):]: v for k, v in tensors.items()}, a)
    b = tmp_path / "b.safetensors"
    save_file(other, b)
    merge_files(str(a), str(b), None, str(tmp_path / "o.safetensors"), alpha=0.5)
    stored, meta = read(tmp_path / "o.safetensors")
    assert not [k for k in stored if k.startswith("model.")]
    assert "input_blocks.1.1.proj_in.comfy_quant" in stored and "input_blocks.1.1.proj_in.input_scale" in stored
    want = {k[len(UNET):]: 0.5 * v.float() + 0.5 * other[k[len(UNET):]] for k, v in da.items()}
    assert_formula(dequantise_output(stored, meta), want,
                   lambda k, w: per_tensor(UNET + k, w), "bare 0.33")


@pytest.mark.parametrize("fmt,dtype,scale", [
    ("mxfp8", E4M3, lambda w: torch.zeros((w.shape[0], w.shape[1] // 32 or 1), dtype=torch.uint8)),
    ("nvfp4", torch.uint8, lambda w: torch.zeros((w.shape[0], 1), dtype=E4M3)),
    ("int8_tensorwise", torch.int8, lambda w: torch.tensor(0.01))])
def test_other_033_formats_are_one_line_errors(tmp_path, models, fmt, dtype, scale):
    tensors, _, _ = per_layer(models[1])
    layer = LINEAR[: -len(".weight")]
    tensors[LINEAR] = torch.zeros(models[1][LINEAR].shape, dtype=dtype)
    tensors[layer + ".weight_scale"] = scale(tensors[LINEAR])
    tensors[layer + ".comfy_quant"] = torch.tensor(list(json.dumps({"format": fmt}).encode()), dtype=torch.uint8)
    save_file(models[0], tmp_path / "a.safetensors")
    save_file(tensors, tmp_path / "b.safetensors")
    with pytest.raises(MergeInputError) as err:
        merge_files(str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors"), None,
                    str(tmp_path / "o.safetensors"))
    text = str(err.value)
    assert "model_b" in text and fmt in text and LINEAR in text and "\n" not in text, text
    assert sorted(os.listdir(tmp_path)) == ["a.safetensors", "b.safetensors"]  # nothing written, no part left


def test_cli_scaled_layout_option(tmp_path, models):
    a, _ = save(tmp_path, "a", per_layer(models[0]))
    b, _ = save(tmp_path, "b", legacy(models[1]))
    for layout, key in (("scaled_fp8", "scale_weight"), ("comfy_quant", "comfy_quant")):
        out = tmp_path / f"{layout}.safetensors"
        res = subprocess.run([sys.executable, "-m", "merge_core", "merge", a, b, "--dtype", "scaled_fp8", "-q",
                              "--scaled-layout", layout, "-o", str(out)], cwd=REPO, capture_output=True, text=True)
        assert res.returncode == 0, res.stderr
        assert LINEAR[:-6] + key in read(out)[0]
    res = subprocess.run([sys.executable, "-m", "merge_core", "merge", a, b, "--dtype", "scaled_fp8", "-q",
                          "-o", str(tmp_path / "default.safetensors")], cwd=REPO, capture_output=True, text=True)
    assert res.returncode == 0 and UNET + "scaled_fp8" in read(tmp_path / "default.safetensors")[0]
