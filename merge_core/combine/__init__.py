"""n-model merges: a base C and models M1..Mn into C + alpha * delta, key by key (TIES, DARE, Model Stock, ...).

- methods.py: the method table (names, formulas, the parameters each reads, their domains and checks)
- deltas.py: each method's delta of one key, and the merged key C + alpha * d
- formulas.py: the methods' formulas on whole task vectors (pure float32 functions, seeded draws)
- election.py: TIES' trim, DARE's drop and the sign election, chunk by chunk
- settings.py: CombineSettings, parsed and checked from user-facing values
- planning.py: the per-key plan (the base and the keys every model has)
- api.py: the library's entry points (combine_state_dicts, combine_files)

The entry points are importable from this package too. api.py's load on first use: the engine imports the
per-key math here (deltas.py) and api.py imports the engine, so importing api.py here would be an import circle.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from .planning import BASE, combine_architecture, common_shapes, model_names, plan_combine, plan_sources
from .settings import CombineSettings, make_combine_settings, parse_weights

_LOADED_ON_USE = ("combine_files", "combine_metadata", "combine_state_dicts")  # api.py
__all__ = ["BASE", "CombineSettings", "combine_architecture", "common_shapes", "make_combine_settings",
           "model_names", "parse_weights", "plan_combine", "plan_sources", *_LOADED_ON_USE]

if TYPE_CHECKING:
    from .api import combine_files as combine_files  # "as": a re-export, for type checkers and linters
    from .api import combine_metadata as combine_metadata
    from .api import combine_state_dicts as combine_state_dicts


def __getattr__(name: str):
    if name in _LOADED_ON_USE:
        from . import api
        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
