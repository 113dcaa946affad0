"""Orthogonal maps for aligning one matrix to another: orthogonal Procrustes, fractional powers of an orthogonal
matrix, and geodesics between orthonormal frames (the Stiefel manifold), for rotate (procrustes.py).

The decompositions run in float64 on the small matrices (the p x p cross matrix, frames of the matrix's row count):
never on a whole tensor."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import torch

Tensor = torch.Tensor

# cos(theta) + SPLIT * sin(theta) separates an orthogonal matrix's eigenvalues e^(+-i theta) (a conjugate pair has
# distinct values for any SPLIT != 0); two eigenvalues collide only when theta_1 + theta_2 = 2 atan(SPLIT).
SPLIT = 0.5
STIEFEL_TOLERANCE = 1e-10  # float64: the log's iteration stops when its lower-right block is this small
STIEFEL_ITERATIONS = 100
STIEFEL_CONVERGED = 1e-6   # a log whose residual stays above this after the iterations is not one
NULL_SINGULAR = 1e-5  # a singular value of the wide cross matrix below this share of the largest is a null one


def orthogonal_eigen(q: Tensor) -> tuple[Tensor, Tensor]:
    """Unitary eigenvectors W and eigenvalue angles theta of a real orthogonal q (q = W diag(e^(i theta)) W^H),
    from the Hermitian (q + q^T)/2 + SPLIT (q - q^T)/(2i), which shares q's eigenvectors (q is normal): eigh gives
    an orthonormal W even for clustered eigenvalues, where a general eigensolver's vectors drift apart."""
    q = q.double()
    hermitian = torch.complex((q + q.mT) / 2, (q.mT - q) * (SPLIT / 2))
    _, vectors = torch.linalg.eigh(hermitian)
    eigenvalues = (vectors.conj() * (q.to(vectors.dtype) @ vectors)).sum(-2)
    return vectors, torch.angle(eigenvalues)


def _from_eigen(vectors: Tensor, values: Tensor) -> Tensor:
    return ((vectors * values.unsqueeze(-2)) @ vectors.mH).real


def orthogonal_power(q: Tensor, t: float) -> Tensor:
    """q^t for a real orthogonal q: W diag(e^(i t theta)) W^H with principal angles, real part (float64). An
    eigenvalue -1 (theta = pi) has no real fractional power: its real part is taken."""
    if t == 1:
        return q.double()
    if t == 0:
        return torch.eye(q.shape[-1], dtype=torch.float64, device=q.device)
    vectors, angles = orthogonal_eigen(q)
    return _from_eigen(vectors, torch.polar(torch.ones_like(angles), angles * t))


def orthogonal_log(q: Tensor) -> Tensor:
    """The principal logarithm of a real orthogonal q with det +1: a real skew-symmetric matrix (float64)."""
    vectors, angles = orthogonal_eigen(q)
    return _from_eigen(vectors, torch.complex(torch.zeros_like(angles), angles))


@dataclass(frozen=True)
class FullRotation:
    """x -> x q, q orthogonal (p x p)."""

    q: Tensor

    def apply(self, x: Tensor, t: float, fallbacks: Optional[list] = None) -> Tensor:
        return x @ orthogonal_power(self.q, t).to(x.dtype)


@dataclass(frozen=True)
class FrameRotation:
    """x -> x - x v v^T + x u v^T for orthonormal frames u, v (p x n, n < p): the rows' components along v are sent
    along u, the rest is kept. A fraction t follows the geodesic between the frames: with l and r the points at
    (1 + t)/2 and (1 - t)/2 of the way from v to u, x -> x - x r r^T + x l r^T (t = 0: x; t = 1: the map above)."""

    u: Tensor
    v: Tensor

    def apply(self, x: Tensor, t: float, fallbacks: Optional[list] = None) -> Tensor:
        left, right = self.u, self.v
        if left.shape[1] == 0:  # no pair of directions to turn
            return x.clone()
        direction = None if t == 1 else stiefel_log(self.v, self.u)
        if direction is not None:
            left = stiefel_exp(self.v, direction * ((1 + t) / 2))
            right = stiefel_exp(self.v, direction * ((1 - t) / 2))
        elif t != 1:  # frames too far apart for one geodesic: the fraction t of the whole map's change
            if fallbacks is not None:
                fallbacks.append("rotate: no Stiefel geodesic between the frames, the map's change scaled by "
                                 "alignment")
            return x + ((x @ (left - right).to(x.dtype)) @ right.mT.to(x.dtype)).mul_(t)
        left, right = left.to(x.dtype), right.to(x.dtype)
        return x + (x @ (left - right)) @ right.mT


def procrustes(a: Tensor, b: Tensor, cancel_reflection: bool) -> Union[FullRotation, FrameRotation]:
    """The orthogonal map x -> x Q that brings a's rows closest to b's (minimises |a Q - b|_F), a and b (n x p).
    n >= p: Q = U V^T from the SVD of the p x p cross matrix a^T b; cancel_reflection flips U's last column where
    det Q < 0 (a fractional power needs a rotation). n < p: a^T b has rank n; its thin SVD u s v^T (computed as
    a^T R^T, b^T = Q_b R, then v = Q_b V) gives the map on the frames (FrameRotation); the singular pairs of a
    numerically zero singular value (centred rows have rank n - 1 at most, so there are 2 or more) are dropped: their
    vectors are an arbitrary basis of a null space, and the map leaves those directions as they are."""
    rows, cols = a.shape
    if rows >= cols:
        u, _, vh = torch.linalg.svd((a.mT @ b).double())
        if cancel_reflection and torch.linalg.det(u @ vh) < 0:
            u[:, -1] = -u[:, -1]
        return FullRotation(u @ vh)
    b_q, b_r = torch.linalg.qr(b.mT.double())
    u, s, vh = torch.linalg.svd(a.mT.double() @ b_r.mT, full_matrices=False)
    kept = int((s > s[0] * NULL_SINGULAR).sum()) if s[0] > 0 else 0
    return FrameRotation(u[:, :kept], b_q @ vh[:kept].mT)


def _qr_positive(x: Tensor) -> tuple[Tensor, Tensor]:
    """Thin QR with R's diagonal >= 0 (unique for a full-rank x)."""
    q, r = torch.linalg.qr(x)
    sign = torch.sign(torch.diagonal(r))
    sign[sign == 0] = 1
    return q * sign, r * sign.unsqueeze(-1)


def stiefel_exp(frame: Tensor, tangent: Tensor) -> Tensor:
    """The point reached from the orthonormal frame U (p x n) along the tangent D under the canonical metric:
    A = U^T D, Q R = D - U A (k = min(p - n, n) columns kept), [M; N] = expm([[A, -R^T], [R, 0]])[:, :n],
    result U M + Q N (Edelman, Arias & Smith, "The geometry of algorithms with orthogonality constraints")."""
    p, n = frame.shape
    k = min(p - n, n)
    a = frame.mT @ tangent
    q, r = _qr_positive(tangent - frame @ a)
    q, r = q[:, :k], r[:k]
    block = torch.zeros(n + k, n + k, dtype=a.dtype, device=a.device)
    block[:n, :n] = a
    block[:n, n:] = -r.mT
    block[n:, :n] = r
    m = torch.linalg.matrix_exp(block)[:, :n]
    return frame @ m[:n] + q @ m[n:]


def stiefel_log(start: Tensor, end: Tensor, tolerance: float = STIEFEL_TOLERANCE,
                iterations: int = STIEFEL_ITERATIONS) -> Optional[Tensor]:
    """The tangent D at the frame `start` (p x n, n < p) whose geodesic reaches `end`: stiefel_exp(start, D) = end
    (Zimmermann, "A matrix-algebraic algorithm for the Riemannian logarithm on the Stiefel manifold under the
    canonical metric", arXiv:1604.05054). With M = U0^T U1 and Q N = U1 - U0 M, the orthogonal V = [[M, X], [N, Y]]
    completes [M; N]; the block (X; Y) is turned until log(V)'s lower-right block vanishes, then
    D = U0 L_11 + Q L_21. float64. None where the frames are too far apart for the iteration (it has not reached
    STIEFEL_CONVERGED after `iterations` steps, or a decomposition fails)."""
    try:
        return _stiefel_log(start, end, tolerance, iterations)
    except RuntimeError:  # torch.linalg's errors on a diverging iteration
        return None


def _stiefel_log(start: Tensor, end: Tensor, tolerance: float, iterations: int) -> Optional[Tensor]:
    start, end = start.double(), end.double()
    p, n = start.shape
    k = min(p - n, n)
    m = start.mT @ end
    q, nmat = _qr_positive(end - start @ m)
    q, nmat = q[:, :k], nmat[:k]
    first = torch.cat((m, nmat))
    complete = torch.linalg.qr(first, mode="complete").Q
    v = torch.cat((first, complete[:, n:]), dim=1)
    # start the turning from the closest rotation: make the lower-right block symmetric positive (semi)definite
    left, _, right_h = torch.linalg.svd(v[n:, n:])
    v[:, n:] = v[:, n:] @ (right_h.mT @ left.mT)
    if torch.linalg.det(v) < 0:
        v[:, -1] = -v[:, -1]
    log = orthogonal_log(v)
    for _ in range(iterations):
        residual = float(torch.linalg.matrix_norm(log[n:, n:]))
        if residual <= tolerance:
            break
        v[:, n:] = v[:, n:] @ torch.linalg.matrix_exp(-log[n:, n:])
        log = orthogonal_log(v)
    else:
        residual = float(torch.linalg.matrix_norm(log[n:, n:]))
    if not residual <= STIEFEL_CONVERGED:
        return None
    tangent = start @ log[:n, :n] + q @ log[n:, :n]
    # an eigenvalue -1 of V has no principal real logarithm (the real part of i pi is 0): check the geodesic
    if not float((stiefel_exp(start, tangent) - end).abs().max()) <= STIEFEL_CONVERGED:
        return None
    return tangent
