"""Merge-node benchmark on full-size SD1.5 and SDXL ComfyUI models (same run, same machine).

(1) Node time: our merge node against ComfyUI's ModelMergeSimple (scalar) and
    ModelMergeBlocks (per-block), median of N runs. Models are built from
    ComfyUI's classes with uninitialised weights: node time does not depend on values.
(2) Materialising: loading the merged model with its patches baked in
    (load_models_gpu(force_patch_weights=True)), which is what KSampler does,
    on random-filled SD1.5 fp16 weights; ours against ModelMergeSimple.

(3) ``--load-only``: (2) for SD1.5 and SDXL, ModelMergeSimple's result against our Weight sum's only, the two
    loads alternating in each round (which goes first turns around every round), median of --repeat rounds.

    python bench/bench_node.py [--repeat 5] [--skip-sdxl] [--load-only]
"""
from __future__ import annotations

import argparse
import gc
import statistics
import time

import full_size_models as fm  # sets up ComfyUI paths first

import comfy.model_management as mm  # noqa: E402
from comfy_extras.nodes_model_merging import ModelMergeBlocks, ModelMergeSimple  # noqa: E402
from merge_suite.merge_core.blocks.presets import presets  # noqa: E402
from merge_suite.nodes.merge import ModelMerge  # noqa: E402


def median_time(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        gc.collect()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def ours(a, b, preset="custom", alpha=0.3):
    return ModelMerge.execute(model_a=a, model_b=b, mode="Weight sum", alpha=alpha, beta=0.0,
                              blocks_alpha_preset=preset, blocks_alpha="", blocks_beta_preset="custom",
                              blocks_beta="").result[0]


def blocks_kwargs(layout):
    """GRAD_V through ModelMergeBlocks' prefixes (ratio = weight of model1, so 1 - alpha)."""
    g = presets()["GRAD_V"]
    n_in = 12 if layout == "sd1" else 9
    kw = {"time_embed.": 1 - g[1], "label_emb.": 1 - g[1], "out.": 1 - g[25 if layout == "sd1" else 22]}
    for i in range(n_in):
        kw[f"input_blocks.{i}."] = 1 - g[1 + i]
        kw[f"output_blocks.{i}."] = 1 - g[(14 if layout == "sd1" else 14) + i]
    kw["middle_block."] = 1 - g[13]
    return kw


def node_times(layout: str, repeat: int) -> list[tuple[str, float]]:
    a, b = fm.build(layout), fm.build(layout)
    rows = [
        ("ComfyUI ModelMergeSimple (scalar)", median_time(lambda: ModelMergeSimple().merge(a, b, 0.7), repeat)),
        ("ComfyUI ModelMergeBlocks (GRAD_V as prefixes)",
         median_time(lambda: ModelMergeBlocks().merge(a, b, **blocks_kwargs(layout)), repeat)),
        ("ours, Weight sum, scalar alpha", median_time(lambda: ours(a, b), repeat)),
        ("ours, Weight sum, GRAD_V block preset", median_time(lambda: ours(a, b, "GRAD_V"), repeat)),
    ]
    return rows


def unchecked(merge, *args):
    """A merge whose inputs' NaN/inf counts are forgotten first, so that the load counts them (the rows
    above merge models whose counts the warm-up load already gave: no check at their load)."""
    from merge_suite.nodes import nonfinite_watch
    nonfinite_watch._SCANNED.clear()
    return merge(*args)


def materialise_times(repeat: int) -> list[tuple[str, float]]:
    """Only the load is timed; each repetition merges afresh, outside the timer."""
    a, b = fm.build("sd1", fill_seed=1), fm.build("sd1", fill_seed=2)
    makers = [("load A unmerged (no patches)", lambda: a.clone()),
              ("load ModelMergeSimple result", lambda: ModelMergeSimple().merge(a, b, 0.7)[0]),
              ("load our Weight sum result", lambda: ours(a, b)),
              ("load our GRAD_V result", lambda: ours(a, b, "GRAD_V")),
              ("load our Weight sum result, inputs' NaN/inf check at this load", lambda: unchecked(ours, a, b))]
    warm = ours(a, b)  # first loads pay page faults for fresh allocations: warm up once, untimed
    mm.load_models_gpu([warm], force_patch_weights=True)
    mm.unload_all_models()
    del warm
    rows = []
    for name, make in makers:
        times = []
        for _ in range(repeat):
            m = make()
            gc.collect()
            start = time.perf_counter()
            mm.load_models_gpu([m], force_patch_weights=True)
            times.append(time.perf_counter() - start)
            mm.unload_all_models()
            del m
        rows.append((name, statistics.median(times)))
    return rows


def load_rounds(layout: str, repeat: int) -> list[tuple[str, float, float, float]]:
    """(name, median, min, max) of the load of ModelMergeSimple's result and of our Weight sum's (alpha 0.3 both
    ways: ModelMergeSimple's ratio is model1's weight), in alternating order; each merge made afresh, untimed."""
    a, b = fm.build(layout, fill_seed=1), fm.build(layout, fill_seed=2)
    makers = {"ComfyUI ModelMergeSimple": lambda: ModelMergeSimple().merge(a, b, 0.7)[0],
              "ours, Weight sum (scalar alpha)": lambda: ours(a, b)}
    warm = ours(a, b)  # first loads pay page faults for fresh allocations: warm up once, untimed
    mm.load_models_gpu([warm], force_patch_weights=True)
    mm.unload_all_models()
    del warm
    times: dict[str, list[float]] = {name: [] for name in makers}
    for r in range(repeat):
        for name in list(makers) if r % 2 == 0 else list(makers)[::-1]:
            m = makers[name]()
            gc.collect()
            start = time.perf_counter()
            mm.load_models_gpu([m], force_patch_weights=True)
            times[name].append(time.perf_counter() - start)
            mm.unload_all_models()
            del m
    return [(name, statistics.median(t), min(t), max(t)) for name, t in times.items()]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--skip-sdxl", action="store_true")
    parser.add_argument("--load-only", action="store_true", help="only the load of the merged model, SD1.5 and SDXL")
    args = parser.parse_args()
    layouts = ["sd1"] + ([] if args.skip_sdxl else ["sdxl"])
    if args.load_only:
        for layout in layouts:
            rows = load_rounds(layout, args.repeat)
            base = rows[0][1]
            print(f"\n### Loading the merged {layout.upper()} U-Net (fp16, patches baked in on CPU; median of "
                  f"{args.repeat} alternating rounds)\n")
            print("| what | time (median) | range | vs ModelMergeSimple |\n|---|---|---|---|")
            for name, med, low, high in rows:
                print(f"| load {name} result | {med:.2f} s | {low:.2f}-{high:.2f} s | {med / base:.2f}x |", flush=True)
        return
    for layout in layouts:
        rows = node_times(layout, args.repeat)
        base = rows[0][1]
        print(f"\n### Merge node time, full-size {layout.upper()} U-Net key set (median of {args.repeat})\n")
        print("| node | time | vs ModelMergeSimple |\n|---|---|---|")
        for name, t in rows:
            print(f"| {name} | {t * 1000:.1f} ms | {t / base:.3f}x |")
    rows = materialise_times(max(2, args.repeat // 2))
    base = rows[1][1]
    print("\n### Materialising the merged SD1.5 U-Net (fp16, patches baked in on CPU)\n")
    print("| what | time | vs ModelMergeSimple |\n|---|---|---|")
    for name, t in rows:
        print(f"| {name} | {t:.2f} s | {t / base:.2f}x |")


if __name__ == "__main__":
    main()
