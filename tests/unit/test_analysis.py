"""Analysis against independent computations on random tensors with real key names."""
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from spec_blocks import sd1_block, sdxl_block

from merge_core.analysis.similarity import asimilarity, attention_sites, compare_keys, list_elements
from merge_core.architectures import SD1, SDXL
from merge_core.analysis.charts import bar_chart
from merge_core.errors import MergeInputError

REPO = Path(__file__).resolve().parents[2]


def models(keys, seed):
    gen = torch.Generator().manual_seed(seed)
    a = {k: torch.randn((4, 4) if len(s) > 1 else (4,), generator=gen) for k, s in keys.items()}
    b = {k: v + 0.5 * torch.randn(v.shape, generator=gen) for k, v in a.items()}
    return a, b


@pytest.mark.parametrize("layout", ["sd1", "sdxl"])
def test_block_values_match_independent_computation(layout, sd1_keys, sdxl_keys):
    keys = sd1_keys if layout == "sd1" else sdxl_keys
    arch, block_of = (SD1, sd1_block) if layout == "sd1" else (SDXL, sdxl_block)
    a, b = models(keys, 1)
    res = compare_keys({k: v.shape for k, v in a.items()}, {k: v.shape for k, v in b.items()}, arch,
                       lambda k: (a[k], b[k]), include=("te", "unet"))
    groups = {}
    for k in keys:
        if ("weight" not in k and "bias" not in k) or k.startswith("first_stage_model"):
            continue
        x, y = a[k].double().numpy().ravel(), b[k].double().numpy().ravel()
        groups.setdefault(block_of(k), []).append((100 * x @ y / np.linalg.norm(x) / np.linalg.norm(y),
                                                   ((y - x) ** 2).sum(), (x ** 2).sum()))
    mean, low, diff = res.block_similarity("mean"), res.block_similarity("min"), res.block_difference()
    assert set(mean) == set(groups)
    for block, vals in groups.items():
        assert mean[block] == pytest.approx(np.mean([v[0] for v in vals]), rel=1e-4)
        assert low[block] == pytest.approx(min(v[0] for v in vals), rel=1e-4)
        assert diff[block] == pytest.approx(math.sqrt(sum(v[1] for v in vals) / sum(v[2] for v in vals)), rel=1e-4)
    attn = res.block_similarity("attn2")
    key = "model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn2.to_out.0.weight"
    x, y = a[key].double().numpy().ravel(), b[key].double().numpy().ravel()
    assert attn["IN04"] == pytest.approx(100 * x @ y / np.linalg.norm(x) / np.linalg.norm(y), rel=1e-4)


def test_identical_models_are_100_percent_similar_with_zero_difference(sd1_keys):
    a, _ = models(sd1_keys, 2)
    res = compare_keys({k: v.shape for k, v in a.items()}, {k: v.shape for k, v in a.items()}, SD1,
                       lambda k: (a[k], a[k]), include=("te", "unet", "vae"))
    assert all(v == pytest.approx(100.0, abs=1e-3) for v in res.block_similarity().values())
    assert all(v == 0.0 for v in res.block_difference().values())
    assert len(res.blocks()) == 26


def test_skipped_keys_and_bad_include(sd1_keys):
    a, b = models(sd1_keys, 3)
    key = "model.diffusion_model.out.2.weight"
    b[key] = torch.zeros(2, 2)
    del b["model.diffusion_model.out.2.bias"]
    res = compare_keys({k: v.shape for k, v in a.items()}, {k: v.shape for k, v in b.items()}, SD1,
                       lambda k: (a[k], b[k]))
    assert {k for k, _ in res.skipped} == {key, "model.diffusion_model.out.2.bias"}
    with pytest.raises(MergeInputError, match="unknown part"):
        compare_keys({}, {}, SD1, None, include=("unet", "lora"))


def spec_asim(wa, wb, x):
    outs = []
    for w in (wa, wb):
        q, k, v = (x @ w[n].T for n in "qkv")
        s = np.exp(q @ k.T - (q @ k.T).max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        outs.append(s * v.sum(0))
    o1, o2 = outs
    cos = (o1 * o2).sum(1) / np.linalg.norm(o1, axis=1) / np.linalg.norm(o2, axis=1)
    return round(float(cos.mean() * 100), 3)


def test_asimilarity_matches_the_spec_on_sd1_and_sdxl_sites(sd1_keys, sdxl_keys):
    for keys in (sd1_keys, sdxl_keys):
        sites = attention_sites(keys)
        assert sites and all("attn1." in s for s in sites)
    sd1_sites = [s.split("diffusion_model.")[1].split(".1.transformer")[0] for s in attention_sites(sd1_keys)]
    assert sd1_sites[:6] == [f"input_blocks.{i}" for i in (1, 2, 4, 5, 7, 8)]
    assert "middle_block" in sd1_sites[6] and len(sd1_sites) == 16
    gen = torch.Generator().manual_seed(0)
    site = "diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1."
    w = {m: {n: torch.randn(8, 8, generator=gen) for n in "qkv"} for m in "ab"}
    rows = asimilarity([site], lambda key: (w["a"][key[-8]], w["b"][key[-8]]))
    x = torch.randn((8, 8), generator=torch.Generator().manual_seed(2244096)).double().numpy()
    want = spec_asim({n: t.double().numpy() for n, t in w["a"].items()},
                     {n: t.double().numpy() for n, t in w["b"].items()}, x)
    assert rows[0][1] == pytest.approx(want, abs=2e-3)
    with pytest.raises(MergeInputError, match="square"):
        asimilarity([site], lambda key: (torch.zeros(3, 4), torch.zeros(3, 4)))


def test_chart_is_a_valid_image_with_one_bar_per_block():
    labels = list(SD1.blocks)
    img = bar_chart(labels, [float(i) for i in range(26)], "similarity")
    assert img.size == (1024, 512) and img.mode == "RGB"
    pixels = np.asarray(img).astype(int)
    row = pixels[40 + 402 - 2]  # just above the zero line: every bar of height > 0 crosses it
    colored = (row.max(1) - row.min(1)) > 60  # bars are saturated; text, grid and background are grey
    starts = np.flatnonzero(np.diff(colored.astype(int)) == 1)
    assert len(starts) == 25  # one run per bar; the first bar has value 0


def test_elements_listing(sdxl_keys):
    rows = list_elements(sdxl_keys, {}, SDXL, "IN04 OUT08", "attn2.to_k")
    assert rows and all(r[0] in ("IN04", "OUT08") and "attn2.to_k" in r[2] for r in rows)
    assert rows[0][1].startswith("1.transformer_blocks.")
    with pytest.raises(MergeInputError, match="IN11"):
        list_elements(sdxl_keys, {}, SDXL, "IN11")


def test_cli_analyze_and_elements(tmp_path, sd1_keys):
    a, b = models({k: s for k, s in sd1_keys.items() if k.startswith("model.")}, 4)
    save_file(a, tmp_path / "a.safetensors")
    save_file(b, tmp_path / "b.safetensors")
    res = subprocess.run([sys.executable, "-m", "merge_core", "analyze", str(tmp_path / "a.safetensors"),
                          str(tmp_path / "b.safetensors"), "--csv", str(tmp_path / "s.csv"), "--png",
                          str(tmp_path / "s.png"), "--diff-png", str(tmp_path / "d.png")],
                         cwd=REPO, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "M00" in res.stdout and (tmp_path / "s.csv").read_text().startswith("block,key,similarity %")
    assert Image.open(tmp_path / "s.png").size == (1024, 512) and Image.open(tmp_path / "d.png").size == (1024, 512)
    res = subprocess.run([sys.executable, "-m", "merge_core", "analyze", str(tmp_path / "a.safetensors"),
                          str(tmp_path / "b.safetensors"), "--method", "asim"], cwd=REPO, capture_output=True,
                         text=True)
    assert res.returncode == 0 and "input_blocks.1.1" in res.stdout
    res = subprocess.run([sys.executable, "-m", "merge_core", "elements", str(tmp_path / "a.safetensors"),
                          "--block", "IN99"], cwd=REPO, capture_output=True, text=True)
    assert res.returncode == 2 and "--block" in res.stderr and "IN99" in res.stderr
    lora = {"lora_unet_input_blocks_4_1_proj_in.lora_down.weight": torch.zeros(4, 8),
            "lora_unet_input_blocks_4_1_proj_in.lora_up.weight": torch.zeros(8, 4),
            "lora_unet_input_blocks_4_1_proj_in.alpha": torch.tensor(4.0)}
    save_file(lora, tmp_path / "l.safetensors")
    res = subprocess.run([sys.executable, "-m", "merge_core", "elements", str(tmp_path / "l.safetensors"),
                          "--match", "lora_up"], cwd=REPO, capture_output=True, text=True)
    assert res.returncode == 0 and "LoRA" in res.stdout and "lora_up" in res.stdout and "lora_down" not in res.stdout


def test_asimilarity_sites_of_the_transformer_families():
    """Square attentions of the full-size inventories: fused qkv (Flux, SD3, Z-Image), to_q/k/v (Qwen-Image),
    self_attn.q/k/v (Wan); Lumina 2 (8 key/value heads for 24) has none and says so."""
    from spec_families import load_keyset

    from merge_core.architectures import detect
    from merge_core.analysis.similarity import asimilarity_sites
    expected = {"flux1-dev": (19 * 2, "model.diffusion_model.double_blocks.0.img_attn"),
                "sd3-medium": (24 * 2, "joint_blocks.0.context_block.attn"),
                "z-image": (30 + 2 + 2, "noise_refiner.0.attention"),
                "qwen-image": (60, "transformer_blocks.0.attn"), "wan21-1.3b": (30, "blocks.0.self_attn")}
    for name, (count, first) in expected.items():
        keys = load_keyset(name)
        sites = asimilarity_sites(keys, keys, detect(keys))
        assert len(sites) == count and first in [s.label for s in sites], (name, len(sites), sites[0].label)
    keys = load_keyset("lumina2")
    with pytest.raises(MergeInputError, match="ASimilarity is not available for Z-Image/Lumina 2"):
        asimilarity_sites(keys, keys, detect(keys))
    # a fused qkv gives what the three separate weights give
    gen = torch.Generator().manual_seed(1)
    w = {m: {n: torch.randn(8, 8, generator=gen) for n in "qkv"} for m in "ab"}
    separate = asimilarity(["s."], lambda key: (w["a"][key[-8]], w["b"][key[-8]]))[0][1]
    fused = {m: torch.cat([w[m][n] for n in "qkv"]) for m in "ab"}
    from merge_core.analysis.similarity import AttentionSite
    assert asimilarity([AttentionSite("s", ("s.qkv.weight",))], lambda key: (fused["a"], fused["b"]))[0][1] == separate
