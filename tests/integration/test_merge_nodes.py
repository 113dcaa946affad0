"""Merge nodes on real ComfyUI ModelPatchers built from ComfyUI's own classes.

Expected weights are computed from the spec's formulas on the base tensors of A,
B and C, with block ratios from an independent transcription of the block rules.
"""
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
import nodes as comfy_nodes  # noqa: E402
from effective_weights import effective  # noqa: E402
from spec_blocks import sd1_block, sdxl_block  # noqa: E402
from test_methods import FORMULAS  # noqa: E402

from merge_suite.merge_core.plan import is_mergeable_name  # noqa: E402
from merge_suite.nodes.errors import MergeNodeError  # noqa: E402
from merge_suite.nodes.merge import CheckpointMerge, CLIPMerge, ModelMerge  # noqa: E402

SD1_NAMES = ["BASE"] + [f"IN{i:02d}" for i in range(12)] + ["M00"] + [f"OUT{i:02d}" for i in range(12)]
SDXL_NAMES = ["BASE"] + [f"IN{i:02d}" for i in range(9)] + ["M00"] + [f"OUT{i:02d}" for i in range(9)]
LABELS = {"weight_sum": "Weight sum", "add_difference": "Add difference",
          "triple_sum": "Triple sum", "sum_twice": "sum Twice"}


def key_patches(obj, prefix=None):
    return obj.get_key_patches(prefix) if prefix else obj.get_key_patches()


def base_weights(patcher, prefix=None):
    return {k: v[0][0].detach().clone() for k, v in key_patches(patcher, prefix).items()}


def merge(mode, a, b, c=None, **kw):
    params = dict(mode=LABELS[mode], alpha=kw.pop("alpha", 0.5), beta=kw.pop("beta", 0.25), **kw)
    return ModelMerge.execute(model_a=a, model_b=b, model_c=c, **params).result[0]


@pytest.mark.parametrize("mode", list(FORMULAS))
@pytest.mark.parametrize("layout", ["sd1", "sdxl"])
def test_merge_node_equals_formula_per_key(mode, layout, tiny):
    a, b, c = (tiny("model", layout, s) for s in (1, 2, 3))
    names, block_of = (SD1_NAMES, sd1_block) if layout == "sd1" else (SDXL_NAMES, sdxl_block)
    wa, wb, wc = (base_weights(m, "diffusion_model.") for m in (a, b, c))
    alphas = [round(0.05 + 0.9 * i / len(names), 3) for i in range(len(names))]
    betas = [round(0.3 - 0.25 * i / len(names), 3) for i in range(len(names))]
    merged = merge(mode, a, b, c, blocks_alpha=",".join(map(str, alphas)), blocks_beta=",".join(map(str, betas)))
    got = effective(merged, "diffusion_model.")
    uses_beta = mode in ("triple_sum", "sum_twice")
    for key, w in got.items():
        i = names.index(block_of(key))
        want = FORMULAS[mode](wa[key].double(), wb[key].double(), wc[key].double(), alphas[i],
                              betas[i] if uses_beta else 0.25)
        torch.testing.assert_close(w.double(), want, rtol=1e-5, atol=1e-6, msg=key)
    after = base_weights(a, "diffusion_model.")
    assert all(torch.equal(after[k], wa[k]) for k in wa), "model A's weights unchanged"
    assert not a.patches, "model A gained no patches"


def test_patches_are_lazy_references_and_grouped(tiny):
    from merge_suite.nodes.nonfinite_watch import OBSERVER_NAME
    a, b = tiny("model", "sd1", 1), tiny("model", "sd1", 2)
    merged = merge("weight_sum", a, b, blocks_alpha="GRAD_V")
    key = "diffusion_model.input_blocks.4.1.proj_in.weight"
    # one merge patch per key (A's NaN/inf observer aside, nodes/nonfinite_watch.py: it only looks)
    (strength, value, keep, offset, fn), = [p for p in merged.patches[key]
                                            if getattr(p[1], "name", "") != OBSERVER_NAME]
    b_param = b.get_key_patches(key)[key][0][0]
    assert isinstance(value, list) and value[0][0].data_ptr() == b_param.data_ptr(), "B referenced, not copied"
    assert strength == pytest.approx(0.6666666667) and keep == pytest.approx(1 - 0.6666666667)  # IN04 of GRAD_V
    # GRAD_V's IN00 and M00 values are 1 and 0: M00 keys are not patched at all
    assert "diffusion_model.middle_block.1.proj_in.weight" not in merged.patches


def test_merge_of_merged_and_lora_style_patched_models(tiny):
    a, b, c = (tiny("model", "sd1", s) for s in (1, 2, 3))
    inner = merge("weight_sum", b, c, alpha=0.3)
    patched_b = b.clone()
    key = "diffusion_model.out.2.weight"
    delta = torch.full_like(b.get_key_patches(key)[key][0][0], 0.01)
    patched_b.add_patches({key: (delta,)}, 1.0)
    for other in (inner, patched_b):
        merged = merge("weight_sum", a, other, alpha=0.6)
        got, want_b, wa = effective(merged, "diffusion_model."), effective(other, "diffusion_model."), \
            base_weights(a, "diffusion_model.")
        for k in (key, "diffusion_model.input_blocks.1.1.proj_in.weight"):
            torch.testing.assert_close(got[k], 0.4 * wa[k] + 0.6 * want_b[k], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("layout", ["sd1", "sdxl"])
def test_clip_merge_uses_base_ratio(layout, tiny):
    a, b, c = (tiny("clip", layout, s) for s in (1, 2, 3))
    wa, wb, wc = (base_weights(x) for x in (a, b, c))
    merged = CLIPMerge.execute(clip_a=a, clip_b=b, clip_c=c, mode="Add difference", alpha=0.9, beta=0.0,
                               blocks_alpha_preset="custom", blocks_alpha="0.4" + ",1" * 25,
                               blocks_beta_preset="custom", blocks_beta="").result[0]
    got = effective(merged)
    merged_keys = 0
    for key, w in got.items():
        if not is_mergeable_name(key):  # position ids, logit scale, projections, OpenCLIP's positional embedding
            torch.testing.assert_close(w, wa[key].float())
            continue
        want = wa[key].float() + 0.4 * (wb[key].float() - wc[key].float())
        torch.testing.assert_close(w, want, rtol=1e-3, atol=1e-3, msg=key)
        merged_keys += 1
    assert merged_keys > 40


def sample(model, clip, vae, seed=3):
    pos = comfy_nodes.CLIPTextEncode().encode(clip, "a photo of a cat")[0]
    neg = comfy_nodes.CLIPTextEncode().encode(clip, "")[0]
    latent = comfy_nodes.EmptyLatentImage().generate(64, 64, 1)[0]
    out = comfy_nodes.KSampler().sample(model, seed, 3, 5.0, "euler", "normal", pos, neg, latent)[0]
    return out["samples"], comfy_nodes.VAEDecode().decode(vae, out)[0]


@pytest.mark.parametrize("layout", ["sd1", "sdxl"])
def test_checkpoint_merge_samples_and_leaves_a_intact(layout, tiny):
    import tiny_models
    ma, mb = tiny("model", layout, 11), tiny("model", layout, 12)
    ca, cb = tiny("clip", layout, 11), tiny("clip", layout, 12)
    vae = tiny_models.build_vae(0)
    before = base_weights(ma, "diffusion_model.")
    lat_a, _ = sample(ma, ca, vae)
    model, clip, _report, _recipe = CheckpointMerge.execute(model_a=ma, clip_a=ca, model_b=mb, clip_b=cb,
                                                            mode="Weight sum", alpha=0.5, beta=0.0,
                                                            blocks_alpha_preset="GRAD_A").result
    lat_m, image = sample(model, clip, vae)
    assert torch.isfinite(lat_m).all() and torch.isfinite(image).all() and image.shape == (1, 64, 64, 3)
    assert not torch.allclose(lat_m, lat_a), "the merge changed the sample"
    lat_a2, _ = sample(ma, ca, vae)  # A sampled again after the merged clone was loaded
    torch.testing.assert_close(lat_a2, lat_a)
    after = base_weights(ma, "diffusion_model.")
    assert all(torch.equal(after[k], before[k]) for k in before)


@pytest.mark.parametrize("case,match", [
    ("arch", r"Merge Models: input 'model_b': is an SDXL model but model A is SD1"),
    ("missing_c", r"input 'model_c': is required by 'Add difference'"),
    ("count", r"input 'blocks_alpha': has 3 values"),
    ("preset_and_text", r"input 'blocks_alpha': has text"),
    ("unknown_preset", r"input 'blocks_beta': 'WHAT' is neither"),
])
def test_bad_input_names_node_input_and_fix(case, match, tiny):
    a, b = tiny("model", "sd1", 1), tiny("model", "sd1", 2)
    kw = dict(model_a=a, model_b=b, model_c=None, mode="Weight sum", alpha=0.5, beta=0.2,
              blocks_alpha_preset="custom", blocks_alpha="", blocks_beta_preset="custom", blocks_beta="")
    if case == "arch":
        kw["model_b"] = tiny("model", "sdxl", 2)
    elif case == "missing_c":
        kw["mode"] = "Add difference"
    elif case == "count":
        kw["blocks_alpha"] = "1,0,1"
    elif case == "preset_and_text":
        kw["blocks_alpha_preset"], kw["blocks_alpha"] = "GRAD_V", "0.5"
    elif case == "unknown_preset":
        kw["mode"], kw["model_c"], kw["blocks_beta"] = "Triple sum", tiny("model", "sd1", 3), "WHAT"
    with pytest.raises(MergeNodeError, match=match) as info:
        ModelMerge.execute(**kw)
    assert "Fix:" in str(info.value)
    assert not a.patches


def test_shape_mismatch_is_refused(tiny):
    a, b = tiny("model", "sd1", 1), tiny("model", "sd1", 2).clone()
    key = "diffusion_model.out.2.bias"
    b.get_key_patches(key)  # sanity: key exists
    bad = b.clone()
    bad.get_key_patches = lambda prefix=None, _orig=b.get_key_patches: {
        k: ([(torch.zeros(7), v[0][1])] + v[1:] if k == key else v) for k, v in _orig(prefix).items()}
    with pytest.raises(MergeNodeError, match=r"input 'model_b': tensor 'diffusion_model.out.2.bias' has shape \[7\]"):
        merge("weight_sum", a, bad)
