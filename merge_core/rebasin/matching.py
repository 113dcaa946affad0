"""Weight matching (Git Re-Basin, Ainsworth et al. 2022): B's permutations that maximise sum <W_a, P W_b>.

Coordinate descent over the groups in a seeded random order: each step solves one group exactly given the
others' current permutations, by linear assignment (scipy's linear_sum_assignment) on the similarity of A's
units and B's units, summed over every window the group indexes. A group with blocks (GroupNorm groups,
attention heads) is solved as blocks: the best assignment inside every pair of blocks (one per lane), then
the assignment of blocks that maximises the sum of those. A group is solved again only when a group that
shares a key with it changed; the descent stops when a round changes nothing, or after ``iterations`` rounds.

Tensors are read per window through ``load_a`` / ``load_b`` (one key of each at a time, in float32), so
memory holds one key pair and the groups' similarity matrices, never a model.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import torch

from ..engine.progress import ProgressFn, StopFn, stop_if_asked
from .permutations import Orders, Permutations, structured
from .spec import PermGroup, neighbours

Loader = Callable[[str], torch.Tensor]


@dataclass
class MatchStats:
    """What the descent did: rounds run, steps that changed a group, and the match score of the permuted
    weights: sum over groups of <A, P B> with identity permutations (before) and the final ones (after), with
    the squared norms of A and B over the same windows (for a cosine)."""
    rounds: int = 0
    converged: bool = False  # a round changed nothing (or nothing was left to solve) before the last one
    changes: int = 0
    solves: int = 0
    before: dict[int, float] = field(default_factory=dict)
    after: dict[int, float] = field(default_factory=dict)
    norm_a: dict[int, float] = field(default_factory=dict)
    norm_b: dict[int, float] = field(default_factory=dict)

    def cosine(self, scores: dict[int, float]) -> float:
        denom = (sum(self.norm_a.values()) * sum(self.norm_b.values())) ** 0.5
        return sum(scores.values()) / denom if denom else 0.0


def _units(tensor: torch.Tensor, axis: int, offset: int, width: int) -> torch.Tensor:
    """(width, rest): one row per unit of the window."""
    return tensor.narrow(axis, offset, width).movedim(axis, 0).reshape(width, -1).float()


def similarities(group: PermGroup, g: int, perms: Permutations, load_a: Loader, load_b: Loader):
    """Per lane, S[i, j] = <A unit i, B unit j> over the group's windows (B with the other groups' current
    permutations applied), as float64 numpy; and the squared norms of A's and B's windows."""
    cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    sims, norm_a, norm_b = [], 0.0, 0.0
    for lane in group.lanes:
        s = torch.zeros(group.width, group.width, dtype=torch.float32)
        for w in lane:
            if w.key not in cache:
                cache = {w.key: (load_a(w.key), perms.apply(w.key, load_b(w.key), skip_group=g))}
            a, b = cache[w.key]
            ua, ub = _units(a, w.axis, w.offset, group.width), _units(b, w.axis, w.offset, group.width)
            s += (ua @ ub.T).cpu()
            norm_a += float(ua.square().sum())
            norm_b += float(ub.square().sum())
        sims.append(s.double().numpy())
    return sims, norm_a, norm_b


def _assign(s: np.ndarray) -> tuple[np.ndarray, float]:
    # imported here: scipy.optimize takes 0.3 s to import, which every CLI command and the node pack's
    # load would pay though only re-basin solves assignments
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(s, maximize=True)
    return cols, float(s[rows, cols].sum())


def solve_group(group: PermGroup, sims: list[np.ndarray]) -> tuple[Orders, float]:
    """The structured permutation of one group that maximises the summed similarity, and that maximum."""
    bw, n = group.block_width, group.blocks
    if n == 1:
        found = [_assign(s) for s in sims]
        return tuple(torch.as_tensor(c, dtype=torch.long) for c, _ in found), sum(v for _, v in found)
    if bw == 1:
        cols, value = _assign(np.sum(sims, axis=0))
        order = torch.as_tensor(cols, dtype=torch.long)
        return tuple(order for _ in sims), value
    values = np.zeros((n, n))
    inner = np.zeros((len(sims), n, n, bw), dtype=np.int64)
    for p in range(n):
        for q in range(n):
            for lane, s in enumerate(sims):
                cols, value = _assign(s[p * bw:(p + 1) * bw, q * bw:(q + 1) * bw])
                inner[lane, p, q] = cols
                values[p, q] += value
    block_order, total = _assign(values)
    picked = [torch.as_tensor(inner[lane, np.arange(n), block_order]) for lane in range(len(sims))]
    return structured(group, torch.as_tensor(block_order, dtype=torch.long), picked), total


def score(sims: list[np.ndarray], orders: Orders) -> float:
    """The summed similarity of the current orders."""
    return float(sum(s[np.arange(len(o)), o.numpy()].sum() for s, o in zip(sims, orders)))


def weight_matching(groups: list[PermGroup], load_a: Loader, load_b: Loader, iterations: int = 10, seed: int = 0,
                    progress: Optional[ProgressFn] = None, should_stop: Optional[StopFn] = None
                    ) -> tuple[Permutations, MatchStats]:
    """Coordinate descent from identity permutations; see the module docstring."""
    perms, stats = Permutations(groups), MatchStats()
    near = neighbours(groups)
    pending = set(range(len(groups)))
    order_rng = random.Random(seed)
    changed = True
    for _ in range(max(1, iterations)):
        if not pending:
            break
        order = sorted(pending)
        order_rng.shuffle(order)
        stats.rounds += 1
        changed = False
        for done, g in enumerate(order):
            stop_if_asked(should_stop)
            if g not in pending:
                continue
            pending.discard(g)
            sims, stats.norm_a[g], stats.norm_b[g] = similarities(groups[g], g, perms, load_a, load_b)
            current = score(sims, perms.orders[g])
            stats.before.setdefault(g, score(sims, tuple(torch.arange(groups[g].width) for _ in sims)))
            found, best = solve_group(groups[g], sims)
            stats.solves += 1
            if best > current + 1e-9 * max(1.0, abs(current)):
                perms.orders[g] = found
                stats.changes += 1
                changed = True
                pending |= near[g]
                current = best
            stats.after[g] = current
            if progress is not None:
                progress(done + 1, len(order))
        if not changed:
            break
    stats.converged = not pending or not changed
    return perms, stats
