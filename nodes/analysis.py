"""Analysis nodes: how similar two models are per block (on effective weights), and the elements browser."""
from __future__ import annotations

from typing import TYPE_CHECKING

from comfy_api.latest import io

from ..merge_core.analysis.charts import bar_chart
from ..merge_core.analysis.similarity import (BLOCK_METHODS, asimilarity, asimilarity_sites, compare_keys, format_csv,
                                   format_table, list_elements, token_norm_rows)
from ..merge_core.api import analysis_architecture
from ..merge_core.errors import MergeInputError
from .comfy_models import base_layout, effective_weight, key_patches, shapes_of
from .errors import named_errors
from .shared import CATEGORY, progress_bar
from .ui import text_ui

if TYPE_CHECKING:
    import torch


def _image(pil) -> "torch.Tensor":
    import numpy as np
    import torch
    return torch.from_numpy(np.asarray(pil.convert("RGB"), dtype=np.float32) / 255.0)[None]


def _patch_lists(model, clip, side: str) -> dict:
    lists = {}
    if model is not None:
        lists.update(key_patches(model, "model", f"model_{side}"))
    if clip is not None:
        lists.update(key_patches(clip, "clip", f"clip_{side}"))
    return lists


class ModelSimilarity(io.ComfyNode):
    DISPLAY = "Model Similarity per Block"

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MergeSuite_ModelSimilarity", display_name=cls.DISPLAY, category=CATEGORY + "/analysis",
            description="Cosine similarity of two models per block (and per key), and where they differ most "
                        "(||B-A|| / ||A|| per block), on the weights as they would sample (merges and LoRAs "
                        "included). Or ASimilarity, SuperMerger's attention-based measure.",
            inputs=[
                io.Model.Input("model_a", tooltip="The reference model (e.g. a parent of a merge)."),
                io.Model.Input("model_b", tooltip="The model compared with A (e.g. the merge)."),
                io.Combo.Input("method", options=["cosine", "asimilarity"], default="cosine",
                               tooltip="cosine: per-key cosine similarity of the flattened tensors, aggregated per "
                                       "block. asimilarity: a toy attention output of every self-attention site, "
                                       "computed with each model's q/k/v on one seeded input, compared by cosine."),
                io.Combo.Input("block_method", options=list(BLOCK_METHODS), default="mean",
                               tooltip="Per block: mean or min of its keys, or the similarity of its "
                                       "attn2.to_out.0.weight (cross-attention output)."),
                io.Combo.Input("architecture_mismatch", options=["error", "compare common keys"], default="error",
                               tooltip="Models of different architectures: stop with an error, or compare only "
                                       "the keys both have (the report says how many were skipped)."),
                io.Clip.Input("clip_a", optional=True, tooltip="Also compare the text encoders (BASE block)."),
                io.Clip.Input("clip_b", optional=True, tooltip="Text encoder of B, compared with clip_a."),
            ],
            outputs=[io.String.Output(display_name="report"), io.Image.Output(display_name="similarity_chart"),
                     io.Image.Output(display_name="difference_chart"), io.String.Output(display_name="csv")],
        )

    @classmethod
    def execute(cls, model_a, model_b, method="cosine", block_method="mean", architecture_mismatch="error",
                clip_a=None, clip_b=None) -> io.NodeOutput:
        with named_errors(cls.DISPLAY):
            if (clip_a is None) != (clip_b is None):
                raise MergeInputError("clip_b" if clip_b is None else "clip_a", "is missing: text encoders are "
                                      "compared only when both are connected.", "connect both CLIPs, or neither.")
            lists_a, lists_b = _patch_lists(model_a, clip_a, "a"), _patch_lists(model_b, clip_b, "b")
            shapes_a, shapes_b = shapes_of(lists_a), shapes_of(lists_b)
            arch = analysis_architecture(shapes_a, shapes_b,
                                         "common" if architecture_mismatch != "error" else "error")

            def fetch(key):
                return effective_weight(lists_a[key]), effective_weight(lists_b[key])
            if method == "asimilarity":
                rows = asimilarity(asimilarity_sites(shapes_a, shapes_b, arch), fetch)
                header = ["site", "ASimilarity %"]
                labels = [s.replace("diffusion_model.", "").split(".transformer")[0] for s, _ in rows]
                sim = bar_chart(labels, [v for _, v in rows], "ASimilarity per self-attention site (%)", "%")
                diff = bar_chart([], [], "difference map: use method cosine")
                table = format_table(rows, header)
                return io.NodeOutput(table, _image(sim), _image(diff), format_csv(rows, header), ui=text_ui(table))
            result = compare_keys(shapes_a, shapes_b, arch, fetch, ("te", "unet"), progress=progress_bar(len(shapes_a)))
            sims, diffs, counts = result.block_similarity(block_method), result.block_difference(), result.counts()
            header = ["block", "similarity %", "difference", "keys"]
            rows = [[b, sims[b], diffs[b], counts[b]] for b in result.blocks() if b in sims]
            report = format_table(rows, header)
            if result.skipped:
                report += f"\n\n{result.skipped_note()}, e.g. {result.skipped[0][0]} ({result.skipped[0][1]})"
            key_rows = [[k.block, k.key, k.cosine] for k in result.keys]
            csv = format_csv(rows, header) + "\n" + format_csv(key_rows, ["block", "key", "similarity %"])
            sim = bar_chart([r[0] for r in rows], [r[1] for r in rows],
                            f"cosine similarity per block ({block_method}, %), {arch.label}", "%")
            diff = bar_chart(list(diffs), list(diffs.values()), "difference ||B-A|| / ||A|| per block")
            return io.NodeOutput(report, _image(sim), _image(diff), csv, ui=text_ui(report))


class ElementsBrowser(io.ComfyNode):
    DISPLAY = "Elements Browser"

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MergeSuite_Elements", display_name=cls.DISPLAY, category=CATEGORY + "/analysis",
            description="Every key of a model with its block, its element name (the text to use in an elemental "
                        "rule), shape and dtype. Filter by block ids and by a substring.",
            inputs=[io.String.Input("block", default="", tooltip="Only these blocks, e.g. 'IN04' or 'IN04 OUT05'. "
                                                                  "Empty: all."),
                    io.String.Input("match", default="", tooltip="Only keys containing this text, e.g. attn2."),
                    io.Model.Input("model", optional=True, tooltip="List the U-Net keys of this model."),
                    io.Clip.Input("clip", optional=True, tooltip="List the text-encoder keys of this CLIP.")],
            outputs=[io.String.Output(display_name="elements")],
        )

    @classmethod
    def execute(cls, block="", match="", model=None, clip=None) -> io.NodeOutput:
        with named_errors(cls.DISPLAY):
            if model is None and clip is None:
                raise MergeInputError("model", "and clip are both unconnected.", "connect a MODEL or a CLIP.")
            shapes, dtypes = {}, {}
            for obj, kind in ((model, "model"), (clip, "clip")):
                if obj is not None:
                    s, d = base_layout(obj, kind)
                    shapes.update(s)
                    dtypes.update(d)
            arch = analysis_architecture(shapes, shapes)
            rows = list_elements(shapes, dtypes, arch, block, match)
            table = format_table(rows, ["block", "element", "key", "shape", "dtype"])
            return io.NodeOutput(table, ui=text_ui(table))


def clip_l_token_norms(clip, batch: int = 4096):
    """Norm of the final hidden state at position 1 of [BOS, token] for every CLIP-L token.

    CLIP's text encoder is causal, so position 1 sees only BOS and the token: the
    two-token sequence gives exactly what the padded 77-token one would, at 1/38
    of the cost. The CLIP's own patches (a merge, a LoRA) are applied first by
    loading it, as text encoding does.
    """
    import torch

    clip.load_model()
    encoder = clip.cond_stage_model.clip_l
    text_model = encoder.transformer.text_model
    start = encoder.special_tokens["start"]
    vocab = clip.tokenizer.clip_l.tokenizer.get_vocab()
    n = text_model.embeddings.token_embedding.weight.shape[0]
    device = text_model.embeddings.token_embedding.weight.device
    positions = text_model.embeddings.position_embedding.weight[:2].to(device=device, dtype=torch.float32)
    mask = torch.full((2, 2), -torch.finfo(torch.float32).max, device=device).triu_(1)
    norms = torch.empty(n)
    progress = progress_bar(n)
    with torch.no_grad():
        for first in range(0, n, batch):
            ids = torch.arange(first, min(first + batch, n), device=device)
            tokens = torch.stack([torch.full_like(ids, start), ids], dim=1)
            x = text_model.embeddings.token_embedding(tokens, out_dtype=torch.float32) + positions
            x, _ = text_model.encoder(x, mask=mask)
            x = text_model.final_layer_norm(x)
            norms[first:first + len(ids)] = x[:, 1].float().norm(dim=-1).cpu()
            progress(first + len(ids), n)
    return norms, vocab


class TextEncoderTokens(io.ComfyNode):
    DISPLAY = "Text Encoder Token Norms"

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MergeSuite_TextEncoderTokens", display_name=cls.DISPLAY, category=CATEGORY + "/analysis",
            description="SuperMerger's text-encoder analysis: for every CLIP-L token, the norm of its hidden "
                        "state after [BOS, token]. Large norms are the tokens that weigh most in prompts; compare "
                        "two text encoders (e.g. before and after a merge) token by token.",
            inputs=[io.Clip.Input("clip", tooltip="SD1 CLIP or SDXL CLIP (its CLIP-L is analysed)."),
                    io.Int.Input("top_k", default=1000, min=1, max=50000, tooltip="How many tokens to list."),
                    io.String.Input("words", default="", tooltip="Comma-separated words to look up instead of "
                                                                 "the top list (the '</w>' form is tried too)."),
                    io.Boolean.Input("alnum_only", default=False,
                                     tooltip="Hide tokens without any letter or digit.")],
            outputs=[io.String.Output(display_name="tokens"), io.String.Output(display_name="csv")],
        )

    @classmethod
    def execute(cls, clip, top_k=1000, words="", alnum_only=False) -> io.NodeOutput:
        with named_errors(cls.DISPLAY):
            if not hasattr(clip.cond_stage_model, "clip_l"):
                raise MergeInputError("clip", "has no CLIP-L text encoder.", "connect an SD1 or SDXL CLIP.")
            norms, vocab = clip_l_token_norms(clip)
            rows = token_norm_rows(norms, vocab, top_k, words, alnum_only)
            header = ["rank", "word", "token id", "norm"]
            table = format_table(rows, header)
            return io.NodeOutput(table, format_csv(rows, header), ui=text_ui(table))


NODES = [ModelSimilarity, ElementsBrowser, TextEncoderTokens]
