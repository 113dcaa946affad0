"""Each merge mode against the formulas of docs/merging.md#merge-mode-formulas on random tensors."""
import pytest
import torch

from merge_core.errors import MergeInputError
from merge_core.methods.modes import MODES, get_mode

torch.manual_seed(0)
A, B, C = (torch.randn(64, 33) for _ in range(3))

FORMULAS = {
    "weight_sum": lambda a, b, c, al, be: (1 - al) * a + al * b,
    "add_difference": lambda a, b, c, al, be: a + al * (b - c),
    "triple_sum": lambda a, b, c, al, be: (1 - al - be) * a + al * b + be * c,
    "sum_twice": lambda a, b, c, al, be: (1 - be) * ((1 - al) * a + al * b) + be * c,
}


@pytest.mark.parametrize("name", list(MODES))
@pytest.mark.parametrize("alpha,beta", [(0.0, 0.0), (0.3, 0.2), (1.0, 0.5), (-0.5, 1.5), (0.77, 0.0)])
def test_mode_matches_formula(name, alpha, beta):
    a, b, c = A.clone(), B.clone(), C.clone()
    out = MODES[name].fn(a, b, c, alpha, beta)
    expected = FORMULAS[name](A.double(), B.double(), C.double(), alpha, beta)
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(a, A) and torch.equal(b, B) and torch.equal(c, C), "inputs untouched"


@pytest.mark.parametrize("name", list(MODES))
def test_linear_steps_reproduce_formula(name):
    """The patch form used by the ComfyUI layer: w <- w*keep + s*X, step by step."""
    alpha, beta = 0.35, 0.15
    w = A.double().clone()
    sources = {"b": B.double(), "c": C.double()}
    for step in MODES[name].linear_steps(alpha, beta):
        w = w * step.keep + step.strength * sources[step.source]
    torch.testing.assert_close(w, FORMULAS[name](A.double(), B.double(), C.double(), alpha, beta))


def test_alpha_zero_gives_a_and_one_gives_b():
    assert torch.equal(MODES["weight_sum"].fn(A, B, None, 0.0, 0.0), A)
    assert torch.equal(MODES["weight_sum"].fn(A, B, None, 1.0, 0.0), B)
    assert MODES["weight_sum"].is_identity(0.0, 0.7)
    assert not MODES["triple_sum"].is_identity(0.0, 0.7)


def test_mode_lookup_accepts_labels_and_names():
    assert get_mode("Add difference") is MODES["add_difference"]
    assert get_mode("sum_twice") is MODES["sum_twice"]
    assert get_mode("sum Twice") is MODES["sum_twice"]
    with pytest.raises(MergeInputError, match="unknown merge mode 'blend'"):
        get_mode("blend")
