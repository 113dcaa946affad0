"""A family is one declaration: every table keyed by family (detection order, text-encoder order, LoRA
order, key inventories, the editor's families) is derived from the declarations, so a family declared
without one of its facts fails here instead of being silently detected as automatic blocks, its LoRAs
read as another family's, or its elements browser answering "unknown layout"."""
import pytest
from spec_families import load_keyset

from merge_core.architectures import ARCHITECTURES, FAMILIES, TRANSFORMERS, detect
from merge_core.architectures.declaration import has_prefixed_keys
from merge_core.architectures.registry import KEYSETS
from merge_core.architectures.registry import DETECTION_ORDER, TEXT_ENCODER_ORDER
from merge_core.lora.families import LORA_FAMILIES, LORA_ORDER, family_module, lora_family

NAMES = sorted(ARCHITECTURES)


def test_every_family_is_in_the_derived_tables():
    assert set(DETECTION_ORDER) == set(FAMILIES) and len(DETECTION_ORDER) == len(FAMILIES)
    assert [a.detect_rank for a in DETECTION_ORDER] == sorted(a.detect_rank for a in FAMILIES)
    assert {a.name for a in TEXT_ENCODER_ORDER} == {a.name for a in FAMILIES if a.text_encoder_rank is not None}
    assert set(LORA_ORDER) == {a.name for a in TRANSFORMERS}  # every transformer family has LoRA names
    assert len({a.lora.rank for a in LORA_FAMILIES}) == len(LORA_FAMILIES)  # ties need a rank to break them
    assert len(set(NAMES)) == len(FAMILIES)


@pytest.mark.parametrize("name", NAMES)
def test_every_family_has_a_key_inventory(name):
    arch = ARCHITECTURES[name]
    assert arch.keyset, f"{name} declares no keyset"
    assert (KEYSETS / f"{arch.keyset}.json.gz").is_file()


@pytest.mark.parametrize("name", NAMES)
def test_every_family_is_detected_from_its_own_keys(name):
    arch = ARCHITECTURES[name]
    keys = list(load_keyset(arch.keyset))
    if arch.signature.needs_text_encoder:  # its layout is another family's: its text encoder names it
        keys = [k for k in keys if k.startswith(("model.diffusion_model.", "diffusion_model."))]
        keys.append(arch.signature.text_encoder_markers[0] + "encoder.layers.0.weight")
    found = detect(keys)
    assert found is not None and found.name == name
    sized = arch.sized(keys, not has_prefixed_keys(keys))
    assert found.blocks == sized.blocks


@pytest.mark.parametrize("name", [a.name for a in TRANSFORMERS])
def test_every_transformer_family_recognises_its_own_lora_names(name):
    """kohya names of every linear layer of the full-size model (as extraction writes them) are read as
    this family, or one whose LoRA names it cannot be told from (its LoRA group)."""
    arch = ARCHITECTURES[name]
    inventory = load_keyset(arch.keyset)
    sized = arch.sized(inventory, not has_prefixed_keys(inventory))
    names = [m for k, shape in inventory.items() if (m := family_module(k, sized, tuple(shape), conv=False))]
    assert names, f"{name}: no LoRA-able layer"
    found = lora_family(names)
    assert found is not None, f"{name}: its own LoRA names are not recognised"
    assert found.lora_group == arch.lora_group
