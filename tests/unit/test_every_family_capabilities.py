"""Every capability of the command line and the editor's data on each family declared for 2026 (Krea 2,
LongCat-Image, AuraFlow, Flux.2 Klein, Cosmos, Cosmos-Predict2, Anima, LTXV, LTX-2, Mochi, HunyuanVideo,
HunyuanImage 2.1, Kandinsky 5), on files with the full-size key names in tiny shapes: a calc mode with
include and a report, elemental rules, an n-model method, LoRA extraction and a LoRA merge with block
weights, a merge replayed from its history entry, and similarity per block (the editor's layouts:
test_family_editor_routes.py).
Expected values come from the formulas; blocks from the family's own layout (the per-family unit tests
check that layout against an independent transcription)."""
import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from spec_families import load_keyset

from merge_core import cli
from merge_core.architectures import detect
from merge_core.lora.families import lora_family, module_block

KEYSETS = ("krea2", "longcat-image", "auraflow", "flux2-klein-4b", "cosmos1-7b", "cosmos-predict2-2b", "anima",
           "ltxv-2b", "ltx2-19b", "mochi-preview", "hunyuan-video", "hunyuan-image-21", "kandinsky5-lite")


def tiny_files(tmp_path, name):
    """Files A, B, C with the inventory's keys, every dimension cut to at most 4."""
    keys = load_keyset(name)
    paths = []
    for seed in (1, 2, 3):
        gen = torch.Generator().manual_seed(seed)
        sd = {k: torch.randn([min(d, 4) for d in s] or [], generator=gen) for k, s in keys.items()}
        paths.append(tmp_path / f"{name}_{seed}.safetensors")
        save_file(sd, str(paths[-1]))
    return [str(p) for p in paths]


@pytest.fixture(scope="module", params=KEYSETS)
def family(request, tmp_path_factory):
    name = request.param
    root = tmp_path_factory.mktemp(name)
    paths = tiny_files(root, name)
    arch = detect(list(load_keyset(name)))
    assert arch is not None, name
    return name, arch, paths, root


def test_calc_mode_include_elemental_and_report(family, capsys):
    name, arch, (a, b, _), root = family
    numbered = arch.numbered[0]
    first = numbered.ids(1)[0]
    out = root / "calc.safetensors"
    argv = ["merge", a, b, "--alpha", "0.3", "--calc", "cosineA", "--include", f"{first} OUT",
            "--elemental", "OUT::0.9", "--report", "keys", "--dtype", "fp32", "-o", str(out)]
    assert cli.main(argv) == 0
    report = capsys.readouterr().out
    wa, wb, got = load_file(a), load_file(b), load_file(str(out))
    assert set(got) == set(wa)
    merged = [k for k in got if arch.block_of(k) in (first, "OUT") and got[k].is_floating_point()]
    assert merged and all(torch.equal(got[k], wa[k]) for k in got if k not in merged)  # include: the rest is A
    assert any(not torch.equal(got[k], wa[k]) for k in merged) and first in report
    plain = root / "plain.safetensors"
    assert cli.main(["merge", a, b, "--blocks", f"{first}=0.25, OUT=0.75", "--alpha", "0",
                     "--elemental", f"{first}::0.5", "--dtype", "fp32", "-o", str(plain), "-q"]) == 0
    got = load_file(str(plain))
    for key, value in got.items():
        r = {first: 0.5, "OUT": 0.75}.get(arch.block_of(key), 0.0)
        torch.testing.assert_close(value, wa[key] * (1 - r) + wb[key] * r, msg=key)


def test_ties_combine_runs_on_every_key(family):
    name, arch, (a, b, c), root = family
    out = root / "ties.safetensors"
    assert cli.main(["combine", "--base", a, b, c, "--method", "ties", "--density", "0.5", "--dtype", "fp32",
                     "-o", str(out), "-q"]) == 0
    got, wa = load_file(str(out)), load_file(a)
    assert set(got) == set(wa) and any(not torch.equal(got[k], wa[k]) for k in got)


def test_lora_extract_then_merge_with_block_weights(family):
    name, arch, (a, b, _), root = family
    lora = root / "lora.safetensors"
    assert cli.main(["lora-extract", b, a, "-o", str(lora), "--rank", "2", "--dtype", "fp32"]) == 0
    with safe_open(str(lora), "pt") as f:
        modules = {k.split(".lora_")[0] for k in f.keys() if ".lora_" in k}
        meta = f.metadata()
    assert modules and meta["ss_base_model_version"] in (arch.name, arch.lora.base_model_version)
    found = lora_family(modules)
    assert found is not None and found.lora_group == arch.lora_group  # names alone: this family's group
    first = arch.numbered[0].ids(1)[0]
    half = root / "half.safetensors"
    assert cli.main(["lora-merge", f"{lora}:1:{first}=0.5", "-o", str(half), "--dtype", "fp32"]) == 0
    full_sd, half_sd = load_file(str(lora)), load_file(str(half))
    assert any(module_block(m, found) == first for m in modules)
    for module in modules:
        up, down = (f"{module}.lora_up.weight", f"{module}.lora_down.weight")
        if up not in half_sd:
            continue
        delta_full = full_sd[up] @ full_sd[down]
        delta_half = half_sd[up] @ half_sd[down]
        ratio = 0.5 if module_block(module, found) == first else 1.0
        torch.testing.assert_close(delta_half, delta_full * ratio, rtol=1e-4, atol=1e-5, msg=module)


def test_a_merge_replays_from_its_history_entry_bit_identically(family):
    name, arch, (a, b, _), root = family
    out, again, log = root / "r1.safetensors", root / "r2.safetensors", root / "history.jsonl"
    assert cli.main(["merge", a, b, "--blocks", "OUT=0.8", "--alpha", "0.2", "--dtype", "fp32", "-o", str(out),
                     "--history", str(log), "-q"]) == 0
    entry = json.loads(log.read_text().splitlines()[-1])
    assert entry["models"][0]["path"] == a
    assert cli.main(["merge", "--from-history", "-1", "--history", str(log), "-o", str(again), "-q"]) == 0
    first, second = load_file(str(out)), load_file(str(again))
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def test_similarity_per_block(family):
    """Analysis: a model against itself is 100 % similar in every block, against another less, per the
    family's own blocks."""
    from merge_core import analyze_files
    name, arch, (a, b, _), _ = family
    found, same = analyze_files(a, a)
    assert found.name == arch.name
    blocks = same.block_similarity("mean")
    assert set(blocks) <= set(found.blocks) and arch.numbered[0].ids(1)[0] in blocks
    assert all(abs(v - 100.0) < 1e-3 for v in blocks.values())
    _, other = analyze_files(a, b)
    assert all(v < 100.0 for v in other.block_similarity("mean").values())
