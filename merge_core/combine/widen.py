"""WIDEN: weight disentanglement into magnitude and direction per column, merged by importance.

Each method maps (base C, models M1..Mn) of one key to a delta d; the merged key is C + alpha * d (methods.py)."""
from __future__ import annotations

from .params import CombineMethod

DECLARED: tuple[CombineMethod, ...] = ()
