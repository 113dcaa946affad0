"""The engine as a pip package: a wheel built from this checkout holds merge_core only (no ComfyUI layer),
installs into a fresh virtual environment, and its `merge-suite` command merges exactly as
`python -m merge_core` does in the checkout.

The build backend (setuptools, the version pyproject.toml's [build-system] asks for) is fetched once from
the package index into ~/.cache/merge-suite/build-backend; later builds run offline from there.
"""
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "merge-suite" / "build-backend"
COMFY_IMPORTS = re.compile(r"^\s*(import comfy|from comfy|.*comfy_api|.*folder_paths)", re.M)
NOT_IN_CHECKOUT = shutil.ignore_patterns(".git", ".venv", ".host", "node_modules", "out", "__pycache__", "build",
                                         "dist", "*.egg-info", "*.safetensors", ".hypothesis")


def run(*cmd, **kw) -> subprocess.CompletedProcess:
    res = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=300, **kw)
    assert res.returncode == 0, f"{cmd} failed:\n{res.stdout}\n{res.stderr}"
    return res


def run_together(*cmds: tuple[list, Path], env: dict) -> list[str]:
    """Several (command, working folder) at once (each starts Python and torch, most of their time); stdouts."""
    procs = [subprocess.Popen([str(c) for c in cmd], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              cwd=cwd, env=env) for cmd, cwd in cmds]
    outs = [proc.communicate(timeout=300) for proc in procs]
    for cmd, proc, (out, err) in zip(cmds, procs, outs):
        assert proc.returncode == 0, f"{cmd} failed:\n{out}\n{err}"
    return [out for out, _ in outs]


def pyproject() -> str:
    return (REPO / "pyproject.toml").read_text(encoding="utf-8")


def build_backend_requirement() -> str:
    return re.search(r'^requires\s*=\s*\["([^"]+)"\]', pyproject(), re.M).group(1)


def build_wheel(out: Path) -> Path:
    """pip wheel in an isolated build environment filled from the cache only (no index)."""
    source = out / "checkout"
    shutil.copytree(REPO, source, ignore=NOT_IN_CHECKOUT, symlinks=True)
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-index", "--find-links", CACHE,
           "--wheel-dir", out / "dist", source]
    first = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=300)
    if first.returncode != 0:  # first run on this machine (or the requirement changed): fetch the backend once
        run(sys.executable, "-m", "pip", "download", "--only-binary", ":all:", "--no-deps", "--dest", CACHE,
            build_backend_requirement())
        run(*cmd)
    (wheel,) = (out / "dist").glob("merge_suite-*.whl")
    return wheel


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    return build_wheel(tmp_path_factory.mktemp("wheel"))


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    """A fresh environment with the wheel installed (no dependencies, no index), reusing this one's torch."""
    root = tmp_path_factory.mktemp("venv") / "env"
    run(sys.executable, "-m", "venv", "--without-pip", root)
    python = root / "bin" / "python"
    purelib = run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").stdout.strip()
    # --system-site-packages would reach the base interpreter's packages, not this (virtual) environment's
    import site
    lines = [f"import site; site.addsitedir({p!r})" for p in site.getsitepackages()]
    (Path(purelib) / "test_env_packages.pth").write_text("\n".join(lines) + "\n")
    run(sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", wheel)
    return root


def version() -> str:
    return re.search(r'^version\s*=\s*"([^"]+)"', pyproject(), re.M).group(1)


def test_wheel_holds_the_engine_only(wheel):
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        sources = {n: zf.read(n).decode("utf-8") for n in names if n.endswith(".py")}
        dist_info = f"merge_suite-{version()}.dist-info/"
        entry_points = zf.read(dist_info + "entry_points.txt").decode()
        meta = zf.read(dist_info + "METADATA").decode()
    assert all(n.startswith(("merge_core/", dist_info)) for n in names), [n for n in names if "merge_core" not in n]
    assert not any(n.startswith(("nodes/", "web/", "tests/")) or n == "__init__.py" for n in names)
    for needed in ("merge_core/methods/median3.c", "merge_core/blocks/mbw_presets.tsv",
                   "merge_core/architectures/keysets/sd1.json.gz", "merge_core/architectures/keysets/sdxl.json.gz",
                   "merge_core/py.typed", "merge_core/cli/app.py", "merge_core/__main__.py"):
        assert needed in names
    assert len(sources) >= 30
    offending = {n: m.group(0).strip() for n, text in sources.items() if (m := COMFY_IMPORTS.search(text))}
    assert not offending, f"ComfyUI imports in the wheel: {offending}"
    assert re.search(r"^merge-suite = merge_core\.cli:main$", entry_points, re.M)
    assert "Provides-Extra: cli" in meta
    for dep in ("torch", "numpy", "scipy", "pillow"):
        assert re.search(rf"^Requires-Dist: {dep}\b.*extra == \"cli\"", meta, re.M | re.I), dep
    assert re.search(r"^Requires-Dist: safetensors", meta, re.M)


def toy_checkpoint(seed: int) -> dict[str, torch.Tensor]:
    """SD1's layout at toy size, with 3x3 convolutions so smoothAdd runs the native median kernel."""
    g = torch.Generator().manual_seed(seed)
    sd = {f"model.diffusion_model.input_blocks.{i}.0.in_layers.2.weight": torch.randn(4, 3, 3, 3, generator=g)
          for i in range(12)}
    sd.update({f"model.diffusion_model.{b}.1.transformer_blocks.0.attn2.to_k.weight": torch.randn(6, 5, generator=g)
               for b in ("input_blocks.1", "middle_block", "output_blocks.11")})
    sd["cond_stage_model.transformer.text_model.final_layer_norm.weight"] = torch.randn(5, generator=g)
    sd["model.diffusion_model.out.0.bias"] = torch.randn(4, generator=g).half()
    return sd


def raw_tensors(path: Path) -> dict[str, bytes]:
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k).contiguous().view(torch.uint8).numpy().tobytes() for k in f.keys()}


def test_installed_command_merges_like_the_checkout(venv, tmp_path):
    models = []
    for i in range(3):
        models.append(tmp_path / f"m{i}.safetensors")
        save_file(toy_checkpoint(i), models[-1])
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"))  # a first use: the median kernel gets built
    args = ["merge", *models, "--mode", "add_difference", "--calc", "smoothAdd", "--blocks", "GRAD_V", "-q"]
    command = venv / "bin" / "merge-suite"
    where, version_line, help_text, _, _ = run_together(
        ([venv / "bin" / "python", "-c", "import merge_core; print(merge_core.__file__, merge_core.__version__)"],
         tmp_path),
        ([command, "--version"], tmp_path), ([command, "--help"], tmp_path),
        ([command, *args, "-o", tmp_path / "installed.safetensors"], tmp_path),
        ([sys.executable, "-m", "merge_core", *args, "-o", tmp_path / "checkout.safetensors"], REPO), env=env)
    module_file, module_version = where.split()
    assert Path(module_file).is_relative_to(venv) and module_version == version()  # the installed copy, metadata
    assert version_line.strip() == f"merge-suite {version()}"
    assert help_text.startswith("usage: merge-suite ")
    for name in ("merge", "analyze", "lora-merge", "lora-extract", "dice", "pinpoint", "elements"):
        assert re.search(rf"^    {name}\s+\S", help_text, re.M), name  # the command and its help on one line
    installed = raw_tensors(tmp_path / "installed.safetensors")
    checkout = raw_tensors(tmp_path / "checkout.safetensors")
    assert installed.keys() == checkout.keys() == toy_checkpoint(0).keys()
    assert installed == checkout
    assert installed != raw_tensors(models[0])  # it merged something
    if shutil.which("cc") or shutil.which("gcc"):
        assert list((tmp_path / "cache" / "merge-suite" / "native").glob("kernels-*.so"))


def test_without_torch_the_command_says_what_to_install(wheel, tmp_path):
    """A plain install outside ComfyUI (no [cli] extra, no torch) names the missing piece and the fix."""
    bare = tmp_path / "bare"
    run(sys.executable, "-m", "venv", "--without-pip", bare)
    run(sys.executable, "-m", "pip", "--python", bare / "bin" / "python", "install", "--no-deps", "--no-index", wheel)
    res = subprocess.run([str(bare / "bin" / "merge-suite"), "--version"], capture_output=True, text=True,
                         timeout=120, cwd=tmp_path)
    assert res.returncode != 0
    assert "merge_core needs PyTorch: pip install 'merge-suite[cli]'" in res.stderr.splitlines()[-1]
