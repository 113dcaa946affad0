"""Calc modes through the merge node on real ModelPatchers equal merge_core's file/dict path."""
import pytest
import torch
from test_merge_nodes import base_weights, effective, sample

from merge_suite.merge_core.api import merge_state_dicts
from merge_suite.nodes.errors import MergeNodeError
from merge_suite.nodes.merge import CheckpointMerge, ModelMerge

CASES = [  # calcmode, mode, alpha, beta, blocks_alpha
    ("cosineA", "Weight sum", 0.1, 0.0, ""),
    ("cosineB", "Weight sum", 0.2, 0.0, "GRAD_V"),
    ("trainDifference", "Add difference", 0.6, 0.0, ""),
    ("smoothAdd", "Add difference", 0.5, 0.0, "FLAT_75"),
    ("extract", "Add difference", 0.3, 0.4, ""),
    ("tensor", "Weight sum", 0.4, 0.3, "ALL_B"),
    ("tensor2", "Weight sum", 0.6, 0.6, ""),
    ("self", "Weight sum", 0.9, 0.0, ",".join(["0"] * 14 + ["0.5"] * 12)),  # 26 values, converted for SDXL
    ("plus random", "Weight sum", 0.01, 0.0, ""),
]


def node_merge(a, b, c, calcmode, mode, alpha, beta, blocks, **extra):
    return ModelMerge.execute(model_a=a, model_b=b, model_c=c, mode=mode, alpha=alpha, beta=beta,
                              blocks_alpha_preset="custom", blocks_alpha=blocks, blocks_beta_preset="custom",
                              blocks_beta="", calcmode=calcmode, gamma=1.5, seed=7, **extra).result[0]


@pytest.mark.parametrize("layout", ["sd1", "sdxl"])
@pytest.mark.parametrize("calcmode,mode,alpha,beta,blocks", CASES, ids=[c[0] for c in CASES])
def test_node_equals_library(layout, calcmode, mode, alpha, beta, blocks, tiny):
    a, b, c = (tiny("model", layout, s) for s in (1, 2, 3))
    wa, wb, wc = (base_weights(m, "diffusion_model.") for m in (a, b, c))
    merged = node_merge(a, b, c, calcmode, mode, alpha, beta, blocks)
    got = effective(merged, "diffusion_model.")
    want = merge_state_dicts(wa, wb, wc, mode=mode, alpha=alpha, beta=beta, blocks_alpha=blocks,
                             calcmode=calcmode, gamma=1.5, seed=7)
    changed = 0
    for key, w in got.items():
        torch.testing.assert_close(w, want[key].float(), rtol=1e-5, atol=1e-6, msg=key)
        changed += not torch.equal(w, wa[key])
    assert changed > 0
    after = base_weights(a, "diffusion_model.")
    assert all(torch.equal(after[k], wa[k]) for k in wa) and not a.patches, "model A untouched"


def test_lazy_calc_merge_samples(tiny):
    import tiny_models
    ma, mb = tiny("model", "sd1", 21), tiny("model", "sd1", 22)
    ca, cb = tiny("clip", "sd1", 21), tiny("clip", "sd1", 22)
    model, clip, _report, _recipe = CheckpointMerge.execute(model_a=ma, clip_a=ca, model_b=mb, clip_b=cb,
                                                            mode="Weight sum", alpha=0.3, beta=0.0,
                                                            calcmode="cosineA").result
    latent, image = sample(model, clip, tiny_models.build_vae(0))
    assert torch.isfinite(latent).all() and torch.isfinite(image).all()


def test_calc_mode_errors_name_the_node(tiny):
    a, b = tiny("model", "sd1", 1), tiny("model", "sd1", 2)
    with pytest.raises(MergeNodeError, match=r"Merge Models: input 'calcmode': 'smoothAdd' "
                                             r"does not work with 'Weight sum'"):
        node_merge(a, b, None, "smoothAdd", "Weight sum", 0.5, 0.0, "")
    with pytest.raises(MergeNodeError, match=r"input 'model_c': is required by 'trainDifference'"):
        node_merge(a, b, None, "trainDifference", "Weight sum", 0.5, 0.0, "")
    with pytest.raises(MergeNodeError, match=r"input 'alpha': is 1.5, but extract needs"):
        node_merge(a, b, tiny("model", "sd1", 3), "extract", "Add difference", 1.5, 0.0, "")
    assert not a.patches


def test_similarity_uses_effective_weights(tiny):
    from merge_suite.nodes.analysis import ElementsBrowser, ModelSimilarity
    a, b = tiny("model", "sd1", 1), tiny("model", "sd1", 2)
    same = ModelSimilarity.execute(model_a=a, model_b=a).result[0]
    assert "100.0000" in same and "0.0000" in same
    in_from_b = ",".join(["0"] + ["1"] * 12 + ["0"] * 13)  # IN blocks from B, the rest A
    merged = ModelMerge.execute(model_a=a, model_b=b, mode="Weight sum", alpha=0.5, beta=0.0,
                                blocks_alpha=in_from_b).result[0]
    report, chart, diff, csv = ModelSimilarity.execute(model_a=a, model_b=merged).result
    rows = {line.split()[0]: float(line.split()[1]) for line in report.splitlines()[2:] if line.strip()}
    assert all(rows[f"OUT{i:02d}"] == pytest.approx(100.0, abs=1e-3) for i in range(12))
    assert all(rows[f"IN{i:02d}"] < 99.0 for i in (1, 2, 4))
    assert chart.shape == (1, 512, 1024, 3) and diff.shape == chart.shape and csv.startswith("block,")
    asim = ModelSimilarity.execute(model_a=a, model_b=merged, method="asimilarity").result[0]
    assert "output_blocks.3.1" in asim
    xl = ModelSimilarity.execute(model_a=tiny("model", "sdxl", 1), model_b=tiny("model", "sdxl", 2),
                                 method="asimilarity").result[0]  # SuperMerger's fails on SDXL (quirk 28)
    assert "input_blocks.4.1" in xl and "middle_block.1" in xl
    with pytest.raises(MergeNodeError, match=r"Model Similarity per Block: input 'model_b': is an SDXL model"):
        ModelSimilarity.execute(model_a=a, model_b=tiny("model", "sdxl", 1))
    common = ModelSimilarity.execute(model_a=a, model_b=tiny("model", "sdxl", 1),
                                     architecture_mismatch="compare common keys").result[0]
    assert "keys skipped" in common
    listing = ElementsBrowser.execute(block="M00", match="attn1.to_q", model=a).result[0]
    assert "middle_block.1.transformer_blocks.0.attn1.to_q.weight" in listing


@pytest.mark.parametrize("layout", ["sd1", "sdxl"])
def test_text_encoder_token_norms(layout, tiny):
    from merge_suite.nodes.analysis import TextEncoderTokens, clip_l_token_norms
    from merge_suite.nodes.merge import CLIPMerge
    clip = tiny("clip", layout, 31).clone()
    norms, vocab = clip_l_token_norms(clip)
    assert norms.shape == (49408,) and len(vocab) == 49408
    encoder = clip.cond_stage_model.clip_l
    for tid in (320, 1929, 49000):  # the two-token shortcut equals the padded 77-token forward
        full = torch.tensor([[encoder.special_tokens["start"], tid] + [encoder.special_tokens["end"]] * 75])
        want = encoder.transformer(input_tokens=full, dtype=torch.float32)[0][0, 1].norm()
        assert float(norms[tid]) == pytest.approx(float(want), rel=1e-5)
    top = TextEncoderTokens.execute(clip=clip, top_k=3).result[0].splitlines()
    assert top[0].split() == ["rank", "word", "token", "id", "norm"] and len(top) == 5
    assert int(top[2].split()[2]) == int(torch.argmax(norms))
    words = TextEncoderTokens.execute(clip=clip, words="cat").result[0]
    assert "cat</w>" in words and "2368" in words
    merged = CLIPMerge.execute(clip_a=clip, clip_b=tiny("clip", layout, 32), mode="Weight sum", alpha=1.0,
                               beta=0.0).result[0]
    assert not torch.allclose(clip_l_token_norms(merged)[0], norms), "a merged CLIP is analysed as merged"


@pytest.mark.parametrize("layout", ["sd1", "sdxl"])
def test_elemental_rules_in_the_node(layout, tiny):
    a, b = tiny("model", layout, 1), tiny("model", layout, 2)
    wa, wb = base_weights(a, "diffusion_model."), base_weights(b, "diffusion_model.")
    text = "IN04-IN05 M00:attn2 proj_in:0.9\nNOT M00:norm:0"
    merged = node_merge(a, b, None, "normal", "Weight sum", 0.3, 0.0, "", elemental=text)
    want = merge_state_dicts(wa, wb, alpha=0.3, elemental=text)
    got = effective(merged, "diffusion_model.")
    for key in got:
        torch.testing.assert_close(got[key], want[key].float(), rtol=1e-5, atol=1e-6, msg=key)
    assert any(torch.equal(got[k], wa[k]) for k in got if "norm" in k)  # norm outside M00: ratio 0, A kept
    with pytest.raises(MergeNodeError, match=r"input 'elemental': entry #2 'IN04:attn' has 1 ':'"):
        node_merge(a, b, None, "normal", "Weight sum", 0.3, 0.0, "", elemental="OUT03::1\nIN04:attn")


@pytest.mark.parametrize("layout", ["sd1", "sdxl"])
def test_adjust_node_and_merge_input(layout, tiny):
    from merge_suite.nodes.adjust import AdjustModel
    a, b = tiny("model", layout, 1), tiny("model", layout, 2)
    wa, wb = base_weights(a, "diffusion_model."), base_weights(b, "diffusion_model.")
    v = [2.0, -1.0, 0.5, 1.0, 3.0, -2.0, 1.0, 0.5]
    text = ",".join(map(str, v))
    names = ["IN", "OUT", "OUT2", "CONT", "BRI", "COL1", "COL2", "COL3"]
    adjusted = AdjustModel.execute(a, **dict(zip(names, v))).result[0]
    got = effective(adjusted, "diffusion_model.")
    want = merge_state_dicts(wa, wb, alpha=0.0, adjust=text)
    for key in got:
        torch.testing.assert_close(got[key], want[key].float(), rtol=1e-6, atol=1e-6, msg=key)
    assert not torch.equal(got["diffusion_model.out.2.bias"], wa["diffusion_model.out.2.bias"])
    merged = node_merge(a, b, None, "normal", "Weight sum", 0.4, 0.0, "", adjust=text)
    got = effective(merged, "diffusion_model.")
    want = merge_state_dicts(wa, wb, alpha=0.4, adjust=text)
    for key in got:
        torch.testing.assert_close(got[key], want[key].float(), rtol=1e-5, atol=1e-6, msg=key)
    assert not a.patches
    with pytest.raises(MergeNodeError, match=r"input 'adjust': has 3 values"):
        node_merge(a, b, None, "normal", "Weight sum", 0.4, 0.0, "", adjust="1,2,3")


def test_include_exclude_in_the_node(tiny):
    a, b = tiny("model", "sdxl", 1), tiny("model", "sdxl", 2)
    wa, wb = base_weights(a, "diffusion_model."), base_weights(b, "diffusion_model.")
    text = "exclude: IN04-IN05 attn2 Adjust"
    merged = node_merge(a, b, None, "normal", "Weight sum", 0.5, 0.0, "", include_exclude=text,
                        adjust="2,2,2,0,0,0,0,0")
    got = effective(merged, "diffusion_model.")
    want = merge_state_dicts(wa, wb, alpha=0.5, include_exclude=text, adjust="2,2,2,0,0,0,0,0")
    for key in got:
        torch.testing.assert_close(got[key], want[key].float(), rtol=1e-5, atol=1e-6, msg=key)
    assert torch.equal(got["diffusion_model.out.2.bias"], wa["diffusion_model.out.2.bias"])
    with pytest.raises(MergeNodeError, match=r"input 'include_exclude': 'IN04' does not start with"):
        node_merge(a, b, None, "normal", "Weight sum", 0.5, 0.0, "", include_exclude="IN04")
