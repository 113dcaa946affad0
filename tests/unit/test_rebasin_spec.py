"""Re-basin without ComfyUI: the permutation groups of the full-size SD1 and SDXL key inventories, the refusal
of other families, and the weight matching itself on small hand-made layers (an MLP chain whose two groups
share a weight, and attention-like blocks)."""
import gzip
import json
from pathlib import Path

import pytest
import torch

from merge_core.engine.progress import MergeCancelled
from merge_core.errors import MergeInputError
from merge_core.rebasin import PermGroup, Permutations, Window, rebasin_loaders, weight_matching
from merge_core.rebasin.api import unet_prefix, unet_shapes
from merge_core.rebasin.spec import default_heads, group_index, unet_groups

KEYSETS = Path(__file__).resolve().parents[2] / "merge_core" / "architectures" / "keysets"


def keyset(name):
    with gzip.open(KEYSETS / f"{name}.json.gz") as f:
        return {k: tuple(v[0]) for k, v in json.loads(f.read()).items()}


def never(key):
    raise AssertionError(f"{key} was read before the inputs were checked")


@pytest.mark.parametrize("family, counts", [
    ("sd1", {"mlp": 1, "resblock": 22, "attention": 32, "feed-forward": 16}),
    ("sdxl", {"mlp": 2, "resblock": 17, "attention": 140, "feed-forward": 70})])
def test_full_size_groups(family, counts):
    shapes = keyset(family)
    groups = unet_groups(unet_shapes(shapes, unet_prefix(shapes)), default_heads(family))
    assert {k: sum(g.kind == k for g in groups) for k in counts} == counts
    index = group_index(groups)
    assert all(len({g for g, _, _ in entries}) == 1 for entries in index.values()), "no weight in two groups"
    heads = {g.blocks for g in groups if g.kind == "attention"}
    assert heads == ({8} if family == "sd1" else {10, 20})  # no attention at 320 channels
    assert all(g.blocks == 32 for g in groups if g.kind == "resblock")
    ff = next(g for g in groups if g.kind == "feed-forward")
    assert [w.offset for w in ff.lanes[0] if w.key.endswith("proj.weight")] == [0, ff.width]


@pytest.mark.parametrize("a, b, name, text", [
    ("flux1-dev", "flux1-dev", "model_a", "is a Flux.1 model; re-basin is available for SD1 and SDXL U-Nets"),
    ("sd1", "sdxl", "model_b", "is an SDXL model but model A is SD1"),
    ("sd35-medium", "sd1", "model_a", "re-basin is available for SD1 and SDXL U-Nets")])
def test_other_families_are_refused_naming_the_input(a, b, name, text):
    with pytest.raises(MergeInputError) as exc:
        rebasin_loaders(keyset(a), keyset(b), never, never)
    assert exc.value.input_name == name and text in str(exc.value)


def test_sd2_layout_and_other_shapes_are_refused():
    sd1 = keyset("sd1")
    linear = {k: (v[:2] if k.endswith("proj_in.weight") else v) for k, v in sd1.items()}
    with pytest.raises(MergeInputError, match="linear transformer projections"):
        rebasin_loaders(linear, linear, never, never)
    wider = dict(sd1, **{"model.diffusion_model.input_blocks.1.0.in_layers.2.weight": (321, 320, 3, 3)})
    with pytest.raises(MergeInputError, match="input 'model_b': has input_blocks.1.0.in_layers.2.weight"):
        rebasin_loaders(sd1, wider, never, never)
    with pytest.raises(MergeInputError, match="input 'iterations'"):
        rebasin_loaders(sd1, sd1, never, never, iterations=0)


def chain(gen):
    """A 3-layer MLP: its two hidden groups share w2 (rows of one, columns of the other)."""
    return {"w1": torch.randn(12, 5, generator=gen), "b1": torch.randn(12, generator=gen),
            "w2": torch.randn(9, 12, generator=gen), "w3": torch.randn(4, 9, generator=gen)}


CHAIN = [PermGroup("h1", "mlp", 12, 1, ((Window("w1", 0), Window("b1", 0), Window("w2", 1)),)),
         PermGroup("h2", "mlp", 9, 1, ((Window("w2", 0), Window("w3", 1)),))]


def run_chain(w, x):
    return w["w3"] @ torch.relu(w["w2"] @ torch.relu(w["w1"] @ x + w["b1"][:, None]))


def test_descent_undoes_a_permutation_of_interacting_groups_and_keeps_the_function():
    a = chain(torch.Generator().manual_seed(0))
    b = {k: Permutations.random(CHAIN, 3).apply(k, v) for k, v in a.items()}
    x = torch.randn(5, 7)
    torch.testing.assert_close(run_chain(b, x), run_chain(a, x))
    seen = []
    perms, stats = weight_matching(CHAIN, a.__getitem__, b.__getitem__, iterations=10, seed=1,
                                   progress=lambda done, total: seen.append((done, total)))
    assert all(torch.equal(perms.apply(k, b[k]), a[k]) for k in a)
    assert stats.converged and stats.rounds >= 2 and seen
    assert stats.cosine(stats.after) == pytest.approx(1.0)
    _, capped = weight_matching(CHAIN, a.__getitem__, b.__getitem__, iterations=1, seed=1)
    assert capped.rounds == 1


def test_blocks_move_whole_and_lanes_reorder_inside():
    gen = torch.Generator().manual_seed(5)
    a = {"q": torch.randn(12, 6, generator=gen), "k": torch.randn(12, 6, generator=gen),
         "v": torch.randn(12, 6, generator=gen), "o": torch.randn(6, 12, generator=gen)}
    group = PermGroup("heads", "attention", 12, 3, ((Window("q", 0), Window("k", 0)), (Window("v", 0), Window("o", 1))))
    random = Permutations.random([group], 8)
    for order in random.orders[0]:
        assert all(set((order[i * 4:(i + 1) * 4] // 4).tolist()) == {int(order[i * 4]) // 4} for i in range(3))
    b = {k: random.apply(k, v) for k, v in a.items()}
    perms, _ = weight_matching([group], a.__getitem__, b.__getitem__)
    assert all(torch.equal(perms.apply(k, b[k]), a[k]) for k in a)
    with pytest.raises(MergeCancelled):
        weight_matching([group], a.__getitem__, b.__getitem__, should_stop=lambda: True)
