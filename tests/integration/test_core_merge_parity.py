"""Core's per-family merge nodes and this pack's Merge Models give the same weights on the families declared
before 2026 (SD1, SDXL, SD3, Flux.1, Wan, Qwen-Image), at the same per-block ratios (core_parity.py says how);
keys no core slider reaches are listed: core gives them its first slider's ratio."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
import spec_families as spec  # noqa: E402
import tiny_families  # noqa: E402
from core_parity import UNET, compare, core_node  # noqa: E402
from spec_blocks import sd1_block, sdxl_block  # noqa: E402

from merge_suite.merge_core.architectures import detect_or_auto  # noqa: E402

# core node: (tiny model, transcription of a diffusion-relative key's block)
CASES = {
    "ModelMergeSD1": ("sd1", lambda rel: sd1_block(UNET + rel)),
    "ModelMergeSDXL": ("sdxl", lambda rel: sdxl_block(UNET + rel)),
    "ModelMergeSD3_2B": ("sd3", spec.sd3_block),
    "ModelMergeSD35_Large": ("sd3", spec.sd3_block),
    "ModelMergeFlux1": ("flux1-dev", spec.flux1_block),
    "ModelMergeWAN2_1": ("wan21", spec.wan_block),
    "ModelMergeQwenImage": ("qwen-image", spec.qwen_block),
}

# keys no slider of core's node reaches (it gives them its first slider's ratio); this pack merges them in their block
UNREACHED = {"ModelMergeSD3_2B": ("pos_embed",), "ModelMergeSD35_Large": ("pos_embed",),  # core's "pos_embed."
             "ModelMergeQwenImage": ("norm_out.linear.weight", "norm_out.linear.bias")}  # no norm_out slider (OUT)


@pytest.fixture(scope="module")
def models(tiny):
    cache = {}

    def get(family):
        if family not in cache:
            if family in ("sd1", "sdxl"):
                cache[family] = tuple(tiny("model", family, s) for s in (1, 2))
            else:
                cache[family] = tuple(tiny_families.build_model(family, s) for s in (1, 2))
        return cache[family]
    return get


@pytest.mark.parametrize("name", CASES)
def test_core_node_and_merge_models_agree_on_every_key_its_sliders_reach(name, models):
    node = core_node(name)
    if node is None:
        pytest.skip(f"this ComfyUI has no {name}")
    family, block_of = CASES[name]
    a, b = models(family)
    arch = detect_or_auto(list(a.get_key_patches(UNET)))
    found = compare(node, a, b, list(arch.blocks), block_of)
    assert found["reached"] > 0 and found["kept"] == []
    want = [UNET + k for k in UNREACHED.get(name, ())]
    assert found["unreached"] == want, f"{name}: keys no slider reaches: {found['unreached']}"
