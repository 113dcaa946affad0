"""What keeps the SVD-based methods' largest keys small (merge_core/combine/lowrank_svd.py, formulas.task_sum,
formulas.subtract_): each step still computes what the whole-tensor form computes, and the engine runs these
methods' math on the idle cores with nothing read ahead or pooled beside it."""
from types import SimpleNamespace

import pytest
import torch

from merge_core.combine import election, formulas, lowrank_svd
from merge_core.combine.methods import METHODS, MethodParams
from merge_core.combine.settings import CombineSettings
from merge_core.engine.nmodel import is_compute_bound

SHAPES = [(40, 24), (24, 40), (150, 24), (24, 150)]  # square-ish and long sides both ways (the QR first)


def _draw(shape, seed, dtype=torch.float32):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_task_sum_is_bit_for_bit_the_sum_of_whole_float32_task_vectors(dtype):
    """Chunk by chunk from the stored tensors, over a size that is not a multiple of the chunk: the same bits as
    task_arithmetic on M_i.float() - C.float(); the inputs are left as they were."""
    shape = (election.CHUNK // 512 + 3, 512)
    base, models = _draw(shape, 1, dtype), [_draw(shape, 2 + i, dtype) for i in range(3)]
    kept = [t.clone() for t in (base, *models)]
    weights = (0.5, -1.25, 2.0)
    want = formulas.task_arithmetic([m.float() - base.float() for m in models], weights)
    got = formulas.task_sum(base, models, weights)
    assert got.dtype == torch.float32 and got.shape == base.shape and torch.equal(got, want)
    assert all(torch.equal(a, b) for a, b in zip((base, *models), kept))


def test_subtract_in_place_equals_the_whole_tensor_subtraction():
    x, y = _draw((election.CHUNK + 5,), 3), _draw((election.CHUNK + 5,), 4, torch.float16)
    want = x - y.float()
    assert formulas.subtract_(x, y) is x and torch.equal(x, want)


@pytest.mark.parametrize("shape", SHAPES)
def test_factored_top_triplets_match_the_full_svd(shape):
    a = _draw(shape, 5)
    u, s, vh = torch.linalg.svd(a.double(), full_matrices=False)
    k = min(shape) // 2
    got_u, got_s, got_vh = lowrank_svd.Factored(a).top(k)
    assert got_u.shape == (shape[0], k) and got_vh.shape == (k, shape[1])
    torch.testing.assert_close(got_s.double(), s[:k], rtol=1e-5, atol=1e-5)
    # singular vectors up to sign: compare the rank-k reconstructions
    torch.testing.assert_close(((got_u * got_s) @ got_vh).double(), (u[:, :k] * s[:k]) @ vh[:k], rtol=1e-4, atol=1e-4)
    assert got_u.untyped_storage().nbytes() == got_u.numel() * 4  # no view of a full U kept alive


@pytest.mark.parametrize("shape", SHAPES)
def test_factored_polar_is_the_nearest_orthonormal_matrix(shape):
    a = _draw(shape, 6)
    u, _, vh = torch.linalg.svd(a.double(), full_matrices=False)
    got = lowrank_svd.polar(a)
    torch.testing.assert_close(got.double(), u @ vh, rtol=1e-4, atol=1e-5)
    # a transposed view (how TSV and Iso-CTS hand over their side-by-side U's) gives the same factor
    torch.testing.assert_close(lowrank_svd.polar(a.mT.contiguous().mT), got, rtol=0, atol=1e-6)


def test_the_matrix_decomposing_methods_are_the_compute_bound_ones():
    bound = {name for name, method in METHODS.items() if method.compute_bound}
    assert bound == {"tsv", "iso_c", "iso_cts", "truncate_rank", "rotate"}


@pytest.mark.parametrize("method,bound", [("tsv", True), ("rotate", True), ("ties", False)])
def test_a_plan_is_compute_bound_by_its_method(method, bound):
    settings = CombineSettings(METHODS[method], MethodParams())
    assert is_compute_bound(SimpleNamespace(settings=settings, models=("b",))) is bound
    assert not is_compute_bound(SimpleNamespace(settings=settings, models=()))  # a two-model merge plan


def test_svd_retries_in_float64_where_float32_does_not_converge(monkeypatch):
    """LAPACK's float32 divide and conquer can fail on a matrix with many near-zero singular values (an Iso-CTS
    residual on full-size SDXL did): the same matrix is decomposed in float64 and the factors come back in float32."""
    real_svd = torch.linalg.svd
    calls = []

    def failing_in_float32(a, *args, **kwargs):
        calls.append(a.dtype)
        if a.dtype == torch.float32:
            raise torch.linalg.LinAlgError("linalg.svd: The algorithm failed to converge")
        return real_svd(a, *args, **kwargs)

    monkeypatch.setattr(torch.linalg, "svd", failing_in_float32)
    a = _draw((30, 20), 7)
    u, s, vh = lowrank_svd.svd(a)
    assert calls == [torch.float32, torch.float64] and u.dtype == s.dtype == vh.dtype == torch.float32
    want = real_svd(a.double(), full_matrices=False)
    torch.testing.assert_close(s.double(), want.S, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(((u * s) @ vh).double(), a.double(), rtol=1e-5, atol=1e-5)
    def failing(a, *args, **kwargs):
        raise torch.linalg.LinAlgError("linalg.svd: The algorithm failed to converge")

    monkeypatch.setattr(torch.linalg, "svd", failing)
    with pytest.raises(torch.linalg.LinAlgError):  # float64 has no further fallback
        lowrank_svd.svd(a.double())
