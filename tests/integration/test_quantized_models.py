"""MODELs whose layers store their weights encoded, through every node that reads a model's weights.

A tiny Flux.1 is written twice: as a scaled-fp8 file (fp8 linear weights with ``scale_weight``, the
``scaled_fp8`` marker, the rest bf16, as such files are published) and as a plain float32 file holding
exactly the values the first one dequantizes to (power-of-two scales, every other value on the fp8 grid,
so no host's conversion rounds). UNETLoader loads the first as 0.3.75's scaled-fp8 layers or as 0.33's
mixed-precision quantized layers (QuantizedTensor weights, ``weight_scale``/``comfy_quant`` entries in the
state dict), whichever the running host does. Every node must then give, from the quantized pair, what it
gives from the plain pair: the merge formula on the dequantized weights; the encoding entries are never
merged. The reference arithmetic is ComfyUI's own (its layer's convert, comfy.lora.calculate_weight), and
0.33's dynamic loading is replayed on CPU through its LowVramPatch (the adapters are copied the way it
copies them) where the host has that path.
"""
import json
import math

import pytest
import torch
from safetensors.torch import load_file, save_file

import comfy.lora  # (ComfyUI imported through conftest)
import comfy.model_management
import comfy.model_patcher
import folder_paths
import nodes as comfy_nodes
from effective_weights import effective

from merge_suite.nodes.analysis import ModelSimilarity
from merge_suite.nodes.comfy_models import quantized_tensor_type
from merge_suite.nodes.lora import LoraBake, LoraExtract
from merge_suite.nodes.merge import ModelMerge
from merge_suite.nodes.save import SaveCheckpoint

FP8 = torch.float8_e4m3fn
UNET = "diffusion_model."
SETTINGS = dict(mode="Weight sum", alpha=0.3, beta=0.0, blocks_alpha_preset="custom", blocks_alpha="",
                blocks_beta_preset="custom", blocks_beta="")
ENCODING = ("scale_weight", "scale_input", "weight_scale", "weight_scale_2", "input_scale", "comfy_quant")


def fp8_files(sd: dict) -> tuple[dict, dict]:
    """(scaled-fp8 file, plain float32 file of the values it dequantizes to) of one state dict."""
    quantized, plain = {"scaled_fp8": torch.zeros(2, dtype=FP8)}, {}
    for key, value in sd.items():
        if not value.is_floating_point():
            quantized[key] = plain[key] = value
            continue
        value = value.float()
        if key.endswith(".weight") and value.ndim == 2:
            scale = torch.tensor(2.0 ** math.ceil(math.log2(float(value.abs().max()) / 448)), dtype=torch.float32)
            stored = (value / scale).to(FP8)
            quantized[key], quantized[key[:-len("weight")] + "scale_weight"] = stored, scale
            plain[key] = stored.float() * scale
        else:
            on_grid = value.to(FP8).float()
            quantized[key], plain[key] = on_grid.to(torch.bfloat16), on_grid
    return quantized, plain


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """{"qa", "qb", "pa", "pb"}: quantized and plain loads of two tiny Flux.1 models (seeds 1, 2)."""
    import tiny_families
    tiny_families.register()
    folder = tmp_path_factory.mktemp("diffusion_models")
    for n, seed, gain in (("a", 1, 1.0), ("b", 2, 4.0)):  # B's weights 4x: every scale of B differs from A's
        sd = tiny_families.diffusion_state_dict("flux1-dev", seed)
        sd = {k: v * gain if v.ndim == 2 else v for k, v in sd.items()}
        quantized, plain = fp8_files(sd)
        save_file(quantized, str(folder / f"flux_q{n}.safetensors"))
        save_file(plain, str(folder / f"flux_p{n}.safetensors"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(folder_paths.folder_names_and_paths, "diffusion_models",
                   ([str(folder)], folder_paths.supported_pt_extensions))
        load = comfy_nodes.UNETLoader().load_unet
        yield {name: load(f"flux_{name}.safetensors", "default")[0] for name in ("qa", "qb", "pa", "pb")}


def dequantized(model, key: str) -> torch.Tensor:
    """A key's stored weight as its layer dequantizes it when ComfyUI patches it (float32)."""
    weight, _set, convert = comfy.model_patcher.get_key_weight(model.model, key)
    value = comfy.model_management.cast_to_device(weight, torch.device("cpu"), torch.float32, copy=True)
    value = convert(value, inplace=True) if convert is not None else value
    return value.float()


def loaded_effective(model, keys) -> dict:
    """Each key's weight with the model's patches applied by ComfyUI's own arithmetic, before it is stored
    back into the layer (and, for an encoded layer, quantized again)."""
    with torch.no_grad():
        return {k: comfy.lora.calculate_weight(model.patches.get(k, []), dequantized(model, k), k) for k in keys}


def weight_keys_of(plain_model) -> list:
    return list(plain_model.model_state_dict(UNET))


def test_the_host_loads_the_file_as_encoded_layers(models):
    q = models["qa"]
    encoded = [k for k in q.model_state_dict(UNET) if k.rsplit(".", 1)[1] in ENCODING]
    assert encoded, "the scaled-fp8 file loaded without its encoding"
    quantized = quantized_tensor_type()
    layer = q.model.diffusion_model.double_blocks[0].img_attn.qkv
    assert isinstance(layer.weight, quantized) or layer.weight.dtype == FP8
    for key in weight_keys_of(models["pa"]):  # same values as the plain file
        torch.testing.assert_close(dequantized(q, key), dequantized(models["pa"], key), rtol=0, atol=0, msg=key)


@pytest.mark.parametrize("a,b", [("qa", "qb"), ("pa", "qb"), ("qa", "pb")])
def test_merge_equals_the_formula_on_the_dequantized_weights(models, a, b):
    ma, mb = models[a], models[b]
    merged, report, _ = ModelMerge.execute(model_a=ma, model_b=mb, **SETTINGS).result
    plain, plain_report, _ = ModelMerge.execute(model_a=models["pa"], model_b=models["pb"], **SETTINGS).result
    assert report == plain_report  # the same keys merged: no scale or format entry among them
    assert not [k for k in merged.patches if k.rsplit(".", 1)[1] in ENCODING]
    keys = weight_keys_of(models["pa"])
    got = loaded_effective(merged, keys)
    wa, wb = loaded_effective(models["pa"], keys), loaded_effective(models["pb"], keys)
    for key in keys:
        torch.testing.assert_close(got[key], wa[key] + 0.3 * (wb[key] - wa[key]), rtol=1e-6, atol=1e-7, msg=key)
    assert not ma.patches and not mb.patches, "inputs untouched"


def test_loaded_quantized_merge_is_the_merge_rounded_to_the_layer_format(models):
    """Loaded for sampling, each quantized layer holds the merge encoded with the scale the host gives it
    (0.33: recalculated from the merge; 0.3.75: A's scale_weight, saturating at 448 times it): within
    about one fp8 step (ComfyUI rounds stochastically, through half precision) of the clamped merge."""
    merged = ModelMerge.execute(model_a=models["qa"], model_b=models["qb"], **SETTINGS).result[0]
    keys = [k for k in weight_keys_of(models["pa"]) if k.endswith(".weight") and k in merged.patches]
    want = loaded_effective(merged, keys)
    with torch.no_grad():
        merged.patch_model()
        try:
            got = {k: (dequantized(merged, k), layer_scale(merged, k)) for k in keys}
        finally:
            merged.unpatch_model()
    checked = 0
    for key in keys:
        (value, scale), w = got[key], want[key]
        if scale is None:  # not a quantized layer (a norm's scale)
            continue
        w = w.clamp(-448 * scale, 448 * scale)
        bound = 2 ** -2 * w.abs() + 2 ** -8 * scale
        assert bool(((value - w).abs() <= bound).all()), key
        checked += 1
    assert checked > 10
    untouched = dequantized(models["qa"], keys[0])
    torch.testing.assert_close(untouched, dequantized(models["pa"], keys[0]), rtol=0, atol=0)


def layer_scale(model, key):
    """The per-tensor scale a quantized layer holds now (0.3.75: scale_weight; 0.33: its QuantizedTensor's)."""
    layer = model.model.get_submodule(key.rsplit(".", 1)[0])
    scale = getattr(layer, "scale_weight", None)
    if scale is None and isinstance(layer.weight, quantized_tensor_type()):
        scale = layer.weight._params.scale
    return None if scale is None else float(scale.float().max())


@pytest.mark.parametrize("calcmode", ["cosineA", "tensor"])
def test_calc_mode_adapters_read_dequantized_inputs(models, calcmode):
    settings = dict(SETTINGS, calcmode=calcmode, alpha=0.4, beta=0.3)
    merged = ModelMerge.execute(model_a=models["qa"], model_b=models["qb"], **settings).result[0]
    plain = ModelMerge.execute(model_a=models["pa"], model_b=models["pb"], **settings).result[0]
    keys = weight_keys_of(models["pa"])
    got, want = loaded_effective(merged, keys), effective(plain, UNET)
    for key in keys:
        torch.testing.assert_close(got[key], want[key], rtol=1e-6, atol=1e-7, equal_nan=True, msg=key)


@pytest.mark.parametrize("calcmode", ["normal", "cosineA"])
def test_dynamic_loading_patches_give_the_same_weights(models, calcmode):
    """ComfyUI 0.33's dynamic VRAM loading applies a layer's patches at use through a LowVramPatch that first
    copies its patch values into a staging buffer (adapters rebuilt as type(a)(a.loaded_keys, a.weights)),
    then runs them on the dequantized weight. Replayed on CPU; hosts without that staging run the patch."""
    settings = dict(SETTINGS, calcmode=calcmode)
    merged = ModelMerge.execute(model_a=models["qa"], model_b=models["qb"], **settings).result[0]
    keys = [k for k in weight_keys_of(models["pa"]) if k in merged.patches]
    want = loaded_effective(merged, keys)
    staged = 0
    for key in keys:
        patch = comfy.model_patcher.LowVramPatch(key, merged.patches)
        if hasattr(patch, "prepare"):
            buffer = torch.empty((patch.memory_required(),), dtype=torch.uint8)
            patch.prepare(buffer, None, copy=True, commit=True)
            staged += 1
        with torch.no_grad():
            got = patch(dequantized(merged, key))
        torch.testing.assert_close(got, want[key], rtol=1e-6, atol=1e-7, equal_nan=True, msg=key)
    assert keys and staged in (0, len(keys))


def test_similarity_reads_the_dequantized_weights(models):
    got = ModelSimilarity.execute(models["qa"], models["qb"]).result
    want = ModelSimilarity.execute(models["pa"], models["pb"]).result
    assert got[0] == want[0] and got[3] == want[3]


def model_folder(tmp_path, monkeypatch, kind, name):
    """A fresh folder as ComfyUI's only ``kind`` folder (loras, diffusion_models) for one test."""
    folder = tmp_path / name
    folder.mkdir()
    monkeypatch.setitem(folder_paths.folder_names_and_paths, kind,
                        ([str(folder)], folder_paths.supported_pt_extensions))
    return folder


@pytest.fixture()
def loras(tmp_path, monkeypatch):
    return model_folder(tmp_path, monkeypatch, "loras", "loras")


def test_lora_extract_from_quantized_models(models, loras):
    q = LoraExtract.execute(models["qa"], models["qb"], rank=4, filename_prefix="q", save_dtype="fp32").result[0]
    p = LoraExtract.execute(models["pa"], models["pb"], rank=4, filename_prefix="p", save_dtype="fp32").result[0]
    got, want = load_file(loras / q), load_file(loras / p)
    assert set(got) == set(want) and len(got) > 10
    ups = [k for k in want if k.endswith(".lora_up.weight")]
    for key in ups:  # the low-rank product: the SVD's factors vary in the last digits from run to run
        down = key[:-len("lora_up.weight")] + "lora_down.weight"
        delta_q, delta_p = got[key] @ got[down], want[key] @ want[down]
        assert float((delta_q - delta_p).norm()) <= 1e-4 * float(delta_p.norm()), key
    assert all(torch.equal(got[k], want[k]) for k in want if k.endswith(".alpha")) and len(ups) > 10


def test_lora_bake_of_a_quantized_merge(models):
    merged = ModelMerge.execute(model_a=models["qa"], model_b=models["qb"], **SETTINGS).result[0]
    baked, _clip, report = LoraBake.execute(merged).result
    keys = weight_keys_of(models["pa"])
    assert f"model: {sum(k in merged.patches for k in keys)} patched weights baked" in report
    assert all(p[1][0] == "set" for k in baked.patches for p in baked.patches[k])
    got, want = loaded_effective(baked, keys), loaded_effective(merged, keys)
    for key in keys:  # an fp8-stored weight is baked in float16 (ComfyUI re-encodes it at load anyway)
        torch.testing.assert_close(got[key], want[key], rtol=2 ** -11, atol=2 ** -24, msg=key)


@pytest.fixture()
def out_dir(tmp_path, monkeypatch):
    return model_folder(tmp_path, monkeypatch, "diffusion_models", "saved")


def save_and_reload(model, precision):
    path = SaveCheckpoint.execute(model, filename_prefix="q/merged", precision=precision,
                                  hash_inputs=False, save_workflow=False).result[0]
    name = path.rsplit("/", 2)
    return path, comfy_nodes.UNETLoader().load_unet(f"{name[-2]}/{name[-1]}", "default")[0]


def test_save_checkpoint_writes_the_dequantized_merge(models, out_dir):
    merged = ModelMerge.execute(model_a=models["qa"], model_b=models["qb"], **SETTINGS).result[0]
    path, reloaded = save_and_reload(merged, "fp32")
    stored = load_file(path)
    assert not [k for k in stored if k.rsplit(".", 1)[1] in ENCODING + ("scaled_fp8",)]
    keys = weight_keys_of(models["pa"])
    got, want = loaded_effective(reloaded, keys), loaded_effective(merged, keys)
    for key in keys:
        torch.testing.assert_close(got[key], want[key], rtol=0, atol=0, msg=key)


def test_save_checkpoint_as_loaded_keeps_a_loadable_format(models, out_dir):
    """'as loaded': a host that serialises its quantized layers (0.33: weight_scale and comfy_quant per layer)
    gets them back, re-encoded from the merge, and loads them as quantized layers again; otherwise the weights
    are written dequantized. Either way the reloaded model is the merge within the stored format's rounding."""
    merged = ModelMerge.execute(model_a=models["qa"], model_b=models["qb"], **SETTINGS).result[0]
    path, reloaded = save_and_reload(merged, "as loaded")
    stored = load_file(path)
    formats = [k for k in stored if k.endswith(".comfy_quant")]
    serialised = [k for k in merged.model_state_dict(UNET) if k.endswith(".comfy_quant")]
    assert len(formats) == len(serialised)
    if formats:
        layer = reloaded.model.diffusion_model.double_blocks[0].img_attn.qkv
        assert isinstance(layer.weight, quantized_tensor_type()), "loads back as a quantized layer"
    for key in formats:
        layer = key[:-len("comfy_quant")]
        assert json.loads(bytes(stored[key].tolist()))["format"] == "float8_e4m3fn"
        assert stored[layer + "weight"].dtype == FP8 and layer + "weight_scale" in stored
    keys = weight_keys_of(models["pa"])
    got, want = loaded_effective(reloaded, keys), loaded_effective(merged, keys)
    for key in keys:
        w = want[key]
        bound = 2 ** -3 * w.abs() + 2 ** -9 * float(w.abs().max()) / 448 + 2 ** -11 * w.abs()
        assert bool(((got[key] - w).abs() <= bound).all()), key
