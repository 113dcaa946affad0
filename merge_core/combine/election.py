"""TIES' trim, DARE's drop and the sign election + disjoint mean over task vectors made one chunk at a time.

Why: TIES of three SD1.5 fine-tunes held, for the 38 M-value token embedding, every model in float32, every
task vector, every trimmed copy and kthvalue's value + int64 index copies at once (2.9 GB peak RSS). Here a
task vector is never stored whole: each is recomputed per chunk from its model and the base (a subtraction,
far cheaper than keeping it), trimming keeps only a threshold per model (one |t| scratch buffer, partitioned
in place) and DARE a bool mask per model; the vote and the agreeing sum and count are running buffers.
Results are bit-for-bit those of the whole-tensor formulas: every element goes through the same float32
operations in the same order (chunks start at multiples of CHUNK, so vectorised loops split the same way).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

Tensor = torch.Tensor
CHUNK = 1 << 20  # elements per pass step: 4 MiB of float32, a multiple of every SIMD width
ZERO = torch.zeros((), dtype=torch.float32)


def chunks(numel: int) -> list[slice]:
    return [slice(i, min(i + CHUNK, numel)) for i in range(0, numel, CHUNK)]


class TaskVector:
    """w * (model - base) of one key, flat float32, computed per slice on demand."""

    def __init__(self, model: Tensor, base: Optional[Tensor] = None, weight: float = 1.0):
        self.model = model.detach().reshape(-1)
        self.base = None if base is None else base.detach().reshape(-1)
        self.weight = weight
        self.numel, self.device = self.model.numel(), self.model.device

    def values(self, s: slice) -> Tensor:
        """A new float32 tensor (callers may modify it)."""
        x = self.model[s].to(torch.float32, copy=True)
        if self.base is not None:
            x.sub_(self.base[s])
        return x.mul_(self.weight) if self.weight != 1.0 else x


class Trimmed:
    """TIES' trim of a task vector: x where |x| >= the k-th smallest |x|, k = max(floor((1 - density) n), 1)."""

    def __init__(self, tau: TaskVector, density: float, scratch: Tensor):
        self.tau, self.numel, self.device = tau, tau.numel, tau.device
        k = max(int((1.0 - density) * tau.numel), 1)
        for s in chunks(tau.numel):
            torch.abs(tau.values(s), out=scratch[s])
        self.threshold = kth_smallest(scratch[:tau.numel], k)

    def values(self, s: slice) -> Tensor:
        x = self.tau.values(s)
        return torch.where(x.abs() >= self.threshold, x, ZERO, out=x)


def kth_smallest(values: Tensor, k: int) -> Tensor:
    """The k-th smallest value (1-based; NaN counts as largest); ``values`` is reordered (it is scratch).
    On the CPU a NumPy partition in place: torch's kthvalue copies the values and adds int64 indices."""
    if values.device.type == "cpu":
        array = values.numpy()
        array.partition(k - 1)
        return values[k - 1].clone()
    return values.kthvalue(k).values


class Dropped:
    """DARE's drop of a task vector: each element kept with probability 1 - p (uniform draws >= p from the
    generator, in the tensor's order), the kept ones scaled by 1/(1 - p); p = 1 drops everything."""

    def __init__(self, tau: TaskVector, drop_rate: float, generator: torch.Generator):
        self.tau, self.numel, self.device, self.drop_rate = tau, tau.numel, tau.device, drop_rate
        self.keep = None
        if drop_rate < 1.0:
            self.keep = torch.rand(tau.numel, generator=generator, dtype=torch.float32).to(tau.device) >= drop_rate

    def values(self, s: slice) -> Tensor:
        x = self.tau.values(s)
        if self.keep is None:
            return x.zero_()
        return torch.where(self.keep[s], x.div_(1.0 - self.drop_rate), ZERO, out=x)


def whole(vector, shape) -> Tensor:
    """A chunked vector as one tensor of ``shape``."""
    out = torch.empty(vector.numel, dtype=torch.float32, device=vector.device)
    for s in chunks(vector.numel):
        out[s] = vector.values(s)
    return out.reshape(shape)


def elect_mean(vectors: Sequence) -> Tensor:
    """s = sign(sum_i t_i); d = mean of the t_i with sign(t_i) = s and t_i != 0 (0 where none), flat float32.
    Two passes over the chunks (the vote, then the agreeing values): memory is the vote, the sum and a count."""
    numel, device = vectors[0].numel, vectors[0].device
    elected = torch.zeros(numel, dtype=torch.float32, device=device)
    for s in chunks(numel):
        part = elected[s]
        for v in vectors:
            part.add_(v.values(s))
        torch.sign(part, out=part)
    summed = torch.zeros(numel, dtype=torch.float32, device=device)
    count = torch.zeros(numel, dtype=torch.uint8 if len(vectors) < 256 else torch.int32, device=device)
    for s in chunks(numel):
        for v in vectors:
            x = v.values(s)
            agree = (torch.sign(x) == elected[s]) & (x != 0)  # sign(NaN) = 0: a NaN agrees with a 0 vote
            summed[s].add_(torch.where(agree, x, ZERO, out=x))
            count[s].add_(agree)
    del elected
    for s in chunks(numel):
        c = count[s].float()
        part = summed[s]
        torch.where(c > 0, part / c.clamp_min(1.0), ZERO, out=part)
    return summed
