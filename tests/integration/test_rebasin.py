"""Re-basin on tiny SD1 and SDXL U-Nets built from ComfyUI's classes: the permutations keep the function, the
matching undoes a random permutation exactly, and the node's lazy result equals the library's."""
import copy
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
import nodes as comfy_nodes  # noqa: E402
import tiny_models  # noqa: E402
from effective_weights import effective  # noqa: E402

from merge_suite.merge_core.api import merge_state_dicts  # noqa: E402
from merge_suite.merge_core.rebasin import Permutations, rebased_state_dict, rebasin, unet_groups  # noqa: E402
from merge_suite.merge_core.rebasin.spec import heads_from  # noqa: E402
from merge_suite.nodes.errors import MergeNodeError  # noqa: E402
from merge_suite.nodes.rebasin import RebasinModel, attention_heads  # noqa: E402

LAYOUTS = ["sd1", "sdxl"]


@pytest.fixture(scope="module")
def built():
    """(patcher, bare U-Net state dict, heads) per layout, every parameter random (norms and biases too)."""
    out = {}
    for layout in LAYOUTS:
        patcher = tiny_models.build_model(layout, 7, all_random=True)
        sd = {k: v.detach().clone() for k, v in patcher.model.diffusion_model.state_dict().items()}
        out[layout] = (patcher, sd, attention_heads(patcher))
    return out


def randomly_permuted(sd, heads, seed):
    groups = unet_groups({k: tuple(v.shape) for k, v in sd.items()}, heads_from(heads))
    perms = Permutations.random(groups, seed)
    return {k: perms.apply(k, v) for k, v in sd.items()}, groups


def forward(unet, layout):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 16, 16, generator=gen)
    t = torch.tensor([10.0, 500.0])
    context = torch.randn(2, 5, 64 if layout == "sdxl" else 32, generator=gen)
    y = torch.randn(2, unet.label_emb[0][0].in_features, generator=gen) if layout == "sdxl" else None
    with torch.no_grad():
        return unet(x, t, context=context, y=y)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_permuted_unet_computes_the_same(layout, built):
    patcher, sd, heads = built[layout]
    permuted, groups = randomly_permuted(sd, heads, 3)
    kinds = {g.kind for g in groups}
    assert {"resblock", "attention", "feed-forward", "mlp"} <= kinds
    assert sum(not torch.equal(permuted[k], sd[k]) for k in sd) > 0.5 * len({w.key for g in groups for w in
                                                                           g.lanes[0]})
    unet = patcher.model.diffusion_model
    other = copy.deepcopy(unet)
    other.load_state_dict(permuted)
    want, got = forward(unet, layout), forward(other, layout)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_rebasin_undoes_a_random_permutation_exactly(layout, built):
    _, sd, heads = built[layout]
    permuted, groups = randomly_permuted(sd, heads, 11)
    a = {"model.diffusion_model." + k: v for k, v in sd.items()}  # checkpoint naming against bare keys
    result = rebasin(a, permuted, heads=heads, seed=4)
    rebased = rebased_state_dict(permuted, result)
    assert all(torch.equal(rebased[k], sd[k]) for k in sd)
    assert result.stats.converged and result.stats.rounds == 1
    assert result.summary()["cosine_after"] == pytest.approx(1.0) and result.summary()["cosine_before"] < 0.5
    half = merge_state_dicts(sd, rebased, alpha=0.5)
    assert all(torch.equal(half[k], sd[k]) for k in sd)
    assert all(torch.equal(v, permuted[k]) for k, v in randomly_permuted(sd, heads, 11)[0].items()), "B unchanged"


@pytest.mark.parametrize("layout", LAYOUTS)
def test_node_output_is_the_library_result_and_samples(layout, built, tiny):
    _, _, heads = built[layout]
    a, b = tiny("model", layout, 21), tiny("model", layout, 22)
    before = effective(b, "diffusion_model.")
    out, report = RebasinModel.execute(model_a=a, model_b=b, iterations=10, seed=0).result
    assert "permutation groups" in report and "after" in report
    wa = {k[len("diffusion_model."):]: v for k, v in effective(a, "diffusion_model.").items()}
    wb = {k[len("diffusion_model."):]: v for k, v in before.items()}
    want = rebased_state_dict(wb, rebasin(wa, wb, heads=heads, seed=0))
    got = effective(out, "diffusion_model.")
    assert sum(not torch.equal(got["diffusion_model." + k], wb[k]) for k in wb) > 10
    assert all(torch.equal(got["diffusion_model." + k], want[k]) for k in want)
    assert all(torch.equal(v, before[k]) for k, v in effective(b, "diffusion_model.").items()), "B unchanged"
    if layout == "sd1":
        return  # sampling (ComfyUI's model load) is the slow part: one family shows it
    clip = tiny("clip", layout, 21)
    pos = comfy_nodes.CLIPTextEncode().encode(clip, "a cat")[0]
    latent = comfy_nodes.EmptyLatentImage().generate(32, 32, 1)[0]
    samples = comfy_nodes.KSampler().sample(out, 1, 1, 1.0, "euler", "simple", pos, pos, latent)[0]["samples"]
    reference = comfy_nodes.KSampler().sample(b, 1, 1, 1.0, "euler", "simple", pos, pos, latent)[0]["samples"]
    torch.testing.assert_close(samples, reference, atol=1e-4, rtol=1e-4)


def test_node_refuses_other_families_and_a_mix_naming_the_input_and_leaves_a_match_alone(tiny):
    sd1, sdxl, sd2 = tiny("model", "sd1", 1), tiny("model", "sdxl", 1), tiny("model", "sd2", 1)
    same, report = RebasinModel.execute(model_a=sd1, model_b=sd1).result
    assert not same.patches and "0 groups permuted" in report and "1.000000 before" in report
    with pytest.raises(MergeNodeError, match=r"Re-basin Model: input 'model_b': is an SDXL model but model A is SD1"):
        RebasinModel.execute(model_a=sd1, model_b=sdxl)
    with pytest.raises(MergeNodeError, match=r"input 'model_a': .*re-basin is available for SD1 and SDXL U-Nets"):
        RebasinModel.execute(model_a=sd2, model_b=sd2)


def test_cli_writes_the_library_result_and_never_an_input(built, tmp_path, capsys):
    from safetensors.torch import load_file, safe_open, save_file

    from merge_suite.merge_core.cli.app import main
    _, sd, heads = built["sd1"]
    extra = {"cond_stage_model.transformer.text_model.final_layer_norm.weight": torch.ones(4)}
    a_path, b_path, out = tmp_path / "a.safetensors", tmp_path / "b.safetensors", tmp_path / "out.safetensors"
    save_file({"model.diffusion_model." + k: v for k, v in sd.items()} | extra, a_path)
    b = {k: v.half() for k, v in randomly_permuted(sd, heads, 5)[0].items()}  # bare U-Net keys, fp16
    save_file(b, b_path, metadata={"modelspec.title": "B"})
    assert main(["rebasin", str(a_path), str(b_path), "-o", str(out), "-q"]) == 0
    written = load_file(out)
    want = rebased_state_dict(b, rebasin(str(a_path), str(b_path)))
    assert written.keys() == want.keys() and all(torch.equal(written[k], want[k]) for k in want)
    assert sum(not torch.equal(written[k], b[k]) for k in b) > 10
    with safe_open(out, "pt") as f:
        meta = f.metadata()
    assert meta["modelspec.title"] == "B" and '"rounds": 1' in meta["merge_suite_rebasin"]
    before = b_path.read_bytes()
    assert main(["rebasin", str(a_path), str(b_path), "-o", str(b_path), "--overwrite", "-q"]) == 2
    assert "is the input file" in capsys.readouterr().err and b_path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.safetensors", "b.safetensors", "out.safetensors"]
