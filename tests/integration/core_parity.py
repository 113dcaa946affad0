"""ComfyUI's own per-family merge nodes (ModelMergeSD1, ModelMergeFlux1, ...) against this pack's Merge Models.

Core's node has one slider per module prefix and gives a key the ratio of the longest slider its name starts
with (the first slider's when none does); its ratio is model 1's weight. This pack names blocks and alpha is B's
weight. Given the pack's per-block alphas and an independent transcription of the family's blocks, each core
slider is set to 1 - alpha of the block its keys belong to, and both merges of the same two models must give the
same weight on every key a slider reaches. A key no slider reaches (SD3's bare ``pos_embed`` parameter: core's
slider is ``pos_embed.``) gets the first slider's ratio from core and its own block's here; a key no block of
this pack names keeps A here (and is reported by the merge).
"""
from __future__ import annotations

import comfy_extras.nodes_model_merging_model_specific as core_nodes
import torch
from effective_weights import effective

from merge_suite.nodes.merge import ModelMerge

UNET = "diffusion_model."


def core_node(name: str):
    """Core's node class, or None where this ComfyUI has no such node."""
    return getattr(core_nodes, name, None)


def sliders(node) -> list[str]:
    """The node's slider names (module prefixes), in its own order."""
    return [n for n in node.INPUT_TYPES()["required"] if n not in ("model1", "model2")]


def slider_of(rel: str, names: list[str]):
    """The slider core applies to a diffusion-relative key: the longest prefix; None when none matches."""
    best = None
    for name in names:
        if rel.startswith(name) and (best is None or len(name) > len(best)):
            best = name
    return best


def compare(node, a, b, blocks: list[str], block_of, keep: str = "keep A") -> dict:
    """Merge A and B with core's node and with Merge Models at distinct per-block alphas; check every key.

    block_of: the independent transcription (diffusion-relative key -> block id, or ``keep``: kept from A).
    Returns {"reached": n, "unreached": [keys no slider reaches], "kept": [keys kept from A here]}."""
    alphas = {blk: round(0.05 + 0.9 * i / max(len(blocks) - 1, 1), 4) for i, blk in enumerate(blocks)}
    names = sliders(node)
    keys = [k[len(UNET):] for k in a.get_key_patches(UNET)]
    ratios: dict[str, float] = {}
    for rel in keys:
        name = slider_of(rel, names)
        if name is None or block_of(rel) == keep:
            continue
        ratio = 1.0 - alphas[block_of(rel)]
        assert ratios.setdefault(name, ratio) == ratio, f"slider {name} spans several blocks ({rel})"
    settings = {n: ratios.get(n, 1.0) for n in names}
    core = effective(node().merge(model1=a, model2=b, **settings)[0], UNET)
    pack = effective(ModelMerge.execute(model_a=a, model_b=b, mode="Weight sum", alpha=0.5, beta=0.0,
                                        blocks_alpha=",".join(str(alphas[blk]) for blk in blocks)).result[0], UNET)
    wa, wb = (effective(m, UNET) for m in (a, b))
    unreached, kept = [], []
    for key, got in pack.items():
        rel = key[len(UNET):]
        name, block = slider_of(rel, names), block_of(rel)
        if block == keep:
            kept.append(key)
            torch.testing.assert_close(got, wa[key], rtol=0, atol=0, msg=f"{key}: kept from A here")
        else:
            alpha = alphas[block]
            torch.testing.assert_close(got, wa[key] * (1 - alpha) + wb[key] * alpha, rtol=1e-6, atol=1e-7, msg=key)
        if name is None:
            unreached.append(key)
            first = settings[names[0]]
            torch.testing.assert_close(core[key], wa[key] * first + wb[key] * (1 - first), msg=key)
        elif block != keep:
            torch.testing.assert_close(core[key], got, rtol=1e-6, atol=1e-7, msg=f"{key}: core's node and this pack")
    return {"reached": len(pack) - len(unreached), "unreached": unreached, "kept": kept}
