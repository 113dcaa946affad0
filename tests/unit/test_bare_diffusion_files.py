"""Diffusion-model files (bare keys, as in ComfyUI's diffusion_models folder) of every family merge
through merge_files with their family's blocks, and the output keeps the inputs' naming. Keys come
from the full-size inventories at a tiny width."""
import pytest
import torch
from safetensors.torch import load_file, save_file
from spec_blocks import sd1_block
from spec_families import KEEP, flux1_block, hidream_block, load_keyset, sd3_block, wan_block

from merge_core.api import merge_files

PREFIX = "model.diffusion_model."
# family: (inventory, key -> block on bare keys, block weights given as ID=value pairs)
CASES = {
    "sd1": ("sd1", lambda k: sd1_block("diffusion_model." + k), {"M00": 0.6, "OUT11": 0.9}),
    "flux1": ("flux1-dev", flux1_block, {"D00": 0.6, "OUT": 0.9}),
    "sd3": ("sd3-medium", sd3_block, {"J00": 0.6, "OUT": 0.9}),
    "wan": ("wan21-1.3b", wan_block, {"B00": 0.6, "OUT": 0.9}),
    "hidream": ("hidream-full", hidream_block, {"D15": 0.6, "S31": 0.2, "OUT": 0.9}),
}
ALPHA = 0.3


def bare_keys(inventory):
    keys = load_keyset(inventory)
    if any(k.startswith(PREFIX) for k in keys):
        return [k[len(PREFIX):] for k in keys if k.startswith(PREFIX)]
    return list(keys)


def tiny_file(path, keys, seed):
    gen = torch.Generator().manual_seed(seed)
    sd = {k: torch.randn((2, 3) if k.endswith("weight") and "norm" not in k else (4,), generator=gen)
          for k in keys}
    save_file(sd, str(path))
    return sd


@pytest.mark.parametrize("family", CASES)
def test_bare_file_merges_with_its_family_blocks_and_keeps_its_naming(tmp_path, family):
    inventory, block_of, pairs = CASES[family]
    keys = bare_keys(inventory)
    a, b = (tiny_file(tmp_path / f"{n}.safetensors", keys, seed) for seed, n in enumerate("ab"))
    out = tmp_path / "out.safetensors"
    blocks = ", ".join(f"{k}={v}" for k, v in pairs.items())
    merge_files(str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors"), None, str(out),
                alpha=ALPHA, blocks_alpha=blocks)
    merged = load_file(str(out))
    assert set(merged) == set(keys)  # the inputs' naming, no prefix added
    for key in keys:
        block = block_of(key)
        kept = block == KEEP or (family == "sd1" and not ("weight" in key or "bias" in key))
        ratio = 0.0 if kept else pairs.get(block, ALPHA)
        assert torch.allclose(merged[key], torch.lerp(a[key], b[key], ratio), atol=1e-6), (key, block)


def test_bare_sd_unet_gets_adjust_and_bare_flux_scaled_fp8_keeps_bare_names(tmp_path):
    keys = bare_keys("sd1")
    a, b = (tiny_file(tmp_path / f"{n}.safetensors", keys, seed) for seed, n in enumerate("ab"))
    out = tmp_path / "adjusted.safetensors"
    merge_files(str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors"), None, str(out), alpha=0.5,
                adjust="0,0,0,1,0,0,0,0")  # CONT=1: out.2.bias += 0.02 on the first latent channel
    merged = load_file(str(out))
    want = torch.lerp(a["out.2.bias"], b["out.2.bias"], 0.5) + torch.tensor([0.02, 0, 0, 0])
    assert torch.allclose(merged["out.2.bias"], want, atol=1e-6)

    keys = bare_keys("flux1-dev")
    for seed, n in enumerate("ab"):
        tiny_file(tmp_path / f"f{n}.safetensors", keys, seed)
    out = tmp_path / "scaled.safetensors"
    merge_files(str(tmp_path / "fa.safetensors"), str(tmp_path / "fb.safetensors"), None, str(out),
                dtype="scaled_fp8")
    merged = load_file(str(out))
    assert merged["scaled_fp8"].dtype == torch.float8_e4m3fn and not any(k.startswith("model.") for k in merged)
    assert merged["double_blocks.0.img_attn.qkv.weight"].dtype == torch.float8_e4m3fn
    assert "double_blocks.0.img_attn.qkv.scale_weight" in merged
