"""Merge history benchmark: searching, paging and reading a 100,000-entry log (merge_core/history.py).

Builds a log of realistic entries in a temporary directory: SDXL block-weight merges, half recorded as the
CLI records them (the checkpoint's recipe tree for MODEL and CLIP), half as Merge Models does (the MODEL's
tree), trees from merge_core.recipe with SuperMerger's fields; a fifth of them chained two or three steps
deep. Then times (median of 5): building the index alone, the first search of a fresh History (which
builds it), warm searches in "and" and "or" mode with 1, 2 and 3 words, the first page of an empty
search, a page deep in the results, get(-1) and get(id) in a fresh process, and one append. Prints a
markdown table.

    python bench/bench_history.py [--entries 100000] [--keep]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from merge_core import recipe as recipes  # noqa: E402
from merge_core.api import make_settings  # noqa: E402
from merge_core.architectures import SDXL  # noqa: E402
from merge_core.blocks.presets import preset_names  # noqa: E402
from merge_core.history import History, entry  # noqa: E402

NAMES = ["juggernautXL_v9", "ponyDiffusionV6XL", "animagineXL_v31", "realvisxlV40", "dreamshaperXL_turbo",
         "sd_xl_base_1.0", "copaxTimelessxl_v12", "zavychromaxl_v80", "albedobaseXL_v21", "nightvisionXL_v0791",
         "protovisionXL_v6", "leosamsHelloworldXL_v70", "starlightXL_v3", "crystalClearXL_ccxl", "samaritan3dCartoon",
         "sdxlUnstableDiffusers_v11", "wildcardxXLTURBO", "halcyonSDXL_v17", "thinkdiffusionxl_v10", "afrodite_xl"]
MODES = [("Weight sum", "normal"), ("Add difference", "normal"), ("Weight sum", "cosineA"),
         ("Add difference", "trainDifference"), ("Triple sum", "normal"), ("sum Twice", "normal"),
         ("Weight sum", "smoothAdd"), ("Add difference", "extract")]
REPEATS = 5
SEARCHES = [("1 word", "juggernautxl_v9"), ("2 words", "juggernautxl_v9 cosinea"),
            ("3 words", "juggernautxl_v9 cosinea grad_v")]


def random_blocks(rng: random.Random, presets: list[str]) -> str:
    if rng.random() < 0.6:
        return rng.choice(presets)
    return ",".join(f"{rng.choice([0, 0.1, 0.25, 0.3, 0.5, 0.7, 0.75, 1])}" for _ in range(SDXL.n_blocks))


def step_pool(rng: random.Random, size: int) -> list[tuple[dict, object]]:
    """Parsed merge settings to draw from (parsing 100,000 block-weight texts would time the parser)."""
    presets = [p for p in preset_names() if not p.startswith("R")][:60] or ["GRAD_V"]
    pool = []
    while len(pool) < size:
        mode, calc = rng.choice(MODES)
        params = {"mode": mode, "alpha": round(rng.random(), 2), "beta": round(rng.random() * 0.5, 2),
                  "blocks_alpha": random_blocks(rng, presets), "calcmode": calc}
        if rng.random() < 0.3:
            params["blocks_beta"] = random_blocks(rng, presets)
        if rng.random() < 0.2:
            params["elemental"] = "OUT03-OUT05:attn2:0.5"
        try:
            settings = make_settings(SDXL, **params)
        except Exception:  # noqa: BLE001 - a combination the modes refuse: draw another
            continue
        pool.append((params, settings))
    return pool


def make_entry(rng: random.Random, pool: list, folder: str) -> dict:
    def leaf():
        name = rng.choice(NAMES) + ".safetensors"
        return recipes.leaf(name, "%064x" % rng.getrandbits(256) if rng.random() < 0.3 else "")

    def step(depth: int) -> dict:
        params, settings = rng.choice(pool)
        inputs = {"a": step(depth - 1) if depth > 1 else leaf(), "b": leaf()}
        if settings.needs_c:
            inputs["c"] = leaf()
        return recipes.merge_step("checkpoint", params, settings, inputs)

    tree = step(rng.choice([2, 3]) if rng.random() < 0.2 else 1)
    files = recipes.leaves(tree)
    models = [{"name": f["file"], "path": f"{folder}/{f['file']}", "fingerprint": "%032x" % rng.getrandbits(128),
               **({"sha256": f["sha256"]} if f["sha256"] else {})} for f in files]
    if rng.random() < 0.5:  # a Merge Models node: the MODEL's recipe, no file
        return entry("merge", "Merge Models", models, mode=tree["settings"]["mode"], settings=tree["settings"],
                     recipe={"model": tree, "clip": None}, text=recipes.recipe_text(tree),
                     prompt_id="%032x" % rng.getrandbits(128))
    return entry("file merge", "CLI merge", models, mode=tree["settings"]["mode"], settings=tree["settings"],
                 recipe={"model": tree, "clip": tree}, text=recipes.recipe_text(tree),
                 output=f"{folder}/out/merge_{rng.getrandbits(32):08x}.safetensors",
                 options={"dtype": "fp16", "scaled_layout": "scaled_fp8", "hash_inputs": False, "device": "auto"})


def build(path: Path, count: int) -> tuple[float, float]:
    """Write ``count`` entries as the log would hold them; (seconds, mean bytes per line)."""
    rng = random.Random(1)
    pool = step_pool(rng, 400)
    start = time.perf_counter()
    total = 0
    with open(path, "w", encoding="utf-8") as f:
        for i in range(1, count + 1):
            item = {"id": i, "time": f"2026-{1 + i * 12 // (count + 1):02d}-01T12:00:00+00:00",
                    **make_entry(rng, pool, "/data/models/checkpoints")}
            line = json.dumps(item, ensure_ascii=False) + "\n"
            total += len(line.encode())
            f.write(line)
    return time.perf_counter() - start, total / count


def median_ms(fn, repeats: int = REPEATS) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


FRESH = """
import sys, time
start = time.perf_counter()
from merge_core.history import History
imported = time.perf_counter()
History(sys.argv[1]).get(int(sys.argv[2]))
print(imported - start, time.perf_counter() - imported)
"""


def fresh_get(path: Path, ref: int) -> float:
    """Median ms of get(ref) in a new process (the import of merge_core.history not counted)."""
    times = []
    for _ in range(REPEATS):
        out = subprocess.run([sys.executable, "-c", FRESH, str(path), str(ref)], cwd=REPO, capture_output=True,
                             text=True, check=True).stdout.split()
        times.append(float(out[1]))
    return statistics.median(times) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--keep", action="store_true", help="keep the temporary log")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="merge_history_bench_"))
    path = work / "history.jsonl"
    try:
        built, mean_bytes = build(path, args.entries)
        size = path.stat().st_size
        print(f"built {args.entries} entries in {built:.1f} s: {size / 1e6:.0f} MB, {mean_bytes:.0f} bytes each "
              f"on average", file=sys.stderr)
        rows = [("index build alone: count() of a fresh History", median_ms(lambda: History(path).count()))]
        rows.append(("first search of a fresh History (builds the index), 1 word",
                     median_ms(lambda: History(path).search(SEARCHES[0][1]))))
        log = History(path)
        log.search("")
        for mode in ("and", "or"):
            for label, words in SEARCHES:
                total = log.search(words, mode)[0]
                rows.append((f"warm search, {mode}, {label} ({total} matches)",
                             median_ms(lambda w=words, m=mode: log.search(w, m))))
        rows.append(("empty search, first page of 20", median_ms(lambda: log.search(""))))
        deep = args.entries * 9 // 10
        rows.append((f"empty search, page of 20 at offset {deep}", median_ms(lambda: log.search("", offset=deep))))
        rows.append(("warm get(-1)", median_ms(lambda: log.get(-1))))
        rows.append(("get(-1) in a fresh process", fresh_get(path, -1)))
        rows.append((f"get({args.entries // 2}) in a fresh process", fresh_get(path, args.entries // 2)))
        rng = random.Random(2)
        pool = step_pool(rng, 20)
        rows.append(("append one entry", median_ms(lambda: log.append(make_entry(rng, pool, "/data")))))
        load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
        print(f"{args.entries} entries, {size / 1e6:.0f} MB ({mean_bytes:.0f} B/entry); {os.cpu_count()} CPUs, "
              f"load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}; median of {REPEATS}\n")
        print("| operation | time |\n|---|---|")
        for label, ms in rows:
            print(f"| {label} | {ms:.1f} ms |")
        over = [label for label, ms in rows if "search" in label and ms > 1000]
        if over:
            print(f"\nover 1 s: {'; '.join(over)}")
    finally:
        if args.keep:
            print(f"kept {path}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
