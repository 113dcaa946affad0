"""Weights as ComfyUI would run them, computed with ComfyUI's own patch code (the tests' reference)."""
import comfy.lora


def effective(obj, prefix=None):
    """Each key's weight as the ModelPatcher/CLIP would load it: the stored base weight through its
    layer's convert (scaled fp8: times its scale), then the object's patches, in float32."""
    patches = obj.get_key_patches(prefix) if prefix else obj.get_key_patches()
    out = {}
    for key, kp in patches.items():
        base, convert = kp[0]
        out[key] = comfy.lora.calculate_weight(kp[1:], convert(base.float().clone()), key).detach()
    return out
