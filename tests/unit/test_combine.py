"""n-model merges end to end: combine_state_dicts / the `combine` CLI on full SD1/SDXL key sets: every merged key
is base + alpha * the method's delta with its block / elemental alpha, everything else is the base's, the base and
models are unchanged, errors name the input."""
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from spec_blocks import sd1_block, sdxl_block
from test_cli import run_cli
from test_merge_api import SD1_NAMES, SDXL_NAMES, small_model

from merge_core.combine.api import combine_state_dicts
from merge_core.combine.deltas import combine_key
from merge_core.errors import MergeInputError
from merge_core.combine.methods import CLASSIC as CLASSIC_METHODS, METHODS, MethodParams

UNET_KEY = "model.diffusion_model.input_blocks.1.1.proj_in.weight"


def models_for(keys, n, dtype=torch.float32):
    base = small_model(keys, 100, dtype)
    return base, [small_model(keys, 101 + i, dtype) for i in range(n)]


CLASSIC = [m.name for m in CLASSIC_METHODS]


def configurations():
    """Every classic method on SD1 with 2 and 5 models and on SDXL with 3; every later one once (SD1, as many
    models as it takes up to 3): the suite runs on two hosts within CI's time."""
    for method in METHODS.values():
        if method.name in CLASSIC:
            yield from ((method.name, "sd1", 2), (method.name, "sd1", 5), (method.name, "sdxl", 3))
        else:
            yield method.name, "sd1", min(3, method.max_models or 3)


@pytest.mark.parametrize("method,layout,n", list(configurations()))
def test_block_weights_and_elemental_set_each_keys_alpha(method, layout, n, sd1_keys, sdxl_keys):
    keys = sd1_keys if layout == "sd1" else sdxl_keys
    names, block_of = (SD1_NAMES, sd1_block) if layout == "sd1" else (SDXL_NAMES, sdxl_block)
    base, models = models_for(keys, n)
    snapshot = [{k: v.clone() for k, v in sd.items()} for sd in (base, *models)]
    alphas = [round(0.1 + 0.03 * i, 3) for i in range(len(names))]
    alphas[names.index("OUT02")] = 0.0  # a zero block keeps the base exactly
    ruled = "IN01" if layout == "sd1" else "IN04"  # SDXL's IN01 has no attention: a rule there matches no key
    options = dict(method=method, blocks=",".join(map(str, alphas)), elemental=f"{ruled}:proj_in:0.25",
                   density=0.5, drop_rate=0.5, seed=4, iterations=20)
    out = combine_state_dicts(base, models, **options)
    params = MethodParams(density=0.5, drop_rate=0.5, seed=4, iterations=20)
    merged = 0
    for key in keys:
        if "weight" not in key and "bias" not in key:
            assert torch.equal(out[key], base[key]), key
            continue
        block = block_of(key)
        alpha = 0.25 if (block == ruled and "proj_in" in key) else alphas[names.index(block)]
        if alpha == 0.0:
            assert torch.equal(out[key], base[key]), key
            continue
        want = combine_key(METHODS[method], params, key, alpha, base[key], [m[key] for m in models])
        torch.testing.assert_close(out[key], want, msg=key)
        merged += 1
    assert merged > 100
    assert all(torch.equal(sd[k], snap[k]) for sd, snap in zip((base, *models), snapshot) for k in sd)


def test_errors_name_the_input(sd1_keys):
    base, models = models_for(sd1_keys, 3)
    with pytest.raises(MergeInputError) as exc:
        combine_state_dicts(base, models[:1], method="ties")
    assert exc.value.input_name == "models" and "at least 2" in exc.value.problem
    with pytest.raises(MergeInputError) as exc:
        combine_state_dicts(base, models, method="task_arithmetic", weights="0.5,0.5")
    assert exc.value.input_name == "weights"
    with pytest.raises(MergeInputError) as exc:
        combine_state_dicts(base, models, method="dare", drop_rate=1.5)
    assert exc.value.input_name == "drop_rate"
    wrong = dict(models[1])
    wrong[UNET_KEY] = torch.zeros(5, 5)
    with pytest.raises(MergeInputError) as exc:
        combine_state_dicts(base, [models[0], wrong], method="ties")
    assert exc.value.input_name == "model 2" and "shape" in exc.value.problem
    with pytest.raises(MergeInputError) as exc:
        combine_state_dicts(base, [{k: v[..., :1] if k == UNET_KEY else v for k, v in models[0].items()}, models[0]],
                            method="ties")
    assert exc.value.input_name == "model 2"


def test_cli_ties_report_metadata_and_reproducible_dare(tmp_path, sd1_keys):
    base, models = models_for(sd1_keys, 3, torch.float16)
    paths = []
    for i, sd in enumerate((base, *models)):
        paths.append(str(tmp_path / f"m{i}.safetensors"))
        save_file(sd, paths[-1])
    out = tmp_path / "ties.safetensors"
    res = run_cli("combine", "--base", paths[0], *paths[1:], "--method", "ties", "--density", "0.3",
                  "--weights", "1,0.5,0.8", "--blocks", "FLAT_75", "--report", "blocks", "--dtype", "fp32",
                  "-o", str(out))
    assert res.returncode == 0, res.stderr
    assert "TIES of 3 models over the base (density 0.3)" in res.stdout and "wrote" in res.stderr
    with safe_open(str(out), "pt") as f:
        got = f.get_tensor(UNET_KEY)
        recipe = json.loads(f.metadata()["merge_suite_recipe"])
    want = combine_key(METHODS["ties"], MethodParams(weights=(1, 0.5, 0.8), density=0.3), UNET_KEY, 0.75,
                       base[UNET_KEY], [m[UNET_KEY] for m in models])
    torch.testing.assert_close(got, want)
    assert recipe["method"] == "ties" and recipe["density"] == 0.3 and recipe["weights"] == [1, 0.5, 0.8]
    assert set(recipe["models"]) == {"base", "M1", "M2", "M3"} and recipe["blocks_alpha"]
    from merge_core.recipe import parse_file_recipe
    with safe_open(str(out), "pt") as f:
        tree = parse_file_recipe(f.metadata())["model"]  # what Load Recipe replays
    assert tree["settings"]["method"] == "ties" and tree["settings"]["weights"] == "1,0.5,0.8"
    assert [x["file"] for x in [tree["a"], *tree["models"]]] == [Path(p).name for p in paths]

    runs = []
    for name in ("d1", "d2"):
        target = tmp_path / f"{name}.safetensors"
        res = run_cli("combine", "--base", paths[0], *paths[1:], "--method", "dare_ties", "--drop-rate", "0.5",
                      "--seed", "9", "-q", "-o", str(target))
        assert res.returncode == 0, res.stderr
        with safe_open(str(target), "pt") as f:
            runs.append(f.get_tensor(UNET_KEY))
    assert torch.equal(runs[0], runs[1])


def test_recipe_carries_the_geometric_medians_epsilon(sd1_keys):
    """The CLI's --epsilon is the geometric median's smallest distance: the recipe keeps it (median_epsilon, apart
    from DELLA's epsilon) and replays it; recipes written before median_epsilon kept it under epsilon."""
    from merge_core.combine.planning import combine_architecture
    from merge_core.combine.settings import make_combine_settings
    from merge_core.recipe import (combine_step, combine_text, file_metadata, leaf, parse_file_recipe,
                                   replay_combine_settings)
    base, _ = models_for(sd1_keys, 0)
    arch = combine_architecture([{k: v.shape for k, v in base.items()}])
    settings = make_combine_settings(arch, 3, "geometric_median", epsilon=0.003, iterations=7)
    tree = combine_step(settings, [leaf(f"{n}.safetensors") for n in "abcd"])
    again = parse_file_recipe(file_metadata(tree, tree))["model"]["settings"]  # what Load Recipe reads
    assert again["median_epsilon"] == 0.003 and again["epsilon"] == 0.1, again
    assert "median_epsilon=0.003" in combine_text(again)
    replayed = replay_combine_settings(again)
    assert replayed["median_epsilon"] == 0.003 and replayed["iterations"] == 7
    legacy = {k: v for k, v in again.items() if k not in ("median_epsilon", "epsilon")} | {"epsilon": 0.003}
    assert replay_combine_settings(legacy)["median_epsilon"] == 0.003
    della = {**legacy, "method": "della"}
    assert replay_combine_settings(della)["epsilon"] == 0.003 and \
        replay_combine_settings(della)["median_epsilon"] == 1e-6


@pytest.mark.parametrize("args,needle", [
    (["--method", "ties", "--density", "2"], "--density"),
    (["--method", "dare", "--weights", "1,2"], "--weights"),
    (["--method", "geometric_median", "--iterations", "0"], "--iterations"),
    (["--method", "magic"], "--method"),
])
def test_cli_errors_are_one_line(tmp_path, sd1_keys, args, needle):
    base, models = models_for(sd1_keys, 3)
    paths = []
    for i, sd in enumerate((base, *models)):
        paths.append(str(tmp_path / f"m{i}.safetensors"))
        save_file(sd, paths[-1])
    res = run_cli("combine", "--base", paths[0], *paths[1:], *args, "-o", str(tmp_path / "o.safetensors"))
    assert res.returncode == 2 and needle in res.stderr and "Traceback" not in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o.safetensors").exists()


def test_cli_slerp_and_add_perpendicular_count_their_fallbacks(tmp_path, sd1_keys):
    from merge_core.methods.spherical import add_perpendicular, slerp
    a, b, c = (small_model(sd1_keys, s, torch.float32) for s in (1, 2, 3))
    parallel = "model.diffusion_model.out.2.weight"
    b[parallel] = 2 * a[parallel]  # slerp is undefined: lerp, counted
    c[parallel] = a[parallel].clone()  # A - C = 0: add_perpendicular keeps A, counted
    paths = []
    for i, sd in enumerate((a, b, c)):
        paths.append(str(tmp_path / f"m{i}.safetensors"))
        save_file(sd, paths[-1])
    for calc, mode, files, want in (
            ("slerp", "weight_sum", paths[:2], lambda k: slerp(a[k], b[k], 0.3)),
            ("add_perpendicular", "add_difference", paths, lambda k: add_perpendicular(a[k], b[k], c[k], 0.3))):
        out = tmp_path / f"{calc}.safetensors"
        res = run_cli("merge", *files, "--mode", mode, "--calc", calc, "--alpha", "0.3", "--report", "blocks",
                      "-o", str(out))
        assert res.returncode == 0, res.stderr
        assert "fallback: 1 key(s)" in res.stdout and parallel in res.stdout, res.stdout
        with safe_open(str(out), "pt") as f:
            for key in (UNET_KEY, parallel):
                torch.testing.assert_close(f.get_tensor(key), want(key))
            assert torch.isfinite(f.get_tensor(parallel)).all()
    torch.testing.assert_close(slerp(a[parallel], b[parallel], 0.3), torch.lerp(a[parallel], b[parallel], 0.3))
