"""Mixed namings: a diffusion-model file (bare keys, ComfyUI's diffusion_models folder) merged with a checkpoint.

Every family reads bare keys natively when all inputs are bare (Architecture.bare). A mix is read with the
checkpoint prefix added to the bare inputs, so that keys pair up, and the output takes A's naming."""
from __future__ import annotations

from typing import Mapping

from .key_source import KeySource
from .sinks import Sink

PREFIX = "model.diffusion_model."
CHECKPOINT_PREFIXES = ("model.", "cond_stage_model.", "first_stage_model.", "conditioner.", "text_encoders.")


def is_bare_unet(keys) -> bool:
    keys = list(keys)
    return bool(keys) and not any(k.startswith(CHECKPOINT_PREFIXES) for k in keys) and any(
        k.startswith(("input_blocks.", "middle_block.", "output_blocks.")) for k in keys)


class PrefixedSource(KeySource):
    """A key source seen with PREFIX on every key (reads and formats delegate to the file's source)."""

    def __init__(self, inner):
        self.inner, self.name = inner, inner.name
        for attr in ("marker", "quant_metadata", "reader", "layout", "header_full_names"):
            if hasattr(inner, attr):
                setattr(self, attr, getattr(inner, attr))
        if getattr(self, "marker", None):
            self.marker = PREFIX + self.marker

    def shapes(self):
        return {PREFIX + k: v for k, v in self.inner.shapes().items()}

    def _own(self, key: str) -> str:
        return key[len(PREFIX):]

    def dtype(self, key):
        return self.inner.dtype(self._own(key))

    def stored_format(self, key):
        fmt = getattr(self.inner, "stored_format", None)
        if fmt is not None:
            return fmt(self._own(key))
        from .quantized import dtype_name
        return dtype_name(self.dtype(key))

    def get(self, key):
        return self.inner.get(self._own(key))

    def stored(self, key):
        return self.inner.stored(self._own(key))

    def stored_scaled(self, key):
        own = getattr(self.inner, "stored_scaled", None)
        return own(self._own(key)) if own else None

    def quant_config(self, key):
        own = getattr(self.inner, "quant_config", None)
        return own(self._own(key)) if own else None

    def had_input_scale(self, key):
        own = getattr(self.inner, "had_input_scale", None)
        return bool(own and own(self._own(key)))

    def raw(self, key):
        return self.inner.raw(self._own(key))

    def prefetch(self, key):
        self.inner.prefetch(self._own(key))

    def release(self, key, part=None):
        self.inner.release(self._own(key), part)

    def close(self):
        self.inner.close()


class StrippingSink(Sink):
    """Writes every key without PREFIX (the inverse of PrefixedSource)."""

    def __init__(self, inner):
        self.inner = inner

    @property
    def keeps_tensors(self) -> bool:
        """Whether a tensor given to ``put`` is referenced after it returns: as the inner sink does."""
        return self.inner.keeps_tensors

    @staticmethod
    def _own(key: str) -> str:
        return key[len(PREFIX):] if key.startswith(PREFIX) else key

    def begin(self, layout):
        self.inner.begin([(self._own(k), d, s) for k, d, s in layout])

    def put(self, key, tensor):
        self.inner.put(self._own(key), tensor)

    def put_raw(self, key, data):
        self.inner.put_raw(self._own(key), data)

    def commit(self):
        return self.inner.commit()

    def abort(self):
        self.inner.abort()


def is_bare_model(keys) -> bool:
    """A diffusion model without any prefix: an SD U-Net, or a declared transformer family's bare keys."""
    from ..architectures import detect
    keys = list(keys)
    if is_bare_unet(keys):
        return True
    return bool(keys) and not any(k.startswith(CHECKPOINT_PREFIXES + ("diffusion_model.",)) for k in keys) \
        and detect(keys) is not None


def prefix_bare(sources: Mapping) -> tuple[dict, bool]:
    """(sources, whether A was bare and was prefixed: the output is then written bare again).

    Inputs that are all bare (or all prefixed) are returned as they are: the architectures read bare keys
    natively. Only a mix is prefixed, so that a diffusion-model file's keys pair up with a checkpoint's."""
    bare = {n: is_bare_model(s.shapes()) for n, s in sources.items()}
    if all(bare.values()) or not any(bare.values()):
        return dict(sources), False
    return {n: PrefixedSource(s) if bare[n] else s for n, s in sources.items()}, bare["a"]
