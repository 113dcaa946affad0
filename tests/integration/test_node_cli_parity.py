"""The nodes and the CLI give the same checkpoint, key for key, for SD1, SD2 (v-prediction, OpenCLIP-H) and SDXL.

Tiny checkpoints (every parameter random, so that no key merges to the same value by
chance) are merged by the CLI (`python -m merge_core merge`, run in-process through its
main()) and by Merge Checkpoints -> Save Checkpoint (fp32), then both files are compared
at every key: the same key set, the same decision (both keep A, or neither does) and
values equal within float32 rounding.

The nodes have no VAE input (they merge MODEL and CLIP), while the CLI merges the VAE with
the BASE ratio as SuperMerger does: A, B and C share one VAE here, so its keys still
compare (within rounding) but the VAE decision is not tested.
"""
import pytest
import torch

import folder_paths
from safetensors.torch import save_file
import nodes as comfy_nodes

from merge_suite.merge_core import cli
from merge_suite.merge_core.io.safetensors_file import SafetensorsReader
from merge_suite.nodes.merge import CheckpointMerge
from merge_suite.nodes.save import SaveCheckpoint

VAE_PREFIX = "first_stage_model."
CASES = {  # node settings; the CLI options are derived from them
    "blocks+elemental": dict(mode="Weight sum", alpha=0.3, blocks_alpha="GRAD_V",
                             elemental="IN01-OUT05:attn:0.2,BASE::0.8"),
    "add difference": dict(mode="Add difference", alpha=0.7),
    "cosineA": dict(mode="Weight sum", alpha=0.2, calcmode="cosineA"),
}
CLI_MODES = {"Weight sum": "weight_sum", "Add difference": "add_difference"}
CLI_OPTIONS = {"alpha": "--alpha", "blocks_alpha": "--blocks", "elemental": "--elemental", "calcmode": "--calc"}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    import tiny_models
    tiny_models.register()
    root = tmp_path_factory.mktemp("checkpoints")
    saved = folder_paths.folder_names_and_paths["checkpoints"]
    folder_paths.folder_names_and_paths["checkpoints"] = ([str(root)], folder_paths.supported_pt_extensions)
    for layout in ("sd1", "sd2", "sdxl"):
        a = tiny_models.save_checkpoint(root / f"{layout}_a.safetensors", layout, 1, all_random=True)
        for seed, name in ((2, "b"), (3, "c")):  # A's layout, every float tensor moved (VAE aside)
            gen = torch.Generator().manual_seed(seed)
            save_file({k: t + 0.05 * torch.randn(t.shape, generator=gen, dtype=t.dtype)
                       if t.is_floating_point() and not k.startswith(VAE_PREFIX) else t
                       for k, t in read(a).items()}, str(root / f"{layout}_{name}.safetensors"))
    yield root
    folder_paths.folder_names_and_paths["checkpoints"] = saved


def read(path):
    with SafetensorsReader(path) as r:
        return {k: r.get(k).clone() for k in r.keys()}


def cli_merge(folder, layout, case, out):
    files = [str(folder / f"{layout}_{n}.safetensors") for n in ("abc" if case["mode"] == "Add difference" else "ab")]
    argv = ["merge", *files, "--mode", CLI_MODES[case["mode"]], "--dtype", "fp32", "-o", str(out), "-q"]
    for name, option in CLI_OPTIONS.items():
        if name in case:
            argv += [option, str(case[name])]
    assert cli.main(argv) == 0


LOADED = {}


def node_merge(layout, case, prefix):
    if layout not in LOADED:  # loaded once per layout: merges never modify their inputs
        load = comfy_nodes.CheckpointLoaderSimple().load_checkpoint
        LOADED[layout] = [load(f"{layout}_{n}.safetensors")[:3] for n in "abc"]
    (ma, ca, vae), (mb, cb, _), (mc, cc, _) = LOADED[layout]
    third = case["mode"] == "Add difference"
    model, clip, _report, _recipe = CheckpointMerge.execute(
        model_a=ma, clip_a=ca, model_b=mb, clip_b=cb, model_c=mc if third else None, clip_c=cc if third else None,
        beta=0.0, **case).result
    return SaveCheckpoint.execute(model, clip, vae, filename_prefix=prefix, precision="fp32",
                                  hash_inputs=False).result[0]


# whole-tensor calc modes: on SD1 only, since ComfyUI splits the OpenCLIP in_proj of SD2/SDXL into q/k/v
# (docs/cli.md#combine-n-model-methods: the nodes then see three tensors where the CLI sees one)
WHOLE_TENSOR_CASES = {"slerp": dict(mode="Weight sum", alpha=0.4, calcmode="slerp"),
                      "add perpendicular": dict(mode="Add difference", alpha=0.8, calcmode="add_perpendicular")}
CASES.update(WHOLE_TENSOR_CASES)
RUNS = [(layout, case) for layout in ("sd1", "sd2", "sdxl") for case in CASES
        if layout == "sd1" or case not in WHOLE_TENSOR_CASES]


@pytest.mark.parametrize("layout,case", RUNS)
def test_node_and_cli_agree_on_every_key(layout, case, folder):
    settings = CASES[case]
    out = folder / f"cli_{layout}_{case.replace(' ', '_').replace('+', '_')}.safetensors"
    cli_merge(folder, layout, settings, out)
    by_cli = read(out)
    by_node = read(node_merge(layout, settings, f"node_{layout}_{out.stem}"))
    a = read(folder / f"{layout}_a.safetensors")
    assert set(by_node) == set(by_cli)
    problems = []
    for key, x in by_cli.items():
        y = by_node[key]
        if x.shape != y.shape or x.dtype != y.dtype:
            problems.append(f"{key}: {x.dtype}{list(x.shape)} vs {y.dtype}{list(y.shape)}")
            continue
        if not key.startswith(VAE_PREFIX) and key in a:
            kept_cli, kept_node = torch.equal(x, a[key].to(x.dtype)), torch.equal(y, a[key].to(y.dtype))
            if kept_cli != kept_node:
                problems.append(f"{key}: kept from A by the {'CLI' if kept_cli else 'node'} only")
                continue
        if not torch.allclose(x.double(), y.double(), rtol=1e-5, atol=1e-6):
            problems.append(f"{key}: max difference {(x.double() - y.double()).abs().max().item():.3g}")
    assert not problems, f"{len(problems)} keys differ, e.g.\n" + "\n".join(problems[:12])



@pytest.mark.parametrize("method", ["dare_ties", "della"])
def test_combine_node_and_cli_agree_on_the_unet(method, folder):
    """Seeded methods: the node's draws (ComfyUI key names) equal the CLI's (checkpoint names)."""
    from merge_suite.nodes.combine import CombineModels
    out = folder / f"cli_combine_{method}.safetensors"
    files = [str(folder / f"sd1_{n}.safetensors") for n in "abc"]
    assert cli.main(["combine", "--base", files[0], *files[1:], "--method", method, "--drop-rate", "0.5",
                     "--seed", "11", "--blocks", "GRAD_V", "--dtype", "fp32", "-q", "-o", str(out)]) == 0
    node_merge("sd1", CASES["add difference"], "warm")  # loads the three checkpoints into LOADED
    (ma, ca, vae), (mb, _, _), (mc, _, _) = LOADED["sd1"]
    model = CombineModels.execute(base=ma, model_1=mb, model_2=mc, method=method, alpha=1.0, weights="",
                                  density=0.2, drop_rate=0.5, epsilon=0.1, top=0.01, bottom=0.1, iterations=100,
                                  seed=11, blocks_alpha_preset="GRAD_V", blocks_alpha="").result[0]
    by_node = read(SaveCheckpoint.execute(model, ca, vae, filename_prefix=f"node_combine_{method}", precision="fp32",
                                          hash_inputs=False).result[0])
    by_cli = read(out)
    unet = [k for k in by_cli if k.startswith("model.diffusion_model.")]
    assert len(unet) > 100
    differ = [k for k in unet if not torch.allclose(by_cli[k], by_node[k], rtol=1e-5, atol=1e-6)]
    assert not differ, differ[:5]


def test_load_recipe_replays_a_cli_combine(folder):
    """The CLI's recipe tree names the base and the models; Load Recipe combines them again, U-Net and CLIP."""
    from merge_suite.nodes.recipe import LoadRecipe
    files = [str(folder / f"sd1_{n}.safetensors") for n in "abc"]
    out = folder / "cli_combine_ties_for_recipe.safetensors"
    assert cli.main(["combine", "--base", files[0], *files[1:], "--method", "ties", "--density", "0.4",
                     "--weights", "1,0.7", "--blocks", "GRAD_A", "--dtype", "fp32", "-q", "-o", str(out)]) == 0
    model, clip, vae, text = LoadRecipe.execute(ckpt_name=out.name).result
    assert text.startswith("ties(sd1_a, sd1_b, sd1_c)") and "density=0.4" in text, text
    again = read(SaveCheckpoint.execute(model, clip, vae, filename_prefix="replayed_combine", precision="fp32",
                                        hash_inputs=False).result[0])
    by_cli = read(out)
    keys = [k for k in by_cli if k.startswith(("model.diffusion_model.", "cond_stage_model."))]
    differ = [k for k in keys if k in again and not torch.allclose(by_cli[k], again[k], rtol=1e-5, atol=1e-6)]
    assert len(keys) > 100 and not differ, differ[:5]


def test_node_and_load_recipe_apply_the_clis_geometric_median_epsilon(folder):
    """The CLI's --epsilon (here the geometric median's smallest distance, not DELLA's) is the node's
    median_epsilon, and Load Recipe replays it from the CLI's file."""
    from merge_suite.nodes.combine import CombineModels
    from merge_suite.nodes.recipe import LoadRecipe
    files = [str(folder / f"sd1_{n}.safetensors") for n in "abca"]  # three points: the epsilon matters
    outs = {eps: folder / f"cli_median_eps_{eps}.safetensors" for eps in ("0.9", "1e-6")}
    for eps, out in outs.items():
        assert cli.main(["combine", "--base", files[0], *files[1:], "--method", "geometric_median", "--epsilon",
                         eps, "--iterations", "30", "--dtype", "fp32", "-q", "-o", str(out)]) == 0
    by_cli, by_default = read(outs["0.9"]), read(outs["1e-6"])
    unet = [k for k in by_cli if k.startswith("model.diffusion_model.")]
    assert any(not torch.allclose(by_cli[k], by_default[k], rtol=1e-5, atol=1e-6) for k in unet)  # not vacuous
    node_merge("sd1", CASES["add difference"], "warm")  # loads the three checkpoints into LOADED
    (ma, ca, vae), (mb, _, _), (mc, _, _) = LOADED["sd1"]
    model = CombineModels.execute(base=ma, model_1=mb, model_2=mc, model_3=ma, method="geometric_median",
                                  alpha=1.0, weights="", density=0.2, drop_rate=0.9, epsilon=0.1, top=0.01,
                                  bottom=0.1, iterations=30, seed=0, blocks_alpha_preset="custom", blocks_alpha="",
                                  median_epsilon=0.9).result[0]
    by_node = read(SaveCheckpoint.execute(model, ca, vae, filename_prefix="node_median_eps", precision="fp32",
                                          hash_inputs=False).result[0])
    model, clip, vae, text = LoadRecipe.execute(ckpt_name=outs["0.9"].name).result
    assert "median_epsilon=0.9" in text, text
    replayed = read(SaveCheckpoint.execute(model, clip, vae, filename_prefix="replayed_median_eps", precision="fp32",
                                           hash_inputs=False).result[0])
    for name, got in (("node", by_node), ("Load Recipe", replayed)):
        differ = [k for k in unet if not torch.allclose(by_cli[k], got[k], rtol=1e-5, atol=1e-6)]
        assert not differ, f"{name}: {differ[:5]}"
