"""SuperMerger's block-weight presets (docs/merging.md#presets), loaded from one data file.

The TSV beside this module is the single source: the web editor reads the same
data through the pack's HTTP route, so the two never drift apart.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

PRESET_FILE = Path(__file__).with_name("mbw_presets.tsv")


def _parse_line(line: str) -> tuple[str, str] | None:
    """``NAME<TAB>values`` or ``NAME:values``, split at the first separator."""
    line = line.strip()
    if not line:
        return None
    sep = "\t" if "\t" in line else (":" if ":" in line else None)
    if sep is None:
        return None
    name, _, values = line.partition(sep)
    return name.strip(), values.strip()


@lru_cache(maxsize=None)
def presets() -> dict[str, tuple[float, ...]]:
    """Preset name -> 26 values (BASE, IN00..IN11, M00, OUT00..OUT11)."""
    out: dict[str, tuple[float, ...]] = {}
    for line in PRESET_FILE.read_text(encoding="utf-8").splitlines():
        parsed = _parse_line(line)
        if parsed is None:
            continue
        name, values = parsed
        parts = [v.strip() for v in values.split(",")]
        if len(parts) != 26:
            continue  # the header line and malformed rows are not presets
        out[name] = tuple(float(v) for v in parts)
    return out


def preset_names() -> list[str]:
    return list(presets())
