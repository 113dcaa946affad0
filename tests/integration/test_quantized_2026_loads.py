"""ComfyUI 0.33's block-scaled formats (mxfp8, nvfp4) through a file merge and back into 0.33: inputs quantised
by 0.33's own layouts (comfy.quant_ops) on a tiny Wan 2.1 model, merged "as A", equal bit for bit to 0.33's
quantisation of the fp32 merge, A's input scales kept, loaded by ``comfy.sd.load_diffusion_model`` and sampled
one KSampler step on the CPU (where 0.33's fp4/mxfp8 matmul kernels do not run, it falls back to dequantising
the weight). Skipped on 0.3.75, which has neither format."""
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

quant_ops = pytest.importorskip("comfy.quant_ops")
if "nvfp4" not in getattr(quant_ops, "QUANT_ALGOS", {}) or "mxfp8" not in quant_ops.QUANT_ALGOS:
    pytest.skip("this ComfyUI has no mxfp8/nvfp4 layouts (0.33 has them)", allow_module_level=True)

import comfy.sd  # noqa: E402
import nodes as comfy_nodes  # noqa: E402

from merge_suite.merge_core import merge_files  # noqa: E402
from merge_suite.merge_core.io import microscaling as ms  # noqa: E402

INPUT_SCALE = {"mxfp8": 1.0, "nvfp4": 0.002}


def wan_weights(seed):
    from comfy.ldm.wan.model import WanModel
    import comfy.ops
    gen = torch.Generator().manual_seed(seed)
    net = WanModel(model_type="t2v", dim=128, ffn_dim=256, num_heads=1, num_layers=2, text_dim=64,
                   operations=comfy.ops.disable_weight_init)
    return {k: torch.randn(v.shape, generator=gen) * 0.05 for k, v in net.state_dict().items()}


def block_format(key, value):
    """blocks.0's linear layers in mxfp8, blocks.1's in nvfp4, the rest plain."""
    if key.endswith(".weight") and value.dim() == 2 and key.startswith(("blocks.0.", "blocks.1.")):
        return "mxfp8" if key.startswith("blocks.0.") else "nvfp4"
    return None


def quantise(fmt, w):
    """0.33's own quantisation: (values, block scales, tensor scale or None)."""
    if fmt == "mxfp8":
        values, params = quant_ops.TensorCoreMXFP8Layout.quantize(w)
        return values, params.scale, None
    values, params = quant_ops.TensorCoreNVFP4Layout.quantize(w, scale="recalculate")
    return values, params.block_scale, params.scale


def write(path, sd, input_scale_offset):
    out = {}
    for k, v in sd.items():
        fmt = block_format(k, v)
        if fmt is None:
            out[k] = v.to(torch.bfloat16)
            continue
        layer = k[: -len("weight")]
        values, scales, tensor_scale = quantise(fmt, v)
        out[k], out[layer + "weight_scale"] = values, scales
        if tensor_scale is not None:
            out[layer + "weight_scale_2"] = tensor_scale
        out[layer + "input_scale"] = torch.tensor(INPUT_SCALE[fmt] + input_scale_offset)
        out[layer + "comfy_quant"] = torch.tensor(list(json.dumps({"format": fmt}).encode()), dtype=torch.uint8)
    save_file(out, path)
    return out


def bits(t):
    return t.view(torch.uint8) if t.element_size() == 1 else t.view(torch.int32)


def test_block_scaled_merge_as_a_is_033s_quantisation_and_loads_and_samples(tmp_path):
    a = write(tmp_path / "a.safetensors", wan_weights(1), 0.0)
    write(tmp_path / "b.safetensors", wan_weights(2), 0.5)
    paths = [str(tmp_path / f"{n}.safetensors") for n in "ab"]
    merge_files(*paths, None, str(tmp_path / "f32.safetensors"), dtype="fp32", alpha=0.4)
    merge_files(*paths, None, str(tmp_path / "out.safetensors"), alpha=0.4)
    f32, out = load_file(tmp_path / "f32.safetensors"), load_file(tmp_path / "out.safetensors")
    layers = {k: block_format(k, v) for k, v in wan_weights(1).items() if block_format(k, v)}
    assert set(layers.values()) == {"mxfp8", "nvfp4"}
    for k, fmt in layers.items():
        layer = k[: -len("weight")]
        for got, want in zip((out[k], out[layer + "weight_scale"], out.get(layer + "weight_scale_2")),
                             quantise(fmt, f32[k])):
            assert (got is None) == (want is None), k
            assert got is None or (got.dtype == want.dtype and bits(got).equal(bits(want))), k
        assert json.loads(out[layer + "comfy_quant"].numpy().tobytes()) == {"format": fmt}
        assert torch.equal(out[layer + "input_scale"], a[layer + "input_scale"])  # A's calibration, kept

    patcher = comfy.sd.load_diffusion_model(str(tmp_path / "out.safetensors"))
    modules = dict(patcher.model.diffusion_model.named_modules())
    for k, fmt in layers.items():
        module = modules[k[: -len(".weight")]]
        assert type(module.weight).__name__ == "QuantizedTensor" and module.quant_format == fmt, k
        layer = k[: -len("weight")]
        mine = ms.dequantize_mxfp8(out[k], out[layer + "weight_scale"]) if fmt == "mxfp8" else \
            ms.dequantize_nvfp4(out[k], out[layer + "weight_scale"], out[layer + "weight_scale_2"])
        loaded = module.weight.dequantize().float()
        assert torch.allclose(loaded, mine[: loaded.shape[0], : loaded.shape[1]], rtol=2 ** -7, atol=0), k
        assert float(module.input_scale) == float(a[layer + "input_scale"]), k

    context = [[torch.randn(1, 4, 64, generator=torch.Generator().manual_seed(0)) * 0.1, {}]]
    latent = {"samples": torch.zeros(1, 16, 1, 8, 8)}
    sampled = comfy_nodes.KSampler().sample(patcher, 5, 1, 1.0, "euler", "simple", context, context, latent)[0]
    assert sampled["samples"].shape == (1, 16, 1, 8, 8) and bool(torch.isfinite(sampled["samples"]).all())
