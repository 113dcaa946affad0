"""Singular value decompositions of one key's matrix, for the methods that need them: the thin SVD (exact), its top
singular triplets, the orthogonal polar factor, and a matrix's best rank-r approximation, exact or randomized (a range
finder with power iterations, Halko, Martinsson & Tropp, "Finding structure with randomness", arXiv:0909.4061) with
draws from a caller's generator so a merge is reproducible per key (torch.svd_lowrank draws from the global one).

A matrix much wider or taller than square (an SDXL conv's 1280 x 23040, a 10240 x 1280 feed-forward, a 49408 x 1280
token embedding) is first reduced by a QR of its long side and the small square factor decomposed: the same
decomposition, as accurate as LAPACK's own, about 7x faster there on CPU. The products with the long Q come last and
only for the columns kept, so a tall matrix's work holds its Q and the result beside it, not a full U as well."""
from __future__ import annotations

from typing import Optional

import torch

Tensor = torch.Tensor

OVERSAMPLING = 10       # extra random directions beyond the rank: the range finder's slack
POWER_ITERATIONS = 2    # (A A^T)^q sharpens a slowly decaying spectrum
EXACT_FRACTION = 0.5    # rank >= this share of min(shape): the exact SVD costs about as much and has no error


LONG_SIDE = 2  # a side over this many times the other is reduced by a QR first


def svd(a: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """torch.linalg.svd (thin). LAPACK's divide and conquer can fail to converge in float32 on a matrix with many
    (near) zero singular values, as Iso-CTS' residuals are (the common subspace projected out): such a matrix is
    decomposed again in float64, where it converges, and the factors returned in a's dtype."""
    try:
        return torch.linalg.svd(a, full_matrices=False)
    except torch.linalg.LinAlgError:
        if a.dtype == torch.float64:
            raise
        u, s, vh = torch.linalg.svd(a.double(), full_matrices=False)
        return u.to(a.dtype), s.to(a.dtype), vh.to(a.dtype)


class Factored:
    """A matrix a prepared for its exact SVD: ("tall", Q, R) with a = Q R, ("wide", Q, R) with a^T = Q R, or
    ("square", a). A caller that drops its own reference to a once this exists holds Q alone from here on: that is
    how a method keeps one full-size matrix fewer on its largest keys."""

    def __init__(self, a: Tensor):
        rows, cols = a.shape
        self.rows, self.cols = rows, cols
        if cols > LONG_SIDE * rows:
            self.side, (self.q, self.r) = "wide", torch.linalg.qr(a.mT)
        elif rows > LONG_SIDE * cols:
            self.side, (self.q, self.r) = "tall", torch.linalg.qr(a)
        else:
            self.side, self.q, self.r = "square", a, a

    def top(self, k: int) -> tuple[Tensor, Tensor, Tensor]:
        """The top k singular triplets: U (rows x k), S (k), Vh (k x cols), new tensors (no view of a full U or Vh
        stays alive)."""
        if self.side == "wide":
            u, s, vh = svd(self.r.mT)
            return u[:, :k].clone(), s[:k].clone(), vh[:k] @ self.q.mT
        if self.side == "tall":
            u, s, vh = svd(self.r)
            return self.q @ u[:, :k], s[:k].clone(), vh[:k].clone()
        u, s, vh = svd(self.q)
        return u[:, :k].clone(), s[:k].clone(), vh[:k].clone()

    def polar(self) -> Tensor:
        """The orthogonal polar factor P Q^T of a = P S Q^T: the nearest matrix with orthonormal columns (or rows)."""
        if self.side == "wide":
            u, _, vh = svd(self.r.mT)
            return (u @ vh) @ self.q.mT
        if self.side == "tall":
            u, _, vh = svd(self.r)
            return self.q @ (u @ vh)
        u, _, vh = svd(self.q)
        return u @ vh


def top_svd(a: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """The top k singular triplets of a's exact thin SVD (Factored.top)."""
    return Factored(a).top(k)


def polar(a: Tensor) -> Tensor:
    """a's orthogonal polar factor (Factored.polar)."""
    return Factored(a).polar()


def truncated(matrix: Tensor, rank: int, generator: Optional[torch.Generator] = None) -> Tensor:
    """U_r diag(s_r) V_r^T of a 2-D float32 matrix (a new tensor); rank >= min(shape): the matrix itself (a copy).
    The randomized path is used when rank + OVERSAMPLING < EXACT_FRACTION * min(shape) and a generator is given."""
    rows, cols = matrix.shape
    smallest = min(rows, cols)
    if rank >= smallest:
        return matrix.clone()
    if generator is None or rank + OVERSAMPLING >= EXACT_FRACTION * smallest:
        u, s, vh = top_svd(matrix, rank)
    else:
        u, s, vh = randomized_svd(matrix, rank + OVERSAMPLING, generator)
        u, s, vh = u[:, :rank], s[:rank], vh[:rank]
    return (u * s) @ vh


def randomized_svd(matrix: Tensor, width: int, generator: torch.Generator,
                   power_iterations: int = POWER_ITERATIONS) -> tuple[Tensor, Tensor, Tensor]:
    """An approximate thin SVD with `width` singular triplets: an orthonormal basis Q of A's range from A times a
    Gaussian test matrix, refined by power iterations (re-orthonormalised each half-step), then the exact SVD of
    the small Q^T A. Works on the short side (A^T for a wide A)."""
    wide = matrix.shape[0] < matrix.shape[1]
    a = matrix.mT if wide else matrix
    probe = torch.randn(a.shape[1], width, generator=generator, dtype=torch.float32).to(a.device, a.dtype)
    basis = torch.linalg.qr(a @ probe).Q
    for _ in range(power_iterations):
        basis = torch.linalg.qr(a.mT @ basis).Q
        basis = torch.linalg.qr(a @ basis).Q
    u_small, s, vh = torch.linalg.svd(basis.mT @ a, full_matrices=False)
    u = basis @ u_small
    if wide:
        return vh.mT, s, u.mT
    return u, s, vh
