"""A matrix's best rank-r approximation by its singular value decomposition: exact (torch.linalg.svd) or
randomized (a range finder with power iterations, Halko, Martinsson & Tropp, "Finding structure with randomness",
arXiv:0909.4061), with draws from a caller's generator so a merge is reproducible per key.

torch.svd_lowrank draws from the global generator; this one takes a torch.Generator."""
from __future__ import annotations

from typing import Optional

import torch

Tensor = torch.Tensor

OVERSAMPLING = 10       # extra random directions beyond the rank: the range finder's slack
POWER_ITERATIONS = 2    # (A A^T)^q sharpens a slowly decaying spectrum
EXACT_FRACTION = 0.5    # rank >= this share of min(shape): the exact SVD costs about as much and has no error


def truncated(matrix: Tensor, rank: int, generator: Optional[torch.Generator] = None) -> Tensor:
    """U_r diag(s_r) V_r^T of a 2-D float32 matrix (a new tensor); rank >= min(shape): the matrix itself (a copy).
    The randomized path is used when rank + OVERSAMPLING < EXACT_FRACTION * min(shape) and a generator is given."""
    rows, cols = matrix.shape
    smallest = min(rows, cols)
    if rank >= smallest:
        return matrix.clone()
    if generator is None or rank + OVERSAMPLING >= EXACT_FRACTION * smallest:
        u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    else:
        u, s, vh = randomized_svd(matrix, rank + OVERSAMPLING, generator)
    return (u[:, :rank] * s[:rank]) @ vh[:rank]


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
