"""The demo model family's registration: the pack registers its config and folder at load, the config claims
the demo U-Net and nothing else (neither the tests' tiny models nor they the demo's), and each shipped
checkpoint loads as Load Checkpoint loads it, in fp16, with its training settings in the metadata."""
import json
from pathlib import Path

import pytest
import torch

import comfy.sd
import comfy.supported_models
import comfy.utils
import folder_paths
from comfy import model_detection

from merge_suite.nodes import demo_models

REPO = Path(__file__).resolve().parents[2]
SHIPPED = [REPO / "demo" / "models" / f"merge-suite-demo-{style}.safetensors"
           for style in ("base", "pastel", "stripes")]


def detected(model) -> dict:
    sd = {f"model.diffusion_model.{k}": v for k, v in model.diffusion_model.state_dict().items()}
    return model_detection.detect_unet_config(sd, "model.diffusion_model.")


def demo_unet():
    config = demo_models.config_class()(demo_models.unet_build_config())
    config.set_inference_dtype(torch.float32, None)
    return config.get_model({}, "")


def test_the_pack_registers_the_config_and_the_folder():
    assert demo_models.config_class() in comfy.supported_models.models
    assert str(demo_models.DEMO_MODELS_DIR) in folder_paths.get_folder_paths("checkpoints")
    demo_models.register()
    assert sum(m is demo_models.config_class() for m in comfy.supported_models.models) == 1


def test_the_config_claims_exactly_the_demo_unet(tiny):
    import tiny_models
    demo = detected(demo_unet())
    assert demo_models.config_class().matches(demo)
    assert not any(cls.matches(demo) for cls in (tiny_models.TinySD15, tiny_models.TinySD20, tiny_models.TinySDXL))
    for layout in ("sd1", "sd2", "sdxl"):
        assert not demo_models.config_class().matches(detected(tiny("model", layout, 0).model))
    real_sd15 = dict(demo, model_channels=320, context_dim=768, channel_mult=[1, 2, 4, 4])
    assert not demo_models.config_class().matches(real_sd15)


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_each_shipped_checkpoint_loads_in_fp16_with_its_settings(path):
    if not path.exists():
        pytest.skip(f"{path.name} not built")
    sd, metadata = comfy.utils.load_torch_file(str(path), return_metadata=True)
    assert {v.dtype for v in sd.values() if v.is_floating_point()} == {torch.float16}
    assert metadata["merge_suite_demo.style"] == path.stem.rsplit("-", 1)[1]
    assert json.loads(metadata["merge_suite_demo.training"])["image_size"] == 64
    model, clip, vae = comfy.sd.load_checkpoint_guess_config(str(path))[:3]
    assert type(model.model.model_config) is demo_models.config_class()
    assert clip is not None and vae is not None
