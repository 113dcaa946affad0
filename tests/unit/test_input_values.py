"""What inside the input files the plan refuses to merge, and what it counts and reports:
never-merged keys in both namings, integer and bool tensors, NaN/inf values."""
import pytest
import torch
from safetensors.torch import save_file

from merge_core import cli
from merge_core.analysis.similarity import compare_keys
from merge_core.api import make_settings, plan_merge
from merge_core.architectures import SD2, SDXL
from merge_core.engine import DictSink, run_merge
from merge_core.plan import (COMFY_OPENCLIP_PREFIXES, KEEP_A, MERGE, NEVER_MERGED_OPENCLIP, OPENCLIP_PREFIXES,
                             build_plan)
from merge_core.report import applied_report
from merge_core.io.sources import open_source

UNET = "model.diffusion_model."
FLOAT_KEY = UNET + "input_blocks.11.0.in_layers.2.weight"  # 12 input blocks: SD1
INT_KEY, BOOL_KEY = UNET + "out.0.weight", UNET + "out.2.bias"


def test_openclip_keys_are_never_merged_in_either_naming():
    """SuperMerger keeps SGM's bare positional_embedding / text_projection; ComfyUI names them
    ...position_embedding.weight / text_projection.weight, which the plan must keep too."""
    names = [p + ckpt for p in OPENCLIP_PREFIXES for ckpt, _ in NEVER_MERGED_OPENCLIP]
    names += [p + comfy for p in COMFY_OPENCLIP_PREFIXES for _, comfy in NEVER_MERGED_OPENCLIP]
    merged_too = ["clip_l.transformer.text_model.embeddings.position_embedding.weight",  # HF-named in the file
                  "clip_g.transformer.text_model.embeddings.token_embedding.weight"]
    shapes = {k: (4, 4) for k in names + merged_too}
    for arch in (SD2, SDXL):
        plan = build_plan(arch, make_settings(arch, "Weight sum", 0.5), shapes, shapes)
        actions = {k.key: k.action for k in plan.keys}
        assert [k for k in names if actions[k] != KEEP_A] == []
        assert all(actions[k] == MERGE for k in merged_too)


def models(seed):
    gen = torch.Generator().manual_seed(seed)
    return {FLOAT_KEY: torch.randn(6, 5, generator=gen),
            INT_KEY: torch.randint(-5, 5, (6, 5), generator=gen),
            BOOL_KEY: torch.rand(4, generator=gen) > 0.5}


CALCS = [("Weight sum", c) for c in ("normal", "cosineA", "cosineB", "tensor", "tensor2", "self", "plus random")] + \
        [("Add difference", c) for c in ("normal", "smoothAdd", "trainDifference", "extract")] + \
        [("Triple sum", "normal"), ("sum Twice", "normal")]


@pytest.mark.parametrize("mode,calc", CALCS)
def test_integer_and_bool_tensors_keep_a_in_every_mode(mode, calc):
    a, b, c = models(1), models(2), models(3)
    sources = {"a": open_source(a, "A"), "b": open_source(b, "B"), "c": open_source(c, "C")}
    plan = plan_merge(sources, mode, alpha=0.4, beta=0.3, calcmode=calc)
    out = run_merge(plan, sources, DictSink())
    for key in (INT_KEY, BOOL_KEY):
        assert out[key].dtype == a[key].dtype and torch.equal(out[key], a[key])
    assert "kept from A: 2 integer or bool tensor" in applied_report(plan)
    assert [k.key for k in plan.keys if k.action == MERGE] == [FLOAT_KEY]


def test_nonfinite_inputs_are_counted_and_reported():
    a, b = models(1), models(2)
    a[FLOAT_KEY] = a[FLOAT_KEY].clone()
    a[FLOAT_KEY][0, 0] = float("nan")
    b[FLOAT_KEY] = b[FLOAT_KEY].clone()
    b[FLOAT_KEY][1, :3] = float("inf")
    sources = {"a": open_source(a, "A"), "b": open_source(b, "B")}
    plan = plan_merge(sources, "Weight sum", alpha=0.5)
    out = run_merge(plan, sources, DictSink())
    assert plan.nonfinite == {FLOAT_KEY: {"A": 1, "B": 3}}
    assert int((~torch.isfinite(out[FLOAT_KEY])).sum()) == 4  # merged as the formula says, nowhere else
    report = applied_report(plan)
    assert "warning: non-finite values (NaN/inf) in the inputs at 1 merged keys" in report
    assert f"{FLOAT_KEY} (A: 1, B: 3)" in report



LINEAR = [("Weight sum", 1.0, 0.0), ("Weight sum", 1e-30, 0.0), ("Add difference", 1.0, 0.0),
          ("Triple sum", 0.5, 0.5), ("Triple sum", 1.0, 0.0), ("sum Twice", 1.0, 1.0), ("sum Twice", 0.3, 0.6)]


@pytest.mark.parametrize("mode,alpha,beta", LINEAR)
@pytest.mark.parametrize("bad", ["A", "B", "C"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_linear_modes_find_every_nonfinite_input_from_their_result(mode, alpha, beta, bad, value):
    """Linear modes check their result, not each input: even where an input's coefficient is 0
    (Weight sum at alpha 1, Triple sum at alpha + beta = 1) the count must be the inputs' own."""
    tensors = {name: models(seed) for name, seed in (("A", 1), ("B", 2), ("C", 3))}
    tensors[bad][FLOAT_KEY] = tensors[bad][FLOAT_KEY].clone()
    tensors[bad][FLOAT_KEY][2, 1:3] = value
    sources = {name.lower(): open_source(t, name) for name, t in tensors.items()}
    plan = plan_merge(sources, mode, alpha=alpha, beta=beta)
    run_merge(plan, sources, DictSink())
    used = "AB" if mode == "Weight sum" else "ABC"
    assert plan.nonfinite == ({FLOAT_KEY: {bad: 2}} if bad in used else {})

def test_smooth_add_does_not_spread_a_nonfinite_value():
    a, b, c = models(1), models(2), models(3)
    b[FLOAT_KEY] = b[FLOAT_KEY].clone()
    b[FLOAT_KEY][2, 2] = float("inf")
    sources = {k: open_source(v, k.upper()) for k, v in (("a", a), ("b", b), ("c", c))}
    plan = plan_merge(sources, "Add difference", alpha=0.5, calcmode="smoothAdd")
    out = run_merge(plan, sources, DictSink())[FLOAT_KEY]
    bad = ~torch.isfinite(out)
    assert bad.sum() == 1 and bad[2, 2]
    clean = dict(b)
    clean[FLOAT_KEY] = b[FLOAT_KEY].clone()
    clean[FLOAT_KEY][2, 2] = c[FLOAT_KEY][2, 2]  # B - C = 0 there: what the filters saw
    sources["b"] = open_source(clean, "B")
    ref = run_merge(plan_merge(sources, "Add difference", alpha=0.5, calcmode="smoothAdd"), sources, DictSink())
    assert torch.equal(out[~bad], ref[FLOAT_KEY][~bad])


def test_analysis_names_nonfinite_keys():
    a, b = models(1), models(2)
    b[FLOAT_KEY] = b[FLOAT_KEY].clone()
    b[FLOAT_KEY][0, 0] = float("nan")
    shapes = {k: tuple(v.shape) for k, v in a.items()}
    from merge_core.architectures import SD1
    result = compare_keys(shapes, {k: s for k, s in shapes.items() if k != BOOL_KEY}, SD1,
                          lambda k: (a[k], b[k]), ("unet",))
    note = result.skipped_note()
    assert "non-finite values" in note and "absent from B" in note and "other shape" not in note


def test_cli_summary_warns_about_nonfinite_inputs(tmp_path, capsys):
    a, b = models(1), models(2)
    b[FLOAT_KEY][4, 4] = float("nan")
    save_file(a, str(tmp_path / "a.safetensors"))
    save_file(b, str(tmp_path / "b.safetensors"))
    assert cli.main(["merge", str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors"),
                     "-o", str(tmp_path / "out.safetensors")]) == 0
    err = capsys.readouterr().err
    assert "1 with non-finite input values" in err
    assert f"warning: non-finite values (NaN/inf) in the inputs at 1 merged keys: {FLOAT_KEY} (B: 1)" in err


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_nonfinite_count_matches_isfinite_for_every_kind_of_bad_value(dtype):
    from merge_core.nonfinite import count_nonfinite

    g = torch.Generator().manual_seed(3)
    for bad in ([], [float("nan")], [float("inf")], [float("-inf")], [float("nan"), float("-inf"), float("inf")]):
        t = torch.randn(1000, generator=g).to(dtype)
        where = torch.randperm(1000, generator=g)[:len(bad)]
        t[where] = torch.tensor(bad, dtype=dtype) if bad else t[where]
        assert count_nonfinite(t) == int((~torch.isfinite(t)).sum()) == len(bad)
    assert count_nonfinite(torch.empty(0, dtype=dtype)) == 0
    assert count_nonfinite(torch.tensor([65504.0, -65504.0], dtype=dtype)) == 0, "largest finite fp16 values"
    assert count_nonfinite(torch.arange(5)) == 0, "integer tensors have no NaN"


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2])
def test_nonfinite_count_on_fp8_which_has_neither_aminmax_nor_isfinite_on_cpu(dtype):
    """Models loaded in fp8 (Load Diffusion Model, weight_dtype fp8) reach the merge nodes' count."""
    from merge_core.nonfinite import count_nonfinite

    t = torch.randn(3000).to(dtype)
    assert count_nonfinite(t) == 0
    t[[5, 2999]] = torch.tensor([float("nan"), float("nan")]).to(dtype)
    assert count_nonfinite(t) == 2


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2])
def test_fp8_bit_patterns_give_every_nonfinite_value_and_only_those(dtype):
    """fp8's NaN/inf are found on the bytes (no float32 copy): every one of the 256 values is checked
    against float32's own verdict."""
    from merge_core.nonfinite import all_finite, count_nonfinite

    every = torch.arange(256, dtype=torch.uint8).view(dtype)
    bad = int((~torch.isfinite(every.float())).sum())
    assert bad > 0 and count_nonfinite(every) == bad
    finite = every[torch.isfinite(every.float())]
    assert all_finite(finite) and count_nonfinite(finite) == 0
    assert not all_finite(every)
