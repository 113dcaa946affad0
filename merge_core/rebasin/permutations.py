"""Permutations of the groups of a spec, and their application to tensors (inputs are never modified).

Each group holds one index tensor per lane: unit ``i`` of the result is unit ``order[i]`` of the input, on
every window of the lane (``index_select``), so values are moved, never computed: a permuted weight holds
exactly the input's numbers.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from .spec import PermGroup, group_index

Orders = tuple[torch.Tensor, ...]  # one index per lane


def structured(group: PermGroup, block_order: torch.Tensor, inner: Sequence[torch.Tensor]) -> Orders:
    """The per-lane unit orders of a block order and, per lane, a (blocks, block width) order inside each block:
    result block p is input block block_order[p], its units reordered by inner[lane][p]."""
    bw = group.block_width
    return tuple((block_order[:, None] * bw + lane_inner).reshape(-1) for lane_inner in inner)


class Permutations:
    """One permutation per group (identity where none is set); apply() permutes one key's tensor."""

    def __init__(self, groups: Sequence[PermGroup], orders: Optional[Sequence[Orders]] = None):
        self.groups = list(groups)
        self.orders: list[Orders] = list(orders) if orders is not None else [
            tuple(torch.arange(g.width) for _ in g.lanes) for g in self.groups]
        self.index = group_index(self.groups)

    @classmethod
    def random(cls, groups: Sequence[PermGroup], seed: int) -> "Permutations":
        """Seeded random permutations that keep every group's structure (tests; the function stays the same)."""
        gen = torch.Generator().manual_seed(seed)
        orders = []
        for g in groups:
            block_order = torch.randperm(g.blocks, generator=gen)
            inner = [torch.stack([torch.randperm(g.block_width, generator=gen) for _ in range(g.blocks)])
                     for _ in g.lanes]
            orders.append(structured(g, block_order, inner))
        return cls(groups, orders)

    def keys(self) -> set[str]:
        """The keys some permutation indexes."""
        return set(self.index)

    def moved_keys(self) -> set[str]:
        """The keys a permutation other than the identity indexes (the others stay as they are)."""
        moved = {g for g in range(len(self.groups)) if not self.is_identity(g)}
        return {key for key, entries in self.index.items() if any(g in moved for g, _, _ in entries)}

    def is_identity(self, g: int) -> bool:
        return all(torch.equal(o, torch.arange(len(o))) for o in self.orders[g])

    def apply(self, key: str, tensor: torch.Tensor, skip_group: Optional[int] = None) -> torch.Tensor:
        """``tensor`` (the weight named ``key``) with every permutation that indexes it applied, as a new tensor
        (the same tensor when none does). skip_group: leave that group's windows as they are."""
        entries = [e for e in self.index.get(key, ()) if e[0] != skip_group]
        if not entries:
            return tensor
        out = tensor.clone()
        for g, lane, w in entries:
            order = self.orders[g][lane].to(tensor.device)
            width = self.groups[g].width
            out.narrow(w.axis, w.offset, width).copy_(out.narrow(w.axis, w.offset, width).index_select(w.axis, order))
        return out

    def inverse(self) -> "Permutations":
        return Permutations(self.groups, [tuple(torch.argsort(o) for o in lanes) for lanes in self.orders])
