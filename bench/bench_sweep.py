"""What a sweep cell costs in model loading: reused MODEL (seed/prompt sweep) against one merge per cell
(alpha sweep), on full-size SD1.5 fp16 weights, in the same run.

KSampler loads its MODEL with load_models_gpu (no forced patching), timed here
as it calls it. The shared U-Net module remembers which patch set it holds: the
same MODEL object again costs nothing, a different merged clone restores the
originals and re-applies every patch (ComfyUI's ModelPatcher).
This times exactly that load step per cell, plus the merge node itself.

    python bench/bench_sweep.py [--cells 3]
"""
from __future__ import annotations

import argparse
import time

import full_size_models as fm  # sets up ComfyUI paths first

import comfy.model_management as mm  # noqa: E402
from merge_suite.nodes.merge import ModelMerge  # noqa: E402


def merge(a, b, alpha):
    return ModelMerge.execute(model_a=a, model_b=b, mode="Weight sum", alpha=alpha, beta=0.0,
                              blocks_alpha_preset="custom", blocks_alpha="", blocks_beta_preset="custom",
                              blocks_beta="").result[0]


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--cells", type=int, default=3)
    args = parser.parse_args()
    a, b = fm.build("sd1", fill_seed=1), fm.build("sd1", fill_seed=2)
    mm.load_models_gpu([merge(a, b, 0.1)], force_patch_weights=True)  # warm-up: first patching allocates
    rows = []
    merge_s, model = timed(lambda: merge(a, b, 0.5))
    loads = [timed(lambda: mm.load_models_gpu([model]))[0] for _ in range(args.cells)]
    rows.append(("seed sweep: 1 merge, same MODEL in every cell", merge_s, loads))
    merges, models = zip(*[timed(lambda i=i: merge(a, b, 0.2 + 0.2 * i)) for i in range(args.cells)])
    loads = [timed(lambda m=m: mm.load_models_gpu([m]))[0] for m in models]
    rows.append(("alpha sweep: 1 merge per cell", sum(merges), loads))
    print(f"| sweep ({args.cells} cells, SD1.5 fp16, CPU) | merge node s (total) | model load s per cell | "
          "load s total |")
    print("|---|---|---|---|")
    for label, m, loads in rows:
        print(f"| {label} | {m:.2f} | {', '.join(f'{t:.2f}' for t in loads)} | {sum(loads):.2f} |")


if __name__ == "__main__":
    main()
