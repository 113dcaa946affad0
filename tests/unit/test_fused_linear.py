"""The native fused linear kernel (methods/linear.c) gives the torch path's bytes and NaN/inf counts."""
from __future__ import annotations

import concurrent.futures as cf
import itertools

import pytest
import torch

from merge_core import threads as thread_policy
from merge_core.engine import linear
from merge_core.io.fp8 import FP8
from merge_core.methods import fused_linear, native
from merge_core.methods.modes import MODES
from merge_core.nonfinite import count_nonfinite

pytestmark = pytest.mark.skipif(not fused_linear.available(), reason="no C compiler for the native kernels")

E4M3, E5M2 = torch.float8_e4m3fn, torch.float8_e5m2
KINDS = [torch.float32, torch.float16, torch.bfloat16, E4M3, E5M2]
WEIGHTS = [(0.3, 0.2), (0.7, 0.55), (0.5, -0.5), (1.2345678901, 0.1), (-0.6, 1.5), (0.0, 1.0)]


class Key:
    input_channels = None

    def __init__(self, alpha, beta):
        self.alpha, self.beta = alpha, beta


def sample(n: int, dtype: torch.dtype, g: torch.Generator) -> torch.Tensor:
    """Values over the dtype's whole range: a wide spread of magnitudes (subnormal to beyond the max,
    so fp8 outputs saturate), a third of the positions random bit patterns (NaN, inf, subnormals)."""
    x = torch.randn(n, generator=g) * torch.exp(torch.randn(n, generator=g) * 4)
    if dtype == torch.float32:
        bits = torch.randint(-2 ** 31, 2 ** 31 - 1, (n,), generator=g, dtype=torch.int64).to(torch.int32)
        pick = torch.rand(n, generator=g) < 0.1
        x[pick] = bits[pick].view(torch.float32)
        return x
    top = torch.finfo(dtype).max
    y = x.clamp(-top, top).to(dtype)
    raw = y.view(torch.uint8 if y.element_size() == 1 else torch.int16)
    pick = torch.rand(n, generator=g) < 0.3
    raw[pick] = torch.randint(0, 2 ** (8 * y.element_size()), (n,), generator=g)[pick].to(raw.dtype)
    return y


def torch_path(mode, alpha, beta, a, b, c, out_dtype):
    return linear.merge_tensor(Key(alpha, beta), MODES[mode].fn, a, b, c, out_dtype)


def same(expected: torch.Tensor, got: torch.Tensor, zero_sign: bool = True) -> bool:
    """Equal bytes, except that a NaN's sign and payload are not promised (NaN where NaN).

    zero_sign=False: a zero may also differ in sign. At a lerp weight of exactly 1 (or -1..) torch
    itself gives -0.0 or +0.0 depending on the position: its vector loop computes 0*(end-start)+end,
    its scalar tail end-(end-start)*0."""
    assert expected.dtype == got.dtype and expected.shape == got.shape
    wide = torch.uint8 if got.element_size() == 1 else {2: torch.int16, 4: torch.int32}[got.element_size()]
    equal = expected.view(wide) == got.view(wide)
    e, g = expected.float(), got.float()
    equal |= e.isnan() & g.isnan()
    if not zero_sign:
        equal |= (e == 0) & (g == 0)
    return bool(equal.all())


def fused(mode, alpha, beta, a, b, c, out_dtype, helper=None):
    done = linear.fused_merge(Key(alpha, beta), mode, a, b, c, out_dtype, helper)
    assert done is not None, "the kernel applies here"
    return done


@pytest.mark.parametrize("mode", list(fused_linear.MODE_CODES))
def test_every_mode_and_dtype_pair_gives_the_torch_paths_bytes_and_counts(mode):
    g = torch.Generator().manual_seed(7)
    three = mode != "weight_sum"
    for ka, kb, out in itertools.product(KINDS, KINDS, KINDS):
        n = 3000 + int(torch.randint(0, 64, (1,), generator=g))  # tails that fill no vector
        a, b = sample(n, ka, g), sample(n, kb, g)
        c = sample(n, ka, g) if three else None
        for alpha, beta in WEIGHTS[:3] if (ka, kb) != (E4M3, E4M3) else WEIGHTS:
            result, counts = fused(mode, alpha, beta, a, b, c, out)
            portable = torch.empty_like(result)
            portable_counts = fused_linear.merge_span(mode, alpha, beta, a, b, c, portable, 0, n, portable=True)
            assert same(result, portable), (ka, kb, out, alpha)
            assert portable_counts == [counts.get(x, 0) for x in "ABC"]
            expected = torch_path(mode, alpha, beta, a, b, c, out)
            assert same(expected, result, zero_sign=1.0 not in (alpha, beta)), (mode, ka, kb, out, alpha, beta)
            expected = {name: k for name, t in zip("ABC", (a, b, c)) if t is not None and (k := count_nonfinite(t))}
            assert counts == expected


@pytest.mark.parametrize("out", [E4M3, E5M2, torch.float16, torch.bfloat16])
def test_encoding_rounds_like_torch_across_float32_bit_patterns(out):
    """Weight sum with alpha 0 of A with itself is A (or NaN from inf - inf): every 251st float32 bit
    pattern through the kernel's encoding against torch's clamp-then-cast."""
    x = torch.arange(0, 2 ** 32, 251, dtype=torch.int64).to(torch.int32).view(torch.float32)
    result, _ = fused("weight_sum", 0.0, 0.0, x, x, None, out)
    assert same(torch_path("weight_sum", 0.0, 0.0, x, x, None, out), result)


@pytest.mark.parametrize("kind", KINDS[1:])
def test_decoding_every_bit_pattern_is_exact(kind):
    """Add difference with B = C = 0 and alpha 1 returns A's float32 value: every stored pattern."""
    wide = torch.uint8 if kind in FP8 else torch.int16
    a = torch.arange(0, 2 ** (8 * torch.empty(0, dtype=kind).element_size()), dtype=torch.int64).to(wide).view(kind)
    zero = torch.zeros_like(a)
    result, counts = fused("add_difference", 1.0, 0.0, a, zero, zero, torch.float32)
    decoded = a.float()
    finite = decoded.isfinite()
    assert torch.equal(result[finite], decoded[finite] + 0.0)  # -0.0 + 0 is +0.0 in both
    assert torch.equal(result[~finite].isnan(), decoded[~finite].isnan())
    assert counts == {"A": int((~finite).sum())}


def test_halves_on_two_threads_equal_one_thread_and_sum_the_counts(monkeypatch):
    monkeypatch.setattr(thread_policy, "available_cpus", lambda: 2)
    g = torch.Generator().manual_seed(3)
    n = linear.SPLIT_ELEMENTS + 12345
    a, b, c = sample(n, E4M3, g), sample(n, E4M3, g), sample(n, torch.bfloat16, g)
    one = fused("add_difference", 0.4, 0.0, a, b, c, E4M3)
    with cf.ThreadPoolExecutor(1) as helper:
        two = fused("add_difference", 0.4, 0.0, a, b, c, E4M3, helper)
    assert same(one[0], two[0]) and one[1] == two[1] and set(one[1]) == {"A", "B", "C"}


def test_the_kernel_declines_what_it_does_not_take():
    a = torch.randn(64, 8)
    assert not fused_linear.applies("weight_sum", torch.float32, a, torch.randn(32, 8), None)  # shapes differ
    assert not fused_linear.applies("weight_sum", torch.float32, a[:, ::2], a[:, ::2], None)  # not contiguous
    assert not fused_linear.applies("weight_sum", torch.float64, a, a, None)
    assert not fused_linear.applies("weight_sum", torch.float32, a.double(), a, None)
    assert not fused_linear.applies("add_difference", torch.float32, a, a, None)  # C missing
    assert not fused_linear.applies("geometric_median", torch.float32, a, a, None)
    assert fused_linear.applies("add_difference", torch.float32, a, a.half(), a.to(E5M2))


def test_engine_file_merge_runs_the_kernel_and_equals_the_torch_path(tmp_path, monkeypatch):
    """A whole file merge: the kernel takes the keys, and with the kernels turned off (as
    MERGE_SUITE_NATIVE=0 does) the torch path writes the same bytes and the same NaN report."""
    from safetensors.torch import load_file, save_file

    from merge_core import merge_files
    g = torch.Generator().manual_seed(11)
    paths = []
    for i in range(3):
        sd = {f"mystery.{k}.proj.weight": sample(4099, E4M3, g).reshape(-1, 1) for k in range(4)}
        sd["head.bias"] = sample(33, torch.bfloat16, g)
        paths.append(str(tmp_path / f"m{i}.safetensors"))
        save_file(sd, paths[-1])
    calls = []
    real = fused_linear.merge_span
    monkeypatch.setattr(fused_linear, "merge_span", lambda *args, **kw: calls.append(args[0]) or real(*args, **kw))
    first = merge_files(*paths, str(tmp_path / "fused.safetensors"), mode="add_difference", alpha=0.6)
    assert len(calls) == 5 and set(calls) == {"add_difference"}
    monkeypatch.setattr(native, "_lib", None)
    monkeypatch.setattr(native, "_tried", True)
    second = merge_files(*paths, str(tmp_path / "torch.safetensors"), mode="add_difference", alpha=0.6)
    assert len(calls) == 5, "the torch path ran"
    fused_file, torch_file = load_file(tmp_path / "fused.safetensors"), load_file(tmp_path / "torch.safetensors")
    assert fused_file.keys() == torch_file.keys()
    for key in fused_file:
        assert same(torch_file[key], fused_file[key]), key
    assert first.nonfinite == second.nonfinite and len(first.nonfinite) >= 4


SCALES = [0.0123, 1.0, 3.5e-5, 7.0e36]  # the last overflows float32 for most values: counted as inf


@pytest.mark.parametrize("mode", list(fused_linear.MODE_CODES))
def test_scaled_fp8_inputs_give_the_dequantised_torch_paths_bytes_and_counts(mode):
    """A per-tensor scaled fp8 input read as stored with its scale: the kernel (both loops) gives what the
    torch path gives from ``widen(x) * scale`` (what QuantizedFileSource.get hands out), counts included."""
    from merge_core.io.fp8 import widen
    g = torch.Generator().manual_seed(5)
    three = mode != "weight_sum"
    for ka, kb, out in itertools.product(FP8 + (torch.bfloat16,), FP8, KINDS):
        n = 3000 + int(torch.randint(0, 64, (1,), generator=g))
        a, b = sample(n, ka, g), sample(n, kb, g)
        c = sample(n, kb, g) if three else None
        for scales in itertools.permutations(SCALES, 3):
            scales = tuple(1.0 if t is None or t.dtype not in FP8 else s for t, s in zip((a, b, c), scales))
            dequantised = [None if t is None else widen(t) * torch.tensor(s) if s != 1.0 else t
                           for t, s in zip((a, b, c), scales)]
            expected = torch_path(mode, 0.3, 0.45, *dequantised, out)
            counts = {name: k for name, t in zip("ABC", dequantised) if t is not None and (k := count_nonfinite(t))}
            result, got = linear.fused_merge(Key(0.3, 0.45), mode, a, b, c, out, scales=scales)
            assert same(expected, result), (mode, ka, kb, out, scales)
            assert got == counts, (mode, ka, kb, out, scales)
            portable = torch.empty_like(result)
            portable_counts = fused_linear.merge_span(mode, 0.3, 0.45, a, b, c, portable, 0, n, portable=True,
                                                      scales=scales)
            assert same(expected, portable), (mode, ka, kb, out, scales)
            assert portable_counts == [counts.get(x, 0) for x in "ABC"]


@pytest.mark.parametrize("portable", [False, True])
@pytest.mark.parametrize("out", FP8)
def test_scaled_fp8_output_passes_equal_torchs_max_and_division(out, portable):
    """The writer's two native passes (max |x|, then x / scale encoded) against torch's abs().max() and
    narrow(t / scale), over float32 bit patterns of every magnitude (non-finite ones left out: those go to torch)."""
    from merge_core.io.fp8 import narrow
    x = torch.arange(0, 2 ** 32, 257, dtype=torch.int64).to(torch.int32).view(torch.float32)
    x = x[x.isfinite()].contiguous()
    assert fused_linear.abs_max_bits(x, portable) == int(x.abs().max().view(torch.int32))
    for scale in (x.abs().max() / torch.finfo(out).max, torch.tensor(1.0), torch.tensor(3.1e-20)):
        got = fused_linear.encode_divided(x, float(scale), torch.empty(x.shape, dtype=out), portable)
        assert torch.equal(narrow(x / scale, out).view(torch.uint8), got.view(torch.uint8)), float(scale)


@pytest.mark.parametrize("mode", list(fused_linear.MODE_CODES))
def test_scaled_fp8_output_in_two_passes_equals_quantize_scaled_of_the_float32_result(mode):
    """A key written as per-tensor scaled fp8: max |result| in a first pass, the result divided by the scale and
    encoded in a second (both loops), gives quantize_scaled's bytes and scale of the float32 result."""
    from merge_core.io.precision import per_tensor_scale, quantize_scaled
    g = torch.Generator().manual_seed(9)
    three = mode != "weight_sum"
    for ka, kb, out in itertools.product(FP8 + (torch.bfloat16,), FP8, FP8):
        n = 3000 + int(torch.randint(0, 64, (1,), generator=g))
        a, b = (sample(n, k, g).float().nan_to_num_(0.0, 1.0, -1.0).clamp_(-400, 400).to(k) for k in (ka, kb))
        c = b.view(torch.uint8).flip(0).view(kb) if three else None
        scales = tuple(s if t is not None and t.dtype in FP8 else 1.0
                       for t, s in zip((a, b, c), (0.0123, 3.5e-3, 0.25)))
        dequantised = [None if t is None else widen_scaled(t, s) for t, s in zip((a, b, c), scales)]
        result = torch_path(mode, 0.3, 0.45, *dequantised, torch.float32)
        expected, expected_scale = quantize_scaled(result, out)
        got = linear.fused_scaled_merge(Key(0.3, 0.45), mode, a, b, c, out, scales=scales)
        assert got is not None and got[2] == {}
        assert torch.equal(got[0].view(torch.uint8), expected.view(torch.uint8)), (mode, ka, kb, out)
        assert torch.equal(got[1].view(torch.int32), expected_scale.view(torch.int32))
        counts, bits = fused_linear.abs_max_span(mode, 0.3, 0.45, a, b, c, 0, n, portable=True, scales=scales)
        scale = per_tensor_scale(torch.tensor([bits], dtype=torch.int32).view(torch.float32).reshape(()), out)
        portable = torch.empty(n, dtype=out)
        fused_linear.merge_span(mode, 0.3, 0.45, a, b, c, portable, 0, n, portable=True, scales=scales,
                                divisor=float(scale))
        assert counts == [0, 0, 0] and torch.equal(portable.view(torch.uint8), expected.view(torch.uint8))
    nan = torch.full((64,), float("nan")).to(E4M3)
    assert linear.fused_scaled_merge(Key(0.5, 0.0), "weight_sum", nan, nan, None, E4M3) is None  # left to torch


def widen_scaled(t: torch.Tensor, scale: float) -> torch.Tensor:
    from merge_core.io.fp8 import widen
    return widen(t) * torch.tensor(scale) if t.dtype in FP8 else t
