"""Krea 2, LongCat-Image, AuraFlow and the Flux.2 Klein variants: detection (and not as any other family),
the block of every key of each full-size inventory against the independent transcription (spec_image_models),
`blocks FILE`, kohya LoRA names, and a Klein file merged with a Flux.2 dev file refused."""
import re

import pytest
import spec_image_models as spec
import torch
from family_checks import (check_blocks_command, check_full_size_layout, check_module_blocks, check_not_detected_as,
                           kohya, linear_layers, merge_refused, other_keysets)
from spec_families import load_keyset

from merge_core.architectures import ARCHITECTURES, detect
from merge_core.lora.families import lora_family
from merge_core.lora.keys import module_block

CASES = {  # keyset: (family, label, layout)
    "krea2": ("krea2", "Krea 2", "BASE, IN, TL00-TL01, TP, TR00-TR01, B00-B27, OUT"),
    "longcat-image": ("longcat_image", "LongCat-Image", "BASE, IN, D00-D09, S00-S19, OUT"),
    "auraflow": ("auraflow", "AuraFlow", "BASE, IN, D00-D03, S00-S31, OUT"),
    "flux2-klein-4b": ("flux2", "Flux.2 Klein 4B", "BASE, IN, D00-D04, S00-S19, OUT"),
    "flux2-klein-9b": ("flux2", "Flux.2 Klein 9B", "BASE, IN, D00-D07, S00-S23, OUT"),
}
OWN = {"krea2", "longcat_image", "auraflow"}
OTHER_KEYSETS = other_keysets(CASES)


@pytest.mark.parametrize("name", CASES)
def test_every_key_of_the_full_size_layout(name):
    check_full_size_layout(name, CASES, spec.TRANSCRIPTIONS)


def test_full_sizes():
    assert len(load_keyset("krea2")) == 430
    params = sum(torch.Size(s).numel() for s in load_keyset("krea2").values())
    assert round(params / 1e9, 1) == 12.8


@pytest.mark.parametrize("name", OTHER_KEYSETS)
def test_other_families_are_not_detected_as_these(name):
    check_not_detected_as(name, OWN)


def test_longcat_under_a_hosts_parameter_names_and_the_flux_labels():
    """LongCat-Image's RMSNorm scales under either name (``.weight`` as 0.33 loads them, ``.scale`` as BFL
    names Flux's): LongCat-Image; Flux.1 files stay Flux.1 (they have vector_in), Flux.2 dev stays Flux.2 dev."""
    renamed = [k[:-len("weight")] + "scale" if k.endswith("_norm.weight") else k for k in load_keyset("longcat-image")]
    assert any(k.endswith("key_norm.scale") for k in renamed)
    assert detect(renamed).name == "longcat_image"
    assert detect(["diffusion_model." + k for k in renamed]).name == "longcat_image"
    assert detect(load_keyset("flux1-schnell")).label == "Flux.1"
    assert detect(load_keyset("flux1-dev")).name == "flux1"
    assert detect(load_keyset("flux2-dev")).label == "Flux.2 dev"
    assert detect(load_keyset("chroma")).name == "chroma"


def test_blocks_command_prints_each_layout(tmp_path, capsys):
    check_blocks_command(tmp_path, capsys, CASES)


@pytest.mark.parametrize("name", CASES)
def test_kohya_names_of_every_linear_layer(name):
    family = CASES[name][0]
    rels = linear_layers(name)
    arch = lora_family([kohya(rel) for rel in rels])
    if family == "longcat_image":  # Flux.1's LoRA names: one group, read as Flux.1's layout
        assert arch.lora_group == ARCHITECTURES["longcat_image"].lora_group == "flux1"
        arch = ARCHITECTURES["longcat_image"]
    else:
        assert arch is not None and arch.name == family
    check_module_blocks(rels, arch, spec.TRANSCRIPTIONS[name])


def test_diffusers_names():
    krea = ARCHITECTURES["krea2"]
    assert module_block("transformer.transformer_blocks.27.attn.to_q", krea) == "B27"
    assert module_block("transformer.text_fusion.refiner_blocks.1.ff.gate", krea) == "TR01"
    assert module_block("transformer.text_fusion.projector", krea) == "TP"
    assert module_block("transformer.img_in", krea) == "IN" and module_block("transformer.final_layer.linear", krea) \
        == "OUT"
    aura = ARCHITECTURES["auraflow"]
    assert module_block("transformer.joint_transformer_blocks.3.attn.to_q", aura) == "D03"
    assert module_block("transformer.single_transformer_blocks.31.ff.linear_1", aura) == "S31"
    assert module_block("transformer.context_embedder", aura) == "IN"
    assert module_block("transformer.proj_out", aura) == "OUT"


def test_klein_with_flux2_dev_is_an_error_not_a_partial_merge(tmp_path, capsys):
    err = merge_refused(tmp_path, capsys, "flux2-klein-4b", "flux2-dev")
    assert "D00-D07, S00-S47" in err and "D00-D04, S00-S19" in err, err


def test_two_of_these_families_merged_together_name_both(tmp_path, capsys):
    err = merge_refused(tmp_path, capsys, "krea2", "auraflow")
    assert re.search(r"AuraFlow model but model A is Krea 2", err)
