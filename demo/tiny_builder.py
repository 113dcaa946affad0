"""From a table of tiny families to state dicts, loaded models and files, with ComfyUI's own classes.

tiny_families, tiny_cosmos, tiny_image_models and tiny_video_models each keep their own table (which released
key inventory a family shrinks, its size settings, its model class, the tiny configs that let UNETLoader load
it); the steps from such a table to a model are the same for all of them, so they live here once. The host's
detection reads the released inventory's shapes (meta tensors, no memory) and only the size settings are then
replaced, so no constructor signature is hard-coded. Needs ComfyUI importable.
"""
from __future__ import annotations

import gzip
import json
import os
from pathlib import Path
from typing import Callable, Optional

import torch

import comfy.ops
import comfy.sd
import comfy.supported_models
import comfy.utils
from tiny_models import _fill

KEYSETS = Path(__file__).resolve().parents[1] / "merge_core" / "architectures" / "keysets"
MAX_PARAMETERS = 20_000_000  # a tiny model is a few MB; more means a size setting did not take


def _never_missing(family: str) -> Optional[str]:
    return None


def lacking_config(host_configs: dict[str, str], family: str) -> str:
    """Why the running ComfyUI cannot build this family ('' when it can): it has no model config of the name
    ``host_configs[family]`` (comfy.supported_models)."""
    if getattr(comfy.supported_models, host_configs[family], None) is None:
        return f"this ComfyUI has no {host_configs[family]} model (ComfyUI 0.33 has it)"
    return ""


def widths(state_dict, suffix: str) -> list[int]:
    """The first dimension of every tensor whose key ends with ``suffix``: what a tiny config matches on where
    the host's detection reads no width."""
    return [v.shape[0] for k, v in (state_dict or {}).items() if k.endswith(suffix)]


class TinyBuilder:
    """One family table's tiny models.

    ``released``: family -> its key inventory's name in keysets/ (``prefixes``: family -> a key prefix the
    inventory has and the tiny model's keys lack); ``tiny``: family -> the size settings laid over the detected
    configuration; ``model_class``: family -> ComfyUI's module class; ``configs``: the tiny model configs;
    ``missing``: family -> why this ComfyUI cannot build it (falsy when it can); ``to_front``: registering
    moves the configs ahead of any registered before (so that they win detection); ``fill_buffers``: float
    buffers (SD3's learned position table) are random too.
    """

    def __init__(self, *, released: dict[str, str], tiny: dict[str, dict],
                 model_class: Callable[[str], type], configs: tuple,
                 missing: Callable[[str], Optional[str]] = _never_missing, to_front: bool = False,
                 fill_buffers: bool = False, prefixes: Optional[dict[str, str]] = None):
        self.released, self.prefixes, self.tiny = released, prefixes or {}, tiny
        self.model_class, self.configs = model_class, configs
        self.missing, self.to_front, self.fill_buffers = missing, to_front, fill_buffers

    def register(self) -> None:
        """Let UNETLoader / CheckpointLoaderSimple recognise the tiny family files (idempotent)."""
        models = comfy.supported_models.models
        for cls in self.configs:
            if cls in models and self.to_front:
                models.remove(cls)
            if cls not in models:
                models.insert(0, cls)

    def released_keys(self, family: str) -> dict[str, tuple[list, str]]:
        """{key: (shape, dtype)} of the family's released diffusion model (bare keys)."""
        prefix = self.prefixes.get(family, "")
        with gzip.open(KEYSETS / f"{self.released[family]}.json.gz") as f:
            inventory = json.loads(f.read())
        return {k[len(prefix):]: tuple(v) for k, v in inventory.items() if k.startswith(prefix)}

    def host_config(self, family: str) -> dict:
        """The family's model configuration as the running ComfyUI derives it, shrunk to the tiny size.

        ComfyUI's detection adds whatever its own model class needs in that release (0.33's Flux takes
        ``txt_ids_dims``, its Chroma ``vec_in_dim``), so a release that adds a setting still builds the models.
        """
        from comfy import model_detection
        reason = self.missing(family)
        if reason:
            raise RuntimeError(reason)
        meta = {k: torch.empty(shape, dtype=getattr(torch, dtype), device="meta")
                for k, (shape, dtype) in self.released_keys(family).items()}
        detected = model_detection.detect_unet_config(meta, "")
        if detected is None:
            raise RuntimeError(f"this ComfyUI does not recognise the released {family} key set")
        return {**detected, **self.tiny[family]}

    def diffusion_module(self, family: str) -> torch.nn.Module:
        """The family's module at the tiny size (uninitialised), refused when a size setting did not take."""
        reason = self.missing(family)
        if reason:
            raise RuntimeError(reason)
        module = self.model_class(family)(**self.host_config(family), operations=comfy.ops.disable_weight_init,
                                          device=torch.device("cpu"), dtype=torch.float32)
        count = sum(p.numel() for p in module.parameters())
        if count > MAX_PARAMETERS:
            raise RuntimeError(f"tiny {family} has {count:,} parameters: a size setting of TINY['{family}'] no "
                               "longer applies to this ComfyUI's model class")
        return module

    def released_naming(self, family: str, state_dict: dict) -> dict:
        """Keys renamed to the released files' names where the host's class names a parameter otherwise.

        ComfyUI 0.33 builds Flux's (so Chroma's, LongCat-Image's) RMSNorm scales as ``.weight`` (it renames
        ``.scale`` on load); the released files, and so the test files, say ``.scale``.
        """
        released = self.released_keys(family)
        out = {}
        for key, value in state_dict.items():
            if key not in released and key.endswith(".weight") and key[:-len("weight")] + "scale" in released:
                key = key[:-len("weight")] + "scale"
            out[key] = value
        return out

    @torch.no_grad()
    def diffusion_state_dict(self, family: str, seed: int = 0) -> dict[str, torch.Tensor]:
        """A diffusion-model-only state dict (bare keys, as ComfyUI's ModelSave and the releases store them).

        Every float tensor is random (norm scales around 1), so that models of two seeds differ at every key.
        """
        module = self.diffusion_module(family)
        _fill(module, seed, all_random=True)
        if self.fill_buffers:
            gen = torch.Generator().manual_seed(seed + 500)
            for buf in module.buffers():  # a learned table stored as a buffer (uninitialised here)
                if buf.is_floating_point():
                    buf.copy_(torch.randn(buf.shape, generator=gen) * 0.05)
        state = {k: v.detach().clone().contiguous() for k, v in module.state_dict().items()}
        return self.released_naming(family, state)

    def build_model(self, family: str, seed: int = 0):
        """A ModelPatcher loaded the way UNETLoader loads a diffusion-model file."""
        self.register()
        return comfy.sd.load_diffusion_model_state_dict(self.diffusion_state_dict(family, seed))

    def save_diffusion_model(self, path: str | os.PathLike, family: str, seed: int) -> Path:
        """A diffusion-model-only safetensors file that UNETLoader loads once register() ran."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        comfy.utils.save_torch_file(self.diffusion_state_dict(family, seed), str(path))
        return path
