"""SciPy-exact N-dimensional median and Gaussian filters in torch (for smoothAdd).

Both reproduce ``scipy.ndimage.median_filter(x, size=3)`` and
``scipy.ndimage.gaussian_filter(x, sigma=1)`` with their default boundary mode
"reflect" (half-sample symmetric: d c b a | a b c d | d c b a, repeated when the
kernel is wider than the axis), on float32 input.

Medians drop length-1 axes (they only repeat values), use exact min/max
networks for 1-D and 2-D windows, a compiled kernel for 3x3 conv kernels
(native.py beside this module; a leading length-1 axis only triples every value, which
keeps the median), and otherwise gather the 3^N neighbourhood
of a slab of the tensor and select its middle value; slabs along dim 0 bound
the temporary memory. The Gaussian is separable, with SciPy's kernel (radius
int(4*sigma + 0.5), weights exp(-x^2 / 2 sigma^2) normalised to sum 1).
"""
from __future__ import annotations

import concurrent.futures as cf
import functools
import itertools

import numpy as np
import torch

from ..threads import compute_threads, torch_threads
from .native import MAX_THREADS, median3_kernel4d

MEDIAN_BUDGET = 1 << 24  # elements of the neighbourhood stack held at once (64 MiB in float32)


def reflect_index(n: int, before: int, after: int, device=None) -> torch.Tensor:
    """Source index for each padded position of an axis of length n (SciPy "reflect")."""
    idx = torch.arange(-before, n + after, device=device)
    period = 2 * n
    idx = torch.remainder(idx, period)
    return torch.where(idx >= n, period - 1 - idx, idx)


def _pad_reflect(x: torch.Tensor, radius: int, dims) -> torch.Tensor:
    for d in dims:
        x = x.index_select(d, reflect_index(x.shape[d], radius, radius, x.device))
    return x


def _med3(a, b, c):
    return torch.maximum(torch.minimum(a, b), torch.minimum(torch.maximum(a, b), c))


def _sort3(a, b, c):
    lo, hi = torch.minimum(a, b), torch.maximum(a, b)
    lo, c = torch.minimum(lo, c), torch.maximum(lo, c)
    mid, hi = torch.minimum(hi, c), torch.maximum(hi, c)
    return lo, mid, hi


def _median1d(x: torch.Tensor) -> torch.Tensor:
    p = x.index_select(0, reflect_index(x.shape[0], 1, 1, x.device))
    n = x.shape[0]
    return _med3(p[0:n], p[1:n + 1], p[2:n + 2])


def _median2d(x: torch.Tensor) -> torch.Tensor:
    """3x3 median without sorting 9 values per element: sort each column triple once
    (shared by three windows), then median = med3(max of lows, med3 of mids, min of highs),
    which is exact for a 3x3 window."""
    h, w = x.shape
    p = _pad_reflect(x, 1, (0, 1))
    lo, mid, hi = _sort3(p[0:h], p[1:h + 1], p[2:h + 2])
    cols = [slice(j, j + w) for j in range(3)]
    max_lo = torch.maximum(torch.maximum(lo[:, cols[0]], lo[:, cols[1]]), lo[:, cols[2]])
    min_hi = torch.minimum(torch.minimum(hi[:, cols[0]], hi[:, cols[1]]), hi[:, cols[2]])
    med_mid = _med3(mid[:, cols[0]], mid[:, cols[1]], mid[:, cols[2]])
    return _med3(max_lo, med_mid, min_hi)


def median_filter3(x: torch.Tensor) -> torch.Tensor:
    """Median over the 3^N neighbourhood of every element (SciPy median_filter, size=3).

    Axes of length 1 only repeat each window value 3 times, which leaves the median
    unchanged, so they are dropped first; 1-D and 2-D cases then use small exact
    min/max networks, and other shapes a gathered neighbourhood and torch's median.
    """
    if x.dim() == 0:
        return x.clone()
    core = x.reshape([n for n in x.shape if n != 1]) if 1 in x.shape else x
    if core.dim() == 0:
        return x.clone()
    if core.dim() == 1:
        return _median1d(core).reshape(x.shape)
    if core.dim() == 2:
        return _median2d(core).reshape(x.shape)
    if core.dim() <= 4 and core.shape[-1] <= 3 and core.shape[-2] <= 3:  # conv kernels: the C kernel
        fast = median3_kernel4d(core.reshape((1,) * (4 - core.dim()) + tuple(core.shape)))
        if fast is not None:
            return fast.reshape(x.shape)
    return _median_gather(core).reshape(x.shape)


def _median_gather(x: torch.Tensor, use_numpy: bool | None = None) -> torch.Tensor:
    """General case (e.g. 3x3 conv kernels, 81 values): gather each slab's neighbourhoods
    with the window last, then select the middle value with numpy's introselect on
    two threads (it releases the GIL and beat torch's median here)."""
    nd = x.dim()
    window = 3 ** nd
    out = torch.empty_like(x)
    per_row = window * (x.numel() // x.shape[0])
    rows_per_slab = max(1, MEDIAN_BUDGET // per_row)
    offsets = list(itertools.product(range(3), repeat=nd))
    padded_rest = _pad_reflect(x, 1, range(1, nd))  # every axis but 0; axis 0 per slab
    rows0 = reflect_index(x.shape[0], 1, 1, x.device)
    for start in range(0, x.shape[0], rows_per_slab):
        stop = min(start + rows_per_slab, x.shape[0])
        slab = padded_rest.index_select(0, rows0[start:stop + 2])
        shape = (stop - start,) + tuple(x.shape[1:])
        stack = torch.empty((window,) + shape, dtype=x.dtype, device=x.device)
        for i, off in enumerate(offsets):
            view = slab
            for d, o in enumerate(off):
                view = view.narrow(d, o, shape[d])
            stack[i].copy_(view)
        if (x.is_cpu if use_numpy is None else use_numpy):
            rows = stack.reshape(window, -1).t().contiguous().numpy()
            out[start:stop] = torch.from_numpy(_select_middle(rows)).reshape(shape)
        else:  # GPU: torch's median is fast there
            out[start:stop] = stack.median(dim=0).values
    return out


def _select_middle(rows: np.ndarray) -> np.ndarray:
    k = rows.shape[1] // 2
    threads = compute_threads(MAX_THREADS)
    parts = np.array_split(rows, threads) if rows.shape[0] >= 4096 * threads else [rows]
    if len(parts) == 1:
        return np.partition(rows, k, axis=1)[:, k].copy()
    with cf.ThreadPoolExecutor(len(parts)) as pool:
        return np.concatenate(list(pool.map(lambda r: np.partition(r, k, axis=1)[:, k], parts)))


def gaussian_kernel(sigma: float = 1.0, truncate: float = 4.0) -> torch.Tensor:
    radius = int(truncate * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


SMALL_AXIS = 8  # axes up to this length (conv kernel axes) are filtered by one small matrix


def gaussian_matrix(n: int, sigma: float = 1.0, truncate: float = 4.0) -> torch.Tensor:
    """The 1-D reflect-mode Gaussian on an axis of length n as an n x n matrix (taps folded back)."""
    weights = gaussian_kernel(sigma, truncate)
    radius = (len(weights) - 1) // 2
    src = reflect_index(n, radius, radius)
    g = torch.zeros(n, n, dtype=torch.float64)
    for i in range(n):
        g[i].index_add_(0, src[i:i + 2 * radius + 1], weights)
    return g


@functools.lru_cache(maxsize=64)
def _tail_matrix(tail: tuple[int, ...], sigma: float, truncate: float) -> torch.Tensor:
    """Transposed Kronecker product of the trailing axes' matrices, for ``flat @ matrix``."""
    matrix = torch.ones(1, 1, dtype=torch.float64)
    for n in tail:
        matrix = torch.kron(matrix, gaussian_matrix(n, sigma, truncate))
    return matrix.t().contiguous()


def _blur_axis(padded: torch.Tensor, d: int, n: int, weights: list, radius: int) -> torch.Tensor:
    """One Gaussian pass along axis d of a tensor already reflect-padded by radius on that axis."""
    acc = padded.narrow(d, radius, n) * weights[radius]
    for k in range(1, radius + 1):
        pair = padded.narrow(d, radius - k, n) + padded.narrow(d, radius + k, n)
        acc.add_(pair, alpha=weights[radius + k])
    return acc


def gaussian_filter(x: torch.Tensor, sigma: float = 1.0, truncate: float = 4.0, from_axis: int = 0) -> torch.Tensor:
    """Separable Gaussian over every axis from ``from_axis`` on (SciPy gaussian_filter, mode "reflect").

    Long axes: a weighted sum of shifted slices of the reflect-padded tensor, pairing
    the symmetric taps (half the multiplies). Short trailing axes (the 3x3 of a conv
    kernel): one matrix product with the Kronecker product of their folded 1-D
    filters, since shifting tiny strided slices is slow. Accumulation is float32;
    SciPy's float64 lines differ from it by about one float32 rounding step.
    """
    weights = gaussian_kernel(sigma, truncate).tolist()
    radius = (len(weights) - 1) // 2
    small = 0  # how many trailing axes go through the matrix
    while small < x.dim() - from_axis and x.shape[x.dim() - 1 - small] <= SMALL_AXIS and small < 2:
        small += 1
    out = x
    for d in range(from_axis, x.dim() - small):
        n = out.shape[d]
        if n == 1:
            continue  # a length-1 axis reflects onto itself; the weights sum to 1
        out = _blur_axis(out.index_select(d, reflect_index(n, radius, radius, out.device)), d, n, weights, radius)
    if small:
        matrix = _tail_matrix(tuple(x.shape[x.dim() - small:]), sigma, truncate)
        flat = out.reshape(-1, matrix.shape[0])
        out = (flat @ matrix.to(flat.dtype).to(flat.device)).reshape(x.shape)
    return out if out is not x else x.clone()


SMOOTH_BUDGET = 1 << 22  # elements filtered at once (16 MiB in float32): bounds the temporaries


def smooth(x: torch.Tensor, budget: int = SMOOTH_BUDGET) -> torch.Tensor:
    """smoothAdd's filter: Gaussian(sigma 1) of the 3^N median.

    Large tensors (a text encoder's token embedding is 38-63 M values) are done in
    slabs of rows with a halo: output rows [s, e) need median rows s-4 .. e+3 (the
    Gaussian's radius), which need input rows s-5 .. e+4. Every value is computed
    exactly as in the whole-tensor filter, with about a tenth of the memory.
    Compute-bound: torch uses the cores idle when the filter starts (threads.py).
    """
    with torch_threads(compute_threads()):
        return _smooth(x, budget)


def _smooth(x: torch.Tensor, budget: int) -> torch.Tensor:
    rows = x.shape[0] if x.dim() else 0
    if x.dim() < 2 or rows < 2 or x.numel() <= budget:
        return gaussian_filter(median_filter3(x))
    weights = gaussian_kernel().tolist()
    radius = (len(weights) - 1) // 2
    step = max(1, budget // (x.numel() // rows))
    source_rows = reflect_index(rows, radius, radius, x.device)
    out = torch.empty_like(x)
    for s in range(0, rows, step):
        e = min(rows, s + step)
        lo, hi = max(0, s - radius), min(rows, e + radius)     # median rows the Gaussian reads
        first, last = max(0, lo - 1), min(rows, hi + 1)        # input rows those medians read
        med = median_filter3(x[first:last]).narrow(0, lo - first, hi - lo)
        padded = med.index_select(0, source_rows[s:e + 2 * radius] - lo)
        out[s:e] = gaussian_filter(_blur_axis(padded, 0, e - s, weights, radius), from_axis=1)
    return out
