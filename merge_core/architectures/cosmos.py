"""NVIDIA Cosmos families: Cosmos 7B/14B, Cosmos-Predict2 2B/14B, and Anima (Cosmos-Predict2 with an
LLM adapter).

Declared as the families of transformers.py are (see its docstring for what every family shares). The
embedders (patch, timestep, position) and the timestep embedding's norm are IN, the final layer OUT, as
core's ModelMergeCosmos* nodes group them. Cosmos 1 names its blocks ``blocks.block0.`` (a ModuleDict), so
its numbered container is glued to the index. Anima's LLM adapter (a small transformer that turns the text
encoder's output into the cross-attention context) is a block group of its own, before the DiT's.
"""
from __future__ import annotations

from .declaration import LoraNaming, Numbered, Signature
from .transformers import encoders, modules, transformer

COSMOS1 = transformer(
    "cosmos1", "Cosmos 7B/14B", ("BASE", "IN", Numbered("blocks.block", "B", 28, glued=True), "OUT"),
    ((modules("x_embedder", "t_embedder", "pos_embedder", "extra_pos_embedder", "affline_norm"), "IN"),
     (modules("final_layer"), "OUT")),
    # the three sub-blocks (full attention, cross attention, MLP) of the first block
    Signature(numbered=(("blocks.block0.blocks", 2, 2),),
              all_of=(r"blocks\.block0\.blocks\.0\.block\.attn\.to_q\.", r"x_embedder\.proj\.")),
    detect_rank=150, lora=LoraNaming(150), keyset="cosmos1-7b",
    variants=(((28,), "Cosmos 7B"), ((36,), "Cosmos 14B")))
# Predict2's kohya names (``lora_unet_blocks_0_self_attn_q_proj``) are explained by Wan's layout as well
# (``blocks.N`` and its catch-all input rule): the tie goes to the family whose full-size model has those
# modules (lora/families.py). Anima is Predict2 with an LLM adapter: a LoRA of its blocks alone is a Predict2
# LoRA (ranked first), and both share one LoRA group, so it applies to either
PREDICT2_LIKE = (r"blocks\.0\.mlp\.layer1\.", r"t_embedding_norm\.")
PREDICT2_RULES = ((modules("x_embedder", "t_embedder", "pos_embedder", "t_embedding_norm"), "IN"),
                  (modules("final_layer"), "OUT"))
COSMOS_PREDICT2 = transformer(
    "cosmos_predict2", "Cosmos-Predict2", ("BASE", "IN", Numbered("blocks", "B", 28), "OUT"), PREDICT2_RULES,
    Signature(numbered=(("blocks", 0, None),), all_of=PREDICT2_LIKE, none_of=(r"llm_adapter\.",)),
    detect_rank=152, lora=LoraNaming(151), keyset="cosmos-predict2-2b",
    variants=(((28,), "Cosmos-Predict2 2B"), ((36,), "Cosmos-Predict2 14B")))
ANIMA = transformer(
    "anima", "Anima", ("BASE", "AIN", Numbered("llm_adapter.blocks", "A", 6), "AOUT", "IN",
                       Numbered("blocks", "B", 28), "OUT"),
    ((modules(r"llm_adapter\.embed", r"llm_adapter\.in_proj"), "AIN"),
     (modules(r"llm_adapter\.out_proj", r"llm_adapter\.norm"), "AOUT"), *PREDICT2_RULES),
    Signature(numbered=(("blocks", 0, None), ("llm_adapter.blocks", 0, None)),
              all_of=(*PREDICT2_LIKE, r"llm_adapter\.blocks\.0\.cross_attn\.q_proj\."),
              text_encoder_markers=encoders("qwen3_06b")),
    detect_rank=151, text_encoder_rank=150, lora=LoraNaming(152, group="cosmos_predict2"), keyset="anima")

DECLARED = (COSMOS1, ANIMA, COSMOS_PREDICT2)
