"""n-model methods (combine/formulas.py, deltas.py, methods.py) and the SLERP / add-perpendicular calc modes
against independent NumPy computations of each formula on random tensors, n = 2..5 models."""
import numpy as np
import pytest
import torch

from merge_core.errors import MergeInputError
from merge_core.combine import formulas
from merge_core.combine.deltas import combine_key
from merge_core.methods.calcmodes import CALC_MODES, KeyContext, get_calc_mode
from merge_core.combine.methods import METHODS, MethodParams, check_params, get_method
from merge_core.methods.spherical import add_perpendicular, slerp

rng = np.random.default_rng(15)
SHAPES = [(9,), (12, 7), (6, 4, 3, 3)]
KEY = "model.diffusion_model.input_blocks.1.0.in_layers.2.weight"


def t(x):
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))


def draw(shape, n):
    base = rng.standard_normal(shape).astype(np.float32)
    return base, [base + rng.standard_normal(shape).astype(np.float32) * 0.1 for _ in range(n)]


def run(name, base, models, alpha=1.0, key=KEY, fallbacks=None, **params):
    return combine_key(get_method(name), MethodParams(**params), key, alpha, t(base), [t(m) for m in models],
                       fallbacks).numpy()


# --- independent NumPy formulas -------------------------------------------------------------

def np_trim(tau, density):
    k = max(int((1 - density) * tau.size), 1)
    threshold = np.sort(np.abs(tau).ravel())[k - 1]
    return np.where(np.abs(tau) >= threshold, tau, 0)


def np_elect_mean(taus):
    taus = np.stack(taus).astype(np.float64)
    elected = np.sign(taus.sum(0))
    agree = (np.sign(taus) == elected) & (taus != 0)
    count = agree.sum(0)
    return np.where(count > 0, (taus * agree).sum(0) / np.maximum(count, 1), 0)


def np_breadcrumbs(tau, top, bottom):
    flat = tau.ravel()
    order = np.argsort(np.abs(flat), kind="stable")
    keep = np.zeros(flat.size, bool)
    keep[order[int(bottom * flat.size):flat.size - int(top * flat.size)]] = True
    return np.where(keep, flat, 0).reshape(tau.shape)


def np_geometric_median(points, weights, eps, iterations):
    pts = np.stack([p.astype(np.float64).ravel() for p in points])
    w = np.asarray(weights, np.float64)
    median = (w[:, None] * pts).sum(0) / w.sum()
    objective = np.mean(np.linalg.norm(pts - median, axis=1) * w)
    for _ in range(iterations):
        v = w / np.maximum(np.linalg.norm(pts - median, axis=1), eps)
        median = (v[:, None] * pts).sum(0) / v.sum()
        previous, objective = objective, np.mean(np.linalg.norm(pts - median, axis=1) * w)
        if abs(previous - objective) <= 1e-20 * objective:
            break
    return median.reshape(points[0].shape)


def close(got, want, tol=2e-5):
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * max(1.0, float(np.abs(want).max())))


# --- deterministic methods ----------------------------------------------------------------

@pytest.mark.parametrize("n", [2, 3, 4, 5])
@pytest.mark.parametrize("shape", SHAPES)
def test_task_arithmetic_ties_breadcrumbs_against_numpy(n, shape):
    base, models = draw(shape, n)
    weights = tuple(float(w) for w in rng.uniform(0.2, 1.5, n))
    taus = [m.astype(np.float64) - base for m in models]
    close(run("task_arithmetic", base, models, 0.7, weights=weights),
          base + 0.7 * sum(w * x for w, x in zip(weights, taus)))
    close(run("ties", base, models, 0.8, density=0.3),
          base + 0.8 * np_elect_mean([np_trim(x.astype(np.float32), 0.3) for x in taus]))
    close(run("ties", base, models, 1.0, density=0.5, weights=weights),
          base + np_elect_mean([np_trim((w * x).astype(np.float32), 0.5) for w, x in zip(weights, taus)]))
    close(run("breadcrumbs", base, models, 0.9, top=0.1, bottom=0.3),
          base + 0.9 * sum(np_breadcrumbs(x.astype(np.float32), 0.1, 0.3) for x in taus))


def test_ties_trim_keeps_ties_at_the_threshold_and_density_one_keeps_all():
    tau = t([3.0, -1.0, 1.0, -2.0, 0.5])
    assert formulas.trim(tau, 0.5).tolist() == [3.0, -1.0, 1.0, -2.0, 0.0]  # k = 2: |x| >= 1 stays (both 1s)
    assert torch.equal(formulas.trim(tau, 1.0), tau)
    # elected sign +: 3 and 1 agree -> mean 2; -2 and -1 are dropped
    assert formulas.elect_mean([t([3.0]), t([-2.0]), t([1.0])]).tolist() == [2.0]
    assert formulas.elect_mean([t([1.0]), t([-1.0])]).tolist() == [0.0]  # a tie elects 0: nothing agrees


@pytest.mark.parametrize("n", [2, 3, 4, 5])
def test_model_stock_against_numpy(n):
    base, models = draw((10, 6), n)
    taus = [(m.astype(np.float64) - base).ravel() for m in models]
    cos = np.mean([taus[i] @ taus[j] / np.linalg.norm(taus[i]) / np.linalg.norm(taus[j])
                   for i in range(n) for j in range(i + 1, n)])
    ratio = n * cos / (1 + (n - 1) * cos)
    want = base + 0.5 * ratio * np.mean([m.astype(np.float64) - base for m in models], axis=0)
    close(run("model_stock", base, models, 0.5), want)
    # identical task vectors: cos = 1, t = 1, alpha 1 gives their mean (= each of them)
    same = [models[0]] * n
    close(run("model_stock", base, same), models[0])


def test_model_stock_zero_task_vector_falls_back_to_base_and_says_so():
    base, models = draw((5, 5), 3)
    notes = []
    got = run("model_stock", base, [base.copy(), *models[1:]], fallbacks=notes)
    assert np.array_equal(got, base) and notes == ["model_stock: a task vector is zero, t = 0"]


@pytest.mark.parametrize("n", [2, 3, 4, 5])
@pytest.mark.parametrize("shape", SHAPES)
def test_geometric_median_against_numpy(n, shape):
    base, models = draw(shape, n)
    models[0] = models[0] + 3.0  # an outlier the median resists
    # few steps: the same iterates (near a data point Weiszfeld creeps, and where float32 stops creeping
    # after many steps is rounding, so long runs are compared by the objective below)
    for eps, iters in ((1e-6, 1), (1e-6, 8), (1e-2, 3)):
        want = np_geometric_median(models, [1.0] * n, eps, iters)
        close(run("geometric_median", base, models, 1.0, median_eps=eps, iterations=iters), want, 1e-4)
    weights = [float(w) for w in rng.uniform(0.5, 2.0, n)]
    want = base + 0.6 * (np_geometric_median(models, weights, 1e-6, 5) - base)
    close(run("geometric_median", base, models, 0.6, weights=tuple(weights), iterations=5), want, 1e-4)

    def objective(m):
        return sum(w * np.linalg.norm(p.astype(np.float64) - m) for w, p in zip(weights, models))
    # Weiszfeld only descends: 100 steps are no worse than 5, and 5 no worse than the weighted mean
    steps = [objective(run("geometric_median", base, models, 1.0, weights=tuple(weights), iterations=i))
             for i in (100, 5)] + [objective(np_geometric_median(models, weights, 1e-6, 0))]
    assert steps[0] <= steps[1] * (1 + 1e-6) and steps[1] <= steps[2] * (1 + 1e-6)


# --- seeded methods -------------------------------------------------------------------

def test_dare_keeps_a_binomial_fraction_scaled_by_one_over_one_minus_p():
    tau = torch.ones(200_000)
    for p in (0.1, 0.5, 0.9):
        out = formulas.dare_drop(tau, p, formulas.model_generator(7, KEY, 0))
        kept = out != 0
        n, frac = tau.numel(), float(kept.float().mean())
        assert abs(frac - (1 - p)) < 5 * np.sqrt(p * (1 - p) / n)  # five standard deviations
        assert torch.allclose(out[kept], torch.full_like(out[kept], 1 / (1 - p)))
    assert torch.count_nonzero(formulas.dare_drop(tau, 1.0, formulas.model_generator(7, KEY, 0))) == 0
    assert torch.equal(formulas.dare_drop(tau, 0.0, formulas.model_generator(7, KEY, 0)), tau)


@pytest.mark.parametrize("name", ["dare", "dare_ties", "della"])
def test_seeded_methods_are_reproducible_and_named_alike_in_both_namings(name):
    base, models = draw((40, 30), 3)
    first = run(name, base, models, seed=5, drop_rate=0.6)
    assert np.array_equal(first, run(name, base, models, seed=5, drop_rate=0.6))
    # the node's ComfyUI name and the CLI's checkpoint name of one key draw the same numbers
    assert np.array_equal(first, run(name, base, models, key=KEY[len("model."):], seed=5, drop_rate=0.6))
    assert not np.array_equal(first, run(name, base, models, seed=6, drop_rate=0.6))
    assert not np.array_equal(first, run(name, base, models, key=KEY.replace("in_layers", "out_layers"), seed=5,
                                         drop_rate=0.6))
    assert formulas.seed_name("cond_stage_model.transformer.text_model.x.weight") == \
        formulas.seed_name("clip_l.transformer.text_model.x.weight")


@pytest.mark.parametrize("n", [2, 3, 5])
def test_dare_and_dare_ties_combine_the_dropped_task_vectors(n):
    base, models = draw((20, 8), n)
    weights = tuple(float(w) for w in rng.uniform(0.5, 1.5, n))
    dropped = [formulas.dare_drop(t(w * (m.astype(np.float64) - base)), 0.7,
                                  formulas.model_generator(3, KEY, i)).numpy()
               for i, (m, w) in enumerate(zip(models, weights))]
    close(run("dare", base, models, 0.5, seed=3, drop_rate=0.7, weights=weights), base + 0.5 * sum(dropped))
    close(run("dare_ties", base, models, 1.0, seed=3, drop_rate=0.7, weights=weights), base + np_elect_mean(dropped))


def test_della_probabilities_by_rank_and_rescaling():
    tau = rng.standard_normal(1000).astype(np.float32)
    p, eps = 0.6, 0.2
    rank = np.empty(tau.size)
    rank[np.argsort(np.abs(tau), kind="stable")] = np.arange(1, tau.size + 1)
    want = np.clip(p + eps * ((tau.size + 1) / (2 * tau.size) - rank / tau.size), 0, 1)
    got = formulas.della_probabilities(t(tau), p, eps).numpy()
    close(got, want, 1e-6)
    assert abs(got.mean() - p) < 1e-6 and got[np.argmax(np.abs(tau))] < got[np.argmin(np.abs(tau))]
    out = formulas.della_drop(t(tau), p, eps, formulas.model_generator(1, KEY, 0)).numpy()
    kept = out != 0
    close(out[kept], tau[kept] / (1 - want[kept]), 1e-6)
    big = torch.ones(100_000)
    frac = float((formulas.della_drop(big, p, eps, formulas.model_generator(1, KEY, 0)) != 0).float().mean())
    assert abs(frac - (1 - p)) < 5 * np.sqrt(p * (1 - p) / big.numel())
    base, models = draw((30,), 3)
    dropped = [formulas.della_drop(t(m - base), 0.5, 0.1, formulas.model_generator(2, KEY, i)).numpy()
               for i, m in enumerate(models)]
    close(run("della", base, models, seed=2, drop_rate=0.5, epsilon=0.1), base + np_elect_mean(dropped))


# --- checks ------------------------------------------------------------------------------

@pytest.mark.parametrize("name,params,n,field", [
    ("ties", {}, 1, "models"), ("geometric_median", {}, 1, "models"), ("model_stock", {}, 1, "models"),
    ("ties", {"density": 1.5}, 2, "density"), ("dare", {"drop_rate": -0.1}, 2, "drop_rate"),
    ("della", {"epsilon": 2.0}, 2, "epsilon"), ("breadcrumbs", {"top": 0.6, "bottom": 0.5}, 2, "top"),
    ("task_arithmetic", {"weights": (1.0, 2.0, 3.0)}, 2, "weights"),
    ("task_arithmetic", {"weights": (1.0, float("nan"))}, 2, "weights"),
    ("model_stock", {"weights": (1.0, 2.0)}, 2, "weights"),
    ("geometric_median", {"median_eps": 0.0}, 3, "epsilon"), ("geometric_median", {"iterations": 0}, 3, "iterations"),
])
def test_bad_parameters_are_named(name, params, n, field):
    with pytest.raises(MergeInputError) as exc:
        check_params(get_method(name), MethodParams(**params), n)
    assert exc.value.input_name == field and exc.value.fix


def test_unknown_method_and_aliases():
    assert get_method("DARE-TIES").name == "dare_ties" and get_method("Model Stock").name == "model_stock"
    with pytest.raises(MergeInputError, match="use one of"):
        get_method("magic")
    assert set(METHODS) == {"task_arithmetic", "ties", "dare", "dare_ties", "della", "breadcrumbs", "model_stock",
                            "geometric_median", "sce", "della_linear", "breadcrumbs_ties", "nuslerp", "multislerp",
                            "karcher", "nearswap", "rotate", "crossover", "clamp", "add_opposite", "geometric_sum",
                            "truncate_rank", "n_model_stock", "tsv", "iso_c", "iso_cts", "widen"}


def test_inputs_are_not_modified():
    base, models = draw((6, 6), 3)
    tb, tm = t(base), [t(m) for m in models]
    copies = [tb.clone()] + [m.clone() for m in tm]
    for method in METHODS.values():
        combine_key(method, MethodParams(), KEY, 0.5, tb, tm[:min(3, method.max_models or 3)])
    assert all(torch.equal(x, y) for x, y in zip([tb, *tm], copies))


# --- SLERP, add perpendicular --------------------------------------------------------------

def np_slerp(a, b, alpha):
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    omega = np.arccos(np.clip(a @ b / na / nb, -1, 1))
    out = (np.sin((1 - alpha) * omega) * a / na + np.sin(alpha * omega) * b / nb) / np.sin(omega)
    return out * ((1 - alpha) * na + alpha * nb)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.5, 1.0, 1.4])
def test_slerp_against_numpy(shape, alpha):
    a, b = rng.standard_normal(shape).astype(np.float32), rng.standard_normal(shape).astype(np.float32)
    close(slerp(t(a), t(b), alpha).numpy().ravel(), np_slerp(a, b, alpha))
    mode = get_calc_mode("slerp")
    close(mode.fn(t(a), t(b), None, KeyContext(KEY, alpha, 0.0)).numpy().ravel(), np_slerp(a, b, alpha))


@pytest.mark.parametrize("case", ["zero", "parallel", "antiparallel"])
def test_slerp_falls_back_to_lerp_and_says_so(case):
    a = rng.standard_normal((8, 3)).astype(np.float32)
    b = {"zero": np.zeros_like(a), "parallel": 2 * a, "antiparallel": -a}[case]
    notes = []
    got = slerp(t(a), t(b), 0.3, notes).numpy()
    assert np.isfinite(got).all() and len(notes) == 1
    close(got, a + 0.3 * (b - a))


@pytest.mark.parametrize("shape", SHAPES)
def test_add_perpendicular_against_numpy(shape):
    a, b, c = (rng.standard_normal(shape).astype(np.float32) for _ in range(3))
    x, y = (a - c).astype(np.float64).ravel(), (b - c).astype(np.float64).ravel()
    want = a.astype(np.float64).ravel() + 0.7 * (y - x * (x @ y) / (x @ x))
    close(add_perpendicular(t(a), t(b), t(c), 0.7).numpy().ravel(), want)
    mode = get_calc_mode("add perpendicular")
    assert mode.needs_c and mode.name in CALC_MODES
    close(mode.fn(t(a), t(b), t(c), KeyContext(KEY, 0.7, 0.0)).numpy().ravel(), want)
    notes = []
    assert np.array_equal(add_perpendicular(t(c), t(b), t(c), 0.7, notes).numpy(), c) and len(notes) == 1
