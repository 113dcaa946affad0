"""Quantised file merges loaded by the running ComfyUI's own loaders (0.3.75 or 0.33): inputs in 0.33's
``comfy_quant`` layout, 0.3.75's ``scaled_fp8`` layout and plain bf16 merge into a file that
``comfy.sd.load_diffusion_model`` / ``load_checkpoint_guess_config`` read back as the formula on the
dequantised inputs. The file node writes the layout this host reads; the merge API's default layout
(``scaled_fp8``) loads on both hosts. A tiny Wan 2.1 model (built with the host's own class, which
reads its size from the shapes) stands in for any transformer."""
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import comfy.sd
import comfy.utils
import folder_paths

from merge_suite.merge_core import merge_files
from merge_suite.nodes.file_merge import DiffusionModelFileMerge

E4M3 = torch.float8_e4m3fn
PREFIX = "model.diffusion_model."
SETTINGS = dict(mode="Add difference", alpha=0.4, beta=0.25, blocks_alpha_preset="custom",
                blocks_alpha="", blocks_beta_preset="custom", blocks_beta="")
READS_COMFY_QUANT = callable(getattr(comfy.utils, "convert_old_quants", None))  # 0.33's loader
BUFFERS = ("scale_weight", "scale_input", "weight_scale", "input_scale", "comfy_quant", "scaled_fp8")


def wan_weights(seed):
    from comfy.ldm.wan.model import WanModel
    import comfy.ops
    gen = torch.Generator().manual_seed(seed)
    net = WanModel(model_type="t2v", dim=128, ffn_dim=256, num_heads=1, num_layers=2,
                   operations=comfy.ops.disable_weight_init)
    return {k: torch.randn(v.shape, generator=gen) * 0.05 for k, v in net.state_dict().items()}


def quantised(k, v):
    return k.startswith("blocks.") and k.endswith(".weight") and v.dim() == 2


def quantise(w):
    scale = w.abs().max() / 448
    return (w / scale).to(E4M3), scale.reshape(())


def write(path, sd, layout, prefix=""):
    """sd in a layout: 'comfy_quant' (0.33's own, with input scales), 'scaled_fp8' (0.3.75's) or 'bf16'.
    Returns the dequantised values, keyed without the prefix."""
    out, deq = {}, {}
    for k, v in sd.items():
        if layout == "bf16" or not quantised(k, v):
            out[prefix + k] = v.to(torch.bfloat16)
            deq[k] = out[prefix + k].float()
            continue
        w, scale = quantise(v)
        layer = prefix + k[: -len(".weight")]
        out[prefix + k] = w
        deq[k] = w.float() * scale
        if layout == "scaled_fp8":
            out[layer + ".scale_weight"] = scale
        else:
            out[layer + ".weight_scale"], out[layer + ".input_scale"] = scale, torch.tensor(0.02)
            out[layer + ".comfy_quant"] = torch.tensor(list(json.dumps({"format": "float8_e4m3fn"}).encode()),
                                                       dtype=torch.uint8)
    if layout == "scaled_fp8":
        out[prefix + "scaled_fp8"] = torch.zeros(2, dtype=E4M3)
    save_file(out, path)
    return deq


def loaded_weights(patcher):
    """Each weight of the loaded diffusion model as it computes with it, dequantised, in float32."""
    out = {}
    for name, module in patcher.model.diffusion_model.named_modules():
        for attr, t in module.named_parameters(recurse=False):
            if attr in BUFFERS:
                continue
            if type(t).__name__ == "QuantizedTensor":  # 0.33 (and 0.3.75's mixed precision)
                value = t.dequantize().float()
            else:
                value = t.float()
                scale = getattr(module, "scale_weight", None) if attr == "weight" else None
                if scale is not None:  # 0.3.75's scaled_fp8 layers
                    value = value * scale.float()
            out[f"{name}.{attr}" if name else attr] = value
    return out


def assert_loads_as(patcher, want, what):
    """Linear weights (which a scaled_fp8 output quantises) within half an fp8 step of their largest value;
    every other value within half an fp8 step of itself (0.3.75 holds a scaled layer's bias in fp8,
    unscaled). A layer read unscaled (off by its scale, 1/448 of its largest value here) or merged with
    its buffers is far off."""
    got = loaded_weights(patcher)
    assert set(want) <= set(got), (what, sorted(set(want) - set(got))[:3])
    for k, w in want.items():
        err = (got[k].detach() - w).abs()
        bound = 2 ** -4 * w.abs().max() if k.endswith(".weight") and w.dim() == 2 else 2 ** -4 * w.abs() + 2 ** -10
        assert bool((err <= bound).all()), f"{what}: {k} off by {float(err.max())} (max {float(w.abs().max())})"


@pytest.fixture()
def inputs(tmp_path, monkeypatch):
    folder = tmp_path / "diffusion_models"
    folder.mkdir()
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "diffusion_models",
                        ([str(folder)], folder_paths.supported_pt_extensions))
    deq = {n: write(folder / f"{n}.safetensors", wan_weights(seed), layout)
           for n, seed, layout in (("a", 1, "comfy_quant"), ("b", 2, "scaled_fp8"), ("c", 3, "bf16"))}
    want = {k: deq["a"][k] + 0.4 * (deq["b"][k] - deq["c"][k]) for k in deq["a"]}
    return folder, want


def test_node_scaled_fp8_output_loads_on_this_host(inputs):
    folder, want = inputs
    model, name = DiffusionModelFileMerge.execute("a.safetensors", "b.safetensors", precision="scaled_fp8",
                                                  filename_prefix="m/x", file_c="c.safetensors",
                                                  **SETTINGS).result
    stored = load_file(folder / name)
    layer = "blocks.0.self_attn.q."
    if READS_COMFY_QUANT:  # the layout this host's loader reads natively
        assert layer + "comfy_quant" in stored and "scaled_fp8" not in stored
    else:
        assert stored["scaled_fp8"].dtype == E4M3 and layer + "scale_weight" in stored
    assert not [k for k in stored if k.endswith(("input_scale", "scale_input"))]
    assert_loads_as(model, want, f"node scaled_fp8 ({'comfy_quant' if READS_COMFY_QUANT else 'scaled_fp8'})")


def input_paths(folder, prefix):
    """The three inputs' paths, their keys rewritten with ``prefix`` (a checkpoint's naming) when given."""
    paths = [str(folder / f"{n}.safetensors") for n in "abc"]
    for p in paths if prefix else ():
        save_file({prefix + k: v for k, v in load_file(p).items()}, p)
    return paths


@pytest.mark.parametrize("prefix", ["", PREFIX])
def test_default_scaled_fp8_layout_loads_on_this_host(inputs, tmp_path, prefix):
    """The API's and CLI's default layout, bare and as a checkpoint: the one both hosts load."""
    folder, want = inputs
    paths = input_paths(folder, prefix)
    out = tmp_path / "out.safetensors"
    merge_files(*paths, str(out), mode="Add difference", alpha=0.4, dtype="scaled_fp8")
    assert prefix + "scaled_fp8" in load_file(out)
    model = comfy.sd.load_checkpoint_guess_config(str(out), output_vae=False, output_clip=False)[0] if prefix \
        else comfy.sd.load_diffusion_model(str(out))
    assert_loads_as(model, want, f"default scaled_fp8 {'checkpoint' if prefix else 'bare'}")


@pytest.mark.parametrize("prefix", ["", PREFIX])
def test_as_a_output_keeps_a_comfy_quant_layout_and_loads_in_033(inputs, tmp_path, prefix):
    folder, want = inputs
    paths = input_paths(folder, prefix)
    out = tmp_path / "out.safetensors"
    merge_files(*paths, str(out), mode="Add difference", alpha=0.4)
    stored = load_file(out)
    layer = prefix + "blocks.0.self_attn.q."
    assert stored[layer + "weight"].dtype == E4M3 and stored[layer + "weight_scale"].dtype == torch.float32
    assert json.loads(stored[layer + "comfy_quant"].numpy().tobytes())["format"] == "float8_e4m3fn"
    assert not [k for k in stored if k.endswith(("scale_weight", "scaled_fp8"))]
    assert torch.equal(stored[layer + "input_scale"], torch.tensor(0.02))  # A's activation calibration, kept
    if not READS_COMFY_QUANT:
        pytest.skip("A is in ComfyUI 0.33's comfy_quant layout, which this host's loader (0.3.75) does not "
                    "read: A itself does not load here either; the file's layout is checked above")
    model = comfy.sd.load_checkpoint_guess_config(str(out), output_vae=False, output_clip=False)[0] if prefix \
        else comfy.sd.load_diffusion_model(str(out))
    assert_loads_as(model, want, f"as A (comfy_quant) {'checkpoint' if prefix else 'bare'}")
