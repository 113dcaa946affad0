"""TSV-Merge, Iso-C and Iso-CTS equal fusion-bench 0.2.33's per-key math; WIDEN equals an independent NumPy
transcription of the paper's algorithm (the authors' code, MergeLLM's WidenMerging, step by step, in float64).

fusion-bench is a test-only reference, never a dependency: scripts/test.sh installs it with --no-deps into
~/.cache/merge-suite/fusion-bench-0.2.33 (or $MERGE_SUITE_FUSION_BENCH). Its package does not import without
omegaconf, lightning and more, so only the two files that hold the math are loaded, by path:
task_singular_vector/utils/TSVM_utils.py and isotropic_merging/iso_utils.py. They import two names from
fusion_bench.utils (StateDictType, a type alias, and timeit_context, a timing context manager); for the load only,
a stub `fusion_bench` package providing just those two is placed in sys.modules and taken out again afterwards
(any real entries are put back). The tests skip, saying so, when the files are missing or do not load.

Mapping: fusion-bench takes task vectors t_i = M_i - C (TSV: scaled by its per-model alpha list = our weights) and
returns the merged task vector; ours is the delta d (merged = C + alpha * d, alpha = the papers' global scaling).
fusion-bench merges only 2-D keys by SVD (it averages conv weights); ours flattens a conv weight to
out x (in * kh * kw), so for a 4-D key the reference is given the flattened matrix.

Tolerances: rtol 1e-4, atol 1e-5 of the result's scale. Both sides run float32 LAPACK SVDs of the same matrices,
but not the same products (ours multiplies U (U^T t) where fusion-bench forms U U^T first; ours skips the zero
padding), so agreement is to float32 rounding amplified by the polar factors' conditioning, not bit for bit.
"""
import contextlib
import importlib.util
import os
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from merge_core.combine.methods import MethodParams, get_method

FUSION_BENCH = Path(os.environ.get("MERGE_SUITE_FUSION_BENCH",
                                   Path.home() / ".cache/merge-suite/fusion-bench-0.2.33"))
TSVM_UTILS = "fusion_bench/method/task_singular_vector/utils/TSVM_utils.py"
ISO_UTILS = "fusion_bench/method/isotropic_merging/iso_utils.py"
KEY = "model.diffusion_model.input_blocks.4.1.proj_in.weight"


@contextlib.contextmanager
def _stub_fusion_bench_utils():
    """Just the two names the util files import from fusion_bench.utils, in sys.modules while they load."""
    names = ("fusion_bench", "fusion_bench.utils", "fusion_bench.utils.type")
    saved = {name: sys.modules[name] for name in names if name in sys.modules}
    package, utils, typing_module = (types.ModuleType(name) for name in names)
    package.__path__, utils.__path__ = [], []
    typing_module.StateDictType = dict
    utils.timeit_context = lambda *args, **kwargs: contextlib.nullcontext()
    utils.type = typing_module
    sys.modules.update(zip(names, (package, utils, typing_module)))
    try:
        yield
    finally:
        for name in names:
            sys.modules.pop(name, None)
        sys.modules.update(saved)


def _load(relative: str, name: str):
    spec = importlib.util.spec_from_file_location(name, FUSION_BENCH / relative)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def fusion_bench():
    if not (FUSION_BENCH / TSVM_UTILS).is_file() or not (FUSION_BENCH / ISO_UTILS).is_file():
        pytest.skip(f"fusion-bench 0.2.33 is not installed at {FUSION_BENCH} (scripts/test.sh installs it)")
    try:
        with _stub_fusion_bench_utils(), contextlib.redirect_stdout(None):
            return _load(TSVM_UTILS, "_fb_tsvm_utils"), _load(ISO_UTILS, "_fb_iso_utils")
    except Exception as exc:  # an incompatible install: say why, do not fail the suite
        pytest.skip(f"fusion-bench's util files at {FUSION_BENCH} do not load: {exc}")


rng = np.random.default_rng(2412)
SHAPES = [(9,), (24, 40), (60, 24), (8, 4, 3, 3)]  # 1-D, square-ish, tall, wide (conv)


def draw(shape, n, spread=0.1):
    base = rng.standard_normal(shape).astype(np.float32)
    return torch.from_numpy(base), [torch.from_numpy(base + spread * rng.standard_normal(shape).astype(np.float32))
                                    for _ in range(n)]


def ours(name, base, models, fallbacks=None, key=KEY, **params):
    """The method's delta d itself (C + d - C would add float32 rounding of C's size)."""
    return get_method(name).fn(base, models, MethodParams(**params), key, fallbacks)


def reference_tvs(base, models, weights=None):
    """fusion-bench's input: one state dict per model, the key's task vector (a conv weight flattened)."""
    weights = weights or [1.0] * len(models)
    flat = (lambda t: t.reshape(t.shape[0], -1)) if base.dim() > 2 else (lambda t: t)
    return [{KEY: flat(m - base) * w} for m, w in zip(models, weights)]


def close(got, want):
    want = want.reshape(got.shape)
    scale = float(want.abs().max())
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5 * max(scale, 1e-12))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("n,weights", [(2, None), (3, [0.5, 1.5, -1.0]), (5, None)])
def test_tsv_equals_fusion_bench(fusion_bench, shape, n, weights):
    tsvm, _ = fusion_bench
    base, models = draw(shape, n)
    with contextlib.redirect_stdout(None):
        want = tsvm.compute_and_sum_svd_mem_reduction(reference_tvs(base, models, weights), accelerator="cpu")[KEY]
    close(ours("tsv", base, models, weights=tuple(weights) if weights else None), want)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("n", [1, 2, 4])
def test_iso_c_equals_fusion_bench(fusion_bench, shape, n):
    _, iso = fusion_bench
    base, models = draw(shape, n)
    with contextlib.redirect_stdout(None):
        want = iso.iso_c(reference_tvs(base, models), accelerator="cpu")[KEY]
    close(ours("iso_c", base, models), want)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("n,fraction", [(2, 0.8), (3, 0.5), (4, 1.0), (3, 0.3)])
def test_iso_cts_equals_fusion_bench(fusion_bench, shape, n, fraction):
    _, iso = fusion_bench
    base, models = draw(shape, n)
    with contextlib.redirect_stdout(None):
        want = iso.iso_cts(reference_tvs(base, models), common_space_fraction=fraction, accelerator="cpu")[KEY]
    close(ours("iso_cts", base, models, common_fraction=fraction), want)


# --- WIDEN: an independent NumPy transcription of the paper's algorithm ------------------------------------

def np_significance(divergence):
    """Rank each row's values ascending (ties by position), divided by the row's length."""
    n, cols = divergence.shape
    out = np.empty_like(divergence)
    for i in range(n):
        out[i, np.argsort(divergence[i], kind="stable")] = np.arange(cols) / cols
    return out


def np_scores(significance, t, s):
    e = np.exp(significance - significance.max(axis=0))
    scores = e / e.sum(axis=0)
    return np.where(significance > significance.mean(axis=1, keepdims=True) * t, s, scores)


def np_widen(base, models, t, s, transpose=False):
    """Algorithm 1: disentangle each column into magnitude and direction, measure the divergences from the base,
    rank them within each model, score them across the models, and add the score-weighted task vectors."""
    c = base.astype(np.float64)
    ms = [m.astype(np.float64) for m in models]
    if c.ndim < 2:
        diff = np.stack([np.abs(m - c).ravel() for m in ms])
        scores = np_scores(diff, t, s)
        return sum((m - c) * w.reshape(c.shape) for m, w in zip(ms, scores))
    view = (lambda x: x.T) if transpose else (lambda x: x.reshape(x.shape[0], -1))
    c2 = view(c)
    mag_c = np.linalg.norm(c2, axis=0)
    dir_c = c2 / mag_c
    mag_div, dir_div = [], []
    for m in ms:
        m2 = view(m)
        mag = np.linalg.norm(m2, axis=0)
        direction = m2 / mag
        mag_div.append(np.abs(mag - mag_c))
        cos = (direction * dir_c).sum(axis=0) / (np.linalg.norm(direction, axis=0) * np.linalg.norm(dir_c, axis=0))
        dir_div.append(1.0 - cos)
    weights = 0.5 * (np_scores(np_significance(np.stack(mag_div)), t, s)
                     + np_scores(np_significance(np.stack(dir_div)), t, s))
    delta2 = sum((view(m) - c2) * w[None, :] for m, w in zip(ms, weights))
    return delta2.T if transpose else delta2.reshape(c.shape)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("n,t,s,spread", [(2, 1.0, 1.0, 0.1), (3, 0.5, 2.0, 1e-3), (4, 1.5, 0.5, 0.3)])
def test_widen_equals_numpy_transcription(shape, n, t, s, spread):
    base, models = draw(shape, n, spread)
    want = np_widen(base.numpy(), [m.numpy() for m in models], t, s)
    got = ours("widen", base, models, threshold=t, calibration=s)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-4, atol=1e-6 * spread)


def test_widen_transposes_embedding_tables():
    """A token embedding (tokens x features): each token's vector is a column, as the authors transpose it."""
    base, models = draw((40, 12), 3)
    key = "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"
    got = ours("widen", base, models, key=key)
    want = np_widen(base.numpy(), [m.numpy() for m in models], 1.0, 1.0, transpose=True)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-4, atol=1e-7)
    plain = np_widen(base.numpy(), [m.numpy() for m in models], 1.0, 1.0)
    assert not np.allclose(want, plain)


def test_iso_cts_rounds_the_task_share_down_where_fusion_bench_fails(fusion_bench):
    """Rank 8, 3 models, common_fraction 0.1: the common share int(0.8) = 0 leaves 8, rounded to 3 per task = 9
    > 8; fusion-bench fails there, ours gives 2 per task and a common subspace of 2, and says so."""
    _, iso = fusion_bench
    base, models = draw((8, 12), 3)
    with contextlib.redirect_stdout(None), pytest.raises(RuntimeError):
        iso.iso_cts(reference_tvs(base, models), common_space_fraction=0.1, accelerator="cpu")
    fallbacks = []
    got = ours("iso_cts", base, models, fallbacks, common_fraction=0.1)
    assert fallbacks and "rounded down" in fallbacks[0]
    with contextlib.redirect_stdout(None):  # = the split fusion-bench makes for a common share of 2
        want = iso.iso_cts(reference_tvs(base, models), common_space_fraction=0.25, accelerator="cpu")[KEY]
    close(got, want)
