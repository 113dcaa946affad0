"""Files read under their family's released parameter names, so that files from two hosts pair up.

A Flux.1, Flux.2 or Chroma file saved by ComfyUI 0.33 (its ModelSave, or a Save Checkpoint run there)
names the RMSNorm scales ``….weight``; the released files name them ``….scale``
(architectures/naming.py). Such a file is read with the released names, so its keys pair with an
original download's, and a merged file takes the released names whatever its inputs used: they are
the names every loader reads (ComfyUI 0.3.75 requires them, 0.33 renames them itself on load, and other
tools expect the files as released), so the result never depends on which ComfyUI wrote an input.
"""
from __future__ import annotations

from typing import Callable, Iterable, Optional

from ..architectures import detect
from .key_source import KeySource


def released_namer(keys: Iterable[str]) -> Optional[Callable[[str], str]]:
    """key -> its released name, for a model whose family a host may rename (None for any other)."""
    arch = detect(keys)
    return arch.released_key if arch is not None and arch.scale_norms else None


def released_names(keys: Iterable[str]) -> dict[str, str]:
    """{key: released name} of the keys that carry a host's name (empty for a file as released). A key
    whose released name is also present is left alone: both names are then the file's own."""
    keys = list(keys)
    namer = released_namer(keys)
    if namer is None:
        return {}
    present = set(keys)
    renamed = {k: namer(k) for k in keys}
    return {k: r for k, r in renamed.items() if r != k and r not in present}


class ReleasedNameSource(KeySource):
    """A key source seen under released names; reads, formats and attributes delegate to the source."""

    def __init__(self, inner, renamed: dict[str, str]):
        self.inner = inner
        self.own = {released: key for key, released in renamed.items()}
        self.renamed = renamed

    def __getattr__(self, name):  # name, reader, marker, quant_metadata, ...: the file's own
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def _key(self, key: str) -> str:
        return self.own.get(key, key)

    def shapes(self):
        return {self.renamed.get(k, k): v for k, v in self.inner.shapes().items()}

    def dtype(self, key):
        return self.inner.dtype(self._key(key))

    def stored_format(self, key):
        fmt = getattr(self.inner, "stored_format", None)
        if fmt is not None:
            return fmt(self._key(key))
        from .quantized import dtype_name
        return dtype_name(self.dtype(key))

    def stored(self, key):
        return self.inner.stored(self._key(key))

    def stored_scaled(self, key):
        own = getattr(self.inner, "stored_scaled", None)
        return own(self._key(key)) if own else None

    def prefetch(self, key):
        self.inner.prefetch(self._key(key))

    def release(self, key, part=None):
        self.inner.release(self._key(key), part)

    def get(self, key):
        return self.inner.get(self._key(key))

    def raw(self, key):
        return self.inner.raw(self._key(key))

    def close(self):
        self.inner.close()


def with_released_names(source):
    """The source itself when its keys are the released ones, else seen under them."""
    renamed = released_names(source.shapes())
    return ReleasedNameSource(source, renamed) if renamed else source
