"""LTXV, LTX-2, Mochi, HunyuanVideo (1.5 a size variant), HunyuanImage 2.1 and Kandinsky 5: detection (and not
as any other family), the block of every key of each full-size inventory against the independent
transcription (spec_video_models), `blocks FILE`, kohya and diffusers LoRA names, and two families merged
together refused."""
import re

import pytest
import spec_video_models as spec
from family_checks import (check_blocks_command, check_full_size_layout, check_module_blocks, check_not_detected_as,
                           kohya, linear_layers, merge_refused, other_keysets)
from spec_families import load_keyset

from merge_core.architectures import ARCHITECTURES, KEPT, detect
from merge_core.lora.families import lora_family
from merge_core.lora.keys import module_block

CASES = {  # keyset: (family, label, layout)
    "ltxv-2b": ("ltxv", "LTXV", "BASE, IN, T00-T27, OUT"),
    "ltx2-19b": ("ltx2", "LTX-2", "BASE, IN, T00-T47, OUT"),
    "mochi-preview": ("mochi", "Mochi", "BASE, IN, B00-B47, OUT"),
    "hunyuan-video": ("hunyuan_video", "HunyuanVideo", "BASE, IN, D00-D19, S00-S39, OUT"),
    "hunyuan-video-15": ("hunyuan_video", "HunyuanVideo 1.5", "BASE, IN, D00-D53, OUT"),
    "hunyuan-image-21": ("hunyuan_image21", "HunyuanImage 2.1", "BASE, IN, D00-D19, S00-S39, OUT"),
    "kandinsky5-lite": ("kandinsky5", "Kandinsky 5", "BASE, IN, TX00-TX01, V00-V31, OUT"),
}
OWN = {family for family, _, _ in CASES.values()}
OTHER_KEYSETS = other_keysets(CASES)


@pytest.mark.parametrize("name", CASES)
def test_every_key_of_the_full_size_layout(name):
    check_full_size_layout(name, CASES, spec.TRANSCRIPTIONS)


@pytest.mark.parametrize("name", OTHER_KEYSETS)
def test_other_families_are_not_detected_as_these(name):
    check_not_detected_as(name, OWN)


def test_hunyuan_image_and_video_told_apart_by_their_keys():
    """HunyuanImage 2.1 has the ByT5 glyph mapper and no CLIP vector input; its distilled release adds
    guidance and mean-flow time (still HunyuanImage); HunyuanVideo 1.5 has ByT5 too, with vision input."""
    image = load_keyset("hunyuan-image-21")
    distilled = [*image, "guidance_in.in_layer.weight", "time_r_in.in_layer.weight"]
    assert detect(distilled).name == "hunyuan_image21"
    assert detect(["model.diffusion_model." + k for k in image]).name == "hunyuan_image21"
    assert detect(load_keyset("hunyuan-video-15")).name == "hunyuan_video"
    without_byt5 = [k for k in image if not k.startswith("byt5_in.")]
    assert detect(without_byt5).name == "hunyuan_video"


def test_hunyuan_under_the_original_release_names():
    """Tencent's files name modules ``img_attn_qkv``/``img_mod.linear``/``mlp.fc1`` (ComfyUI renames them on
    load): the same family and the same blocks."""
    def original(key):
        return (key.replace("_attn.qkv.", "_attn_qkv.").replace("_mod.lin.", "_mod.linear.")
                .replace("mlp.0.", "mlp.fc1.").replace("mlp.2.", "mlp.fc2.").replace("_attn.proj.", "_attn_proj."))
    for name in ("hunyuan-video", "hunyuan-image-21"):
        keys = list(load_keyset(name))
        arch = detect([original(k) for k in keys])
        assert arch.name == CASES[name][0]
        assert [arch.block_of(original(k)) for k in keys] == [arch.block_of(k) for k in keys]


def test_ltx2_checkpoint_components_and_ltxv_not_ltx2():
    arch = detect(["model.diffusion_model." + k for k in load_keyset("ltx2-19b")] +
                  ["vae.decoder.conv_in.weight", "audio_vae.decoder.conv_in.weight", "vocoder.conv_pre.weight",
                   "text_embedding_projection.aggregate_embed.weight"])
    assert arch.name == "ltx2" and not arch.bare
    assert arch.block_of("audio_vae.decoder.conv_in.weight") == KEPT == arch.block_of("vocoder.conv_pre.weight")
    assert arch.block_of("vae.decoder.conv_in.weight") == KEPT
    assert arch.block_of("text_embedding_projection.aggregate_embed.weight") == "BASE"
    assert arch.block_of("model.diffusion_model.transformer_blocks.47.audio_attn1.to_q.weight") == "T47"
    assert detect([k for k in load_keyset("ltx2-19b") if not k.startswith("audio_")]).name == "ltxv"


def test_blocks_command_prints_each_layout(tmp_path, capsys):
    check_blocks_command(tmp_path, capsys, CASES)


@pytest.mark.parametrize("name", CASES)
def test_kohya_names_of_every_linear_layer(name):
    family = CASES[name][0]
    rels = linear_layers(name)
    arch = lora_family([kohya(rel) for rel in rels])
    assert arch is not None and arch.name == family  # HunyuanImage 2.1: its ByT5 mapper, no vector input
    check_module_blocks(rels, arch, spec.TRANSCRIPTIONS[name])


def test_diffusers_names():
    cases = {
        "ltxv": {"transformer.transformer_blocks.27.attn1.to_q": "T27", "transformer.proj_in": "IN",
                 "transformer.time_embed.linear": "IN", "transformer.caption_projection.linear_1": "IN",
                 "transformer.proj_out": "OUT"},
        "ltx2": {"transformer.transformer_blocks.47.audio_attn2.to_k": "T47", "transformer.audio_proj_in": "IN",
                 "transformer.audio_time_embed.linear": "IN", "transformer.audio_proj_out": "OUT"},
        "mochi": {"transformer.transformer_blocks.47.attn1.to_q": "B47", "transformer.patch_embed.proj": "IN",
                  "transformer.time_embed.timestep_embedder.linear_1": "IN", "transformer.proj_out": "OUT",
                  "transformer.norm_out.linear": "OUT"},
        "hunyuan_video": {"transformer.transformer_blocks.19.attn.to_q": "D19",
                          "transformer.single_transformer_blocks.39.proj_mlp": "S39",
                          "transformer.x_embedder.proj": "IN", "transformer.context_embedder.proj_in": "IN",
                          "transformer.time_text_embed.guidance_embedder.linear_1": "IN",
                          "transformer.proj_out": "OUT"},
        "hunyuan_image21": {"transformer.context_embedder_2.linear_1": "IN",
                            "transformer.single_transformer_blocks.0.attn.to_q": "S00"},
    }
    for family, names in cases.items():
        for name, block in names.items():
            assert module_block(name, ARCHITECTURES[family]) == block, (family, name)


def test_hunyuan_lora_names_beside_flux():
    """HunyuanVideo's block modules have Flux.1's kohya names: a LoRA of blocks only is HunyuanVideo when it
    names all 20 double and 40 single blocks (more than Flux.1 has), Flux.1 within Flux.1's 19/38; one that
    names the class's own input modules (the token refiner) is HunyuanVideo at any size, and with the ByT5
    mapper HunyuanImage 2.1."""
    names = [f"lora_unet_double_blocks_{i}_img_attn_qkv" for i in range(20)]
    names += [f"lora_unet_single_blocks_{i}_linear1" for i in range(40)]
    assert lora_family(names).name == "hunyuan_video"
    flux = [n for n in names if not re.search(r"double_blocks_19_|single_blocks_3[89]_", n)]
    assert lora_family(flux).name == "flux1"
    refiner = ["lora_unet_txt_in_individual_token_refiner_blocks_0_self_attn_qkv"]
    assert lora_family(names[:2] + refiner).name == "hunyuan_video"
    assert lora_family(names[:2] + refiner + ["lora_unet_byt5_in_fc1"]).name == "hunyuan_image21"


def test_two_of_these_families_merged_together_name_both(tmp_path, capsys):
    err = merge_refused(tmp_path, capsys, "ltxv-2b", "ltx2-19b")
    assert re.search(r"LTX-2 model but model A is LTXV", err)


def test_hunyuan_video_with_its_15_variant_is_an_error_not_a_partial_merge(tmp_path, capsys):
    err = merge_refused(tmp_path, capsys, "hunyuan-video", "hunyuan-video-15")
    assert "D00-D53" in err and "D00-D19, S00-S39" in err, err
