"""merge_core: SuperMerger-compatible model merging on plain tensors and files.

Pure torch; never imports ComfyUI. See docs/library.md for the API and its
conventions (alpha is the weight of model B), and `merge-suite --help` (or `python -m merge_core --help`)
for the CLI.
"""
try:
    import torch  # noqa: F401
except ModuleNotFoundError as exc:  # a plain `pip install merge-suite` outside ComfyUI's environment
    raise ModuleNotFoundError("merge_core needs PyTorch: pip install 'merge-suite[cli]' "
                              "(or install the torch build for your GPU first).") from exc

from .api import analyze_files, merge_files, merge_state_dicts, plan_merge
from .architectures import ARCHITECTURES, SD1, SD2, SDXL, Architecture, detect
from .blocks.presets import preset_names, presets
from .blocks.weights import BlockWeights, parse_block_weights
from .errors import MergeInputError
from .lora.api import extract_lora_files, extract_lora_from_loras, merge_lora_files
from .methods.modes import MODE_LABELS, MODES, get_mode
from .version import __version__

__all__ = [
    "merge_files", "merge_state_dicts", "plan_merge", "analyze_files", "merge_lora_files", "extract_lora_files",
    "extract_lora_from_loras", "ARCHITECTURES", "SD1", "SD2", "SDXL", "Architecture", "detect", "BlockWeights",
    "parse_block_weights", "MergeInputError", "MODE_LABELS", "MODES", "get_mode", "preset_names", "presets",
    "__version__",
]
