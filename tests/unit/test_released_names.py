"""Flux.1, Flux.2 and Chroma as ComfyUI 0.33 loads and saves them (RMSNorm ``….scale`` renamed ``….weight``):
the same family, layout and blocks as the released files; file merges that pair a 0.33-saved file with an
original download and write the released names; and a preset on automatic blocks refused, not re-spread.

The host's renaming is transcribed here from its behaviour (Flux and Flux.2: keys ending ``_norm.scale``;
Chroma: every key ending ``.scale``), apart from the families' declarations it is checked against."""
import pytest
import torch
from safetensors.torch import load_file, save_file
from spec_families import load_keyset

from merge_core.api import make_settings, merge_files
from merge_core.architectures import detect, detect_or_auto
from merge_core.blocks.weights import parse_block_weights
from merge_core.errors import MergeInputError
from merge_core.io.released_names import released_namer
from merge_core.lora.blocks import block_values
from merge_core.plan import build_plan

CHECKPOINT = "model.diffusion_model."
RENAMED = {"flux1-dev": "_norm.scale", "flux1-schnell": "_norm.scale", "flux2-dev": "_norm.scale", "chroma": ".scale"}
FAMILY = {"flux1-dev": "flux1", "flux1-schnell": "flux1", "flux2-dev": "flux2", "chroma": "chroma"}


def diffusion_keys(inventory):
    """The diffusion model's keys, bare (as ComfyUI's loader hands them to the model config)."""
    keys = load_keyset(inventory)
    if any(k.startswith(CHECKPOINT) for k in keys):
        return {k[len(CHECKPOINT):]: s for k, s in keys.items() if k.startswith(CHECKPOINT)}
    return dict(keys)


def as_host_033(key, inventory):
    """A bare diffusion-model key as ComfyUI 0.33 loads it (and then saves it)."""
    return key[:-len(".scale")] + ".weight" if key.endswith(RENAMED[inventory]) else key


@pytest.mark.parametrize("inventory", RENAMED)
def test_a_model_loaded_by_comfyui_033_is_its_family_with_the_same_blocks(inventory):
    released = diffusion_keys(inventory)
    loaded = {"diffusion_model." + as_host_033(k, inventory): k for k in released}  # a MODEL's key patches
    assert sum(k.endswith(".scale") for k in released) > 100 and not any(k.endswith(".scale") for k in loaded)
    arch, arch_033 = detect(list(released)), detect(list(loaded))
    assert arch.name == FAMILY[inventory] and arch_033 is not None and arch_033.name == arch.name
    assert detect_or_auto(list(loaded)).name == arch.name
    assert arch_033.blocks == arch.blocks and arch_033.layout_text() == arch.layout_text()
    for key, rel in loaded.items():
        assert arch_033.block_of(key) == arch.block_of(rel), key
        assert arch_033.released_key(key) == "diffusion_model." + rel, key


@pytest.mark.parametrize("inventory", RENAMED)
def test_only_the_rmsnorm_scales_are_read_under_another_name(inventory):
    """The declaration names every ``.scale`` of the released file and nothing else: a key that was
    ``.weight`` in the released file keeps its name (img_in.weight is no norm)."""
    keys = diffusion_keys(inventory)
    arch = detect(list(keys))
    for key in keys:
        host = as_host_033(key, inventory)
        assert arch.released_key(host) == key, key
        if key.endswith(".weight"):
            assert arch.released_key(key) == key, key


def test_chroma_radiance_nerf_head_norms_are_read_under_their_released_name():
    """Chroma Radiance (no inventory shipped): its NeRF head's RMSNorms are renamed by 0.33 like the rest."""
    head = {"nerf_image_embedder.embedder.0.weight": (4, 4), "nerf_blocks.0.param_generator.weight": (4, 4),
            "nerf_blocks.0.norm.scale": (4,), "nerf_blocks.1.norm.scale": (4,),
            "nerf_final_layer_conv.norm.scale": (4,), "nerf_final_layer_conv.conv.weight": (4, 4, 3, 3)}
    keys = {k: s for k, s in diffusion_keys("chroma").items() if not k.startswith(("img_in.", "final_layer."))}
    keys |= head | {"img_in_patch.weight": (4, 4, 2, 2)}
    loaded = {"diffusion_model." + as_host_033(k, "chroma"): k for k in keys}
    arch = detect(list(loaded))
    assert arch.name == "chroma" and arch.block_of("diffusion_model.nerf_blocks.1.norm.weight") == "OUT"
    assert {arch.released_key(k) for k in loaded} == {"diffusion_model." + k for k in keys}


def test_block_weights_on_a_033_flux_model_use_the_flux_layout():
    loaded = ["diffusion_model." + as_host_033(k, "flux1-schnell") for k in diffusion_keys("flux1-schnell")]
    arch = detect(loaded)
    w = parse_block_weights("D00-D01=0.5", arch, "blocks_alpha", 0.1)
    assert w.of("D01") == 0.5 and w.of("S00") == 0.1 and len(w.values) == 61
    assert parse_block_weights("GRAD_V", arch, "blocks_alpha").values == \
        parse_block_weights("GRAD_V", detect(list(diffusion_keys("flux1-schnell"))), "blocks_alpha").values


def test_elemental_rules_selections_and_draws_see_the_released_names():
    """A rule written from the released names (the web's element lists) and its random draws mean the same
    on a model 0.33 loaded."""
    plans = {}
    for host in ("0.3.75", "0.33"):
        shapes = {"diffusion_model." + (as_host_033(k, "flux1-schnell") if host == "0.33" else k): s
                  for k, s in diffusion_keys("flux1-schnell").items()}
        arch = detect(shapes)
        settings = make_settings(arch, "Weight sum", 0.2, elemental="D00:key_norm.scale:0.9, S01:norm:R", seed=3,
                                 include_exclude="exclude: query_norm.scale")
        plans[host] = {arch.released_key(kp.key): (kp.action, kp.alpha) for kp in build_plan(arch, settings, shapes,
                                                                                               shapes).keys}
    assert plans["0.33"] == plans["0.3.75"]
    assert plans["0.33"]["diffusion_model.double_blocks.0.img_attn.norm.key_norm.scale"] == ("merge", 0.9)
    assert plans["0.33"]["diffusion_model.double_blocks.0.img_attn.norm.query_norm.scale"][0] == "keep_a"


def tiny_file(path, keys, seed, rename=lambda k: k):
    gen = torch.Generator().manual_seed(seed)
    sd = {rename(k): torch.randn((2, 3) if len(s) > 1 else (3,), generator=gen) for k, s in keys.items()}
    save_file(sd, str(path))
    return sd


@pytest.mark.parametrize("inventory", ["flux1-schnell", "chroma"])
@pytest.mark.parametrize("renamed", ["b", "a", "both"])
def test_a_033_saved_file_merges_with_a_released_one_into_released_names(tmp_path, inventory, renamed):
    keys = diffusion_keys(inventory)

    def naming(name):
        return (lambda k: CHECKPOINT + as_host_033(k, inventory)) if renamed in (name, "both") \
            else (lambda k: CHECKPOINT + k)
    a = tiny_file(tmp_path / "a.safetensors", keys, 1, naming("a"))
    b = tiny_file(tmp_path / "b.safetensors", keys, 2, naming("b"))
    plan = merge_files(str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors"), None,
                       str(tmp_path / "out.safetensors"), alpha=0.25, blocks_alpha="D00=1")
    out = load_file(str(tmp_path / "out.safetensors"))
    assert set(out) == {CHECKPOINT + k for k in keys}, "the released names, whatever the inputs used"
    assert plan.arch.name == FAMILY[inventory] and not [kp for kp in plan.keys if kp.action != "merge"]
    for k in keys:
        ratio = 1.0 if k.startswith("double_blocks.0.") else 0.25
        want = a[naming("a")(k)] * (1 - ratio) + b[naming("b")(k)] * ratio
        assert torch.allclose(out[CHECKPOINT + k], want, atol=1e-6), k


def test_the_save_names_of_a_033_model_are_the_released_ones():
    """What Save Checkpoint writes for a MODEL that 0.33 loaded: ComfyUI's save prefix, released names."""
    keys = diffusion_keys("flux2-dev")
    namer = released_namer([as_host_033(k, "flux2-dev") for k in keys])
    assert {namer(CHECKPOINT + as_host_033(k, "flux2-dev")) for k in keys} == {CHECKPOINT + k for k in keys}
    assert released_namer(["model.diffusion_model.joint_blocks.0.x.weight", "model.diffusion_model.x_embedder.w"
                           ]) is None, "a family no host renames is saved as ComfyUI names it"


AUTO_KEYS = ["diffusion_model.patchify.weight", "diffusion_model.layers.0.attn.weight",
             "diffusion_model.layers.1.attn.weight", "diffusion_model.norm.weight"]


def test_a_preset_on_automatic_blocks_is_an_error_naming_input_and_fix():
    """The block-weight editor only shows declared layouts: a preset met on automatic blocks (a model no
    family matched) was meant for another layout and is refused instead of being spread over it."""
    auto = detect_or_auto(AUTO_KEYS)
    assert auto.name == "auto"
    with pytest.raises(MergeInputError) as err:
        parse_block_weights("GRAD_V", auto, "blocks_alpha", 0.5)
    assert err.value.input_name == "blocks_alpha"
    assert "preset 'GRAD_V'" in err.value.problem and "automatic blocks" in err.value.problem
    assert "5 comma-separated values" in err.value.fix and "no block weights" in err.value.fix
    with pytest.raises(MergeInputError, match="preset 'INS'.*automatic blocks") as err:
        block_values("INS", 1.0, auto, {"INS": (1.0,) * 17}, "lora_list", "style")
    assert err.value.input_name == "lora_list"
    # what was written for this layout still works, and a family's ids say why they do not fit
    assert parse_block_weights("0,0.1,0.2,0.3,0.4", auto, "blocks_alpha").of("layers.1") == 0.3
    with pytest.raises(MergeInputError, match="unknown block id 'IN' for automatic blocks .the model matches no "
                                              "declared family"):
        parse_block_weights("IN=0.5", auto, "blocks_alpha", 0.5)
    with pytest.raises(MergeInputError, match="61 values.*matches no declared family"):
        parse_block_weights(",".join(["0.5"] * 61), auto, "blocks_alpha")
