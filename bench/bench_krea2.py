"""Krea 2 at full size in ComfyUI 0.33's fp8 layout with scales: the CLI's weight sum against the I/O floor.

Synthetic diffusion-model files (bare keys, as a diffusion-models folder holds them) with the key names and
shapes of ComfyUI 0.33's Krea 2 class (SingleStreamDiT at its released size, 12.8 B parameters, 430 keys):
from the keyset in merge_core/architectures/keysets/ when there is one, else built here on the meta device
in the ComfyUI 0.33 venv. Each linear layer's 2-D weight is stored as 0.33 stores a per-tensor fp8 layer
(io/quantized.py, layout ``comfy_quant``): a float8_e4m3fn weight, a float32 ``weight_scale`` and a
``comfy_quant`` uint8 tensor holding the layer's JSON config; every other tensor is bf16. Values are seeded
slices of one random pool (synth.py's way: fast, different between seeds), written one tensor at a time.

Measured in one run, alternating, both cold (the inputs dropped from the page cache first, bench_cli.evict):
the I/O floor (read A and B once, write one output of A's size, fsync; bench_flux.FLOOR) and
``python -m merge_core merge A B --alpha 0.5 -o OUT`` with no dtype, so the output is "as A": fp8 with fresh
scales and A's configs. Wall time and peak RSS per child, the load average beside each figure. The first
merge's output is checked: A's keys, dtypes, shapes and layer configs, and a few tensors dequantised against
quantize_scaled(lerp(A, B, 0.5)) within fp8 rounding.

    python bench/bench_krea2.py [--keep] [--rounds 2] [--smoke]

Disk: A, B and one output, about 12.8 GB each (refused when they do not fit with 2 GB to spare).
"""
from __future__ import annotations

import argparse
import glob
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
WORK = HERE / "_work"
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

from bench_cli import evict, run_measured  # noqa: E402
from bench_flux import FLOOR, MARGIN_GB  # noqa: E402
from synth import POOL, keyset  # noqa: E402

KEYSETS = REPO / "merge_core" / "architectures" / "keysets"
COMFYUI_033 = REPO / ".host" / "ComfyUI-0.33.0" / "ComfyUI"
CONFIG = {"format": "float8_e4m3fn", "full_precision_matrix_mult": True}  # 0.33's config of a layer without
# an input scale (what it writes when it converts a scaled_fp8 file)
FP8_SPREAD = 64.0  # the fp8 pool's standard deviation: well inside e4m3fn's normal range (max 448)
STD = 0.05  # dequantised weights' standard deviation

META_BUILD = r"""
import json, os, sys
sys.path.insert(0, os.environ["COMFYUI_PATH"])
from comfy.cli_args import args
args.cpu = True
import torch
import comfy.ops
from comfy.ldm.krea2.model import SingleStreamDiT
model = SingleStreamDiT(operations=comfy.ops.disable_weight_init, device=torch.device("meta"), dtype=torch.bfloat16)
print(json.dumps({k: list(v.shape) for k, v in model.state_dict().items()}))
"""


# bench_cli.run_measured's child reports at least the peak RSS of the process that started it (Linux carries the
# parent's high-water mark over fork and exec: 0.47 GB here, torch imported), so each measured command runs under
# this small launcher, which starts it, waits and writes the command's own peak RSS (GB) and CPU seconds to a file.
LAUNCH = r"""
import os, subprocess, sys
proc = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(proc.pid, 0)
open(sys.argv[1], "w").write(f"{usage.ru_maxrss / 1024 / 1024} {usage.ru_utime + usage.ru_stime}")
sys.exit(os.waitstatus_to_exitcode(status))
"""


def run_lean(cmd: list[str]) -> tuple[float, float, float]:
    """Wall seconds (run_measured), the command's own peak RSS in GB and its CPU seconds, user + system (LAUNCH)."""
    rss_file = WORK / "krea2_rss.txt"
    wall, _ = run_measured([sys.executable, "-S", "-c", LAUNCH, str(rss_file), *cmd])
    rss, cpu = map(float, rss_file.read_text().split())
    rss_file.unlink()
    return wall, rss, cpu


def krea2_shapes() -> tuple[dict[str, tuple[int, ...]], str]:
    """(key -> shape, where it came from): the keyset file if one exists, else ComfyUI 0.33's class on meta."""
    files = sorted(KEYSETS.glob("krea2*.json.gz"))
    if files:
        return keyset(files[0].name[:-len(".json.gz")]), f"keyset {files[0].name}"
    pythons = sorted(glob.glob(str(REPO / ".venvs" / "comfyui-0.33.0-*" / "bin" / "python")))
    if not pythons:
        raise SystemExit("no krea2 keyset and no ComfyUI 0.33 venv (.venvs/comfyui-0.33.0-*) to build it")
    env = dict(os.environ, COMFYUI_PATH=str(COMFYUI_033))
    out = subprocess.run([pythons[0], "-c", META_BUILD], env=env, check=True, capture_output=True, text=True)
    shapes = json.loads(out.stdout.strip().splitlines()[-1])
    return {k: tuple(v) for k, v in shapes.items()}, "ComfyUI 0.33 SingleStreamDiT() on the meta device"


def is_linear(key: str, shape) -> bool:
    """What io/precision.py scales: a 2-D ``.weight`` (its linear layers)."""
    return key.endswith(".weight") and len(shape) == 2


def smoke_shapes(shapes):
    """The same keys, every dimension capped at 96: a seconds-long check of the whole pipeline."""
    return {k: tuple(min(d, 96) for d in s) for k, s in shapes.items()}


def layout(shapes) -> list[tuple[str, torch.dtype, tuple[int, ...]]]:
    from merge_core.io.precision import config_tensor
    config_len = len(config_tensor(CONFIG))
    rows = []
    for key, shape in shapes.items():
        if is_linear(key, shape):
            layer = key[:-len(".weight")]
            rows += [(key, torch.float8_e4m3fn, shape), (f"{layer}.weight_scale", torch.float32, ()),
                     (f"{layer}.comfy_quant", torch.uint8, (config_len,))]
        else:
            rows.append((key, torch.bfloat16, shape))
    return rows


def file_size(shapes) -> int:
    return sum(math.prod(s) * torch.empty((), dtype=d).element_size() for _, d, s in layout(shapes))


def write_krea2(path: Path, shapes, seed: int) -> Path:
    """One tensor at a time: fp8 values are slices of one seeded fp8 pool, each layer's scale varies by key."""
    from merge_core.io.precision import config_tensor
    from merge_core.io.safetensors_file import SafetensorsWriter
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(POOL, generator=gen)
    fp8 = (base * FP8_SPREAD).clamp(-448, 448).to(torch.float8_e4m3fn).view(torch.uint8)
    bf16 = (base * STD).bfloat16()
    config = config_tensor(CONFIG)
    writer = SafetensorsWriter(path, layout(shapes), {"synthetic": "krea2 fp8 comfy_quant"}, overwrite=True)

    def piece(pool, n, i):
        start = (seed * 7919 + i * 104729) % POOL
        return pool.roll(-start).repeat(math.ceil(n / POOL))[:n] if n > POOL - start else pool[start:start + n]

    try:
        for i, (key, shape) in enumerate(shapes.items()):
            n = math.prod(shape)
            if is_linear(key, shape):
                layer = key[:-len(".weight")]
                scale = STD / FP8_SPREAD * (1.0 + 0.25 * ((i * 37 + seed) % 9 - 4) / 4)
                writer.write(key, piece(fp8, n, i).reshape(shape).view(torch.float8_e4m3fn))
                writer.write(f"{layer}.weight_scale", torch.tensor(scale, dtype=torch.float32))
                writer.write(f"{layer}.comfy_quant", config)
            else:
                writer.write(key, piece(bf16, n, i).reshape(shape))
        return writer.commit()
    except BaseException:
        writer.abort()
        raise


def krea2_inputs(shapes, tag: str, smoke: list[str]) -> list[Path]:
    """A and B in bench/_work (made when missing); refuses when A, B and one output do not fit."""
    WORK.mkdir(exist_ok=True)
    size = file_size(shapes)
    paths = [WORK / f"krea2_fp8scaled{tag}_{t}.safetensors" for t in "ab"]
    present = sum(p.stat().st_size for p in paths if p.exists())
    free = shutil.disk_usage(WORK).free + present
    if free - MARGIN_GB * 1e9 < 3 * size:
        raise SystemExit(f"refused: needs {3 * size / 1e9:.1f} GB of free disk (A, B and one output of "
                         f"{size / 1e9:.1f} GB each, plus {MARGIN_GB:.0f} GB spare); {free / 1e9:.1f} GB free")
    for path, seed in zip(paths, (1, 2)):
        if not path.exists():  # in a child process, so that this one's peak RSS stays small (LAUNCH)
            start = time.perf_counter()
            subprocess.run([sys.executable, __file__, "--make", str(path), str(seed), *smoke], check=True)
            print(f"made {path.name} ({path.stat().st_size / 1e9:.2f} GB) in {time.perf_counter() - start:.0f} s",
                  file=sys.stderr)
    return paths


def _dequantized(f, key: str) -> torch.Tensor:
    t = f.get_tensor(key)
    if t.dtype == torch.float8_e4m3fn:
        return t.float() * f.get_tensor(key[:-len("weight")] + "weight_scale").float()
    return t.float()


def verify(a: Path, b: Path, out: Path, shapes) -> list[str]:
    """Raises when the output's keys, dtypes, shapes or layer configs differ from A's; returns a line per
    checked tensor (dequantised output against quantize_scaled(lerp(A, B, 0.5)) or its bf16 cast)."""
    from safetensors import safe_open

    from merge_core.io.precision import quantize_scaled

    def header(path):
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            h = json.loads(f.read(n))
        h.pop("__metadata__", None)
        return {k: (v["dtype"], v["shape"]) for k, v in h.items()}
    ha, ho = header(a), header(out)
    if ha != ho:
        diff = sorted(set(ha.items()) ^ set(ho.items()), key=str)[:5]
        raise AssertionError(f"output's keys/dtypes/shapes differ from A's, e.g. {diff}")
    lines = []
    with safe_open(str(a), "pt") as fa, safe_open(str(b), "pt") as fb, safe_open(str(out), "pt") as fo:
        configs = [k for k in ha if k.endswith(".comfy_quant")]
        bad = [k for k in configs if json.loads(bytes(fo.get_tensor(k).tolist())) !=
               json.loads(bytes(fa.get_tensor(k).tolist()))]
        if bad:
            raise AssertionError(f"{len(bad)} layer configs differ from A's, e.g. {bad[0]}")
        lines.append(f"keys, dtypes, shapes: {len(ho)} entries as A's; {len(configs)} comfy_quant configs as A's")
        linear = [k for k, s in shapes.items() if is_linear(k, s)]
        biggest = max(linear, key=lambda k: math.prod(shapes[k]))
        mid = len([k for k in shapes if k.startswith("blocks.") and k.endswith(".attn.wk.weight")]) // 2
        picks = [linear[0], f"blocks.{mid}.attn.wk.weight", biggest, linear[-1]]
        picks += [k for k in shapes if not is_linear(k, shapes[k])][:2]
        for key in dict.fromkeys(k for k in picks if k in shapes):
            merged = torch.lerp(_dequantized(fa, key), _dequantized(fb, key), 0.5)
            got = fo.get_tensor(key)
            if got.dtype == torch.float8_e4m3fn:
                q, scale = quantize_scaled(merged)
                got_scale = fo.get_tensor(key[:-len("weight")] + "weight_scale").float()
                deq = got.float() * got_scale
                tol = merged.abs() * 2.0 ** -4 + scale * 2.0 ** -9  # half an e4m3fn step (normal / subnormal)
                ok = bool(((deq - merged).abs() <= tol * 1.001).all())
                same = (got.view(torch.uint8) == q.view(torch.uint8)).float().mean().item()
                line = (f"{key} {list(got.shape)}: scale {got_scale.item():.6g} vs {scale.item():.6g}, "
                        f"within fp8 rounding: {ok}, bytes equal to quantize_scaled: {same * 100:.2f} %")
            else:
                expect = merged.to(got.dtype)
                ok = bool(((got.float() - merged).abs() <= (expect.float() - merged).abs() * 1.001 +
                           merged.abs() * 2.0 ** -8).all())
                same = (got == expect).float().mean().item()
                line = f"{key} {list(got.shape)} {got.dtype}: within rounding: {ok}, equal: {same * 100:.2f} %"
            if not ok:
                raise AssertionError(line)
            lines.append(line)
    return lines


def load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def measure(a: Path, b: Path, rounds: int, tag: str, smoke: list[str]) -> tuple[list[str], list[str]]:
    """Rounds of (floor, merge), both cold; rows of the round table and the verification lines."""
    py = sys.executable
    out = WORK / f"krea2_fp8scaled{tag}_out.safetensors"
    size = a.stat().st_size
    rows, checks = [], []
    try:
        for r in range(rounds):
            evict([a, b])
            floor_load = load()
            floor = run_lean([py, "-c", FLOOR, str(out), str(size), str(a), str(b)])
            os.remove(out)
            evict([a, b])
            merge_load = load()
            merged = run_lean([py, "-m", "merge_core", "merge", str(a), str(b), "--alpha", "0.5", "-o", str(out),
                                   "--overwrite", "-q"])
            rows.append((r + 1, floor, floor_load, merged, merge_load))
            print(f"round {r + 1}: floor {floor[0]:.1f} s (load {floor_load}), merge {merged[0]:.1f} s "
                  f"{merged[1]:.2f} GB, {merged[2]:.0f} CPU-s (load {merge_load})", file=sys.stderr, flush=True)
            if r == 0:
                checks = subprocess.run([sys.executable, __file__, "--verify", str(a), str(b), str(out), *smoke],
                                        check=True, capture_output=True, text=True).stdout.splitlines()
                print("\n".join(checks), file=sys.stderr, flush=True)
            os.remove(out)
    finally:
        if out.exists():
            os.remove(out)
    return rows, checks


def report(rows, checks, size: int, source: str, params: float, keys: int) -> str:
    floor = statistics.median(r[1][0] for r in rows)
    merge = statistics.median(r[3][0] for r in rows)
    rss = max(r[3][1] for r in rows)
    lines = [f"Key set: {source}, {keys} keys, {params / 1e9:.2f} B parameters; {size / 1e9:.2f} GB per file. "
             f"Median of {len(rows)} cold rounds.", "",
             "| job | wall | peak RSS | wall vs floor |", "|---|---|---|---|",
             f"| I/O floor: read A and B, write {size / 1e9:.1f} GB, fsync | {floor:.1f} s | "
             f"{max(r[1][1] for r in rows):.2f} GB | 1.00x |",
             f"| `python -m merge_core merge A B --alpha 0.5 -o OUT` (as A: fp8 with scales) | {merge:.1f} s | "
             f"{rss:.2f} GB | {merge / floor:.2f}x |", "",
             "| round | floor | load (1/5/15 min) | merge | merge CPU (user + sys) | load (1/5/15 min) | "
             "merge vs floor | merge peak RSS |", "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {n} | {f[0]:.1f} s | {fl} | {m[0]:.1f} s | {m[2]:.0f} s | {ml} | {m[0] / f[0]:.2f}x | "
              f"{m[1]:.2f} GB |" for n, f, fl, m, ml in rows]
    lines += ["", "Output check (first round):", *[f"- {c}" for c in checks]]
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--keep", action="store_true", help="keep the synthetic inputs in bench/_work")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of (floor, merge)")
    parser.add_argument("--smoke", action="store_true", help="every dimension capped at 96: checks the pipeline")
    parser.add_argument("--make", nargs=2, metavar=("PATH", "SEED"), help=argparse.SUPPRESS)
    parser.add_argument("--verify", nargs=3, metavar=("A", "B", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    shapes, source = krea2_shapes()
    params, keys = sum(math.prod(s) for s in shapes.values()), len(shapes)
    smoke = ["--smoke"] if args.smoke else []
    if args.smoke:
        shapes = smoke_shapes(shapes)
    if args.make:
        write_krea2(Path(args.make[0]), shapes, int(args.make[1]))
        return
    if args.verify:
        print("\n".join(verify(*map(Path, args.verify), shapes)))
        return
    print(f"{source}: {keys} keys, {params / 1e9:.3f} B parameters", file=sys.stderr)
    tag = "_smoke" if args.smoke else ""
    a, b = krea2_inputs(shapes, tag, smoke)
    size = a.stat().st_size
    try:
        rows, checks = measure(a, b, args.rounds, tag, smoke)
    finally:
        if not args.keep:
            for p in (a, b):
                p.unlink(missing_ok=True)
    print(report(rows, checks, size, source, params, keys))


if __name__ == "__main__":
    main()
