"""rotate: align the base to a model by an orthogonal transform (orthogonal Procrustes).

Each method maps (base C, models M1..Mn) of one key to a delta d; the merged key is C + alpha * d (methods.py)."""
from __future__ import annotations

from .params import CombineMethod

DECLARED: tuple[CombineMethod, ...] = ()
