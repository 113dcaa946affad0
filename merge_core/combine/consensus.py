"""Sparsify-then-elect methods beyond TIES and DARE: SCE (select by variance, calculate weights, erase minority signs),
DELLA without the election (della_linear) and Model Breadcrumbs with TIES' election (breadcrumbs_ties).

Each method maps (base C, models M1..Mn) of one key to a delta d; the merged key is C + alpha * d (methods.py)."""
from __future__ import annotations

from .params import CombineMethod

DECLARED: tuple[CombineMethod, ...] = ()
