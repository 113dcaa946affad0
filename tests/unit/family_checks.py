"""The checks each family group's unit tests (test_families_cosmos, _image_models, _video_models) run over its
own table of cases: every key of a full-size inventory against the group's independent transcription, other
families not read as these, `blocks FILE`, kohya LoRA names, and two files the CLI refuses to merge.

A table of cases is {keyset: (family, label, layout)}; a transcription maps a keyset name to key -> block."""
import torch
from safetensors.torch import save_file
from spec_families import KEEP, KEYSETS, load_keyset

from merge_core import cli
from merge_core.architectures import KEPT, NO_BLOCK, detect
from merge_core.lora.keys import module_block


def expected(block):
    return KEEP if block in (KEPT, NO_BLOCK) else block


def other_keysets(cases) -> list[str]:
    """Every stored key inventory that is not one of these cases."""
    names = (p.name[:-len(".json.gz")] for p in KEYSETS.glob("*.json.gz"))
    return sorted(name for name in names if name not in cases)


def check_full_size_layout(name, cases, transcriptions):
    """Detection, label and layout of the keyset; each key's block as the transcription has it. Returns the
    architecture and the keys for a group's own further checks."""
    family, label, layout = cases[name]
    keys = load_keyset(name)
    arch = detect(keys)
    assert arch is not None and arch.name == family and arch.label == label
    assert arch.layout_text() == layout
    transcription = transcriptions[name]
    for key in keys:
        assert expected(arch.block_of(key)) == transcription(key), key
    assert all(arch.block_of(k) != NO_BLOCK for k in keys), "every real key has a block"
    assert set(arch.blocks[arch.base_blocks:]) <= {arch.block_of(k) for k in keys}, "every non-base block owns keys"
    return arch, keys


def check_not_detected_as(name, own):
    found = detect(load_keyset(name))
    assert found is None or found.name not in own, f"{name} read as {found.name}"


def check_blocks_command(tmp_path, capsys, cases):
    """`blocks FILE` names each case's label, family and layout."""
    for name, (family, label, layout) in cases.items():
        path = tmp_path / f"{name}.safetensors"
        save_file({k: torch.zeros(2) for k in load_keyset(name)}, str(path))
        assert cli.main(["blocks", str(path)]) == 0
        out = capsys.readouterr().out
        assert f"{label} ({family})" in out and layout in out, out


def kohya(rel):
    return "lora_unet_" + rel[:-len(".weight")].replace(".", "_")


def linear_layers(name) -> list[str]:
    """The keyset's linear-layer weights (two-dimensional ``.weight``): what a LoRA targets."""
    return [k for k, s in load_keyset(name).items() if k.endswith(".weight") and len(s) == 2]


def check_module_blocks(rels, arch, transcription):
    """Each linear layer's kohya name and ComfyUI module name are in the transcription's block."""
    for rel in rels:
        want = transcription(rel)
        assert module_block(kohya(rel), arch) == want, kohya(rel)
        assert module_block("diffusion_model." + rel[:-len(".weight")], arch) == want


def tiny(keys, seed):
    """Small random tensors under the keyset's names (two-dimensional where the real one is)."""
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn((2, 3) if len(s) > 1 else (3,), generator=gen) for k, s in keys.items()}


def merge_refused(tmp_path, capsys, first, second) -> str:
    """The CLI's merge of tiny files of two keysets fails without writing; returns its error output."""
    paths = []
    for seed, name in enumerate((first, second), start=1):
        paths.append(str(tmp_path / f"{name}.safetensors"))
        save_file(tiny(load_keyset(name), seed), paths[-1])
    out = tmp_path / "x.safetensors"
    assert cli.main(["merge", *paths, "-o", str(out)]) != 0
    assert not out.exists()
    return capsys.readouterr().err
