"""LoRA nodes on a real tiny Flux.1 (ComfyUI's own Flux class at a small width and depth): block weights in
the positional and named forms on kohya and diffusers LoRAs, parity with ComfyUI's loader, extraction and
merge through the nodes, wrong-family errors.

Expected weights: W + s * w(block) * (alpha/r) * up @ down with blocks from the independent transcription
(spec_families); for diffusers LoRAs (split q/k/v) ComfyUI's own LoraLoader is the reference for blocks at
weight 1 and the base weight for blocks at 0.
"""
import logging
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
import comfy.lora  # noqa: E402
import folder_paths  # noqa: E402
import nodes as comfy_nodes  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
import tiny_families  # noqa: E402
from spec_families import flux1_block  # noqa: E402

from merge_suite.nodes.errors import MergeNodeError  # noqa: E402
from merge_suite.nodes.lora import LoraApply, LoraExtract, LoraMerge  # noqa: E402

LAYOUT = ["CLIP", "T5", "IN", "D00", "D01", "S00", "S01", "S02", "OUT"]  # the tiny model's own layout


def tiny_flux(seed):
    """The harness's tiny Flux.1-dev (two double and three single blocks), loaded as UNETLoader loads it."""
    return tiny_families.build_model("flux1-dev", seed)


@pytest.fixture(scope="module")
def loras(tmp_path_factory):
    folder = tmp_path_factory.mktemp("family_loras")
    folder_paths.add_model_folder_path("loras", str(folder), is_default=True)
    return folder


def effective(patcher):
    lists = patcher.get_key_patches("diffusion_model.")
    with torch.no_grad():
        return {k: comfy.lora.calculate_weight(v[1:], v[0][0].float().clone(), k) for k, v in lists.items()}


def kohya_targets(model):
    """(kohya name, model key, shape) of every linear layer of the diffusion model."""
    return [("lora_unet_" + k[len("diffusion_model."):-len(".weight")].replace(".", "_"), k, tuple(w.shape))
            for k, w in model.model_state_dict("diffusion_model.").items() if k.endswith(".weight") and w.dim() == 2]


def write_kohya(folder, name, model, seed, rank=2, alpha=1.0):
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for kname, _, (out_dim, in_dim) in kohya_targets(model):
        sd[f"{kname}.lora_up.weight"] = torch.randn(out_dim, rank, generator=gen) * 0.1
        sd[f"{kname}.lora_down.weight"] = torch.randn(rank, in_dim, generator=gen) * 0.1
        sd[f"{kname}.alpha"] = torch.tensor(alpha)
    save_file(sd, str(folder / f"{name}.safetensors"))
    return f"{name}.safetensors", sd


def file_delta(sd, kname):
    up, down = sd[f"{kname}.lora_up.weight"].float(), sd[f"{kname}.lora_down.weight"].float()
    return up @ down * (float(sd[f"{kname}.alpha"]) / down.shape[0])


def block_of(key):
    return flux1_block("model." + key)


@pytest.mark.parametrize("spec, weight", [
    ("0,0,1,0.25,0.5,0.75,0,1.25,2", dict(zip(LAYOUT, [0, 0, 1, 0.25, 0.5, 0.75, 0, 1.25, 2]))),
    ("D00-D01=0.5, S02=0, OUT=2", {"D00": 0.5, "D01": 0.5, "S02": 0.0, "OUT": 2.0}),
])
def test_kohya_flux_lora_with_block_weights_follows_the_formula(loras, spec, weight):
    model = tiny_flux(1)
    name, sd = write_kohya(loras, f"flux_kohya_{len(spec)}", model, seed=2)
    out = LoraApply.execute(model, lora_name=name, strength_model=0.8, block_weights=spec).result
    got, base = effective(out[0]), effective(model)
    zeroed = 0
    for kname, key, _ in kohya_targets(model):
        w = 0.8 * weight.get(block_of(key), 1.0)
        torch.testing.assert_close(got[key], base[key] + w * file_delta(sd, kname), rtol=1e-5, atol=1e-6)
        if w == 0:
            assert torch.equal(got[key], base[key])
            zeroed += 1
    assert zeroed > 0 and "weights patched" in out[2]


def test_all_ones_equals_comfy_lora_loader_and_diffusers_names_follow_blocks(loras, caplog):
    model = tiny_flux(3)
    key_map = comfy.lora.model_lora_keys_unet(model.model, {})
    gen = torch.Generator().manual_seed(4)
    weights, sd = model.model_state_dict(), {}
    for lora_key, target in key_map.items():
        key, rows = (target[0], target[1]) if isinstance(target, tuple) else (target, None)
        if not lora_key.startswith("transformer.") or key not in weights or weights[key].dim() != 2:
            continue
        out_dim = rows[2] if rows else weights[key].shape[0]
        in_dim = weights[key].shape[1]
        sd[f"{lora_key}.lora_B.weight"] = torch.randn(out_dim, 2, generator=gen) * 0.1
        sd[f"{lora_key}.lora_A.weight"] = torch.randn(2, in_dim, generator=gen) * 0.1
    assert any(".single_transformer_blocks." in k for k in sd) and any("x_embedder" in k for k in sd)
    save_file(sd, str(loras / "flux_diffusers.safetensors"))
    caplog.set_level(logging.WARNING)
    ref = effective(comfy_nodes.LoraLoaderModelOnly().load_lora_model_only(model, "flux_diffusers.safetensors", 0.6)[0])
    same = effective(LoraApply.execute(model, lora_name="flux_diffusers.safetensors", strength_model=0.6).result[0])
    assert not [r for r in caplog.records if "lora key not loaded" in r.getMessage()]
    for key in ref:
        torch.testing.assert_close(same[key], ref[key], rtol=0, atol=0)
    half = effective(LoraApply.execute(model, lora_name="flux_diffusers.safetensors", strength_model=0.6,
                                       block_weights="D01=0, S00-S01=0, IN=0").result[0])
    base = effective(model)
    changed = 0
    for key in ref:
        zero = block_of(key) in ("D01", "S00", "S01", "IN")
        torch.testing.assert_close(half[key], base[key] if zero else ref[key], rtol=0, atol=0)
        changed += not torch.equal(ref[key], base[key])
    assert changed > 20


def test_extract_and_merge_nodes_on_flux(loras, caplog):
    """Extract (A = base + LoRA, B = base) at full rank gives kohya-named modules that rebuild A on B;
    merging that LoRA with itself at 0.5 + 0.5 gives the same weights."""
    base = tiny_flux(5)
    name, _ = write_kohya(loras, "flux_to_extract", base, seed=6)
    tuned = LoraApply.execute(base, lora_name=name, block_weights="S00-S02=0").result[0]
    out = LoraExtract.execute(tuned, base, rank=4, save_dtype="fp32", filename_prefix="flux_extracted").result
    caplog.set_level(logging.WARNING)
    rebuilt = comfy_nodes.LoraLoaderModelOnly().load_lora_model_only(base, out[0], 1.0)[0]
    assert not [r for r in caplog.records if "lora key not loaded" in r.getMessage()]
    want, got = effective(tuned), effective(rebuilt)
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-4, atol=1e-5)
    extracted = load_file(str(loras / out[0]))
    singles = [k[:-len(".lora_up.weight")] for k in extracted if "single_blocks" in k and k.endswith("up.weight")]
    assert singles and all(  # blocks at 0 made no difference
        torch.count_nonzero(extracted[f"{n}.lora_up.weight"] @ extracted[f"{n}.lora_down.weight"]) == 0
        for n in singles)
    merged = LoraMerge.execute(f"{out[0]}:0.5, {out[0]}:0.5", rank=4, save_dtype="fp32",
                               filename_prefix="flux_merged").result
    assert merged[2].splitlines()[1].startswith("Flux.1:")
    again = effective(comfy_nodes.LoraLoaderModelOnly().load_lora_model_only(base, merged[0], 1.0)[0])
    for key in want:
        torch.testing.assert_close(again[key], want[key], rtol=1e-4, atol=1e-5)


def test_wrong_lists_and_wrong_family_loras(loras, tiny):
    model = tiny_flux(7)
    name, _ = write_kohya(loras, "flux_errors", model, seed=8)
    with pytest.raises(MergeNodeError, match=r"block_weights.*has 26 values.*need 9 \(CLIP, T5, IN, D00-D01, "
                                             r"S00-S02, OUT\)"):
        LoraApply.execute(model, lora_name=name, block_weights=",".join(["1"] * 26))
    with pytest.raises(MergeNodeError, match=r"unknown block id 'D05' for Flux.1.*D00-D01"):
        LoraApply.execute(model, lora_name=name, block_weights="D05=0")
    sd1 = tiny("model", "sd1", 8)
    with pytest.raises(MergeNodeError, match=r"LoRA 'flux_errors.safetensors' is a Flux.1 LoRA but the model is SD1"):
        LoraApply.execute(sd1, lora_name=name)
    assert LoraApply.validate_inputs(block_weights=",".join(["1"] * 61)) is True
    assert "pair #2" in str(LoraApply.validate_inputs(block_weights="D00=1, OUT"))
    assert "named values" in str(LoraApply.validate_inputs(block_weights="D00"))


def test_apply_reads_the_family_a_qwen_image_lora_names(loras):
    """The pack's own extraction of a tiny Qwen-Image (few blocks: its modules fit Flux.1's naming too) names
    qwen_image in its metadata; Apply LoRA reads that, not the Flux.1 guess, and applies it to Qwen-Image."""
    base, tuned = tiny_families.build_model("qwen-image", 1), tiny_families.build_model("qwen-image", 2)
    out = LoraExtract.execute(tuned, base, rank=2, save_dtype="fp32", filename_prefix="qwen_extracted").result
    model = LoraApply.execute(base, lora_name=out[0], block_weights="T00-T01=0.5").result[0]
    changed = effective(model)
    assert any(not torch.equal(w, base.model_state_dict("diffusion_model.")[k].float()) for k, w in changed.items())
