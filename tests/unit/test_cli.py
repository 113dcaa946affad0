import subprocess
import sys
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from test_merge_api import small_model

REPO = Path(__file__).resolve().parents[2]


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "merge_core", *args], cwd=REPO, capture_output=True, text=True)


def test_cli_add_difference_with_blocks(tmp_path, sd1_keys):
    paths = []
    for i in range(3):
        p = tmp_path / f"m{i}.safetensors"
        save_file(small_model(sd1_keys, i), p)
        paths.append(str(p))
    out = tmp_path / "out.safetensors"
    res = run_cli("merge", *paths, "--mode", "add_difference", "--blocks", "FLAT_75", "--dtype", "fp32",
                  "-o", str(out))
    assert res.returncode == 0, res.stderr
    assert "686 keys merged" in res.stderr  # FLAT_75 has BASE = 0: text encoder and VAE stay A
    key = "model.diffusion_model.input_blocks.1.1.proj_in.weight"
    with safe_open(paths[0], "pt") as fa, safe_open(paths[1], "pt") as fb, safe_open(paths[2], "pt") as fc, \
            safe_open(str(out), "pt") as fo:
        a, b, c = (f.get_tensor(key).float() for f in (fa, fb, fc))
        got = fo.get_tensor(key)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, a + 0.75 * (b - c))


def test_cli_errors_name_the_option(tmp_path, sd1_keys):
    p = tmp_path / "a.safetensors"
    save_file(small_model(sd1_keys, 0), p)
    res = run_cli("merge", str(p), str(p), "--blocks", "0.1,0.2", "-o", str(tmp_path / "o.safetensors"))
    assert res.returncode == 2
    assert "--blocks" in res.stderr and "2 values" in res.stderr and "Traceback" not in res.stderr
    res = run_cli("merge", str(p), "-o", str(tmp_path / "o.safetensors"))
    assert res.returncode == 2 and "two or three" in res.stderr
    res = run_cli("merge", str(p), str(tmp_path / "missing.safetensors"), "-o", str(tmp_path / "o.safetensors"))
    assert res.returncode == 2 and "Traceback" not in res.stderr


def test_cli_calc_mode_and_its_errors(tmp_path, sd1_keys):
    paths = []
    for i in range(3):
        p = tmp_path / f"m{i}.safetensors"
        save_file(small_model(sd1_keys, i, torch.float32), p)
        paths.append(str(p))
    out = tmp_path / "out.safetensors"
    res = run_cli("merge", *paths, "--calc", "trainDifference", "--alpha", "0.5", "-o", str(out))
    assert res.returncode == 0, res.stderr
    key = "model.diffusion_model.input_blocks.1.1.proj_in.weight"
    with safe_open(paths[0], "pt") as fa, safe_open(paths[1], "pt") as fb, safe_open(paths[2], "pt") as fc, \
            safe_open(str(out), "pt") as fo:
        a, b, c = (f.get_tensor(key) for f in (fa, fb, fc))
        got = fo.get_tensor(key)
    frac = (b - a).abs() / ((b - c).abs() + (b - a).abs())
    torch.testing.assert_close(got, a + 0.9 * (b - c) * frac)
    res = run_cli("merge", *paths[:2], "--calc", "smoothAdd", "-o", str(tmp_path / "x.safetensors"))
    assert res.returncode == 2 and "--calc" in res.stderr and "Add difference" in res.stderr
    res = run_cli("merge", *paths, "--calc", "extract", "--gamma", "-2", "-o", str(tmp_path / "x.safetensors"))
    assert res.returncode == 2 and "--gamma" in res.stderr and "Traceback" not in res.stderr
