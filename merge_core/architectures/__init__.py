"""Model families as declared data: the declaration type, one declaration per family, the registry and detection."""
from .declaration import Architecture, Signature
from .keys import TEXT_ENCODER_PREFIXES, UNET_PREFIXES, VAE_PREFIXES, fused_tensor_of, unet_relative
from .registry import ARCHITECTURES, detect, require_compatible
from .sd import SD1, SD1_BLOCKS, SD2, SDXL, SDXL_BLOCKS

__all__ = [
    "ARCHITECTURES", "SD1", "SD1_BLOCKS", "SD2", "SDXL", "SDXL_BLOCKS", "TEXT_ENCODER_PREFIXES", "UNET_PREFIXES",
    "VAE_PREFIXES", "Architecture", "Signature", "detect", "fused_tensor_of", "require_compatible",
    "unet_relative",
]
