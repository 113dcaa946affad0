from collections import Counter

import pytest
from spec_blocks import sd1_block, sdxl_block

from merge_core.architectures import SD1, SD2, SDXL, detect


def comfy_name(key: str) -> str:
    return key.replace("model.diffusion_model.", "diffusion_model.", 1)


def test_sd1_block_of_every_real_key_matches_spec(sd1_keys):
    for key in sd1_keys:
        assert SD1.block_of(key) == sd1_block(key), key
        if key.startswith("model.diffusion_model."):
            assert SD1.block_of(comfy_name(key)) == sd1_block(key), key


def test_sdxl_block_of_every_real_key_matches_spec(sdxl_keys):
    for key in sdxl_keys:
        assert SDXL.block_of(key) == sdxl_block(key), key
        if key.startswith("model.diffusion_model."):
            assert SDXL.block_of(comfy_name(key)) == sdxl_block(key), key


def test_sd1_special_rules(sd1_keys):
    assert SD1.block_of("model.diffusion_model.time_embed.0.weight") == "IN00"
    assert SD1.block_of("model.diffusion_model.input_blocks.0.0.weight") == "IN00"
    assert SD1.block_of("model.diffusion_model.out.2.weight") == "OUT11"
    assert SD1.block_of("model.diffusion_model.middle_block.2.out_layers.3.weight") == "M00"
    assert SD1.block_of("first_stage_model.decoder.conv_out.weight") == "BASE"
    assert SD1.block_of("cond_stage_model.transformer.text_model.final_layer_norm.weight") == "BASE"
    counts = Counter(SD1.block_of(k) for k in sd1_keys)
    assert set(counts) == set(SD1.blocks), "every one of the 26 blocks owns keys"


def test_sdxl_special_rules(sdxl_keys):
    assert SDXL.block_of("model.diffusion_model.label_emb.0.0.weight") == "IN00"
    assert SDXL.block_of("model.diffusion_model.out.0.bias") == "OUT08"
    assert SDXL.block_of("conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight") == "BASE"
    assert SDXL.block_of("clip_g.transformer.text_model.encoder.layers.0.mlp.fc1.weight") == "BASE"
    counts = Counter(SDXL.block_of(k) for k in sdxl_keys)
    assert set(counts) == set(SDXL.blocks)
    assert SDXL.n_blocks == 20 and SD1.n_blocks == 26


def test_detect_checkpoint_and_comfy_naming(sd1_keys, sdxl_keys):
    assert detect(sd1_keys) is SD1
    assert detect(sdxl_keys) is SDXL
    assert detect([comfy_name(k) for k in sd1_keys if k.startswith("model.diffusion_model.")]) is SD1
    assert detect([comfy_name(k) for k in sdxl_keys if k.startswith("model.diffusion_model.")]) is SDXL
    assert detect(["clip_l.transformer.text_model.final_layer_norm.weight"]) is SD1
    assert detect(["clip_l.x.weight", "clip_g.transformer.x.weight"]) is SDXL
    assert detect(["clip_h.transformer.x.weight"]) is SD2
    sd2 = [k for k in sd1_keys if not k.startswith("cond_stage_model.")] + [
        "cond_stage_model.model.transformer.resblocks.0.attn.out_proj.weight"]
    assert detect(sd2) is SD2
    assert detect(["foo.bar"]) is None


@pytest.mark.parametrize("key", ["diffusion_model.input_blocks.11.0.in_layers.0.weight",
                                 "model.diffusion_model.output_blocks.10.1.proj_in.bias"])
def test_two_digit_block_numbers(key):
    assert SD1.block_of(key) in ("IN11", "OUT10")


def test_a_declaration_is_interpreted_generically():
    from merge_core.architectures import Architecture

    toy = Architecture("toy", "Toy", ("BASE", "IN", "D00", "D01", "OUT"),
                       ((r"img_in\.", "IN"), (r"double_blocks\.(\d+)\.", "D{0:02d}"), (r"final_layer\.", "OUT")),
                       components=(("text_encoders.t5xxl.", "BASE"),))
    assert toy.block_of("diffusion_model.double_blocks.1.img_attn.qkv.weight") == "D01"
    assert toy.block_of("model.diffusion_model.img_in.weight") == "IN"
    assert toy.block_of("final_layer.linear.weight") == "BASE", "outside the diffusion model without a component"
    assert toy.block_of("diffusion_model.final_layer.linear.weight") == "OUT"
    assert toy.block_index("diffusion_model.double_blocks.0.x.weight") == 2


def test_a_declaration_naming_blocks_outside_its_list_is_refused():
    from merge_core.architectures import Architecture

    with pytest.raises(ValueError, match="MID"):
        Architecture("bad", "Bad", ("BASE", "IN"), ((r"middle\.", "MID"),))
