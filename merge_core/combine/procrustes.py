"""rotate: align the base to a model by an orthogonal transform (orthogonal Procrustes).

Each method maps (base C, models M1..Mn) of one key to a delta d; the merged key is C + alpha * d (methods.py).
R is sd-mecha 1.1's rotate(a = C, b = M1, alignment, alpha = 0): C's rows, centred, turned by the orthogonal map Q
that brings them closest to M1's centred rows, to the power `alignment`, plus the row means moved from C's toward
M1's by the same fraction. Only C's orientation changes: its singular values stay (sd-mecha's alpha, which would
mix them with M1's, is 0). d = R - C."""
from __future__ import annotations

import math
from typing import Optional

import torch

from . import orthogonal
from .formulas import subtract_
from .params import CombineMethod, MethodParams

Tensor = torch.Tensor


def matrix_view(shape: torch.Size) -> tuple[int, int]:
    """The 2-D view rotate aligns, as sd-mecha: a convolution with a kernel larger than 1x1 as
    (out * in, kh * kw) (the map turns the kernel taps), any other tensor as (dim 0, the rest)."""
    if len(shape) == 4 and shape[2] * shape[3] != 1:
        return shape[0] * shape[1], shape[2] * shape[3]
    return shape[0], math.prod(shape[1:])


def _centred(x: Tensor, rows: int, cols: int) -> tuple[Tensor, Tensor]:
    """x viewed as rows x cols, in float32 (a new tensor) with its row mean taken off; and that mean."""
    matrix = x.detach().reshape(rows, cols).to(torch.float32, copy=True)
    mean = matrix.mean(0)
    return matrix.sub_(mean), mean


def rotate(a: Tensor, b: Tensor, alignment: float, fallbacks: Optional[list] = None) -> Tensor:
    """a aligned to b by Q^alignment (a new float32 tensor; a and b as stored, 2-D or more). Rows are centred
    first; the result's row mean is lerp(mean a, mean b, alignment). A fractional alignment uses the rotation nearest
    to the optimal map (no reflection), as a fractional power of a reflection is not real. Holds two float32 copies
    of the matrix at a time (the centred a and b, then the centred a and the result)."""
    rows, cols = matrix_view(a.shape)
    a_centred, a_mean = _centred(a, rows, cols)
    b_centred, b_mean = _centred(b, rows, cols)
    fractional = alignment != round(alignment)
    transform = orthogonal.procrustes(a_centred, b_centred, cancel_reflection=fractional)
    del b_centred
    turned = transform.apply(a_centred, alignment, fallbacks)
    del a_centred
    return turned.add_(torch.lerp(a_mean, b_mean, alignment)).reshape(a.shape)


def rotate_delta(base, models, params: MethodParams, key, fallbacks):
    """d = rotate(C, M1, alignment) - C; alignment 0, a 1-D key, or M1 equal to C in float16: d = 0 (sd-mecha's
    lerp(C, M1, alpha = 0) there)."""
    base, model = base.detach(), models[0].detach()
    if params.alignment == 0 or base.dim() <= 1 or torch.allclose(base.half(), model.half()):
        return torch.zeros(base.shape, dtype=torch.float32, device=base.device)
    return subtract_(rotate(base, model, params.alignment, fallbacks), base)


DECLARED: tuple[CombineMethod, ...] = (
    CombineMethod("rotate", "Rotate", rotate_delta, 1, ("alignment",),
                  "R = C's centred rows x Q^alignment (Q: orthogonal Procrustes of C onto M1) + the row means "
                  "moved by alignment; d = R - C (1-D keys: d = 0)",
                  max_models=1, reference="orthogonal Procrustes (Schoenemann 1966); sd-mecha rotate, alpha 0",
                  compute_bound=True),
)
