"""Independent transcription of the key -> block rules (docs/merging.md#sd1-and-sd2-blocks,
docs/merging.md#sdxl-blocks-and-the-110-value-extended-list).

Written from the spec text, separately from merge_core.architectures, so that
tests compare two implementations instead of one with itself.
"""
import re


def sd1_block(key: str) -> str:
    if "time_embed" in key:
        return "IN00"
    if ".out." in key or key.startswith("diffusion_model.out."):
        return "OUT11"
    for section, name in (("input_blocks", "IN"), ("output_blocks", "OUT")):
        m = re.search(r"(?:^|\.)" + section + r"\.(\d+)\.", key)
        if m:
            return f"{name}{int(m.group(1)):02d}"
    if re.search(r"(?:^|\.)middle_block\.", key):
        return "M00"
    return "BASE"


def sdxl_block(key: str) -> str:
    if "label_emb" in key or "time_embed" in key:
        return "IN00"
    if key.startswith(("conditioner.", "first_stage_model.", "clip_")):
        return "BASE"
    if "diffusion_model.out." in key:
        return "OUT08"
    for section, name in (("input", "IN"), ("middle", "M"), ("output", "OUT")):
        if f"diffusion_model.{section}" in key:
            if name == "M":
                return "M00"
            digits = re.sub(r"\D", "", key.split(f"{section}_blocks", 1)[1])
            return f"{name}0{digits[0]}"
    return "BASE"
