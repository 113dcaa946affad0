"""The fast fp8 paths (merge_core/io/fp8.py, the engine's two-thread halves) give exactly torch's own
values: every bit pattern, NaN included, and whole merges compared with torch's casts and formulas."""
import concurrent.futures as cf

import pytest
import torch
from safetensors.torch import load_file, save_file

from merge_core.engine import linear
from merge_core import merge_files
from merge_core.io import fp8
from merge_core.methods.modes import MODES
from merge_core.nonfinite import _SCAN, all_finite, count_nonfinite

KINDS = [torch.float8_e4m3fn, torch.float8_e5m2]


def same_values(x: torch.Tensor, y: torch.Tensor) -> bool:
    """Equal float32 bits, NaN where the other has NaN, with its sign (NaN payloads aside)."""
    nan = x.isnan()
    return torch.equal(nan, y.isnan()) and torch.equal(x.signbit(), y.signbit()) and torch.equal(
        x.masked_fill(nan, 0).view(torch.int32), y.masked_fill(nan, 0).view(torch.int32))


@pytest.mark.parametrize("dtype", KINDS)
def test_widen_gives_torchs_value_for_every_bit_pattern(dtype):
    every = torch.arange(256, dtype=torch.uint8).view(dtype)
    assert same_values(fp8.widen(every), every.float())
    # several chunks, shuffled, with NaN (both signs) only in the last one: the patch must find them there
    values = torch.randn(3 * fp8.CHUNK + 17, generator=torch.Generator().manual_seed(1)).mul(40).to(dtype)
    bits = values.view(torch.uint8)
    bits[-5], bits[-3] = 0x7F if dtype == torch.float8_e4m3fn else 0x7E, 0xFF
    out = torch.full(values.shape, 7.0)
    assert fp8.widen(values, out=out) is out
    assert same_values(out, values.float())
    assert int(out.isnan().sum()) == 2
    shaped = values[:12 * 1000].reshape(12, 1000)
    assert fp8.widen(shaped).shape == (12, 1000) and same_values(fp8.widen(shaped), shaped.float())


@pytest.mark.parametrize("dtype", KINDS)
@pytest.mark.parametrize("source", [torch.float32, torch.bfloat16, torch.float16])
def test_narrow_saturates_exactly_like_clamp_then_cast(dtype, source):
    top = torch.finfo(dtype).max
    values = torch.randn(2 * fp8.CHUNK + 3, generator=torch.Generator().manual_seed(2)) * top / 2
    values[:6] = torch.tensor([float("nan"), float("inf"), float("-inf"), 1e30, -1e30, top * 1.01])
    values = values.to(source)
    ref = values.float().clamp(-top, top).to(dtype)
    got = fp8.narrow(values, dtype)
    assert got.dtype == dtype and torch.equal(got.view(torch.uint8), ref.view(torch.uint8))
    assert fp8.narrow(got, dtype) is got  # already fp8 of that kind: as it is


@pytest.mark.parametrize("dtype", KINDS)
def test_all_finite_on_fp8_finds_one_bad_value_at_any_scan_boundary(dtype):
    clean = torch.randn(2 * _SCAN + 5, generator=torch.Generator().manual_seed(3)).to(dtype)
    assert all_finite(clean) and count_nonfinite(clean) == 0
    for position in (0, _SCAN - 1, _SCAN, 2 * _SCAN + 4):
        for value in (float("nan"), float("inf"), float("-inf")):
            bad = clean.clone()
            bad[position] = value
            expected = not bool(bad.float().isfinite().all())
            assert all_finite(bad) is not expected, (position, value)
            assert count_nonfinite(bad) == int(expected)


class KeyStub:
    input_channels = None
    alpha, beta = 0.3, 0.6


@pytest.fixture()
def helper():
    with cf.ThreadPoolExecutor(max_workers=1) as pool:
        yield pool


@pytest.mark.parametrize("mode", ["weight_sum", "add_difference", "sum_twice"])
@pytest.mark.parametrize("stored,out", [(torch.float8_e4m3fn, torch.float8_e4m3fn),
                                        (torch.float8_e4m3fn, torch.float32),
                                        (torch.float16, torch.float16), (torch.bfloat16, torch.float8_e4m3fn)])
def test_merge_tensor_halves_on_two_threads_equal_torchs_formula(monkeypatch, helper, mode, stored, out):
    monkeypatch.setattr(linear, "split_work", lambda total, chunk=0: True)
    gen = torch.Generator().manual_seed(4)
    a, b, c = ((torch.randn(300, 2 * linear.CHUNK_ELEMENTS // 300 + 7, generator=gen) * 30).to(stored) for _ in "abc")
    b.view(-1)[-1] = float("nan")  # in the helper's half
    fn = MODES[mode].fn
    c_in = c if MODES[mode].needs_c else None
    ref = fn(a.float(), b.float(), None if c_in is None else c_in.float(), KeyStub.alpha, KeyStub.beta)
    if out in fp8.FP8:
        ref = ref.clamp(-torch.finfo(out).max, torch.finfo(out).max)
    ref = ref.to(out)
    for pool in (helper, None):
        got = linear.merge_tensor(KeyStub, fn, a, b, c_in, out, helper=pool)
        assert got.dtype == out and got.shape == a.shape
        assert same_values(got.float(), ref.float()), (pool, mode)
        assert not all_finite(got)


@pytest.mark.parametrize("first", [True, False])
def test_halves_and_scratch_work_inside_and_outside_inference_mode(monkeypatch, helper, first):
    """ComfyUI runs nodes under torch.inference_mode, which is per thread: the helper must write the
    caller's inference-mode output, and a scratch buffer made in one mode must serve the other."""
    monkeypatch.setattr(linear, "split_work", lambda total, chunk=0: True)
    a = torch.randn(4 * linear.CHUNK_ELEMENTS).to(torch.float8_e4m3fn)
    b = torch.randn(4 * linear.CHUNK_ELEMENTS).to(torch.float8_e4m3fn)
    ref = torch.lerp(a.float(), b.float(), 0.3).clamp(-448, 448).to(torch.float8_e4m3fn)
    for mode in (first, not first, first):
        helper.submit(fp8.scratch, "a", torch.float32, 1).result()  # made on the helper thread
        with torch.inference_mode(mode):
            got = linear.merge_tensor(KeyStub, MODES["weight_sum"].fn, a, b, None, torch.float8_e4m3fn, helper=helper)
        assert torch.equal(got.view(torch.uint8), ref.view(torch.uint8))


def test_an_error_in_the_helpers_half_is_raised_after_both_halves_stopped(monkeypatch, helper):
    monkeypatch.setattr(linear, "split_work", lambda total, chunk=0: True)
    a = torch.zeros(4 * linear.CHUNK_ELEMENTS)
    calls = []

    def failing(x, y, z, alpha, beta):
        calls.append(x.data_ptr())
        if len(calls) == 3:
            raise RuntimeError("boom")
        return x + y

    with pytest.raises(RuntimeError, match="boom"):
        linear.merge_tensor(KeyStub, failing, a, a, None, torch.float32, helper=helper)
    assert helper.submit(lambda: 1).result() == 1  # the helper is free again: nothing left running


def test_fp8_file_merge_equals_torchs_casts_and_reports_a_nan(tmp_path):
    """Plain fp8 files, output as in A: the engine reads the stored bytes, computes in float32 chunks on
    two threads and writes fp8 itself; every byte equals lerp on torch's own casts, saturated, and a NaN
    of B (in the second half of a large tensor) is reported."""
    gen = torch.Generator().manual_seed(5)
    big = (2048, linear.SPLIT_ELEMENTS // 2048 + 64)

    def model():
        return {"mystery.0.proj.weight": (torch.randn(big, generator=gen) * 60).to(torch.float8_e4m3fn),
                "mystery.0.proj.bias": torch.randn(64, generator=gen).bfloat16(),
                "head.weight": (torch.randn(64, 32, generator=gen) * 0.02).to(torch.float8_e4m3fn)}

    a, b = model(), model()
    b["mystery.0.proj.weight"].view(torch.uint8).view(-1)[-3] = 0xFF  # -NaN
    save_file(a, tmp_path / "a.safetensors")
    save_file(b, tmp_path / "b.safetensors")
    plan = merge_files(str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors"), None,
                       str(tmp_path / "o.safetensors"), alpha=0.3)
    got = load_file(tmp_path / "o.safetensors")
    for key in a:
        ref = torch.lerp(a[key].float(), b[key].float(), 0.3)
        if a[key].dtype == torch.float8_e4m3fn:
            ref = ref.clamp(-448, 448)
        ref = ref.to(a[key].dtype)
        assert got[key].dtype == a[key].dtype
        assert torch.equal(got[key].view(torch.uint8), ref.view(torch.uint8)), key
    assert plan.nonfinite == {"mystery.0.proj.weight": {"B": 1}}
