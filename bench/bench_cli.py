"""CLI benchmark: streaming merge of synthetic full-size SD1.5 fp16 checkpoints against a naive loop.

The naive baseline is what a short script does: load A and B (and C) whole with
safetensors, merge tensor by tensor in float32, save the dict. Each variant runs
in its own process; wall time and that process's peak RSS are recorded, in the
same run, so the ratios are comparable on a noisy machine.

    python bench/bench_cli.py [--arch sd1] [--keep]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
WORK = HERE / "_work"

NAIVE = r"""
import sys, torch
from safetensors.torch import load_file, save_file
mode, out, alpha, paths = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4:]
models = [load_file(p) for p in paths]
a = models[0]
res = {}
for k, t in a.items():
    if ("weight" in k or "bias" in k) and all(k in m for m in models[1:]):
        x, y = t.float(), models[1][k].float()
        r = x + alpha * (y - x) if mode == "weight_sum" else x + alpha * (y - models[2][k].float())
        res[k] = r.to(t.dtype)
    else:
        res[k] = t
save_file(res, out)
"""


def synthetic_inputs(arch: str = "sd1", warm: bool = False) -> list[str]:
    """Paths of the synthetic A, B, C checkpoints in bench/_work (made on first use); ``warm`` reads
    each once, so the first job does not pay for a cold page cache."""
    WORK.mkdir(exist_ok=True)
    paths = []
    for tag, seed in (("a", 1), ("b", 2), ("c", 3)):
        path = WORK / f"{arch}_{tag}.safetensors"
        if not path.exists():
            subprocess.run([sys.executable, str(HERE / "synth.py"), arch, str(path), str(seed)], check=True,
                           stdout=subprocess.DEVNULL)
        paths.append(str(path))
    for path in paths if warm else ():
        with open(path, "rb") as f:
            while f.read(1 << 24):
                pass
    return paths


def evict(paths) -> None:
    """Drop these files' pages from the page cache (posix_fadvise DONTNEED; clean pages only, no root
    needed), so that a floor and the merge it is compared with both start cold. Left warm, whichever ran
    second found the other's pages: floors of the same full-size Flux I/O ranged from 21 to 42 s."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def run_measured(cmd: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (GB) of one child process."""
    import tempfile
    with tempfile.TemporaryFile() as err:  # a pipe would fill up with a chatty child's progress bars and block it
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        if status != 0:
            err.seek(0)
            raise RuntimeError(f"{cmd[:4]} failed: {err.read().decode(errors='replace')[-2000:]}")
    return wall, usage.ru_maxrss / 1024 / 1024


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--arch", default="sd1", choices=["sd1", "sdxl"])
    parser.add_argument("--keep", action="store_true", help="keep the generated checkpoints in bench/_work")
    parser.add_argument("--skip-naive", action="store_true",
                        help="only ours (the naive loop needs ~4 full models in RAM: SDXL does not fit in 24 GB)")
    args = parser.parse_args()
    py = sys.executable
    inputs = synthetic_inputs(args.arch)
    size = sum(os.path.getsize(p) for p in inputs[:1]) / 1e9
    print(f"\n### CLI on synthetic full-size {args.arch.upper()} fp16 checkpoints ({size:.2f} GB each)\n")
    print("| job | wall | peak RSS | wall vs naive | RSS vs naive |\n|---|---|---|---|---|")
    for mode, models in (("weight_sum", inputs[:2]), ("add_difference", inputs)):
        out = str(WORK / f"out_{mode}.safetensors")
        naive = None
        if not args.skip_naive:
            naive = run_measured([py, "-c", NAIVE, mode, out, "0.3", *models])
            os.remove(out)
        ours = run_measured([py, "-m", "merge_core", "merge", *models, "--mode", mode, "--alpha", "0.3",
                             "-o", out, "--overwrite", "-q"])
        os.remove(out)
        if naive is None:
            print(f"| `python -m merge_core merge --mode {mode}` | {ours[0]:.1f} s | {ours[1]:.2f} GB | - | - |")
            continue
        print(f"| naive load-merge-save, {mode} | {naive[0]:.1f} s | {naive[1]:.2f} GB | 1.00x | 1.00x |")
        print(f"| `python -m merge_core merge --mode {mode}` | {ours[0]:.1f} s | {ours[1]:.2f} GB | "
              f"{ours[0] / naive[0]:.2f}x | {ours[1] / naive[1]:.2f}x |")
    wall, rss = run_measured([py, "-m", "merge_core", "analyze", *inputs[:2], "--keys"])
    print(f"| `python -m merge_core analyze A B` (per-block similarity, streamed) | {wall:.1f} s | {rss:.2f} GB "
          "| - | - |")
    if not args.keep:
        for p in inputs:
            os.remove(p)


if __name__ == "__main__":
    main()
