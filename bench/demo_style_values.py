"""The demo models' style measures per merge: weight sum at alpha = 0 .. 1, A + 1*(B - base), and the two
block-weight halves, sampled through a real headless ComfyUI (the image tests' prompt and settings).

    python bench/demo_style_values.py [--captions N] [--models DIR]

Prints a Markdown table: one row per merge, each style measure (demo/train/measures.py) as the mean over the
captions, and how many captions pass the content check (shape and colour). --models links the three demo
files from another folder (a training run's output) into the server's checkpoints instead of demo/models.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "demo"), str(REPO)]
from merge_samples import DEMO_MODELS, MERGES, SAMPLING, SERVER_ENV, SampleSet, build_prompt, image_name  # noqa: E402
from merge_samples import read_images  # noqa: E402
from server import ComfyServer  # noqa: E402

from demo.train import measures, scenes  # noqa: E402

CAPTIONS = ("a red circle on the left", "a blue square in the middle", "a yellow triangle on the right",
            "a green circle in the middle", "a red square on the right", "a blue triangle on the left")
ROWS = ("base", "A", "B", *MERGES)


def table(images: dict, captions) -> str:
    names = list(measures.STYLE_MEASURES)
    lines = ["| model or merge | " + " | ".join(names) + " | content checks passed |",
             "|---|" + "---|" * (len(names) + 1)]
    for label in ROWS:
        values = [measures.style_values(images[image_name(label, c)]) for c in captions]
        passed = sum(measures.check_scene(images[image_name(label, c)], *scenes.parse_caption(c)).passed
                     for c in captions)
        cells = [f"{sum(v[n] for v in values) / len(values):.3f}" for n in names]
        lines.append(f"| {label.replace('|', chr(92) + '|')} | " + " | ".join(cells) + f" | {passed}/{len(captions)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--captions", type=int, default=len(CAPTIONS), help="how many of the captions to sample")
    parser.add_argument("--models", type=Path, help="a folder holding the three demo files (default demo/models)")
    args = parser.parse_args()
    captions = CAPTIONS[:args.captions]
    with tempfile.TemporaryDirectory(prefix="demo_style_values_") as tmp:
        server = ComfyServer(Path(tmp), extra_env=SERVER_ENV)
        if args.models:
            for name in DEMO_MODELS.values():
                (server.base / "models" / "checkpoints" / name).symlink_to((args.models / name).resolve())
        started = time.perf_counter()
        with server:
            spec = SampleSet(models=dict(DEMO_MODELS), merges=MERGES, captions=captions, sampled=ROWS,
                             own_encoders=("A", "B"))
            images = read_images(server, build_prompt(spec))
        elapsed = time.perf_counter() - started
    s = SAMPLING
    print(f"A = pastel, B = stripes; {len(captions)} captions, {s['size']} px, seed {s['seed']}, {s['steps']} steps "
          f"{s['sampler']}/{s['scheduler']}, cfg {s['cfg']}; each value the mean over the captions "
          f"({elapsed:.0f} s with the server's start)\n")
    print(table(images, captions))


if __name__ == "__main__":
    main()
