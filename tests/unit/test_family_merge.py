"""CLI merges on a transformer family: Flux.1 keys and namings from the full-size inventory at a tiny
width (every tensor 2x3 or 3), weights equal to the formula key by key."""
import pytest
import torch
from safetensors.torch import save_file
from spec_families import load_keyset

from merge_core import cli
from merge_core.io.safetensors_file import SafetensorsReader


def tiny(keys, seed):
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn((2, 3) if len(s) > 1 else (3,), generator=gen) for k, s in keys.items()}


def read(path):
    with SafetensorsReader(str(path)) as r:
        return {k: r.get(k).clone() for k in r.keys()}


@pytest.fixture(scope="module")
def flux(tmp_path_factory):
    root = tmp_path_factory.mktemp("flux")
    forge = load_keyset("flux1-dev")  # Forge-style: model.diffusion_model., text_encoders., vae.
    dev = tiny(forge, 1)
    b = {k: v + 0.5 for k, v in tiny(forge, 2).items()}
    schnell = {k: v for k, v in b.items() if "guidance_in" not in k}
    paths = {"dev": root / "dev.safetensors", "b": root / "b.safetensors", "schnell": root / "schnell.safetensors"}
    for name, sd in (("dev", dev), ("b", b), ("schnell", schnell)):
        save_file(sd, str(paths[name]))
    return root, paths, dev, b


def test_named_weights_merge_every_float_with_the_formula(flux, capsys):
    root, paths, a, b = flux
    out = root / "named.safetensors"
    assert cli.main(["merge", str(paths["dev"]), str(paths["b"]), "--alpha", "0.25", "--blocks",
                     "D00-D18=0.3, S10-S37=0.7, OUT=1", "-o", str(out), "-q"]) == 0
    merged = read(out)
    assert set(merged) == set(a)
    for key, t in merged.items():
        rel = key.split("model.diffusion_model.")[-1]
        if key.startswith("vae."):
            ratio = 0.0  # the VAE keeps A (SuperMerger's Flux rule)
        elif rel.startswith("double_blocks."):
            ratio = 0.3
        elif rel.startswith("single_blocks.") and int(rel.split(".")[1]) >= 10:
            ratio = 0.7
        elif rel.startswith("final_layer."):
            ratio = 1.0
        else:
            ratio = 0.25  # CLIP, T5, IN, S00-S09: the scalar alpha
        assert torch.allclose(t, a[key] * (1 - ratio) + b[key] * ratio, atol=1e-6), key
    assert torch.equal(merged["model.diffusion_model.double_blocks.0.img_attn.norm.key_norm.scale"],
                       (a["model.diffusion_model.double_blocks.0.img_attn.norm.key_norm.scale"] * 0.7
                        + b["model.diffusion_model.double_blocks.0.img_attn.norm.key_norm.scale"] * 0.3)), \
        "RMSNorm scales are merged (no weight/bias name filter outside SD)"


def test_dev_with_schnell_keeps_guidance_in_and_says_so(flux, capsys):
    root, paths, a, _ = flux
    out = root / "ds.safetensors"
    assert cli.main(["merge", str(paths["dev"]), str(paths["schnell"]), "--alpha", "0.5", "-o", str(out),
                     "--report", "blocks"]) == 0
    merged = read(out)
    guidance = [k for k in a if ".guidance_in." in k]
    assert guidance and all(torch.equal(merged[k], a[k]) for k in guidance)
    text = capsys.readouterr().out
    assert "absent from B" in text and "guidance_in.in_layer.weight" in text


def test_wrong_length_and_family_errors(flux, tmp_path, capsys):
    _, paths, _, _ = flux
    assert cli.main(["merge", str(paths["dev"]), str(paths["b"]), "--blocks", ",".join(["0.5"] * 26),
                     "-o", str(tmp_path / "x.safetensors")]) != 0
    assert "CLIP, T5, IN, D00-D18, S00-S37, OUT" in capsys.readouterr().err
    sd3 = tmp_path / "sd3.safetensors"
    save_file(tiny(load_keyset("sd3-medium"), 3), str(sd3))
    assert cli.main(["merge", str(paths["dev"]), str(sd3), "-o", str(tmp_path / "y.safetensors")]) != 0
    err = capsys.readouterr().err
    assert "SD3/SD3.5" in err and "Flux.1" in err
    assert not (tmp_path / "x.safetensors").exists() and not (tmp_path / "y.safetensors").exists()


def test_blocks_command_prints_the_layout(flux, capsys):
    _, paths, _, _ = flux
    assert cli.main(["blocks", str(paths["dev"])]) == 0
    out = capsys.readouterr().out
    assert "Flux.1 (flux1)" in out and "61 blocks" in out and "CLIP, T5, IN, D00-D18, S00-S37, OUT" in out
    assert "244 keys kept from A (VAE)" in out


def test_mixed_namings_pair_up(flux, tmp_path):
    """A diffusion-model file (bare keys) merged with a Forge checkpoint, either way round: the keys pair up
    (they used to be all 'absent from B' and nothing merged), and the output keeps A's naming."""
    root, paths, a, b = flux
    prefix = "model.diffusion_model."
    bare_a = {k[len(prefix):]: v for k, v in a.items() if k.startswith(prefix)}
    save_file(bare_a, str(tmp_path / "bare.safetensors"))
    out = tmp_path / "bare_out.safetensors"
    assert cli.main(["merge", str(tmp_path / "bare.safetensors"), str(paths["b"]), "--alpha", "0.25", "-o", str(out),
                     "-q"]) == 0
    merged = read(out)
    assert set(merged) == set(bare_a)
    assert all(torch.allclose(t, bare_a[k] * 0.75 + b[prefix + k] * 0.25, atol=1e-6) for k, t in merged.items())
    bare_b = {k[len(prefix):]: v for k, v in b.items() if k.startswith(prefix)}
    save_file(bare_b, str(tmp_path / "bare_b.safetensors"))
    out = tmp_path / "forge_out.safetensors"
    assert cli.main(["merge", str(paths["dev"]), str(tmp_path / "bare_b.safetensors"), "--alpha", "0.25", "-o",
                     str(out), "-q"]) == 0
    merged = read(out)
    assert set(merged) == set(a)
    for key, t in merged.items():
        want = a[key] * 0.75 + b[key] * 0.25 if key.startswith(prefix) else a[key]  # TE and VAE: not in B
        assert torch.allclose(t, want, atol=1e-6), key
