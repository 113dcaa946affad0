"""n-model methods benchmark: TIES and DARE-TIES of three synthetic full-size SD1.5 fp16 "fine-tunes" over a base,
through `python -m merge_core combine`, against sd-mecha's same methods in the same run (when installed).

Each job runs in its own process; wall time and that process's peak RSS are recorded. sd-mecha is looked for
as the parity tests do (tests/unit/test_sd_mecha_parity.py): $MERGE_SUITE_SD_MECHA or
~/.cache/merge-suite/sd-mecha-1.1.8. Its recipes: add_difference(base, ties_sum(Mi - base, k=density,
vote_sgn=True)) and add_ties_with_dare(base, Mi, probability=p, k=1, vote_sgn=True), merged in float32 on the
CPU into fp16 (its default threads).

    python bench/bench_methods.py [--keep]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from bench_cli import HERE, WORK, run_measured, synthetic_inputs

SD_MECHA = Path(os.environ.get("MERGE_SUITE_SD_MECHA", Path.home() / ".cache/merge-suite/sd-mecha-1.1.8"))

MECHA = r"""
import sys, torch
sys.path.append(sys.argv[1])
import sd_mecha
from sd_mecha.extensions.builtin.merge_methods import linear  # the wrapper add_difference trips on a
# merge-method node's not yet inferred merge space in 1.1.8; the merge method itself is the same formula
method, out, base, models = sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:]
b = sd_mecha.model(base, "sd1-ldm")
ms = [sd_mecha.model(p, "sd1-ldm") for p in models]
if method == "ties":
    recipe = linear.add_difference(b, sd_mecha.ties_sum(*[sd_mecha.subtract(m, b) for m in ms], k=0.2,
                                                           vote_sgn=True), alpha=1.0)
else:
    recipe = sd_mecha.add_ties_with_dare(b, *ms, probability=0.5, k=1.0, vote_sgn=True, seed=0, alpha=1.0)
sd_mecha.merge(recipe, output=out, merge_device="cpu", merge_dtype=torch.float32, output_dtype=torch.float16)
"""


def fourth_input(arch: str = "sd1") -> str:
    """A fourth synthetic checkpoint (bench_cli makes A, B, C)."""
    path = WORK / f"{arch}_d.safetensors"
    if not path.exists():
        subprocess.run([sys.executable, str(HERE / "synth.py"), arch, str(path), "4"], check=True,
                       stdout=subprocess.DEVNULL)
    return str(path)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--keep", action="store_true", help="keep the generated checkpoints in bench/_work")
    args = parser.parse_args()
    py = sys.executable
    inputs = synthetic_inputs("sd1") + [fourth_input()]
    base, models = inputs[0], inputs[1:]
    mecha = (SD_MECHA / "sd_mecha").is_dir()
    print(f"\n### combine: 3 synthetic full-size SD1.5 fp16 models over a base "
          f"({os.path.getsize(base) / 1e9:.2f} GB each)\n")
    print("| job | wall | peak RSS | wall vs sd-mecha | RSS vs sd-mecha |\n|---|---|---|---|---|")
    for method, options in (("ties", ["--density", "0.2"]), ("dare_ties", ["--drop-rate", "0.5"])):
        out = str(WORK / f"out_{method}.safetensors")
        theirs = None
        if mecha:
            theirs = run_measured([py, "-c", MECHA, str(SD_MECHA), method, out, base, *models])
            os.remove(out)
        ours = run_measured([py, "-m", "merge_core", "combine", "--base", base, *models, "--method", method,
                             *options, "-o", out, "--overwrite", "-q"])
        os.remove(out)
        if theirs is None:
            print(f"| `combine --method {method}` | {ours[0]:.1f} s | {ours[1]:.2f} GB | (sd-mecha not installed) | |")
            continue
        print(f"| sd-mecha 1.1.8, {method} | {theirs[0]:.1f} s | {theirs[1]:.2f} GB | 1.00x | 1.00x |")
        print(f"| `combine --method {method}` | {ours[0]:.1f} s | {ours[1]:.2f} GB | {ours[0] / theirs[0]:.2f}x | "
              f"{ours[1] / theirs[1]:.2f}x |")
    if not args.keep:
        for p in inputs:
            os.remove(p)


if __name__ == "__main__":
    main()
