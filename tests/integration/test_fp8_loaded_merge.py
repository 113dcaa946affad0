"""Models loaded in fp8 (Load Diffusion Model, weight_dtype fp8_e4m3fn) through the MODEL-merge nodes.

The merge is computed in float32 from the fp8 weights (as float) when ComfyUI loads the model; ComfyUI
then writes each patched weight back into its fp8 parameter with stochastic rounding
(comfy.float.stochastic_rounding, seeded per key): every element becomes one of the two fp8 values
around the float32 merge, not always the nearer one; ComfyUI rounds through half precision, so about
one element in a few thousand lands one fp8 step further out. That is the documented result
(docs/nodes.md#models-loaded-in-fp8)."""
import pytest
import torch

import nodes as comfy_nodes  # (ComfyUI imported through conftest)
from effective_weights import effective
from test_file_merge import SETTINGS, UNET, folders  # noqa: F401  (a fixture: pytest finds it by name)

from merge_suite.nodes.merge import ModelMerge

FP8 = torch.float8_e4m3fn
GRID = torch.arange(256, dtype=torch.uint8).view(FP8).float()
GRID = GRID[torch.isfinite(GRID)].unique()  # every finite fp8 e4m3fn value, sorted


def grid_index(value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices in GRID of (largest fp8 <= value, smallest fp8 >= value), value clamped to fp8's range."""
    v = value.clamp(float(GRID[0]), float(GRID[-1])).reshape(-1)
    lo = torch.searchsorted(GRID, v, side="right") - 1
    hi = torch.searchsorted(GRID, v, side="left")
    return lo.reshape(value.shape), hi.reshape(value.shape)


def loaded_weights(model) -> dict[str, torch.Tensor]:
    """The U-Net weights as ComfyUI holds them once the model is loaded for sampling (patches applied;
    the server runs nodes under inference mode)."""
    with torch.inference_mode():
        model.patch_model()
        try:
            return {k: v.clone() for k, v in model.model.state_dict().items() if k.startswith(UNET)}
        finally:
            model.unpatch_model()


@pytest.mark.usefixtures("folders")
def test_fp8_models_merge_to_a_stochastic_rounding_of_the_float32_merge():
    load = comfy_nodes.UNETLoader().load_unet
    ma, mb = (load(f"unet_{n}.safetensors", "fp8_e4m3fn")[0] for n in "ab")
    inputs = {"a": effective(ma, UNET), "b": effective(mb, UNET)}
    merged = ModelMerge.execute(model_a=ma, model_b=mb, **SETTINGS).result[0]
    want = effective(merged, UNET)  # the float32 merge of the fp8 inputs, before ComfyUI stores it
    got = loaded_weights(merged)
    fp8_keys = [k for k, v in got.items() if v.dtype == FP8 and k in want]
    assert len(fp8_keys) > 100
    farther = beyond = total = 0
    for key in fp8_keys:
        a, b = inputs["a"][key], inputs["b"][key]
        assert torch.allclose(want[key], a + 0.3 * (b - a), rtol=1e-6, atol=1e-7), key  # the formula
        lo, hi = grid_index(want[key])
        got_index = grid_index(got[key].float())[0]
        nearest = grid_index(want[key].to(FP8).float())[0]
        # one of the two fp8 values around the merge; ComfyUI rounds in half precision, so rarely one step more
        assert bool(((got_index >= lo - 1) & (got_index <= hi + 1)).all()), key
        beyond += int(((got_index < lo) | (got_index > hi)).sum())
        farther += int((got_index != nearest).sum())
        total += got_index.numel()
    # stochastic, not round-to-nearest: about a quarter of the elements take the farther neighbour
    assert 0.15 < farther / total < 0.35, farther / total
    assert beyond / total < 1e-3, beyond / total
    assert not torch.equal(got[fp8_keys[0]], ma.model.state_dict()[fp8_keys[0]])  # the merge was applied
