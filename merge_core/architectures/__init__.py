"""Model families as declared data: the declaration type, one declaration per family, the registry and detection."""
from .declaration import KEPT, NO_BLOCK, Architecture, LoraNaming, Numbered, Signature
from .keys import TEXT_ENCODER_PREFIXES, UNET_PREFIXES, VAE_PREFIXES, fused_tensor_of, unet_relative
from .registry import (ALTERNATE_LAYOUTS, ARCHITECTURES, FAMILIES, TRANSFORMERS, detect, detect_or_auto,
                       require_compatible)
from .sd import SD1, SD1_BLOCKS, SD2, SDXL, SDXL_BLOCKS, SDXL_EXTENDED
from .transformers import CHROMA, FLUX1, FLUX2, HIDREAM, LUMINA2, QWEN_IMAGE, SD3, WAN

__all__ = [
    "ALTERNATE_LAYOUTS", "ARCHITECTURES", "CHROMA", "FAMILIES", "FLUX1", "FLUX2", "HIDREAM", "KEPT", "LUMINA2",
    "NO_BLOCK", "QWEN_IMAGE", "SD1", "SD1_BLOCKS", "SD2", "SD3", "SDXL", "SDXL_BLOCKS", "SDXL_EXTENDED",
    "TEXT_ENCODER_PREFIXES", "TRANSFORMERS", "UNET_PREFIXES", "VAE_PREFIXES", "WAN", "Architecture", "LoraNaming",
    "Numbered", "Signature", "detect", "detect_or_auto", "fused_tensor_of", "require_compatible", "unet_relative",
]
