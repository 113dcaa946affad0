"""File merges against the physical floor of their I/O, warm and cold: the code of a base ref and this
checkout in the same rounds.

Jobs (``--jobs``, comma-separated; default all):
  sd1-ws-warm, sd1-ad-warm  synthetic full-size SD1.5 fp16 checkpoints (2.13 GB each), page cache warm
  sdxl-ws-warm, sdxl-ws-cold  synthetic full-size SDXL fp16 checkpoints (6.9 GB each)
  flux-ws-cold, flux-ad-cold  synthetic full-size Flux.1-dev fp8 diffusion models (11.9 GB each)
Each job runs ``--rounds`` rounds; a round runs the floor, the base ref's merge and this checkout's merge,
in an order that turns around every round. The floor reads every distinct input once and writes one output
of the merge's size with fsync, in one process (what any merge must do at least). Cold: every input's pages
are dropped from the page cache before each run (bench_cli.evict); warm: the inputs are read once first.
Command: ``python -m merge_core merge INPUTS --mode M --alpha 0.3 -o OUT --overwrite -q`` (SD1.5/SDXL with
``--dtype fp16``). Per run: wall, user and system seconds and peak RSS (ru_maxrss) from os.wait4.
Medians (and each round's merge/floor ratio) are printed as markdown. The files are made on first use in
bench/_work and removed after their family's jobs unless ``--keep``.

    python bench/bench_memory_speed.py [--jobs ...] [--rounds 5] [--base HEAD~1] [--keep]
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from bench_busy import base_copy  # noqa: E402
from bench_cli import WORK, evict, synthetic_inputs  # noqa: E402
from bench_flux import FLOOR, flux_inputs  # noqa: E402

JOBS = {  # name: (family, mode, models, warm)
    "sd1-ws-warm": ("sd1", "weight_sum", 2, True),
    "sd1-ad-warm": ("sd1", "add_difference", 3, True),
    "sdxl-ws-warm": ("sdxl", "weight_sum", 2, True),
    "sdxl-ws-cold": ("sdxl", "weight_sum", 2, False),
    "flux-ws-cold": ("flux", "weight_sum", 2, False),
    "flux-ad-cold": ("flux", "add_difference", 3, False),
}


def inputs(family: str, count: int) -> list[str]:
    if family == "flux":
        paths, linked = flux_inputs(count)
        if linked:
            raise SystemExit("refused: a third distinct Flux file does not fit on the disk")
        return [str(p) for p in paths]
    return synthetic_inputs(family)[:count]


def measured(cmd: list[str], cwd: Path) -> dict[str, float]:
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if status != 0:
        raise RuntimeError(f"{cmd[:4]} failed: {err[-2000:]}")
    return {"wall": wall, "user": usage.ru_utime, "sys": usage.ru_stime, "rss": usage.ru_maxrss * 1024 / 1e9}


def warm_up(paths: list[str]) -> None:
    for path in paths:
        with open(path, "rb", buffering=0) as f:
            while f.read(1 << 24):
                pass


def run_job(name: str, variants: dict[str, Path], rounds: int) -> list[str]:
    family, mode, count, warm = JOBS[name]
    paths = inputs(family, count)
    distinct = list(dict.fromkeys(os.path.realpath(p) for p in paths))
    out = str(WORK / "speed_out.safetensors")
    size = os.path.getsize(paths[0])
    dtype = [] if family == "flux" else ["--dtype", "fp16"]
    runs: dict[str, list[dict[str, float]]] = {"floor": [], **{v: [] for v in variants}}
    order = ["floor", *variants]
    if warm:
        warm_up(distinct)
    for r in range(rounds):
        for run in order if r % 2 == 0 else order[::-1]:
            if not warm:
                evict(distinct)
            if run == "floor":
                cmd, cwd = [sys.executable, "-c", FLOOR, out, str(size), *distinct], REPO
            else:
                cmd = [sys.executable, "-m", "merge_core", "merge", *paths, "--mode", mode, "--alpha", "0.3",
                       *dtype, "-o", out, "--overwrite", "-q"]
                cwd = variants[run]
            runs[run].append(measured(cmd, cwd))
            os.remove(out)
    floor = [x["wall"] for x in runs["floor"]]
    rows = [f"| {name} | floor | {statistics.median(floor):.2f} s | {min(floor):.2f}-{max(floor):.2f} s | "
            f"{statistics.median(x['user'] for x in runs['floor']):.2f} / "
            f"{statistics.median(x['sys'] for x in runs['floor']):.2f} s | - | 1.00x | - |"]
    for variant in variants:
        walls = [x["wall"] for x in runs[variant]]
        ratios = [w / f for w, f in zip(walls, floor)]
        rows.append(f"| {name} | {variant} | {statistics.median(walls):.2f} s | {min(walls):.2f}-{max(walls):.2f} s | "
                    f"{statistics.median(x['user'] for x in runs[variant]):.2f} / "
                    f"{statistics.median(x['sys'] for x in runs[variant]):.2f} s | "
                    f"{max(x['rss'] for x in runs[variant]):.2f} GB | "
                    f"{statistics.median(walls) / statistics.median(floor):.2f}x | "
                    f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f}) |")
    return rows


def remove_family(family: str) -> None:
    names = ["flux1dev_fp8_*.safetensors"] if family == "flux" else [f"{family}_?.safetensors"]
    for pattern in names:
        for path in WORK.glob(pattern):
            path.unlink()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", default=",".join(JOBS), help=f"comma-separated, of: {', '.join(JOBS)}")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--base", default=None, help="git ref whose merge_core runs as 'before' (none: only this "
                                                     "checkout)")
    parser.add_argument("--keep", action="store_true", help="keep the synthetic files in bench/_work")
    args = parser.parse_args()
    jobs = [j for j in args.jobs.split(",") if j]
    unknown = [j for j in jobs if j not in JOBS]
    if unknown:
        parser.error(f"unknown jobs {unknown}")
    WORK.mkdir(exist_ok=True)
    variants = {f"before ({args.base})": base_copy(args.base)} if args.base else {}
    variants["after"] = REPO
    load = os.getloadavg()
    print(f"\n`python bench/bench_memory_speed.py --jobs {','.join(jobs)} --rounds {args.rounds}"
          f"{f' --base {args.base}' if args.base else ''}` ({time.strftime('%Y-%m-%d %H:%M')}, "
          f"load {load[0]:.2f} at the start)\n")
    print("| job | run | wall (median) | wall (range) | user / sys (median) | peak RSS (max) | median vs floor's "
          "| per round vs floor (median, range) |\n|---|---|---|---|---|---|---|---|", flush=True)
    try:
        for i, job in enumerate(jobs):
            for row in run_job(job, variants, args.rounds):
                print(row, flush=True)
            family = JOBS[job][0]
            if not args.keep and all(JOBS[j][0] != family for j in jobs[i + 1:]):
                remove_family(family)
    finally:
        if args.base:
            shutil.rmtree(WORK / "before", ignore_errors=True)
    print(f"\nload {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
