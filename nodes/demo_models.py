"""Lets ComfyUI's Load Checkpoint load the pack's demo models (demo/models/merge-suite-demo-*.safetensors).

The demo models are SD1-layout checkpoints far smaller than any real model: a U-Net of 64 channels with a
32-wide text context, a CLIP-L text encoder of width 32 and a TAESD autoencoder. ComfyUI's own SD1.5 config
requires 320 channels and refuses them, so ``register()`` puts ``MergeSuiteDemo`` at the front of ComfyUI's
model list. Its ``unet_config`` names every dimension of the demo U-Net, so it claims those files and no other
(no real model, and none of the tests' tiny models, has 64 channels with a 32-wide context), and it answers
False on any error, so it can never break the loading of another checkpoint. ``register()`` also adds
demo/models to the "checkpoints" search paths so the files appear in every user's checkpoint list.

The module imports no other part of the pack: demo/train/train.py loads it by path to build the models.
"""
from __future__ import annotations

import logging
from pathlib import Path

DEMO_MODELS_DIR = Path(__file__).resolve().parents[1] / "demo" / "models"

DEMO_CLIP_L = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2,
               "num_hidden_layers": 3, "projection_dim": 32}

# The U-Net as ComfyUI's model detection reads it from a checkpoint (SD1 block layout: input_blocks.0-11,
# middle_block, output_blocks.0-11); cross-attention at the second level and in the middle block.
DEMO_UNET = {
    "model_channels": 64, "channel_mult": [1, 1, 1, 1], "num_res_blocks": [2, 2, 2, 2],
    "transformer_depth": [0, 0, 1, 1, 0, 0, 0, 0], "transformer_depth_output": [0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 0],
    "transformer_depth_middle": 1, "context_dim": 32, "use_linear_in_transformer": False,
    "adm_in_channels": None, "in_channels": 4, "out_channels": 4, "use_temporal_attention": False,
}
DEMO_UNET_EXTRA = {"num_heads": -1, "num_head_channels": 32}
DEMO_UNET_BUILD = dict(DEMO_UNET, use_spatial_transformer=True, legacy=False, image_size=32,
                       use_checkpoint=False, **DEMO_UNET_EXTRA)


_config_class = None


def config_class():
    """``MergeSuiteDemo``: SD1.5 behaviour (eps prediction, SD1 latent format, CLIP-L) at the demo models' exact
    dimensions. Built on first use, so importing this module never touches ComfyUI."""
    global _config_class
    if _config_class is not None:
        return _config_class
    import comfy.supported_models
    import comfy.supported_models_base
    from comfy import sd1_clip

    class DemoClip(sd1_clip.SD1ClipModel):
        """CLIP-L of width 32 (its token embedding keeps CLIP's 49408-word vocabulary)."""

        def __init__(self, device="cpu", dtype=None, model_options=None, **kwargs):
            super().__init__(device=device, dtype=dtype,
                             model_options={**(model_options or {}), "clip_l_model_config": DEMO_CLIP_L}, **kwargs)

    class MergeSuiteDemo(comfy.supported_models.SD15):
        unet_config = dict(DEMO_UNET)
        unet_extra_config = dict(DEMO_UNET_EXTRA)

        @classmethod
        def matches(cls, unet_config, state_dict=None, *args, **kwargs):
            # Hosts differ in their arguments (0.33 adds unet_key_prefix); one that cannot judge does not claim.
            try:
                return bool(super().matches(unet_config, state_dict, *args, **kwargs))
            except Exception:  # noqa: BLE001
                return False

        def clip_target(self, state_dict=None):
            return comfy.supported_models_base.ClipTarget(sd1_clip.SD1Tokenizer, DemoClip)

    _config_class = MergeSuiteDemo
    return _config_class


def unet_build_config() -> dict:
    """The full U-Net config (detected keys plus the build-only ones) that train.py builds models with."""
    from comfy import model_detection

    return model_detection.convert_config(dict(DEMO_UNET_BUILD))


def register_model_config() -> None:
    import comfy.supported_models

    models = comfy.supported_models.models
    if not any(getattr(m, "__name__", "") == "MergeSuiteDemo" for m in models):
        models.insert(0, config_class())


def register_checkpoint_folder() -> None:
    import folder_paths

    try:
        folder_paths.add_model_folder_path("checkpoints", str(DEMO_MODELS_DIR), is_default=False)
    except TypeError:  # a host without is_default
        folder_paths.add_model_folder_path("checkpoints", str(DEMO_MODELS_DIR))


_registered = False


def register() -> None:
    """Make the demo checkpoints loadable and listed (idempotent; one warning, never an error, when the
    host's internals differ)."""
    global _registered
    if _registered:
        return
    try:
        register_model_config()
        register_checkpoint_folder()
        _registered = True
    except Exception as error:  # noqa: BLE001 - the pack's nodes work without the demo models
        logging.warning("merge_suite: the demo models could not be registered with ComfyUI (%s)", error)
