"""Block specs in user text: ids, ``A-B`` ranges (either order), a leading ``NOT``, ``ALL``.

One parser for every input that names blocks (elemental rules, pinpoint sweeps,
random-weight templates), so they accept and reject exactly the same things.
"""
from __future__ import annotations

from typing import Optional

from ..architectures import Architecture
from ..errors import MergeInputError


def expand_token(token: str, arch: Architecture) -> Optional[tuple[str, ...]]:
    """Blocks named by one token (``IN01`` or ``OUT03-OUT06``), in layout order; None if a part is unknown."""
    ends = token.split("-")
    if len(ends) > 2 or any(e not in arch.blocks for e in ends):
        return None
    i, j = sorted(arch.blocks.index(e) for e in (ends * 2)[:2])
    return arch.blocks[i:j + 1]


def unknown_block_error(token: str, arch: Architecture, input_name: str, where: str) -> MergeInputError:
    ends = token.split("-")
    bad = next((e for e in ends if e not in arch.blocks), token) if len(ends) <= 2 else token
    return MergeInputError(
        input_name, f"{where}unknown block id '{bad}' for {arch.label}.",
        f"use ids such as {', '.join(arch.blocks[:3])}, ..., {arch.blocks[-1]}, or ranges like "
        f"{arch.blocks[4]}-{arch.blocks[6]}.")


def expand_tokens(tokens: list[str], arch: Architecture, input_name: str, where: str = "") -> frozenset:
    out: set[str] = set()
    for token in tokens:
        blocks = expand_token(token, arch)
        if blocks is None:
            raise unknown_block_error(token, arch, input_name, where)
        out.update(blocks)
    return frozenset(out)


def parse_block_spec(text: str, arch: Architecture, input_name: str, where: str = "") -> tuple[str, ...]:
    """``IN01``, ``OUT10 OUT11``, ``OUT03-OUT06``, ``NOT M00 OUT03-OUT06`` or ``ALL`` -> block ids in layout order."""
    tokens = text.split()
    negate = bool(tokens) and tokens[0] == "NOT"
    if negate:
        tokens = tokens[1:]
    if not tokens:
        raise MergeInputError(input_name, f"{where}'{text.strip()}' names no block.",
                              "name blocks such as IN01, OUT03-OUT06 or NOT M00 (NOT only first), or ALL.")
    if "NOT" in tokens:
        raise MergeInputError(input_name, f"{where}'{text.strip()}': NOT may only be the first word.",
                              "write e.g. NOT M00 OUT03-OUT06.")
    chosen = set(arch.blocks) if tokens == ["ALL"] else expand_tokens(tokens, arch, input_name, where)
    return tuple(b for b in arch.blocks if (b in chosen) != negate)
