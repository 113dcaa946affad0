"""merge_core: SuperMerger-compatible model merging on plain tensors and files.

Pure torch; never imports ComfyUI. See README.md for the conventions (alpha is
the weight of model B) and `python -m merge_core --help` for the CLI.
"""
from .api import merge_files, merge_state_dicts, plan_merge
from .architectures import ARCHITECTURES, SD1, SD2, SDXL, Architecture, detect
from .block_weights import BlockWeights, parse_block_weights
from .errors import MergeInputError
from .methods import MODE_LABELS, MODES, get_mode
from .presets import preset_names, presets

__all__ = [
    "merge_files", "merge_state_dicts", "plan_merge", "ARCHITECTURES", "SD1", "SD2", "SDXL",
    "Architecture", "detect", "BlockWeights", "parse_block_weights", "MergeInputError",
    "MODE_LABELS", "MODES", "get_mode", "preset_names", "presets",
]
