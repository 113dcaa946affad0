"""Sweep lists, cross product, grid layout/drawing and recipe text/metadata (pure merge_core)."""
import json
import random

import pytest
from PIL import Image

from merge_core.sweep import grid
from merge_core import recipe
from merge_core.sweep import lists as sweep
from merge_core.api import make_settings
from merge_core.architectures import detect
from merge_core.errors import MergeInputError


def test_float_lists_and_ranges():
    assert sweep.float_list("0.1, 0.3\n0.5") == [0.1, 0.3, 0.5]
    assert sweep.float_range(0.0, 1.0, 5) == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert sweep.float_range(0.3, 0.9, 1) == [0.3]
    assert sweep.labels("alpha", [0.25, 0.5]) == ["alpha=0.25", "alpha=0.5"]


def test_seeds_blank_line_lists_calcmodes_adjust_blocks():
    rng = random.Random(3)
    seeds = sweep.seed_list("1, -1, 7", rng=rng)
    assert seeds[0] == 1 and seeds[2] == 7 and 0 <= seeds[1] < 2 ** 32
    assert sweep.blank_line_list("none\n\nOUT03:attn2:0.5\nIN01::1\n\n\n-") == ["", "OUT03:attn2:0.5\nIN01::1", ""]
    assert sweep.calcmode_list("Normal, cosineA") == ["normal", "cosineA"]
    assert sweep.adjust_list("0,0,0,0,0,0,0,0\n2,0,0,0,0,0,0,0") == ["0,0,0,0,0,0,0,0", "2,0,0,0,0,0,0,0"]
    line26 = ",".join(["0.5"] * 26)
    assert sweep.block_weight_list(f"GRAD_V\n{line26}") == ["GRAD_V", line26]


@pytest.mark.parametrize("call,input_name,problem", [
    (lambda: sweep.float_list(" , "), "values", "is empty"),
    (lambda: sweep.float_list("0.1, x", "alpha"), "alpha", "'x' is not a number"),
    (lambda: sweep.block_weight_list("GRAD_V\ngrad_a"), "block_weights", "Did you mean 'GRAD_A'"),
    (lambda: sweep.block_weight_list("0.1,0.2,0.3"), "block_weights", "has 3 values"),
    (lambda: sweep.calcmode_list("normal, cosine"), "calcmodes", "'cosine' is not a calc mode"),
    (lambda: sweep.adjust_list("1,2,3"), "adjust", "line 1: has 3 values"),
    (lambda: sweep.blank_line_list("\n\n"), "elemental", "is empty"),
    (lambda: sweep.float_range(0, 1, 0), "count", "is 0"),
    (lambda: sweep.seed_list("-5"), "seeds", "is not a seed"),
])
def test_bad_lists_name_the_input(call, input_name, problem):
    with pytest.raises(MergeInputError) as info:
        call()
    assert info.value.input_name == input_name and problem in info.value.problem and info.value.fix


def test_cross_product_order_is_z_then_y_then_x():
    pairs = sweep.cross_product([1, 2, 3], ["a", "b"])
    assert pairs == [(1, "a", None), (2, "a", None), (3, "a", None), (1, "b", None), (2, "b", None), (3, "b", None)]
    assert len(sweep.cross_product([1, 2], [3, 4], [5, 6, 7])) == 12
    assert sweep.cross_product([1]) == [(1, None, None)]


def test_long_block_strings_are_shortened():
    text = ",".join(["0"] * 13 + ["1"] * 13)
    assert sweep.abbreviate(text) == "0x13,1x13"
    assert sweep.abbreviate("GRAD_V") == "GRAD_V"


def test_grid_layout_and_drawing():
    xs = ["a=0.1", "a=0.5", "a=0.9"] * 2
    ys = ["GRAD_V"] * 3 + ["GRAD_A"] * 3
    [layout] = grid.layouts(xs, ys, [])
    assert layout.x_labels == ("a=0.1", "a=0.5", "a=0.9") and layout.y_labels == ("GRAD_V", "GRAD_A")
    assert layout.cells == ((0, 1, 2), (3, 4, 5))
    colors = [(i * 40, 0, 0) for i in range(6)]
    images = [Image.new("RGB", (64, 64), c) for c in colors]
    img = grid.draw_grid(images, layout, "Weight sum(A, B)")
    assert img.width == 180 + 3 * 120
    # each cell shows its own image: sample the centre of the cell for image 4 (row 1, col 1)
    top = img.height - 2 * 64
    assert img.getpixel((180 + 120 + 60, top + 64 + 32)) == colors[4]
    two = grid.layouts(xs * 2, ys * 2, ["z1"] * 6 + ["z2"] * 6)
    assert [g.z for g in two] == ["z1", "z2"] and two[1].cells == ((6, 7, 8), (9, 10, 11))


def test_common_title_keeps_shared_words():
    r = ["Weight sum(a, b) alpha=0.1 calcmode=cosineA", "Weight sum(a, b) alpha=0.5 calcmode=cosineA"]
    assert grid.common_title(r) == "Weight sum(a, b) calcmode=cosineA"


def test_recipe_states_what_was_applied_when_block_weights_override_the_scalars():
    """A block list replaces alpha (and, where beta comes from blocks, beta): the recipe omits the scalar."""
    text = recipe.settings_text
    assert text({"alpha": 0.1, "blocks_alpha": "GRAD_V"}) == "blocks_alpha=GRAD_V"
    assert text({"alpha": 0.1, "blocks_alpha": ""}) == "alpha=0.1"
    assert text({"mode": "sum Twice", "alpha": 0.2, "beta": 0.7, "blocks_beta": "GRAD_A"}) == \
        "alpha=0.2 blocks_beta=GRAD_A"
    # extract uses the scalar beta even with a beta block list (SuperMerger), so beta stays
    assert text({"mode": "Add difference", "calcmode": "extract", "beta": 0.7, "blocks_beta": "GRAD_A"}) == \
        "alpha=0.5 beta=0.7 calcmode=extract"
    # a 3 x 2 sweep of alpha under fixed blocks: identical recipes per column
    cells = [text({"alpha": a, "blocks_alpha": b}) for b in ("GRAD_V", "GRAD_A") for a in (0.1, 0.5, 0.9)]
    assert len(set(cells)) == 2


def test_grid_marks_labels_of_a_scalar_that_block_weights_overrode():
    labels = ["alpha=0.1", "alpha=0.5", "alpha=0.9"] * 2
    recipes = ["Weight sum(a, b) blocks_alpha=GRAD_V"] * 3 + ["Weight sum(a, b) alpha=0.1"] * 3
    marked = grid.mark_overridden(labels, recipes)
    assert marked[:3] == [f"alpha={v} (overridden by blocks_alpha)" for v in ("0.1", "0.5", "0.9")]
    assert marked[3:] == labels[3:]
    # when the counts differ (one merge, several seeds), every recipe must show the override
    assert grid.mark_overridden(["alpha=0.1"], recipes[:3]) == ["alpha=0.1 (overridden by blocks_alpha)"]
    assert grid.mark_overridden(["seed=1", "seed=2"], recipes[:1]) == ["seed=1", "seed=2"]
    assert grid.mark_overridden(labels, []) == labels  # no recipes connected: nothing to tell


SD1_SHAPES = {"model.diffusion_model.input_blocks.0.0.weight": (320, 4, 3, 3),
              "model.diffusion_model.middle_block.1.proj_in.weight": (1280, 1280, 1, 1),
              "model.diffusion_model.output_blocks.11.1.proj_out.weight": (320, 320, 1, 1),
              "model.diffusion_model.input_blocks.11.0.in_layers.2.weight": (1280, 1280, 3, 3),
              "cond_stage_model.transformer.text_model.encoder.layers.0.mlp.fc1.weight": (3072, 768)}


def test_recipe_text_chains_and_metadata_follow_supermerger():
    arch = detect(SD1_SHAPES)
    params = {"mode": "Weight sum", "alpha": 0.3, "blocks_alpha": "GRAD_V", "elemental": "OUT03:attn2:0.5"}
    settings = make_settings(arch, "Weight sum", 0.3, 0.25, "GRAD_V", None, elemental="OUT03:attn2:0.5")
    first = recipe.merge_step("checkpoint", params, settings,
                              {"a": recipe.leaf("m/a.safetensors", "a" * 64), "b": recipe.leaf("b.ckpt", "b" * 64)})
    assert recipe.recipe_text(first) == 'Weight sum(a, b) blocks_alpha=GRAD_V elemental=OUT03:attn2:0.5'
    s2 = make_settings(arch, "Add difference", 1.0, 0.25)
    second = recipe.merge_step("model", {"mode": "Add difference", "alpha": 1.0}, s2,
                               {"a": first, "b": recipe.leaf("c.safetensors"), "c": recipe.unknown("model_c")})
    assert recipe.recipe_text(second).splitlines() == [
        "[1] Weight sum(a, b) blocks_alpha=GRAD_V elemental=OUT03:attn2:0.5",
        "[2] Add difference([1], c, ?model_c) alpha=1"]
    meta = recipe.file_metadata(second, None)
    sm = json.loads(meta["sd_merge_recipe"])
    assert sm["mode"] == "Add difference:A+(B-C)*alpha" and sm["mbw"] is False and sm["model_a"] == ""
    models = json.loads(meta["sd_merge_models"])
    assert set(models) == {"a" * 64, "b" * 64} and models["b" * 64]["name"] == "b.ckpt"
    # the first step's SuperMerger fields: per-block list without base, orig string with base
    sm1 = json.loads(recipe.file_metadata(first, first)["sd_merge_recipe"])
    assert sm1["mbw"] is True and len(sm1["weights_alpha"]) == 25 and sm1["model_c"] == "a" * 64
    assert sm1["weights_alpha_orig"].count(",") == 25 and sm1["elemental_merge"] == ["OUT03:attn2:0.5"]
    assert recipe.parse_file_recipe(meta) == {"model": second, "clip": None}


def test_supermerger_made_recipe_parses_to_one_step():
    sm = {"type": "sd-webui-supermerger", "weights_alpha": None, "weights_beta": None, "model_a": "a" * 64,
          "model_b": "b" * 64, "model_c": "a" * 64, "base_alpha": 0.4, "base_beta": 0.1, "mode": "Add",
          "mbw": False, "elemental_merge": "", "calcmode": "trainDifference"}
    models = {"a" * 64: {"name": "A.safetensors"}, "b" * 64: {"name": "B.safetensors"}}
    parsed = recipe.parse_file_recipe({"sd_merge_recipe": json.dumps(sm), "sd_merge_models": json.dumps(models)})
    step = parsed["model"]
    assert step["settings"]["mode"] == "Add difference" and step["settings"]["alpha"] == 0.4
    assert step["a"] == recipe.leaf("A.safetensors", "a" * 64) and step["c"]["sha256"] == "a" * 64
    with pytest.raises(MergeInputError, match="no 'sd_merge_recipe'"):
        recipe.parse_file_recipe({})


def test_grid_without_rows_and_with_unbreakable_labels():
    [layout] = grid.layouts(["seed=1", "x" * 300], [], [])
    img = grid.draw_grid([Image.new("RGB", (64, 64), "red")] * 2, layout, "t" * 500)
    assert img.width == 2 * 120 and img.getpixel((60, img.height - 32)) == (255, 0, 0)


def test_cli_merge_writes_supermerger_recipe_with_hashes(tmp_path, sd1_keys):
    import hashlib

    from safetensors import safe_open
    from safetensors.torch import save_file
    from test_merge_api import small_model

    from merge_core.api import merge_files
    paths = []
    for tag, seed in (("a", 1), ("b", 2)):
        paths.append(tmp_path / f"{tag}.safetensors")
        save_file(small_model(sd1_keys, seed), paths[-1])
    out = tmp_path / "out.safetensors"
    merge_files(str(paths[0]), str(paths[1]), None, str(out), alpha=0.3, blocks_alpha="GRAD_V", hash_inputs=True)
    with safe_open(str(out), "pt") as f:
        meta = f.metadata()
    sm = json.loads(meta["sd_merge_recipe"])
    sha_a = hashlib.sha256(paths[0].read_bytes()).hexdigest()
    assert sm["model_a"] == sha_a == sm["model_c"] and sm["mbw"] and len(sm["weights_alpha"]) == 25
    assert json.loads(meta["sd_merge_models"])[sha_a]["name"] == "a.safetensors"
    tree = recipe.parse_file_recipe(meta)["model"]
    assert tree["settings"]["blocks_alpha"] == sm["weights_alpha_orig"] and tree["settings"]["alpha"] == 0.3
    assert recipe.recipe_text(tree).startswith("Weight sum(a, b) blocks_alpha=")


def test_file_sha256_is_cached_by_path_size_and_mtime(tmp_path):
    import hashlib
    import os

    from merge_core.io import filehash
    f, cache = tmp_path / "m.safetensors", tmp_path / "cache" / "sha.json"
    f.write_bytes(b"x" * 1000)
    want = hashlib.sha256(f.read_bytes()).hexdigest()
    assert filehash.file_sha256(f, cache) == want and want in cache.read_text()
    filehash._MEMORY.clear()
    os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns))  # unchanged stamp: answered from the cache file
    assert filehash.file_sha256(f, cache) == want
    f.write_bytes(b"y" * 1000)  # new content and stamp: hashed again
    assert filehash.file_sha256(f, cache) == hashlib.sha256(b"y" * 1000).hexdigest()


def test_recipe_keeps_the_scalar_under_named_block_weights():
    """Named pairs leave other blocks at the scalar, so the scalar is part of what was applied."""
    text = recipe.settings_text
    assert text({"alpha": 0.3, "blocks_alpha": "IN=0.9, OUT=0.1"}) == 'alpha=0.3 blocks_alpha="IN=0.9, OUT=0.1"'
    assert text({"mode": "sum Twice", "alpha": 0.2, "beta": 0.7, "blocks_beta": "OUT=1"}) == \
        "alpha=0.2 beta=0.7 blocks_beta=OUT=1"


# --- hostile recipes: every field dropped or of a wrong type gives a MergeInputError ----------

def _replay_settings(tree, arch):
    """Parse every step's settings as Load Recipe replays them (merge_core's half of nodes/recipe.replay)."""
    from merge_core.combine.methods import get_method
    from merge_core.combine.settings import make_combine_settings
    if tree is None or not recipe.is_merge(tree):
        return
    for item in recipe.step_inputs(tree):
        _replay_settings(item, arch)
    if tree.get("kind") == recipe.COMBINE:
        s = recipe.replay_combine_settings(tree["settings"])
        eps = {"della": s["epsilon"], "geometric_median": s["median_epsilon"]}.get(get_method(s["method"]).name)
        make_combine_settings(arch, len(tree["models"]), s["method"], s["alpha"], s["weights"], s["density"],
                              s["drop_rate"], eps, s["top"], s["bottom"], s["iterations"], s["seed"],
                              s["blocks_alpha"], s["elemental"], s["include_exclude"])
    else:
        make_settings(arch, **recipe.replay_settings(tree["settings"]))


def _valid_recipes():
    """(name, sd_merge_recipe object, sd_merge_models object): one of ours (a combine step inside a merge
    step, and a CLIP step) and one SuperMerger-made."""
    arch = detect(SD1_SHAPES)
    combine = {"kind": "combine", "settings": dict(recipe.COMBINE_DEFAULTS, method="geometric_median",
                                                   weights="1,1", iterations=50),
               "supermerger": {"mode": "combine:geometric_median"}, "a": recipe.leaf("base.safetensors", "c" * 64),
               "models": [recipe.leaf("m1.safetensors", "d" * 64), recipe.unknown("model_2")]}
    params = {"mode": "sum Twice", "alpha": 0.3, "beta": 0.2, "blocks_alpha": "GRAD_V", "calcmode": "normal",
              "elemental": "OUT03:attn2:0.5", "include_exclude": "exclude: VAE", "seed": 7}
    settings = make_settings(arch, **params)
    model = recipe.merge_step("checkpoint", params, settings,
                              {"a": combine, "b": recipe.leaf("b.safetensors", "b" * 64),
                               "c": recipe.leaf("c.safetensors")})
    clip = recipe.merge_step("clip", {"mode": "Weight sum", "alpha": 0.5}, make_settings(arch, "Weight sum", 0.5),
                             {"a": recipe.leaf("a.safetensors"), "b": recipe.leaf("b.safetensors")})
    ours = json.loads(recipe.file_metadata(model, clip)["sd_merge_recipe"])
    sm = {"type": "sd-webui-supermerger", "weights_alpha": None, "weights_beta": None, "model_a": "a" * 64,
          "model_b": "b" * 64, "model_c": "a" * 64, "base_alpha": 0.4, "base_beta": 0.1,
          "mode": "Triple sum:A*(1-alpha-beta)+B*alpha+C*beta", "mbw": True, "weights_alpha_orig": "GRAD_V",
          "weights_beta_orig": "FLAT_25", "elemental_merge": ["OUT03:attn2:0.5"], "calcmode": "normal"}
    models = {"a" * 64: {"name": "A.safetensors"}, "b" * 64: {"name": "B.safetensors"}}
    return arch, [("ours", ours, {}), ("supermerger", sm, models)]


def _paths(value, path=()):
    """Every (path) into a JSON value: dict keys and list indexes."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield path + (k,)
            yield from _paths(v, path + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield path + (i,)
            yield from _paths(v, path + (i,))


DROPPED = object()
WRONG = [DROPPED, None, True, -1, 0, 2 ** 64, 1e308, -0.5, "x", "", [], {}, [1], {"z": 1}]


def _mutated(value, path, new):
    out = json.loads(json.dumps(value))
    *head, last = path
    holder = out
    for p in head:
        holder = holder[p]
    if new is DROPPED:
        del holder[last]
    else:
        holder[last] = new
    return out


def test_every_recipe_field_dropped_or_mistyped_gives_a_one_line_input_error():
    """Load Recipe reads a file's metadata, which anyone can write: drop each field of a valid recipe in
    turn, or give it a wrong type or value, and the parser plus the settings it replays raise
    MergeInputError only (a bare TypeError for a step without beta escaped before)."""
    arch, cases = _valid_recipes()
    for name, sm, models in cases:
        for source in (sm, models) if models else (sm,):
            trees = recipe.parse_file_recipe({"sd_merge_recipe": json.dumps(sm), "sd_merge_models": json.dumps(models)})
            for tree in trees.values():
                _replay_settings(tree, arch)  # the valid recipe replays
            tried = 0
            for path in list(_paths(source)):
                for new in WRONG:
                    if isinstance(path[-1], int) and new is DROPPED:
                        continue
                    changed = _mutated(source, path, new)
                    meta = {"sd_merge_recipe": json.dumps(changed if source is sm else sm),
                            "sd_merge_models": json.dumps(changed if source is models else models)}
                    tried += 1
                    try:
                        trees = recipe.parse_file_recipe(meta, "ckpt_name", "x.safetensors")
                        assert any(t is not None for t in trees.values()), (name, path, new)  # something to replay
                        for tree in trees.values():
                            _replay_settings(tree, arch)
                    except MergeInputError as exc:
                        assert "\n" not in str(exc) and "Fix:" in str(exc), (name, path, new, str(exc))
                    except Exception as exc:  # noqa: BLE001 - the point of the test
                        pytest.fail(f"{name} {path} = {new!r}: raw {type(exc).__name__}: {exc}")
            assert tried > (100 if source is sm else 20)


@pytest.mark.parametrize("value, ok", [(1, True), (10_000, True), (0, False), (10_001, False), (2 ** 63, False),
                                       (-1, False), (50.0, False), (True, False)])
def test_recipe_iterations_are_bounded_like_the_widget(value, ok):
    """A crafted iteration count (up to 2**64 was accepted) would hang the server past /interrupt."""
    arch, [(_, ours, _m), _sm] = _valid_recipes()
    ours["merge_suite"]["model"]["a"]["settings"]["iterations"] = value
    meta = {"sd_merge_recipe": json.dumps(ours)}
    if ok:
        recipe.parse_file_recipe(meta)
        return
    with pytest.raises(MergeInputError) as info:
        recipe.parse_file_recipe(meta, "ckpt_name", "x.safetensors")
    text = str(info.value)
    assert "recipe field 'merge_suite.model.a.settings.iterations'" in text and "from 1 to 10000" in text


def test_recipe_step_without_settings_keys_takes_their_defaults():
    """A step written by an older version (or by hand) without beta, blocks or calcmode replays with the
    defaults the node's widgets have."""
    arch, [(_, ours, _m), _sm] = _valid_recipes()
    settings = ours["merge_suite"]["clip"]["settings"]
    for key in ("beta", "blocks_alpha", "calcmode", "seed", "mode"):
        del settings[key]
    tree = recipe.parse_file_recipe({"sd_merge_recipe": json.dumps(ours)})["clip"]
    assert recipe.replay_settings(tree["settings"]) == dict(recipe.SETTING_DEFAULTS, alpha=0.5)


@pytest.mark.parametrize("depth", [1000, 100_000])
def test_deeply_nested_recipe_metadata_is_a_one_line_error(depth):
    for field in ("sd_merge_recipe", "sd_merge_models"):
        nested = "[" * depth + "]" * depth
        meta = {"sd_merge_recipe": nested if field == "sd_merge_recipe" else '{"mode": "Weight sum"}',
                "sd_merge_models": nested if field == "sd_merge_models" else "{}"}
        with pytest.raises(MergeInputError) as info:
            recipe.parse_file_recipe(meta, "ckpt_name", "x.safetensors")
        assert "\n" not in str(info.value) and "'x.safetensors'" in str(info.value)
    inside = json.dumps({"merge_suite": {"model": None, "clip": None}, "mode": "Weight sum"})
    inside = inside.replace("null", "[" * 900 + "]" * 900, 1)  # deep, yet under the parser's own limit
    with pytest.raises(MergeInputError):
        recipe.parse_file_recipe({"sd_merge_recipe": inside}, "ckpt_name", "x.safetensors")
