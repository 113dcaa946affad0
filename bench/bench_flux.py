"""Flux.1-dev at full size: CLI merges against the I/O floor, and merge-node time on the Flux key set.

(1) CLI: synthetic diffusion-model-only Flux.1-dev files (the real key names and shapes of
    keysets/flux1-dev, bare keys as UNETLoader files store them; seeded random values, fp8 e4m3fn
    weights and bf16 vectors, about 11.9 GB each) merged by ``python -m merge_core merge`` (Weight sum,
    Add difference). The floor, measured in the same run: read every distinct input file once and write
    one output of A's size with fsync, in one process. Wall time and peak RSS per child process. Both
    start cold: the inputs' pages are dropped from the page cache first (bench_cli.evict).
    Disk: A, B, C and one output (about 48 GB); when a third distinct file does not fit, C of Add
    difference is a hard link to A (said in the table), so the floor reads A and B once, and so may
    our merge (C's tensors are A's pages, often still cached).
(2) Node: our Merge Models node on two full-size Flux.1-dev ModelPatchers (ComfyUI's Flux class, bf16
    storage never touched) with a scalar alpha and with SuperMerger's 61-value list, against ComfyUI's
    ModelMergeSimple and ModelMergeFlux1 (its 61 sliders); median of --repeat runs.

    python bench/bench_flux.py [--keep] [--skip-cli] [--skip-node] [--repeat 5] [--cli-repeat 3]
"""
from __future__ import annotations

import argparse
import math
import os
import shutil
import statistics
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
from synth import POOL, keyset  # noqa: E402

PREFIX = "model.diffusion_model."
MARGIN_GB = 2.0  # disk left free beyond the files

FLOOR = r"""
import os, sys
out, size, paths = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
chunk = 1 << 24
for p in paths:
    with open(p, "rb", buffering=0) as f:
        while f.read(chunk):
            pass
buf = os.urandom(chunk)
with open(out, "wb", buffering=0) as f:
    left = size
    while left > 0:
        left -= f.write(buf[:min(chunk, left)])
    os.fsync(f.fileno())
"""


def flux_shapes() -> dict[str, tuple[int, ...]]:
    return {k[len(PREFIX):]: s for k, s in keyset("flux1-dev").items() if k.startswith(PREFIX)}


def write_flux(path: Path, seed: int) -> Path:
    """fp8 e4m3fn for every tensor of two or more dimensions, bf16 for vectors (as fp8 Flux files store)."""
    from merge_core.io.safetensors_file import SafetensorsWriter
    shapes = flux_shapes()
    dtype_of = {k: torch.float8_e4m3fn if len(s) >= 2 else torch.bfloat16 for k, s in shapes.items()}
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(POOL, generator=gen) * 0.05
    pools = {torch.float8_e4m3fn: base.to(torch.float8_e4m3fn).view(torch.uint8), torch.bfloat16: base.bfloat16()}
    writer = SafetensorsWriter(path, [(k, dtype_of[k], s) for k, s in shapes.items()], {"synthetic": "flux1-dev"},
                               overwrite=True)
    try:
        for i, (key, shape) in enumerate(shapes.items()):
            pool, n = pools[dtype_of[key]], math.prod(shape)
            start = (seed * 7919 + i * 104729) % POOL
            flat = pool.roll(-start).repeat(math.ceil(n / POOL))[:n] if n > POOL - start else pool[start:start + n]
            t = flat.reshape(shape)
            writer.write(key, t.view(torch.float8_e4m3fn) if t.dtype == torch.uint8 else t)
        return writer.commit()
    except BaseException:
        writer.abort()
        raise


def flux_size() -> int:
    return sum(math.prod(s) * (1 if len(s) >= 2 else 2) for s in flux_shapes().values())


def flux_inputs(count: int) -> tuple[list[Path], bool]:
    """(A, B[, C]) in bench/_work, made when missing, and whether C is a hard link to A (when a third
    distinct file and one output do not fit on the disk); refuses when not even A, B and one output fit."""
    WORK.mkdir(exist_ok=True)
    size = flux_size()
    tags = [t for t in "abc"[:count]]
    present = sum(os.path.getsize(WORK / f"flux1dev_fp8_{t}.safetensors")
                  for t in tags if (WORK / f"flux1dev_fp8_{t}.safetensors").exists())
    free = shutil.disk_usage(WORK).free + present
    need_all, need_linked = (count + 1) * size, 3 * size  # the inputs and one output
    if free - MARGIN_GB * 1e9 < need_linked:
        raise SystemExit(f"refused: needs {need_linked / 1e9:.1f} GB of free disk (A, B and one output of "
                         f"{size / 1e9:.1f} GB each, plus {MARGIN_GB:.0f} GB spare); {free / 1e9:.1f} GB free "
                         f"in {WORK}")
    link_c = count == 3 and free - MARGIN_GB * 1e9 < need_all
    paths: list[Path] = []
    for tag, seed in zip(tags, (1, 2, 3)):
        path = WORK / f"flux1dev_fp8_{tag}.safetensors"
        if tag == "c" and link_c:
            path = WORK / "flux1dev_fp8_c_link_to_a.safetensors"
            if not path.exists():
                os.link(paths[0], path)
        elif not path.exists():
            start = time.perf_counter()
            write_flux(path, seed)
            print(f"made {path.name} ({path.stat().st_size / 1e9:.2f} GB) in {time.perf_counter() - start:.0f} s",
                  file=sys.stderr)
        paths.append(path)
    return paths, link_c


def cli_rows(keep: bool, modes=("weight_sum", "add_difference"), repeat: int = 1) -> list[str]:
    """Per mode, ``repeat`` rounds of (floor, merge), both cold; medians, and every round below (the disk's
    cold speed varies by 20-30 % between runs, so one round decides little)."""
    inputs, link_c = flux_inputs(3 if "add_difference" in modes else 2)
    paths = dict(zip("abc", map(str, inputs)))
    rows, rounds = [], []
    py = sys.executable
    out = str(WORK / "flux_out.safetensors")
    a_size = os.path.getsize(paths["a"])
    try:
        jobs = {"weight_sum": [paths["a"], paths["b"]], "add_difference": [paths["a"], paths["b"], paths.get("c")]}
        for mode, models in ((m, jobs[m]) for m in modes):
            distinct = list(dict.fromkeys(os.path.realpath(p) for p in models))  # a hard link is A's file
            floors, ours = [], []
            for r in range(repeat):
                evict(distinct)
                floors.append(run_measured([py, "-c", FLOOR, out, str(a_size), *distinct]))
                os.remove(out)
                evict(distinct)
                ours.append(run_measured([py, "-m", "merge_core", "merge", *models, "--mode", mode, "--alpha", "0.3",
                                          "-o", out, "--overwrite", "-q"]))
                os.remove(out)
                rounds.append(f"| {mode} | {r + 1} | {floors[-1][0]:.1f} s | {ours[-1][0]:.1f} s | "
                              f"{ours[-1][0] / floors[-1][0]:.2f}x |")
            floor = statistics.median(f[0] for f in floors), max(f[1] for f in floors)
            merged = statistics.median(o[0] for o in ours), max(o[1] for o in ours)
            linked = " (C a hard link to A)" if mode == "add_difference" and link_c else ""
            rows.append(f"| I/O floor for {mode}: read {len(distinct)} input files{linked}, "
                        f"write {a_size / 1e9:.1f} GB, fsync | {floor[0]:.1f} s | {floor[1]:.2f} GB | 1.00x |")
            rows.append(f"| `python -m merge_core merge --mode {mode}` | {merged[0]:.1f} s | {merged[1]:.2f} GB | "
                        f"{merged[0] / floor[0]:.2f}x |")
    finally:
        if os.path.exists(out):
            os.remove(out)
        if not keep:
            for p in paths.values():
                os.remove(p)
    header = (f"\n### CLI on synthetic full-size Flux.1-dev diffusion models (fp8 e4m3fn weights, bf16 vectors; "
              f"{a_size / 1e9:.1f} GB each; median of {repeat}, both cold)\n\n"
              f"| job | wall | peak RSS | wall vs floor |\n|---|---|---|---|")
    detail = ["\n| mode | round | floor | merge | merge vs floor |", "|---|---|---|---|---|", *rounds] \
        if repeat > 1 else []
    return [header, *rows, *detail]


def node_rows(repeat: int) -> list[str]:
    import full_size_models as fm  # sets up ComfyUI first
    from comfy_extras.nodes_model_merging import ModelMergeSimple
    from comfy_extras.nodes_model_merging_model_specific import ModelMergeFlux1
    from merge_suite.nodes.merge import ModelMerge

    def median_time(fn) -> float:
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    a, b = fm.build("flux1-dev", dtype=torch.bfloat16), fm.build("flux1-dev", dtype=torch.bfloat16)
    values = [0.3, 0.3, 0.5] + [round(0.2 + i / 40, 3) for i in range(19)] + [round(0.7 - i / 80, 3)
                                                                            for i in range(38)] + [1.0]
    listed = ",".join(map(str, values))
    flux_kw = {name: 1.0 - 0.5 for name in ModelMergeFlux1.INPUT_TYPES()["required"]
               if name not in ("model1", "model2")}

    def ours(text=""):
        return ModelMerge.execute(model_a=a, model_b=b, mode="Weight sum", alpha=0.3, beta=0.0,
                                  blocks_alpha_preset="custom", blocks_alpha=text, blocks_beta_preset="custom",
                                  blocks_beta="").result[0]
    timed = [("ComfyUI ModelMergeSimple (scalar)", median_time(lambda: ModelMergeSimple().merge(a, b, 0.7))),
             ("ComfyUI ModelMergeFlux1 (its 61 sliders)",
              median_time(lambda: ModelMergeFlux1().merge(a, b, **flux_kw))),
             ("ours, Weight sum, scalar alpha", median_time(lambda: ours())),
             ("ours, Weight sum, 61-value list", median_time(lambda: ours(listed)))]
    base = timed[0][1]
    rows = [f"\n### Merge node time, full-size Flux.1-dev key set (median of {repeat})\n",
            "| node | time | vs ModelMergeSimple |", "|---|---|---|"]
    rows += [f"| {name} | {t * 1000:.1f} ms | {t / base:.2f}x |" for name, t in timed]
    return rows


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--keep", action="store_true", help="keep the synthetic files in bench/_work")
    parser.add_argument("--skip-cli", action="store_true")
    parser.add_argument("--skip-node", action="store_true")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--modes", default="weight_sum,add_difference", help="CLI jobs, comma-separated")
    parser.add_argument("--cli-repeat", type=int, default=1, help="rounds of (floor, merge) per CLI job")
    args = parser.parse_args()
    lines = []
    if not args.skip_node:
        lines += node_rows(args.repeat)
        print("\n".join(lines), flush=True)
    if not args.skip_cli:
        cli = cli_rows(args.keep, args.modes.split(","), args.cli_repeat)
        print("\n".join(cli), flush=True)


if __name__ == "__main__":
    main()
