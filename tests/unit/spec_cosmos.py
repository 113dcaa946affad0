"""Independent transcription of the block rules of Cosmos 7B/14B, Cosmos-Predict2 2B/14B and Anima.

Written from the task's description (embedders IN, final layer OUT, one block per transformer block, Anima's
LLM adapter a group of its own) and core ComfyUI's ModelMergeCosmos* sliders, not from
merge_core.architectures, so the tests compare two readings of the rules. Keys are relative to the
diffusion model (bare, as the diffusion-model files ship).
"""
import re

from spec_families import KEEP

COSMOS_KEYSETS = ("cosmos1-7b", "cosmos1-14b", "cosmos-predict2-2b", "cosmos-predict2-14b", "anima")
COSMOS1_IN = ("x_embedder", "t_embedder", "pos_embedder", "extra_pos_embedder", "affline_norm")
PREDICT2_IN = ("x_embedder", "t_embedder", "pos_embedder", "t_embedding_norm")


def _block(rel, blocks, inputs):
    """``blocks`` (a pattern whose group is the index) block BNN; a top-level module in ``inputs`` IN;
    ``final_layer`` OUT."""
    m = re.match(blocks, rel)
    if m:
        return f"B{int(m.group(1)):02d}"
    head = rel.split(".")[0]
    if head in inputs:
        return "IN"
    return "OUT" if head == "final_layer" else KEEP


def cosmos1_block(rel):
    """``blocks.blockN.`` (a ModuleDict: the index is part of the name) block BNN."""
    return _block(rel, r"blocks\.block(\d+)\.", COSMOS1_IN)


def predict2_block(rel):
    """``blocks.N.`` block BNN."""
    return _block(rel, r"blocks\.(\d+)\.", PREDICT2_IN)


def anima_block(rel):
    """Predict2's blocks; the LLM adapter: its embedding and input projection AIN, its blocks ANN, its output
    projection and norm AOUT."""
    if rel.startswith("llm_adapter."):
        inner = rel[len("llm_adapter."):]
        m = re.match(r"blocks\.(\d+)\.", inner)
        if m:
            return f"A{int(m.group(1)):02d}"
        head = inner.split(".")[0]
        return {"embed": "AIN", "in_proj": "AIN", "out_proj": "AOUT", "norm": "AOUT"}.get(head, KEEP)
    return predict2_block(rel)


TRANSCRIPTIONS = {"cosmos1-7b": cosmos1_block, "cosmos1-14b": cosmos1_block,
                  "cosmos-predict2-2b": predict2_block, "cosmos-predict2-14b": predict2_block, "anima": anima_block}
