"""Calc-mode benchmarks (same run, same machine; ratios against baselines measured alongside).

(1) smoothAdd's filter against SuperMerger's method, SciPy's median_filter +
    gaussian_filter per tensor, with 1 and 2 worker threads, on the full-size
    SD1.5 U-Net shapes (every Nth key, so the mix of conv and linear weights is
    the real one); outputs are compared for equality.
(2) cosineA, cosineB, trainDifference and smoothAdd through the CLI on synthetic
    full-size SD1.5 fp16 checkpoints: wall time and peak RSS against the plain
    weight-sum CLI.

    python bench/bench_calc.py [--stride 5] [--skip-cli]
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import os
import sys
import time
from pathlib import Path

import numpy as np
import scipy.ndimage as ndi
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from bench_cli import WORK, run_measured, synthetic_inputs  # noqa: E402
from synth import keyset  # noqa: E402

from merge_core.methods.filters import smooth  # noqa: E402


def scipy_smooth(x: np.ndarray) -> np.ndarray:
    return ndi.gaussian_filter(ndi.median_filter(x, size=3), sigma=1)


def filter_bench(stride: int) -> None:
    unet = [s for k, s in keyset("sd1").items() if k.startswith("model.diffusion_model.")]
    kinds = sorted({(len(s), s[2:]) for s in unet})  # sample each kind of tensor evenly: the real mix
    shapes = [s for kind in kinds for s in [x for x in unet if (len(x), x[2:]) == kind][::stride]]
    gen = torch.Generator().manual_seed(0)
    tensors = [torch.randn(s, generator=gen) * 0.01 for s in shapes]
    params = sum(t.numel() for t in tensors)
    conv = sum(t.numel() for t in tensors if t.dim() == 4 and t.shape[2] > 1) / params
    arrays = [t.numpy() for t in tensors]

    def run_scipy(threads):
        start = time.perf_counter()
        with cf.ThreadPoolExecutor(threads) as pool:
            out = list(pool.map(scipy_smooth, arrays))
        return time.perf_counter() - start, out

    t1, ref = run_scipy(1)
    t2, _ = run_scipy(2)
    start = time.perf_counter()
    ours = [smooth(t) for t in tensors]
    tt = time.perf_counter() - start
    worst = max(float(np.abs(o.numpy() - r).max() / (np.abs(r).max() + 1e-30)) for o, r in zip(ours, ref))
    print(f"\n### smoothAdd filter, SD1.5 U-Net shapes (every {stride}th key: {len(shapes)} tensors, "
          f"{params / 1e6:.0f} M values, {conv:.0%} in 3x3 conv kernels)\n")
    print("| implementation | time | speed-up vs SciPy 1 thread | largest difference from SciPy (relative) |\n"
          "|---|---|---|---|")
    print(f"| SciPy median_filter + gaussian_filter, 1 thread (SuperMerger smoothAdd) | {t1:.1f} s | 1.0x | - |")
    print(f"| SciPy, 2 threads (SuperMerger smoothAdd MT on this machine) | {t2:.1f} s | {t1 / t2:.1f}x | - |")
    print(f"| ours (merge_core.filters.smooth) | {tt:.1f} s | {t1 / tt:.1f}x | {worst:.1e} |")
    by_kind = {}
    for t, a in zip(tensors, arrays):
        kind = "3x3 conv" if (t.dim() == 4 and t.shape[2] > 1) else f"{t.dim()}-D" if t.dim() != 4 else "1x1 conv"
        s0 = time.perf_counter()
        scipy_smooth(a)
        s1 = time.perf_counter()
        smooth(t)
        s2 = time.perf_counter()
        acc = by_kind.setdefault(kind, [0.0, 0.0, 0])
        acc[0] += s1 - s0
        acc[1] += s2 - s1
        acc[2] += t.numel()
    print("\n| tensor kind | values | SciPy 1 thread | ours | speed-up |\n|---|---|---|---|---|")
    for kind, (s, o, n) in sorted(by_kind.items()):
        print(f"| {kind} | {n / 1e6:.1f} M | {s:.2f} s | {o:.2f} s | {s / o:.1f}x |")


def cli_bench() -> None:
    py = sys.executable
    paths = synthetic_inputs("sd1", warm=True)
    out = str(WORK / "out_calc.safetensors")
    jobs = [("weight_sum (baseline)", ["--mode", "weight_sum"], paths[:2]),
            ("cosineA", ["--calc", "cosineA"], paths[:2]),
            ("cosineB", ["--calc", "cosineB"], paths[:2]),
            ("trainDifference", ["--calc", "trainDifference"], paths),
            ("extract", ["--calc", "extract", "--beta", "0.5"], paths),
            ("smoothAdd", ["--mode", "add_difference", "--calc", "smoothAdd"], paths),
            ("add_difference (baseline for 3 models)", ["--mode", "add_difference"], paths)]
    print("\n### Calc modes through the CLI, synthetic full-size SD1.5 fp16 checkpoints\n")
    print("| job | wall | peak RSS | wall vs weight sum | RSS vs weight sum |\n|---|---|---|---|---|")
    base = None
    for name, flags, models in jobs:
        wall, rss = run_measured([py, "-m", "merge_core", "merge", *models, *flags, "--alpha", "0.3",
                                  "-o", out, "--overwrite", "-q"])
        os.remove(out)
        base = base or (wall, rss)
        print(f"| {name} | {wall:.1f} s | {rss:.2f} GB | {wall / base[0]:.2f}x | {rss / base[1]:.2f}x |")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--stride", type=int, default=5)
    parser.add_argument("--skip-cli", action="store_true")
    parser.add_argument("--skip-filter", action="store_true")
    args = parser.parse_args()
    WORK.mkdir(exist_ok=True)
    if not args.skip_cli:  # first: children forked from a process holding big tensors report its RSS
        cli_bench()
    if not args.skip_filter:
        filter_bench(args.stride)


if __name__ == "__main__":
    main()
