"""Independent transcription of the block rules of Krea 2, LongCat-Image, AuraFlow and Flux.2 Klein.

Written from the task's description of each family (and core ComfyUI's per-family merge sliders), not
from merge_core.architectures, so the tests compare two readings of the rules. Keys are relative to the
diffusion model (bare, as the diffusion-model files ship).
"""
import re

from spec_families import KEEP, flux2_block

IMAGE_KEYSETS = ("krea2", "longcat-image", "auraflow", "flux2-klein-4b", "flux2-klein-9b")


def _indexed(rel, container, prefix):
    m = re.match(re.escape(container) + r"\.(\d+)\.", rel)
    return f"{prefix}{int(m.group(1)):02d}" if m else None


def _double_single(rel, double, single, inputs, outputs):
    """A double/single-stream layout: ``double.N`` DNN, ``single.N`` SNN, a top-level module in ``inputs`` IN,
    in ``outputs`` OUT."""
    hit = _indexed(rel, double, "D") or _indexed(rel, single, "S")
    if hit:
        return hit
    head = rel.split(".")[0]
    if head in inputs:
        return "IN"
    return "OUT" if head in outputs else KEEP


def krea2_block(rel):
    """``blocks.N`` one block each; first/tmlp/txtmlp/tproj the input side; the text adapter
    (txtfusion: layer-wise blocks, projector, refiner blocks) its own group; ``last`` the output."""
    stacks = (("blocks", "B"), ("txtfusion.layerwise_blocks", "TL"), ("txtfusion.refiner_blocks", "TR"))
    for container, prefix in stacks:
        hit = _indexed(rel, container, prefix)
        if hit:
            return hit
    head = rel.split(".")[0]
    if head in ("first", "tmlp", "txtmlp", "tproj"):
        return "IN"
    if rel.startswith("txtfusion.projector."):
        return "TP"
    return "OUT" if head == "last" else KEEP


def longcat_block(rel):
    """Flux-like: double/single blocks, the ``*_in`` embedders the input, ``final_layer`` the output."""
    return _double_single(rel, "double_blocks", "single_blocks", ("img_in", "txt_in", "time_in"), ("final_layer",))


def auraflow_block(rel):
    """The modules of core's ModelMergeAuraflow sliders, grouped: embedders IN, modF/final_linear OUT."""
    inputs = ("init_x_linear", "positional_encoding", "cond_seq_linear", "register_tokens", "t_embedder")
    return _double_single(rel, "double_layers", "single_layers", inputs, ("modF", "final_linear"))


TRANSCRIPTIONS = {"krea2": krea2_block, "longcat-image": longcat_block, "auraflow": auraflow_block,
                  "flux2-klein-4b": flux2_block, "flux2-klein-9b": flux2_block}
