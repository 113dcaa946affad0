"""The 2025 subspace methods: TSV-Merge (task singular vectors, decorrelated) and Iso-C / Iso-CTS (isotropic merging).

Each method maps (base C, models M1..Mn) of one key to a delta d; the merged key is C + alpha * d (methods.py)."""
from __future__ import annotations

from .params import CombineMethod

DECLARED: tuple[CombineMethod, ...] = ()
