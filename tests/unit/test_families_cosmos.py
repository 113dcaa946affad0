"""Cosmos 7B/14B, Cosmos-Predict2 2B/14B and Anima: detection (and not as any other family), the block of
every key of each full-size inventory against the independent transcription (spec_cosmos), `blocks FILE`,
kohya LoRA names, and two of these families merged together refused."""
import re

import pytest
import spec_cosmos as spec
import torch
from safetensors.torch import save_file
from spec_families import KEEP, KEYSETS, load_keyset

from merge_core import cli
from merge_core.architectures import ARCHITECTURES, KEPT, NO_BLOCK, detect
from merge_core.lora.families import lora_family
from merge_core.lora.keys import lora_arch, module_block

CASES = {  # keyset: (family, label, layout)
    "cosmos1-7b": ("cosmos1", "Cosmos 7B", "BASE, IN, B00-B27, OUT"),
    "cosmos1-14b": ("cosmos1", "Cosmos 14B", "BASE, IN, B00-B35, OUT"),
    "cosmos-predict2-2b": ("cosmos_predict2", "Cosmos-Predict2 2B", "BASE, IN, B00-B27, OUT"),
    "cosmos-predict2-14b": ("cosmos_predict2", "Cosmos-Predict2 14B", "BASE, IN, B00-B35, OUT"),
    "anima": ("anima", "Anima", "BASE, AIN, A00-A05, AOUT, IN, B00-B27, OUT"),
}
OWN = {"cosmos1", "cosmos_predict2", "anima"}
OTHER_KEYSETS = sorted(p.name[:-len(".json.gz")] for p in KEYSETS.glob("*.json.gz")
                       if p.name[:-len(".json.gz")] not in CASES)


def expected(block):
    return KEEP if block in (KEPT, NO_BLOCK) else block


@pytest.mark.parametrize("name", CASES)
def test_every_key_of_the_full_size_layout(name):
    family, label, layout = CASES[name]
    keys = load_keyset(name)
    arch = detect(keys)
    assert arch is not None and arch.name == family and arch.label == label
    assert arch.layout_text() == layout
    transcription = spec.TRANSCRIPTIONS[name]
    for key in keys:
        assert expected(arch.block_of(key)) == transcription(key), key
    assert all(arch.block_of(k) != NO_BLOCK for k in keys), "every real key has a block"
    assert set(arch.blocks[arch.base_blocks:]) <= {arch.block_of(k) for k in keys}, "every non-base block owns keys"
    for naming in ("diffusion_model.", "model.diffusion_model."):  # a ComfyUI model, a checkpoint
        prefixed = detect([naming + k for k in keys])
        assert prefixed.name == family and prefixed.blocks == arch.blocks


@pytest.mark.parametrize("name", OTHER_KEYSETS)
def test_other_families_are_not_detected_as_these(name):
    found = detect(load_keyset(name))
    assert found is None or found.name not in OWN, f"{name} read as {found.name}"


def test_anima_is_named_by_its_text_encoder_and_keeps_it_in_base():
    assert detect(["qwen3_06b.transformer.model.norm.weight"]).name == "anima"
    checkpoint = ["model.diffusion_model." + k for k in load_keyset("anima")]
    arch = detect(checkpoint + ["text_encoders.qwen3_06b.transformer.model.norm.weight"])
    assert arch.name == "anima" and arch.block_of("text_encoders.qwen3_06b.transformer.model.norm.weight") == "BASE"


def test_blocks_command_prints_each_layout(tmp_path, capsys):
    for name, (family, label, layout) in CASES.items():
        path = tmp_path / f"{name}.safetensors"
        save_file({k: torch.zeros(2) for k in load_keyset(name)}, str(path))
        assert cli.main(["blocks", str(path)]) == 0
        out = capsys.readouterr().out
        assert f"{label} ({family})" in out and layout in out, out


def _kohya(rel):
    return "lora_unet_" + rel[:-len(".weight")].replace(".", "_")


@pytest.mark.parametrize("name", CASES)
def test_kohya_names_of_every_linear_layer(name):
    """Each family's kohya names are read as that family, though Wan's layout explains Predict2's as well (its
    catch-all input rule): the family whose full-size model has the modules wins; the family's own layout names
    the block."""
    family = CASES[name][0]
    rels = [k for k, s in load_keyset(name).items() if k.endswith(".weight") and len(s) == 2]
    names = [_kohya(rel) for rel in rels]
    found = lora_family(names)
    assert found is not None and found.name == family
    arch = ARCHITECTURES[family].sized(load_keyset(name), bare=True)
    for rel, lora_name in zip(rels, names):
        want = spec.TRANSCRIPTIONS[name](rel)
        assert module_block(lora_name, arch) == want, lora_name
        assert module_block("diffusion_model." + rel[:-len(".weight")], arch) == want


def test_predict2_lora_metadata_names_its_family():
    names = [_kohya(k) for k, s in load_keyset("cosmos-predict2-2b").items() if k.endswith(".weight") and len(s) == 2]
    assert lora_arch(names).name == "cosmos_predict2"  # names alone
    assert lora_arch(names, {"ss_base_model_version": "cosmos_predict2"}).name == "cosmos_predict2"
    # an Anima LoRA of its diffusion blocks alone is a Predict2 LoRA, of the same LoRA group
    anima = [_kohya(k) for k, s in load_keyset("anima").items()
             if k.startswith("blocks.") and k.endswith(".weight") and len(s) == 2]
    assert lora_arch(anima).name == "cosmos_predict2"
    assert lora_arch(anima).lora_group == ARCHITECTURES["anima"].lora_group


def _tiny(keys, seed):
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn((2, 3) if len(s) > 1 else (3,), generator=gen) for k, s in keys.items()}


def test_two_of_these_families_merged_together_name_both(tmp_path, capsys):
    save_file(_tiny(load_keyset("cosmos1-7b"), 1), str(tmp_path / "cosmos1.safetensors"))
    save_file(_tiny(load_keyset("anima"), 2), str(tmp_path / "anima.safetensors"))
    out = tmp_path / "x.safetensors"
    assert cli.main(["merge", str(tmp_path / "cosmos1.safetensors"), str(tmp_path / "anima.safetensors"),
                     "-o", str(out)]) != 0
    assert re.search(r"Anima model but model A is Cosmos 7B", capsys.readouterr().err)
    assert not out.exists()


def test_predict2_2b_with_14b_is_an_error_not_a_partial_merge(tmp_path, capsys):
    save_file(_tiny(load_keyset("cosmos-predict2-2b"), 1), str(tmp_path / "small.safetensors"))
    save_file(_tiny(load_keyset("cosmos-predict2-14b"), 2), str(tmp_path / "large.safetensors"))
    out = tmp_path / "x.safetensors"
    assert cli.main(["merge", str(tmp_path / "small.safetensors"), str(tmp_path / "large.safetensors"),
                     "-o", str(out)]) != 0
    err = capsys.readouterr().err
    assert "B00-B35" in err and "B00-B27" in err, err
    assert not out.exists()
