"""n-model merges: a base C and models M1..Mn into C + alpha * delta, key by key (TIES, DARE, Model Stock, ...).

- methods.py: the method table (names, formulas, the parameters each reads, their domains and checks)
- deltas.py: each method's delta of one key, and the merged key C + alpha * d
- formulas.py: the methods' formulas on whole task vectors (pure float32 functions, seeded draws)
- election.py: TIES' trim, DARE's drop and the sign election, chunk by chunk
- settings.py: CombineSettings, parsed and checked from user-facing values
- planning.py: the per-key plan (the base and the keys every model has)
- api.py: the library's entry points (combine_state_dicts, combine_files)

The entry points (api.py) are importable from this package too.
"""
from __future__ import annotations

from .api import combine_files, combine_metadata, combine_state_dicts
from .planning import BASE, combine_architecture, common_shapes, model_names, plan_combine, plan_sources
from .settings import CombineSettings, make_combine_settings, parse_weights

__all__ = ["BASE", "CombineSettings", "combine_architecture", "combine_files", "combine_metadata",
           "combine_state_dicts", "common_shapes", "make_combine_settings", "model_names", "parse_weights",
           "plan_combine", "plan_sources"]
