"""Independent transcription of the block rules (key -> block) for the transformer families.

Written from the issue text (families and their block ids), separately from
merge_core.architectures, so tests compare two implementations instead of one with itself.
Keys are relative to the diffusion model; components (text encoders, VAE) are handled by `flux1_block`.
"""
import gzip
import json
import re
from pathlib import Path

KEYSETS = Path(__file__).resolve().parents[2] / "merge_core" / "architectures" / "keysets"


def load_keyset(name):
    """{key: shape} of one inventory (read here, not through tests/conftest.py: both conftests are
    named 'conftest' and the integration one wins when suites run together)."""
    with gzip.open(KEYSETS / f"{name}.json.gz") as f:
        return {k: tuple(v[0]) for k, v in json.loads(f.read()).items()}

KEEP = "keep A"


def _numbered(rel, table):
    for container, prefix in table:
        m = re.match(re.escape(container) + r"\.(\d+)\.", rel)
        if m:
            return f"{prefix}{int(m.group(1)):02d}"
    return None


def _top(rel):
    return rel.split(".")[0]


def flux1_block(key):
    if key.startswith("vae."):
        return KEEP
    if key.startswith("text_encoders.clip_l."):
        return "CLIP"
    if key.startswith("text_encoders.t5xxl."):
        return "T5"
    rel = key[len("model.diffusion_model."):] if key.startswith("model.diffusion_model.") else key
    hit = _numbered(rel, (("double_blocks", "D"), ("single_blocks", "S")))
    if hit:
        return hit
    if _top(rel) in ("img_in", "txt_in", "time_in", "vector_in", "guidance_in"):
        return "IN"
    return "OUT" if _top(rel) == "final_layer" else KEEP


def chroma_block(rel):
    hit = _numbered(rel, (("double_blocks", "D"), ("single_blocks", "S")))
    if hit:
        return hit
    if _top(rel) in ("img_in", "txt_in", "distilled_guidance_layer"):
        return "IN"
    return "OUT" if _top(rel) == "final_layer" else KEEP


def flux2_block(rel):
    hit = _numbered(rel, (("double_blocks", "D"), ("single_blocks", "S")))
    if hit:
        return hit
    if _top(rel).endswith("_in") or "modulation" in _top(rel):
        return "IN"
    return "OUT" if _top(rel) == "final_layer" else KEEP


def sd3_block(rel):
    hit = _numbered(rel, (("joint_blocks", "J"),))
    if hit:
        return hit
    if _top(rel) in ("pos_embed", "x_embedder", "context_embedder", "y_embedder", "t_embedder", "register",
                     "context_processor"):
        return "IN"
    return "OUT" if _top(rel) == "final_layer" else KEEP


def hidream_block(rel):
    hit = _numbered(rel, (("double_stream_blocks", "D"), ("single_stream_blocks", "S")))
    if hit:
        return hit
    if _top(rel).endswith("_embedder") or _top(rel) == "caption_projection":
        return "IN"
    return "OUT" if _top(rel) == "final_layer" else KEEP


def lumina2_block(rel):
    hit = _numbered(rel, (("noise_refiner", "NR"), ("context_refiner", "CR"), ("layers", "L")))
    if hit:
        return hit
    if _top(rel) in ("x_embedder", "t_embedder", "cap_embedder", "x_pad_token", "cap_pad_token"):
        return "IN"
    return "OUT" if _top(rel) in ("norm_final", "final_layer") else KEEP


def qwen_block(rel):
    hit = _numbered(rel, (("transformer_blocks", "T"),))
    if hit:
        return hit
    if _top(rel) in ("img_in", "txt_norm", "txt_in", "time_text_embed"):
        return "IN"
    return "OUT" if _top(rel) in ("norm_out", "proj_out") else KEEP


def wan_block(rel):
    hit = _numbered(rel, (("blocks", "B"), ("vace_blocks", "V")))
    if hit:
        return hit
    return "OUT" if _top(rel) == "head" else "IN"
