"""The command line's merge history: what merge, combine, lora-merge and lora-extract record, the ``history``
command that lists, searches and shows it, and ``--from-history`` replays.

Each command appends one entry (merge_core/history.py's schema) once its output is written; a failure to
record is a warning, never a failed command. The settings an entry keeps are the ones the command wrote into
the output's recipe metadata, plus the file options (dtype, layout, hashing, device) that a bit-identical
redo also needs.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

from ..errors import MergeInputError
from ..history import History, check_input, default_cli_path, enabled, entry, input_record
from .options import non_negative_int, positive_int

REPLAY = "--from-history"
# merge's file options: not part of the recipe tree, yet the written file depends on them
MERGE_OPTION_DEFAULTS: dict[str, Any] = {"dtype": None, "scaled_layout": "scaled_fp8", "hash_inputs": False,
                                         "device": "auto"}


def warn(text: str) -> None:
    print(f"warning: {text}", file=sys.stderr)


def add_history_option(parser) -> None:
    parser.add_argument("--history", metavar="FILE", default=None,
                        help=f"the merge history file (default {default_cli_path()}; MERGE_SUITE_HISTORY=0 turns "
                             "recording off)")


def history_file(args) -> History:
    return History(getattr(args, "history", None) or default_cli_path(), warn=warn)


def record(args, build: Callable[[], dict]) -> Optional[dict]:
    """Append the entry ``build`` makes; called after the output is written. Never raises: an entry that
    cannot be made or written is a warning, and the command still succeeds."""
    if not enabled():
        return None
    try:
        return history_file(args).append(build())
    except Exception as exc:  # noqa: BLE001 - the history must never fail a merge that has been written
        warn(f"the merge was not recorded in the history ({type(exc).__name__}: {exc}).")
        return None


def _absolute(path: str) -> str:
    return os.path.abspath(path)


def written_trees(output: str) -> dict:
    """{"model": tree, "clip": tree}: the recipe the command wrote into the output's metadata."""
    from safetensors import safe_open
    with safe_open(str(output), "pt") as f:
        metadata = f.metadata() or {}
    ours = json.loads(metadata["sd_merge_recipe"])["merge_suite"]
    return {"model": ours.get("model"), "clip": ours.get("clip")}


def exact_numbers(values) -> str:
    """Comma-separated numbers that parse back to the same floats (the metadata's text keeps 10 digits)."""
    return ",".join(f"{v:.10g}" if float(f"{v:.10g}") == v else repr(float(v)) for v in values)


def merge_entry(args, plan, paths: list[str], output: str) -> dict:
    from ..recipe import recipe_text
    trees = written_trees(output)
    tree = trees["model"]
    settings = dict(tree["settings"])
    s = plan.settings
    for key, weights in (("blocks_alpha", s.blocks_alpha), ("blocks_beta", s.blocks_beta)):
        if settings.get(key) and weights is not None:
            settings[key] = exact_numbers(weights.values)
    models = [input_record(p, _absolute(p), sha256=(tree.get(k) or {}).get("sha256", ""))
              for k, p in zip("abc", paths)]
    options = {"dtype": args.dtype, "scaled_layout": args.scaled_layout, "hash_inputs": bool(args.hash_inputs),
               "device": args.device}
    return entry("file merge", "CLI merge", models, mode=settings.get("mode", ""), settings=settings,
                 recipe=trees, text=recipe_text(tree), output=_absolute(output), options=options)


def combine_entry(args, plan, output: str) -> dict:
    from ..recipe import recipe_text
    trees = written_trees(output)
    settings = dict(trees["model"]["settings"])
    weights = plan.settings.method_params.weights
    if weights is not None:
        settings["weights"] = exact_numbers(weights)
    models = [input_record(p, _absolute(p)) for p in [args.base, *args.models]]
    return entry("combine", "CLI combine", models, mode=settings.get("method", ""), settings=settings,
                 recipe=trees, text=recipe_text(trees["model"]), output=_absolute(output),
                 options={"dtype": args.dtype})


def _late_parameters():
    """The combine parameters added after the first release (combine/params.py): keyword options of combine."""
    from ..combine.params import PARAMETERS
    return [row for row in PARAMETERS if row.late and row.field != "median_eps"]


def _lora_files(text: str, input_name: str) -> list[str]:
    from ..lora.blocks import parse_lora_list
    return [item.name for item in parse_lora_list(text, input_name)]


def lora_merge_entry(args, presets: str, output) -> dict:
    settings = {"loras": args.loras, "method": args.method, "rank": args.rank, "svd": args.svd,
                "clamp": args.clamp, "kohya_strength": bool(args.kohya_strength), "metadata": args.metadata,
                "presets": presets, "dtype": args.dtype}
    models = [input_record(name, _absolute(name)) for name in _lora_files(args.loras, "lora_list")]
    rank = f", rank {args.rank}" if args.rank else ""
    text = f"LoRA merge ({args.method}{rank}): {' '.join(args.loras.split())}"
    return entry("lora merge", "CLI lora-merge", models, mode=args.method, settings=settings, text=text,
                 output=_absolute(str(output)))


def lora_extract_entry(args, presets: str, output) -> dict:
    settings: dict[str, Any] = {"loras": bool(args.loras), "alpha": args.alpha, "beta": args.beta}
    if args.loras:
        settings.update(a=args.a, b=args.b, gamma=args.gamma, presets=presets, dtype=args.dtype)
        names = _lora_files(args.a, "lora_1") + _lora_files(args.b, "lora_2")
        text = f"LoRA extract from LoRAs: {args.a} / {args.b} alpha={args.alpha:g} beta={args.beta:g} " \
               f"gamma={args.gamma:g}"
        mode = "extract from LoRAs"
    else:
        settings.update(rank=args.rank, conv_rank=args.conv_rank, te_min_diff=args.te_min_diff, svd=args.svd,
                        clamp=args.clamp, dtype=args.dtype)
        names = [args.a, args.b]
        text = f"LoRA extract: {args.alpha:g}*{Path(args.a).stem} - {args.beta:g}*{Path(args.b).stem} " \
               f"rank={args.rank} conv_rank={args.conv_rank}"
        mode = "extract"
    models = [input_record(name, _absolute(name)) for name in names]
    return entry("lora extract", "CLI lora-extract", models, mode=mode, settings=settings, text=text,
                 output=_absolute(str(output)))


# --- replay ---------------------------------------------------------------------------

def _one_step(item: Mapping, ref: int) -> tuple[dict, list[str]]:
    """The entry's single merge step and its input files' paths; a clear error for anything else."""
    from ..recipe import is_merge, step_inputs
    what = f"entry {item.get('id', ref)}"
    recipe = item.get("recipe") or {}
    tree = recipe.get("model") or recipe.get("clip")
    if not tree or not is_merge(tree):
        raise MergeInputError(REPLAY, f"{what} ({item.get('kind', '?')}) has no merge recipe to redo.",
                              "pick a merge or combine entry ('history' lists them).")
    if recipe.get("model") and recipe.get("clip") and recipe["model"] != recipe["clip"]:
        raise MergeInputError(REPLAY, f"{what} merged the model and the text encoder with different settings.",
                              "redo it with the Merge from History node in ComfyUI.")
    inputs = step_inputs(tree)
    if any(is_merge(x) for x in inputs):
        raise MergeInputError(REPLAY, f"{what} chains several merge steps (a node recipe), not one file merge.",
                              "redo it with the Merge from History node in ComfyUI.")
    models = item.get("models") or []
    if len(models) != len(inputs) or any(not m.get("path") for m in models):
        raise MergeInputError(REPLAY, f"{what} does not record where each input file was.",
                              "redo it with the Merge from History node in ComfyUI.")
    return tree, [m["path"] for m in models]


def _checked(item: Mapping, paths: list[str]) -> None:
    from ..io.filehash import file_sha256
    for record_, path in zip(item["models"], paths):
        check_input(record_, path, sha256_of=file_sha256, input_name=REPLAY)


def replay_merge(args) -> tuple[list[str], dict, dict]:
    """(input paths, merge_files settings, file options) of a recorded one-step merge; inputs checked."""
    from ..recipe import COMBINE, replay_settings
    item = history_file(args).get(args.from_history, input_name=REPLAY)
    tree, paths = _one_step(item, args.from_history)
    if tree.get("kind") == COMBINE:
        raise MergeInputError(REPLAY, f"entry {item['id']} is a combine ({tree['settings'].get('method')}).",
                              f"redo it with 'combine {REPLAY} {item['id']}'.")
    _checked(item, paths)
    settings = replay_settings(item.get("settings") or tree["settings"])
    for key in ("blocks_alpha", "blocks_beta"):
        settings[key] = settings[key] or None
    options = {**MERGE_OPTION_DEFAULTS, **(item.get("options") or {})}
    return paths, settings, options


def replay_combine(args) -> tuple[str, list[str], dict, Optional[str]]:
    """(base, models, combine_files options, dtype) of a recorded one-step combine; inputs checked."""
    from ..recipe import COMBINE, replay_combine_settings
    item = history_file(args).get(args.from_history, input_name=REPLAY)
    tree, paths = _one_step(item, args.from_history)
    if tree.get("kind") != COMBINE:
        raise MergeInputError(REPLAY, f"entry {item['id']} is a {tree['settings'].get('mode', 'merge')} merge, "
                                      "not a combine.", f"redo it with 'merge {REPLAY} {item['id']}'.")
    _checked(item, paths)
    s = replay_combine_settings(item.get("settings") or tree["settings"])
    from ..combine.methods import get_method
    uses = get_method(s["method"]).uses
    epsilon = s["median_epsilon"] if "median_eps" in uses else s["epsilon"]
    options = {"method": s["method"], "alpha": s["alpha"], "weights": s["weights"] or None,
               "density": s["density"], "drop_rate": s["drop_rate"], "epsilon": epsilon, "top": s["top"],
               "bottom": s["bottom"], "iterations": s["iterations"], "seed": s["seed"],
               "blocks": s["blocks_alpha"] or None, "elemental": s["elemental"],
               "include_exclude": s["include_exclude"], **{row.field: s[row.name] for row in _late_parameters()}}
    return paths[0], paths[1:], options, (item.get("options") or {}).get("dtype")


def add_replay_option(parser) -> None:
    parser.add_argument(REPLAY, type=entry_ref, default=None, metavar="ID",
                        help="redo a recorded merge with its input files and settings (-1: the last entry, -2: "
                             "the one before, n: entry n); the files must be unchanged; give only -o")


# --- the history command ---------------------------------------------------------------

def entry_ref(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text} is not an entry id (-1 the last, -2 the one before, or n)") \
            from None
    if value == 0:
        raise argparse.ArgumentTypeError("0 is not an entry id (-1 the last, -2 the one before, or n)")
    return value


def add_parser(sub) -> None:
    h = sub.add_parser("history", help="list, search and show the merges this command line recorded",
                       description="Merges recorded by merge, combine, lora-merge and lora-extract, newest first. "
                                   "'history show ID' prints one entry and its command line.")
    h.add_argument("--search", default="", metavar="WORDS", help="entries containing these words (any case)")
    how = h.add_mutually_exclusive_group()
    how.add_argument("--all", dest="match", action="store_const", const="and", default="and",
                     help="entries with every word (default)")
    how.add_argument("--any", dest="match", action="store_const", const="or", help="entries with any of the words")
    h.add_argument("--limit", type=positive_int, default=20, help="entries to list (default 20)")
    h.add_argument("--offset", type=non_negative_int, default=0, help="skip this many matches first (default 0)")
    add_history_option(h)
    actions = h.add_subparsers(dest="action", metavar="[show ID]", title="one entry")
    show = actions.add_parser("show", help="print entry ID (-1 the last) as JSON, with its command line")
    show.add_argument("id", type=entry_ref, metavar="ID")
    show.add_argument("--history", metavar="FILE", default=argparse.SUPPRESS, help="the merge history file")
    h.set_defaults(run=run)


def one_line(item: Mapping) -> str:
    text = " | ".join(line.strip() for line in str(item.get("text", "")).splitlines() if line.strip())
    output = f" -> {item['output']}" if item.get("output") else ""
    return f"{item.get('id', '?'):>6}  {item.get('time', '')}  {item.get('kind', ''):<12}  {text}{output}"


def run(args) -> int:
    log = history_file(args)
    if args.action == "show":
        item = log.get(args.id, input_name="ID")
        print(json.dumps(item, indent=2, ensure_ascii=False))
        line, why = command_line(item)
        print(f"\ncommand line: {line}" if line else f"\nno command line: {why}")
        return 0
    total, page = log.search(args.search, args.match, args.offset, args.limit)
    for item in page:
        print(one_line(item))
    count = log.count()
    matching = f" matching '{args.search}' ({'all' if args.match == 'and' else 'any'} of the words)" \
        if args.search.strip() else ""
    first = f", from #{args.offset + 1}" if args.offset and page else ""
    print(f"{len(page)} of {total} entr{'y' if total == 1 else 'ies'}{matching}{first}"
          + (f"; {count} in {log.path}" if matching else f" in {log.path}"))
    return 0


# --- the equivalent command line ---------------------------------------------------------

def _option(parts: list[str], flag: str, value: Any, default: Any = None) -> None:
    if value is None or value == default or value == "":
        return
    if value is True:
        parts.append(flag)
    elif value is not False:
        parts += [flag, f"{value:g}" if isinstance(value, float) and float(f"{value:g}") == value else str(value)]


def command_line(item: Mapping) -> tuple[Optional[str], str]:
    """(the command that redoes the entry, or None with the reason)."""
    from ..recipe import COMBINE, SETTING_DEFAULTS
    from .app import program_name
    if item.get("kind") in ("lora merge", "lora extract"):
        return None, "LoRA entries keep their command's options as settings; run that command again."
    try:
        tree, paths = _one_step(item, item.get("id", 0))
    except MergeInputError as exc:
        return None, exc.problem
    settings = item.get("settings") or tree["settings"]
    options = item.get("options") or {}
    if tree.get("kind") == COMBINE:
        from ..combine.methods import get_method
        from ..recipe import replay_combine_settings
        s = replay_combine_settings(settings)
        uses = get_method(s["method"]).uses
        parts = [*program_name().split(), "combine", *paths[1:], "--base", paths[0], "--method", s["method"]]
        _option(parts, "--alpha", float(s["alpha"]))
        _option(parts, "--weights", s["weights"])
        from ..combine.params import PARAMETERS
        for row in PARAMETERS:
            if row.field in uses:
                _option(parts, row.option, s[row.name])
        dtype = options.get("dtype")
    else:
        from ..methods.modes import get_mode
        s = {**SETTING_DEFAULTS, **settings}
        parts = [*program_name().split(), "merge", *paths]
        _option(parts, "--mode", get_mode(s["mode"]).name, "weight_sum")
        _option(parts, "--alpha", float(s["alpha"]))
        _option(parts, "--beta", float(s["beta"]), SETTING_DEFAULTS["beta"])
        _option(parts, "--blocks-beta", s["blocks_beta"])
        _option(parts, "--calc", s["calcmode"], "normal")
        _option(parts, "--gamma", float(s["gamma"]), SETTING_DEFAULTS["gamma"])
        _option(parts, "--seed", s["seed"], 0)
        _option(parts, "--tensor2-corrected", s["tensor2_corrected"])
        _option(parts, "--elemental-full-key", s["elemental_full_key"])
        _option(parts, "--adjust", s["adjust"])
        for key, default in MERGE_OPTION_DEFAULTS.items():
            if key != "dtype":
                _option(parts, "--" + key.replace("_", "-"), options.get(key), default)
        dtype = options.get("dtype")
    _option(parts, "--blocks", s["blocks_alpha"])
    _option(parts, "--elemental", s["elemental"])
    selection = str(s.get("include_exclude") or "")
    head, _, rest = selection.partition(":")
    _option(parts, f"--{head.strip().lower()}", rest.strip())
    _option(parts, "--dtype", dtype)
    parts += ["-o", str(item.get("output") or "OUTPUT.safetensors")]
    return shlex.join(parts), ""
