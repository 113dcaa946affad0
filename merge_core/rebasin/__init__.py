"""Re-basin: B's hidden units permuted to line up with A's before a merge (weight matching, SD1 and SDXL U-Nets).

spec.py says which weights share a permutation, matching.py finds the permutations, permutations.py applies
them, api.py checks the inputs and reads files or state dicts lazily. docs/rebasin.md explains the method.
"""
from .api import RebasinResult, rebased_state_dict, rebasin, rebasin_files, rebasin_loaders, require_family
from .matching import weight_matching
from .permutations import Permutations
from .spec import PermGroup, Window, unet_groups

__all__ = ["PermGroup", "Permutations", "RebasinResult", "Window", "rebased_state_dict", "rebasin", "rebasin_files",
           "rebasin_loaders", "require_family", "unet_groups", "weight_matching"]
