"""Cosmos 7B/14B, Cosmos-Predict2 2B/14B and Anima: detection (and not as any other family), the block of
every key of each full-size inventory against the independent transcription (spec_cosmos), `blocks FILE`,
kohya LoRA names, and two of these families merged together refused."""
import re

import pytest
import spec_cosmos as spec
from family_checks import (check_blocks_command, check_full_size_layout, check_module_blocks, check_not_detected_as,
                           kohya, linear_layers, merge_refused, other_keysets)
from spec_families import load_keyset

from merge_core.architectures import ARCHITECTURES, detect
from merge_core.lora.families import lora_family
from merge_core.lora.keys import lora_arch

CASES = {  # keyset: (family, label, layout)
    "cosmos1-7b": ("cosmos1", "Cosmos 7B", "BASE, IN, B00-B27, OUT"),
    "cosmos1-14b": ("cosmos1", "Cosmos 14B", "BASE, IN, B00-B35, OUT"),
    "cosmos-predict2-2b": ("cosmos_predict2", "Cosmos-Predict2 2B", "BASE, IN, B00-B27, OUT"),
    "cosmos-predict2-14b": ("cosmos_predict2", "Cosmos-Predict2 14B", "BASE, IN, B00-B35, OUT"),
    "anima": ("anima", "Anima", "BASE, AIN, A00-A05, AOUT, IN, B00-B27, OUT"),
}
OWN = {"cosmos1", "cosmos_predict2", "anima"}
OTHER_KEYSETS = other_keysets(CASES)


@pytest.mark.parametrize("name", CASES)
def test_every_key_of_the_full_size_layout(name):
    arch, keys = check_full_size_layout(name, CASES, spec.TRANSCRIPTIONS)
    family = CASES[name][0]
    for naming in ("diffusion_model.", "model.diffusion_model."):  # a ComfyUI model, a checkpoint
        prefixed = detect([naming + k for k in keys])
        assert prefixed.name == family and prefixed.blocks == arch.blocks


@pytest.mark.parametrize("name", OTHER_KEYSETS)
def test_other_families_are_not_detected_as_these(name):
    check_not_detected_as(name, OWN)


def test_anima_is_named_by_its_text_encoder_and_keeps_it_in_base():
    assert detect(["qwen3_06b.transformer.model.norm.weight"]).name == "anima"
    checkpoint = ["model.diffusion_model." + k for k in load_keyset("anima")]
    arch = detect(checkpoint + ["text_encoders.qwen3_06b.transformer.model.norm.weight"])
    assert arch.name == "anima" and arch.block_of("text_encoders.qwen3_06b.transformer.model.norm.weight") == "BASE"


def test_blocks_command_prints_each_layout(tmp_path, capsys):
    check_blocks_command(tmp_path, capsys, CASES)


@pytest.mark.parametrize("name", CASES)
def test_kohya_names_of_every_linear_layer(name):
    """Each family's kohya names are read as that family, though Wan's layout explains Predict2's as well (its
    catch-all input rule): the family whose full-size model has the modules wins; the family's own layout names
    the block."""
    family = CASES[name][0]
    rels = linear_layers(name)
    found = lora_family([kohya(rel) for rel in rels])
    assert found is not None and found.name == family
    check_module_blocks(rels, ARCHITECTURES[family].sized(load_keyset(name), bare=True), spec.TRANSCRIPTIONS[name])


def test_predict2_lora_metadata_names_its_family():
    names = [kohya(k) for k in linear_layers("cosmos-predict2-2b")]
    assert lora_arch(names).name == "cosmos_predict2"  # names alone
    assert lora_arch(names, {"ss_base_model_version": "cosmos_predict2"}).name == "cosmos_predict2"
    # an Anima LoRA of its diffusion blocks alone is a Predict2 LoRA, of the same LoRA group
    anima = [kohya(k) for k in linear_layers("anima") if k.startswith("blocks.")]
    assert lora_arch(anima).name == "cosmos_predict2"
    assert lora_arch(anima).lora_group == ARCHITECTURES["anima"].lora_group


def test_two_of_these_families_merged_together_name_both(tmp_path, capsys):
    err = merge_refused(tmp_path, capsys, "cosmos1-7b", "anima")
    assert re.search(r"Anima model but model A is Cosmos 7B", err)


def test_predict2_2b_with_14b_is_an_error_not_a_partial_merge(tmp_path, capsys):
    err = merge_refused(tmp_path, capsys, "cosmos-predict2-2b", "cosmos-predict2-14b")
    assert "B00-B35" in err and "B00-B27" in err, err
