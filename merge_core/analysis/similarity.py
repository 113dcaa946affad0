"""Model analysis (docs/merging.md#analysis): similarity per key and block, difference map, ASimilarity, elements.

Everything streams: a ``fetch(key)`` callable hands over A's and B's tensors of one
key at a time, so two SDXL models are compared within one tensor pair of memory.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F

from ..architectures import TEXT_ENCODER_PREFIXES, VAE_PREFIXES, Architecture, unet_relative
from ..errors import MergeInputError
from ..plan import is_mergeable_name
from ..threads import MERGE_THREADS, compute_threads, torch_threads

BLOCK_METHODS = ("mean", "min", "attn2")
PARTS = ("te", "unet", "vae")
ASIM_SEED = 2244096


def part_of(key: str, arch: Optional[Architecture] = None) -> Optional[str]:
    """"unet", "te", "vae", or None for keys analysis ignores (EMA copies, buffers). With the model's
    architecture, the bare keys of a diffusion-model-only file are its diffusion model too."""
    if key.startswith("model_ema."):
        return None
    if unet_relative(key) is not None or (arch is not None and arch.bare and arch.relative(key) is not None):
        return "unet"
    if key.startswith(TEXT_ENCODER_PREFIXES):
        return "te"
    if key.startswith(VAE_PREFIXES):
        return "vae"
    return None


def element_name(key: str, arch: Architecture) -> str:
    """The key as an elemental rule sees it: without the model prefix and the block's own prefix."""
    rel = arch.relative(key)
    if rel is None:
        for prefix in TEXT_ENCODER_PREFIXES + VAE_PREFIXES:
            if key.startswith(prefix):
                return key[len(prefix):]
        return key
    containers = "".join("|" + n.index_pattern for n in arch.numbered)
    m = re.match(r"^(?:input_blocks\.\d+\.|output_blocks\.\d+\." + containers + r"|middle_block\.)", rel)
    return rel[m.end():] if m else rel


@dataclass
class KeyStat:
    key: str
    block: str
    part: str
    cosine: float          # cosine of the flattened tensors, x100
    diff_sq: float         # ||B - A||^2
    a_sq: float            # ||A||^2
    numel: int


NONFINITE = "non-finite values"


@dataclass
class Analysis:
    arch: Architecture
    keys: list[KeyStat] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (key, why)

    def skipped_note(self) -> str:
        """'N keys skipped: 2 absent from B, 1 non-finite values', each reason counted as it is."""
        from collections import Counter
        why = Counter(NONFINITE if reason == NONFINITE else "other shape" if reason.startswith("shape") else reason
                      for _, reason in self.skipped)
        return f"{len(self.skipped)} keys skipped: " + ", ".join(f"{n} {w}" for w, n in why.most_common())

    def blocks(self) -> list[str]:
        present = {k.block for k in self.keys}
        return [b for b in self.arch.blocks if b in present]

    def block_similarity(self, method: str = "mean") -> dict[str, float]:
        """Per block: mean or min of its keys' similarity, or the similarity of its attn2.to_out.0.weight."""
        if method not in BLOCK_METHODS:
            raise MergeInputError("block_method", f"unknown block method '{method}'.",
                                  "use mean, min or attn2.")
        out = {}
        for block in self.blocks():
            stats = [k for k in self.keys if k.block == block]
            if method == "mean":
                out[block] = sum(k.cosine for k in stats) / len(stats)
            elif method == "min":
                out[block] = min(k.cosine for k in stats)
            else:
                attn = [k.cosine for k in stats if k.key.endswith("attn2.to_out.0.weight")]
                if attn:
                    out[block] = attn[0]
        return out

    def block_difference(self) -> dict[str, float]:
        """Per block: ||B - A|| / ||A|| over all its keys (0 = identical)."""
        out = {}
        for block in self.blocks():
            stats = [k for k in self.keys if k.block == block]
            a = math.sqrt(sum(k.a_sq for k in stats))
            out[block] = math.sqrt(sum(k.diff_sq for k in stats)) / a if a > 0 else 0.0
        return out

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for k in self.keys:
            out[k.block] = out.get(k.block, 0) + 1
        return out


def compare_keys(keys_a: Mapping[str, Sequence[int]], keys_b: Mapping[str, Sequence[int]], arch: Architecture,
                 fetch: Callable[[str], tuple[torch.Tensor, torch.Tensor]],
                 include: Iterable[str] = ("te", "unet"),
                 progress: Optional[Callable[[int, int], None]] = None) -> Analysis:
    """Cosine similarity (x100) and squared norms per key common to A and B, streamed key by key.

    Memory-bound reductions: one torch thread (threads.py)."""
    with torch_threads(MERGE_THREADS):
        return _compare_keys(keys_a, keys_b, arch, fetch, include, progress)


def _compare_keys(keys_a, keys_b, arch, fetch, include, progress) -> Analysis:
    include = set(include)
    unknown = include - set(PARTS)
    if unknown:
        raise MergeInputError("include", f"unknown part(s) {sorted(unknown)}.", "use te, unet and/or vae.")
    result = Analysis(arch)
    todo = []
    for key, shape in keys_a.items():
        part = part_of(key, arch)
        if part is None or part not in include or not is_mergeable_name(key):
            continue
        if key not in keys_b:
            result.skipped.append((key, "absent from B"))
        elif tuple(keys_b[key]) != tuple(shape):
            result.skipped.append((key, f"shape {list(shape)} vs {list(keys_b[key])}"))
        else:
            todo.append((key, part))
    for i, (key, part) in enumerate(todo):
        a, b = fetch(key)
        a, b = a.float().reshape(-1), b.float().reshape(-1)
        if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
            result.skipped.append((key, NONFINITE))
            continue
        # equal tensors are 100 % alike even when all-zero (where the cosine itself is undefined)
        cos = 100.0 if torch.equal(a, b) else F.cosine_similarity(a, b, dim=0).item() * 100.0
        result.keys.append(KeyStat(key, arch.block_of(key), part, cos, float(((b - a) ** 2).sum()),
                                   float((a * a).sum()), a.numel()))
        if progress is not None:
            progress(i + 1, len(todo))
    return result


def attention_sites(keys: Iterable[str]) -> list[str]:
    """Prefixes of every transformer's first block that has self-attention, in key order
    (SD1: input_blocks 1, 2, 4, 5, 7, 8, middle_block, output_blocks 3-11; SDXL: its own)."""
    sites = []
    for key in keys:
        if key.endswith("transformer_blocks.0.attn1.to_q.weight"):
            sites.append(key[: -len("to_q.weight")])
    return sites


@dataclass(frozen=True)
class AttentionSite:
    """An attention of a transformer family: separate q/k/v keys, or one fused qkv key split in thirds."""

    label: str
    keys: tuple[str, ...]

    def weights(self, fetch, which: int) -> list[torch.Tensor]:
        if len(self.keys) == 3:
            return [fetch(k)[which].float() for k in self.keys]
        return list(fetch(self.keys[0])[which].float().chunk(3, dim=0))


SEPARATE_QKV = (("to_q.weight", "to_k.weight", "to_v.weight"), ("self_attn.q.weight", "self_attn.k.weight",
                                                                   "self_attn.v.weight"))


def transformer_attention_sites(shapes: Mapping[str, Sequence[int]]) -> list[AttentionSite]:
    """Every attention of a transformer family's diffusion model whose q, k and v are square (dim x dim):
    ``to_q/to_k/to_v`` (Qwen-Image), ``self_attn.q/k/v`` (Wan) or a fused ``qkv`` (Flux, Chroma, SD3,
    Z-Image); attentions with fewer key/value heads (Lumina 2) have no square k and are left out."""
    sites = []
    for key, shape in shapes.items():
        rel = unet_relative(key)
        if (rel if rel is not None else key).startswith(TEXT_ENCODER_PREFIXES + VAE_PREFIXES) or len(shape) != 2:
            continue
        if key.endswith("qkv.weight") and shape[0] == 3 * shape[1]:
            sites.append(AttentionSite(key.rsplit(".", 2)[0], (key,)))
            continue
        for names in SEPARATE_QKV:
            if key.endswith(names[0]):
                stem = key[: -len(names[0])]
                keys = tuple(stem + n for n in names)
                if all(tuple(shapes.get(k, ())) == (shape[1], shape[1]) for k in keys):
                    sites.append(AttentionSite(key.rsplit(".", 2)[0], keys))
    return sites


def asimilarity_sites(shapes_a: Mapping[str, Sequence[int]], shapes_b: Mapping[str, Sequence[int]],
                      arch: Architecture) -> list:
    """The ASimilarity sites both models have (SuperMerger's on SD, every square attention elsewhere);
    an error naming the family when there is none."""
    sites: list[str | AttentionSite] = [s for s in attention_sites(shapes_a) if s + "to_q.weight" in shapes_b]
    if not sites:
        sites = [s for s in transformer_attention_sites(shapes_a) if all(k in shapes_b for k in s.keys)]
    if not sites:
        raise MergeInputError("method", f"ASimilarity is not available for {arch.label}: it has no self-attention "
                              "with square q, k and v weights.", "use the cosine method.")
    return sites


def asimilarity(sites: Sequence, fetch: Callable[[str], tuple[torch.Tensor, torch.Tensor]]) -> list[tuple[str, float]]:
    """ASimilarity (docs/merging.md#model-similarity-and-asimilarity): per self-attention site, the mean row cosine
    (x100, 3 decimals)
    of a toy attention output O = softmax(Q K^T) * colsum(V) computed with each model's
    q/k/v weights on one shared random input (torch seed 2244096, one draw per site).
    A site is an SD prefix (its to_q/to_k/to_v) or an AttentionSite.
    Matrix products: the cores idle when it starts (threads.py)."""
    with torch_threads(compute_threads()):
        return _asimilarity(sites, fetch)


def _asimilarity(sites, fetch) -> list[tuple[str, float]]:
    gen = torch.Generator().manual_seed(ASIM_SEED)
    rows = []
    for site in sites:
        outs = []
        x = None
        for which in (0, 1):
            if isinstance(site, AttentionSite):
                w = dict(zip("qkv", site.weights(fetch, which)))
            else:
                w = {n: fetch(site + f"to_{n}.weight")[which].float() for n in ("q", "k", "v")}
            if w["q"].dim() != 2 or w["q"].shape[0] != w["q"].shape[1]:
                raise MergeInputError("method", f"ASimilarity needs square self-attention weights; "
                                      f"'{site}to_q.weight' is {list(w['q'].shape)}.", "use the cosine method.")
            if x is None:
                x = torch.randn((w["q"].shape[1], w["q"].shape[0]), generator=gen)
            q, k, v = x @ w["q"].T, x @ w["k"].T, x @ w["v"].T
            s = torch.softmax(q @ k.T, dim=-1)
            outs.append(s * v.sum(dim=0))
        score = F.cosine_similarity(outs[0], outs[1], dim=1).mean().item() * 100.0
        rows.append((site.label if isinstance(site, AttentionSite) else site, round(score, 3)))
    return rows


def format_table(rows: Sequence[Sequence], header: Sequence[str]) -> str:
    """A plain fixed-width table (what a STRING output or a terminal shows)."""
    cells = [[str(c) for c in header]] + [[f"{c:.4f}" if isinstance(c, float) else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_csv(rows: Sequence[Sequence], header: Sequence[str]) -> str:
    import csv
    import io
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def list_elements(shapes: Mapping[str, Sequence[int]], dtypes: Mapping[str, object], arch: Architecture,
                  block: str = "", match: str = "") -> list[tuple[str, str, str, str, str]]:
    """(block, element, key, shape, dtype) of every key, filtered by block id(s) and substring."""
    blocks = {b.strip().upper() for b in block.replace(",", " ").split() if b.strip()}
    unknown = blocks - set(arch.blocks)
    if unknown:
        raise MergeInputError("block", f"unknown block id(s) {sorted(unknown)} for {arch.label}.",
                              f"use ids such as {', '.join(arch.blocks[:4])}, ...")
    rows = []
    for key, shape in shapes.items():
        b = arch.block_of(key)
        if blocks and b not in blocks:
            continue
        if match and match not in key:
            continue
        dtype = str(dtypes.get(key, "")).replace("torch.", "")
        rows.append((b, element_name(key, arch), key, "x".join(map(str, shape)) or "scalar", dtype))
    return rows


def list_lora_elements(shapes: Mapping[str, Sequence[int]], dtypes: Mapping[str, object],
                       match: str = "") -> list[tuple[str, str, str, str, str]]:
    """A LoRA file's keys, as SuperMerger's Elements tab shows them (block "LoRA")."""
    return [("LoRA", key.split(".")[0], key, "x".join(map(str, s)) or "scalar",
             str(dtypes.get(key, "")).replace("torch.", ""))
            for key, s in shapes.items() if not match or match in key]


def token_norm_rows(norms: torch.Tensor, vocab: Mapping[str, int], top_k: int = 1000, words: str = "",
                    alnum_only: bool = False) -> list[tuple[int, str, int, float]]:
    """Text-encoder analysis (docs/merging.md#text-encoder-token-norms): (rank, word, token id, norm), largest norm
    first.

    ``norms[i]`` is the norm of token i's hidden state (BOS, token). ``words``
    (comma-separated) lists only those words, each also tried with "</w>" (CLIP's
    end-of-word form); otherwise the top ``top_k``. ``alnum_only`` drops tokens
    without a letter or digit.
    """
    by_id = {i: w for w, i in vocab.items() if i < norms.numel()}
    order = torch.argsort(norms, descending=True).tolist()
    rank = {tid: r + 1 for r, tid in enumerate(order)}
    if words.strip():
        rows = []
        for word in (w.strip() for w in words.split(",") if w.strip()):
            for form in (word, word + "</w>"):
                if form in vocab and vocab[form] in rank:
                    tid = vocab[form]
                    rows.append((rank[tid], form, tid, float(norms[tid])))
        return rows
    rows = []
    for tid in order:
        word = by_id.get(tid, "")
        if alnum_only and not any(ch.isalnum() for ch in word):
            continue
        rows.append((rank[tid], word, tid, float(norms[tid])))
        if len(rows) >= top_k:
            break
    return rows
