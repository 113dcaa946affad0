"""Transformer families: detection, the block of every key of each full-size layout (ComfyUI's own
model classes on the meta device, scripts/make_keysets.py), automatic blocks, and block-weight text."""
import pytest
import spec_families as spec
from spec_families import load_keyset

from merge_core.architectures import (CHROMA, FLUX1, FLUX2, HIDREAM, KEPT, LUMINA2, NO_BLOCK, QWEN_IMAGE, SD3,
                                      SDXL, SDXL_EXTENDED, WAN, detect, detect_or_auto)
from merge_core.blocks.weights import parse_block_weights, preset_on_layout
from merge_core.blocks.presets import presets
from merge_core.errors import MergeInputError

CASES = {  # keyset: (family, transcription, layout)
    "flux1-dev": (FLUX1, spec.flux1_block, "CLIP, T5, IN, D00-D18, S00-S37, OUT"),
    "flux1-schnell": (FLUX1, spec.flux1_block, "CLIP, T5, IN, D00-D18, S00-S37, OUT"),
    "chroma": (CHROMA, spec.chroma_block, "BASE, IN, D00-D18, S00-S37, OUT"),
    "flux2-dev": (FLUX2, spec.flux2_block, "BASE, IN, D00-D07, S00-S47, OUT"),
    "sd3-medium": (SD3, spec.sd3_block, "BASE, IN, J00-J23, OUT"),
    "sd35-medium": (SD3, spec.sd3_block, "BASE, IN, J00-J23, OUT"),
    "sd35-large": (SD3, spec.sd3_block, "BASE, IN, J00-J37, OUT"),
    "hidream-full": (HIDREAM, spec.hidream_block, "BASE, IN, D00-D15, S00-S31, OUT"),
    "lumina2": (LUMINA2, spec.lumina2_block, "BASE, IN, NR00-NR01, CR00-CR01, L00-L25, OUT"),
    "z-image": (LUMINA2, spec.lumina2_block, "BASE, IN, NR00-NR01, CR00-CR01, L00-L29, OUT"),
    "qwen-image": (QWEN_IMAGE, spec.qwen_block, "BASE, IN, T00-T59, OUT"),
    "wan21-14b": (WAN, spec.wan_block, "BASE, IN, B00-B39, OUT"),
    "wan21-1.3b": (WAN, spec.wan_block, "BASE, IN, B00-B29, OUT"),
    "wan22-5b": (WAN, spec.wan_block, "BASE, IN, B00-B29, OUT"),
    "wan21-vace-14b": (WAN, spec.wan_block, "BASE, IN, B00-B39, V00-V07, OUT"),
}


def expected(arch_block):
    return {KEPT: spec.KEEP, NO_BLOCK: spec.KEEP}.get(arch_block, arch_block)


@pytest.mark.parametrize("name", CASES)
def test_every_key_of_the_full_size_layout(name):
    family, transcription, layout = CASES[name]
    keys = load_keyset(name)
    arch = detect(keys)
    assert arch is not None and arch.name == family.name, name
    assert arch.layout_text() == layout
    for key in keys:
        assert expected(arch.block_of(key)) == transcription(key), key
    assert all(arch.block_of(k) != NO_BLOCK for k in keys), "every real key has a block"
    used = {arch.block_of(k) for k in keys}
    assert set(arch.blocks[arch.base_blocks:]) <= used, "every non-base block owns keys"


@pytest.mark.parametrize("naming", ["model.diffusion_model.", "diffusion_model.", ""])
def test_three_namings_give_the_same_blocks(naming):
    rel = {k[len("model.diffusion_model."):]: s for k, s in load_keyset("flux1-dev").items()
           if k.startswith("model.diffusion_model.")}
    arch = detect([naming + k for k in rel])
    assert arch.name == "flux1" and arch.n_blocks == 61 and arch.bare == (naming == "")
    for k in rel:
        assert arch.block_of(naming + k) == spec.flux1_block(k)


def test_flux_forge_checkpoint_components():
    keys = load_keyset("flux1-dev")
    assert FLUX1.block_of("text_encoders.clip_l.transformer.text_model.final_layer_norm.weight") == "CLIP"
    assert detect(keys).block_of("vae.decoder.conv_in.weight") == KEPT
    assert FLUX1.n_blocks == 61 and FLUX1.blocks[:3] == ("CLIP", "T5", "IN") and FLUX1.blocks[-1] == "OUT"


def test_sdxl_extended_110():
    assert SDXL_EXTENDED.n_blocks == 110
    keys = load_keyset("sdxl")
    fine = {SDXL_EXTENDED.block_of(k) for k in keys}
    assert fine <= set(SDXL_EXTENDED.blocks)
    assert SDXL_EXTENDED.block_of("model.diffusion_model.input_blocks.4.1.transformer_blocks.1.attn1.to_q.weight") \
        == "IN411"
    assert SDXL_EXTENDED.block_of("model.diffusion_model.input_blocks.4.1.proj_in.weight") == "IN41"
    assert SDXL_EXTENDED.block_of("model.diffusion_model.middle_block.1.transformer_blocks.3.ff.net.2.weight") \
        == "MID103"
    assert SDXL_EXTENDED.block_of("model.diffusion_model.output_blocks.2.2.conv.weight") == "OUT22"
    assert SDXL_EXTENDED.block_of("model.diffusion_model.out.2.weight") == "OUT9"
    assert SDXL_EXTENDED.block_of("model.diffusion_model.label_emb.0.0.weight") == "LABEL"
    assert SDXL_EXTENDED.block_of("conditioner.embedders.1.model.ln_final.weight") == "CLIPG"
    assert SDXL_EXTENDED.block_of("first_stage_model.decoder.conv_in.weight") == "CLIPL", "VAE takes value 1"
    values = [i / 200 for i in range(110)]
    w = parse_block_weights(",".join(map(str, values)), SDXL, "blocks_beta")
    assert w.at("IN04", "model.diffusion_model.input_blocks.4.1.transformer_blocks.1.attn1.to_q.weight") \
        == values[SDXL_EXTENDED.blocks.index("IN411")]


def test_detection_mixes_and_auto():
    flux, sd3 = load_keyset("flux1-schnell"), load_keyset("sd3-medium")
    from merge_core.architectures import require_compatible
    with pytest.raises(MergeInputError, match="SD3/SD3.5 model but model A is Flux.1"):
        require_compatible(detect(flux), detect(sd3), "model_b")
    with pytest.raises(MergeInputError, match="Chroma model but model A is Flux.1"):
        require_compatible(detect(flux), detect(load_keyset("chroma")), "model_b")
    with pytest.raises(MergeInputError, match="J00-J37, OUT but model A has BASE, IN, J00-J23"):
        require_compatible(detect(sd3), detect(load_keyset("sd35-large")), "model_b")
    # a model nobody declared: automatic blocks (input-side modules, stacks, output-side modules)
    keys = ["diffusion_model.patchify.weight", "diffusion_model.layers.0.attn.weight",
            "diffusion_model.layers.1.attn.weight", "diffusion_model.norm.weight",
            "diffusion_model.layers.1.mlp.weight"]
    auto = detect_or_auto(keys)
    assert detect(keys) is None and auto.name == "auto"
    assert auto.blocks == ("BASE", "patchify", "layers.0", "layers.1", "norm")
    assert [auto.block_of(k) for k in keys] == ["patchify", "layers.0", "layers.1", "norm", "layers.1"]
    assert auto.block_of("clip_l.transformer.x.weight") == "BASE"


def test_automatic_blocks_are_in_block_order_whatever_the_key_order():
    """Numbered stacks by index (2 before 10), a Sequential of single layers one block, input-side modules
    before the stacks and output-side ones after, the same for any key order (a file's alphabetical one, a
    loaded model's module order)."""
    stack = [f"blocks.{i}.attn.qkv.weight" for i in (0, 1, 2, 10, 11)] + ["blocks.2.mlp.0.weight"]
    keys = ["tmlp.0.weight", "tmlp.0.bias", "tmlp.2.weight", "stem.weight", "last.linear.weight",
            "adapter.projector.weight", "final_norm.weight", "pos_embed", "proj_out.bias", *stack]
    want = ("BASE", "adapter", "pos_embed", "stem", "tmlp", "blocks.0", "blocks.1", "blocks.2", "blocks.10",
            "blocks.11", "final_norm", "last", "proj_out")
    for order in (keys, sorted(keys), list(reversed(keys))):
        auto = detect_or_auto(order)
        assert auto.name == "auto" and auto.blocks == want
        assert auto.block_of("tmlp.2.weight") == "tmlp" and auto.block_of("blocks.10.attn.qkv.weight") == "blocks.10"
        assert auto.block_of("blocks.2.mlp.0.weight") == "blocks.2" and auto.block_of("pos_embed") == "pos_embed"


def test_positional_and_named_weights_on_flux():
    arch = detect(load_keyset("flux1-schnell"))
    with pytest.raises(MergeInputError, match=r"26 values.*Flux.1 block weights need 61 \(CLIP, T5, IN, D00-D18"):
        parse_block_weights(",".join(["0.5"] * 26), arch, "blocks_alpha", 0.5)
    w = parse_block_weights(",".join(str(i / 100) for i in range(61)), arch, "blocks_alpha", 0.5)
    assert w.of("S00") == 0.22
    w = parse_block_weights("D00-D18=0.3, S00-S37=0.7, OUT=1, S05=0.1", arch, "blocks_alpha", 0.25)
    assert w.of("D07") == 0.3 and w.of("S05") == 0.1 and w.of("S06") == 0.7 and w.of("OUT") == 1
    assert w.of("IN") == 0.25 and w.of("CLIP") == 0.25
    assert parse_block_weights("ALL=0.4, IN=0", arch, "a", 0.9).values == (0.4, 0.4, 0.0) + (0.4,) * 58
    with pytest.raises(MergeInputError, match="unknown block id 'D19'.*CLIP, T5, IN, D00-D18, S00-S37, OUT"):
        parse_block_weights("D19=0.3", arch, "blocks_alpha", 0.5)


def test_presets_exact_on_sd_resampled_elsewhere():
    grad = presets()["GRAD_V"]
    assert tuple(parse_block_weights("GRAD_V", SDXL, "a").values) == tuple(
        grad[i] for i in range(26) if i not in (10, 11, 12, 23, 24, 25))
    arch = detect(load_keyset("flux1-schnell"))
    values = preset_on_layout(grad, arch)
    assert len(values) == 61 and values[:2] == [grad[0], grad[0]]
    assert values[2] == grad[1] and values[-1] == grad[-1], "the curve's ends land on the first and last blocks"
    flat = preset_on_layout(presets()["FLAT_25"], arch)
    assert set(flat[2:]) == {0.25}


def test_text_encoder_only_sources_are_named_by_their_encoders():
    """A ComfyUI CLIP (no diffusion-model keys) of Flux.1 is not SD1 although it has CLIP-L: its T5 without
    CLIP-G names Flux.1 (CLIP and T5 slots); CLIP-G with T5 is SD3; CLIP-G alone stays SDXL."""
    forge = load_keyset("flux1-dev")
    flux_clip = [k[len("text_encoders."):] for k in forge if k.startswith("text_encoders.")]
    assert {k.split(".")[0] for k in flux_clip} == {"clip_l", "t5xxl"}
    arch = detect(flux_clip)
    assert arch.name == "flux1"
    assert arch.block_of("clip_l.transformer.text_model.final_layer_norm.weight") == "CLIP"
    assert arch.block_of("t5xxl.transformer.encoder.final_layer_norm.weight") == "T5"
    clip_l, clip_g, t5 = "clip_l.transformer.a.weight", "clip_g.transformer.a.weight", "t5xxl.transformer.a.weight"
    assert detect([clip_l, clip_g, t5]).name == "sd3"
    assert detect([clip_l, clip_g]).name == "sdxl" and detect([clip_l]).name == "sd1"
    assert detect(["qwen25_7b.transformer.model.norm.weight"]).name == "qwen_image"
    assert detect(["umt5xxl.transformer.encoder.final_layer_norm.weight"]).name == "wan"
    # the Forge checkpoint itself is still detected by its diffusion layout
    assert detect(forge).name == "flux1"
