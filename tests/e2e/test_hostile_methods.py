"""Hostile catalogue, methods: the n-model methods in their domain, and every merged result checked.

Through the CLI (one subprocess, merge_core.cli.main) and the real ComfyUI server's /prompt (Combine Models, and
Save Checkpoint of a Combine result): a one-line error naming the option / node input (and, for a result that
leaves the float range, the key and the method), inputs byte-identical, no output or partial file.

The checkpoints are tiny SD1 files; in the "big" ones one U-Net key holds 1e36 (finite in float32), so
task_arithmetic with weights 1000,1000 (or a weight sum with alpha 1000) gives 2e39: infinite in float32.
"""
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "demo"))
from server import ComfyServer, comfy_path  # noqa: E402
from catalogue import digest, node, one_line_error, run_cli  # noqa: E402

BIG_KEY = "model.diffusion_model.input_blocks.1.0.in_layers.2.weight"
NODE_KEY = "diffusion_model.input_blocks.1.0.in_layers.2.weight"
RANGE = ">= 0 with a positive sum"
DELLA = ["drop_rate - epsilon/2 >= 0 and drop_rate + epsilon/2 < 1"]

MAKE = """
import sys; sys.path[:0] = [sys.argv[1], sys.argv[2]]
from comfy.cli_args import args; args.cpu = True
import torch, tiny_models
from safetensors.torch import load_file, save_file
from safetensors import safe_open
folder = sys.argv[3]
for name, seed, big in (("base", 1, False), ("m1", 2, False), ("m2", 3, False), ("big1", 2, True), ("big2", 3, True)):
    path = f"{folder}/{name}.safetensors"
    tiny_models.save_checkpoint(path, "sd1", seed)
    if big:
        with safe_open(path, "pt") as f:
            meta = f.metadata()
        sd = load_file(path)
        sd[sys.argv[4]] = torch.full_like(sd[sys.argv[4]], 1e36, dtype=torch.float32)
        save_file(sd, path, meta)
"""

# (id, argv after "combine" or "merge", expected fragments of stderr; None = success expected)
CLI_CASES = [
    ("gm-weights-1-minus-1", ["combine", "--method", "geometric_median", "--weights=1,-1"], ["--weights", RANGE]),
    ("gm-weights-0-0", ["combine", "--method", "geometric_median", "--weights", "0,0"], ["--weights", "are all 0"]),
    ("gm-weights-1-minus-0.999", ["combine", "--method", "geometric_median", "--weights=1,-0.999"],
     ["--weights", "value #2 is -0.999", RANGE]),
    ("gm-weights-1-0-ok", ["combine", "--method", "geometric_median", "--weights", "1,0", "--iterations", "3"], None),
    ("della-eps-0.25", ["combine", "--method", "della", "--epsilon", "0.25"],
     ["--drop-rate", "epsilon 0.25", "0.775 to 1.025", *DELLA]),
    ("della-0.9-0.4", ["combine", "--method", "della", "--drop-rate", "0.9", "--epsilon", "0.4"],
     ["--drop-rate", *DELLA]),
    ("della-low", ["combine", "--method", "della", "--drop-rate", "0.05", "--epsilon", "0.2"],
     ["--drop-rate", "-0.05", *DELLA]),
    ("della-edge-ok", ["combine", "--method", "della", "--drop-rate", "0.8", "--epsilon", "0.38"], None),
    ("iterations-over-max", ["combine", "--method", "geometric_median", "--iterations", "10001"],
     ["--iterations", "10001", "1 to 10000"]),
    ("iterations-2-64", ["combine", "--method", "geometric_median", "--iterations", str(2 ** 64)],
     ["--iterations", "1 to 10000"]),
    ("ta-overflow", ["combine", "--method", "task_arithmetic", "--weights", "1000,1000", "@big"],
     ["--method", "task_arithmetic", BIG_KEY, "float32", "inputs there are finite"]),
    ("ta-negative-ok", ["combine", "--method", "task_arithmetic", "--weights", "1,-1"], None),
    ("merge-overflow", ["merge", "--alpha", "1000", "@big"],
     ["input '--mode'", "weight_sum", BIG_KEY, "inputs there are finite"]),
    ("merge-add-difference-overflow", ["merge", "--mode", "add_difference", "--alpha", "1000", "@big3"],
     ["input '--mode'", "add_difference", BIG_KEY, "inputs there are finite"]),
]





@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hostile_methods")
    subprocess.run([sys.executable, "-c", MAKE, str(comfy_path()), str(REPO / "demo"), str(folder), BIG_KEY],
                   check=True, cwd=comfy_path(), stdout=subprocess.DEVNULL, timeout=300)
    return folder


def cli_argv(args, files: Path, out: Path) -> list:
    big = "@big" in args or "@big3" in args
    args = [a for a in args if a not in ("@big", "@big3")]
    command, rest = args[0], args[1:]
    names = ("base", "big1", "big2") if big else ("base", "m1", "m2")
    paths = [str(files / f"{n}.safetensors") for n in names]
    if command == "combine":
        return ["combine", "--base", paths[0], *paths[1:], *rest, "-q", "-o", str(out)]
    models = [paths[0], paths[1]] + ([paths[0]] if "--mode" in rest else [])
    return ["merge", *models, *rest, "-q", "-o", str(out)]


def test_cli_catalogue(files, tmp_path):
    before = digest(files)
    runs, outputs = [], []
    for case_id, args, _ in CLI_CASES:
        outputs.append(tmp_path / f"{case_id}.safetensors")
        runs.append(cli_argv(args, files, outputs[-1]))
    results = run_cli(runs, timeout=600)
    failures = []
    for (case_id, _, expected), (rc, stderr), out in zip(CLI_CASES, results, outputs):
        if expected is None:
            ok = rc == 0 and out.is_file()
        else:
            ok = one_line_error(rc, stderr, expected) and not out.exists()
        if not ok:
            failures.append(f"{case_id}: rc={rc} out={out.exists()} stderr={stderr!r}")
    assert not failures, "\n".join(failures)
    assert digest(files) == before, "inputs changed"
    left = sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith("-ok.safetensors"))
    assert left == [], f"output or partial files left: {left}"


# --- /prompt ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(tmp_path_factory, files):
    base = tmp_path_factory.mktemp("hostile_methods_server")
    srv = ComfyServer(base)
    ckpts = base / "models" / "checkpoints"
    ckpts.mkdir(parents=True, exist_ok=True)
    for name in ("base", "m1", "m2", "big1", "big2"):
        (ckpts / f"{name}.safetensors").write_bytes((files / f"{name}.safetensors").read_bytes())
    srv.start()
    srv.info = srv.get("/object_info")
    yield srv
    srv.stop()


def combine_prompt(info, models=("m1", "m2"), prefix="hostile/combined", **settings):
    """base + models -> Combine Models -> Save Checkpoint."""
    prompt = {"1": node(info, "CheckpointLoaderSimple", ckpt_name="base.safetensors")}
    links = {}
    for i, name in enumerate(models):
        prompt[str(3 + i)] = node(info, "CheckpointLoaderSimple", ckpt_name=f"{name}.safetensors")
        links[f"model_{i + 1}"] = [str(3 + i), 0]
    prompt["2"] = node(info, "MergeSuite_CombineModels", base=["1", 0], **links, **settings)
    prompt["9"] = node(info, "MergeSuite_SaveCheckpoint", model=["2", 0], clip=["1", 1], vae=["1", 2],
                       filename_prefix=prefix, precision="fp32")
    return prompt


# (id, Combine Models settings, models, expected fragments of the execution error; None = success expected)
PROMPT_CASES = [
    ("gm-weights-1-minus-1", dict(method="geometric_median", weights="1,-1"), ("m1", "m2"),
     ["Combine Models", "input 'weights'", RANGE]),
    ("gm-weights-0-0", dict(method="geometric_median", weights="0,0"), ("m1", "m2"),
     ["Combine Models", "input 'weights'", "are all 0"]),
    ("gm-weights-1-minus-0.999", dict(method="geometric_median", weights="1,-0.999"), ("m1", "m2"),
     ["Combine Models", "input 'weights'", RANGE]),
    ("della-0.9-0.4", dict(method="della", drop_rate=0.9, epsilon=0.4), ("m1", "m2"),
     ["Combine Models", "input 'drop_rate'", "epsilon 0.4", *DELLA]),
    ("ta-overflow-at-save", dict(method="task_arithmetic", weights="1000,1000"), ("big1", "big2"),
     ["Combine Models", "input 'method'", "task_arithmetic", NODE_KEY, "inputs there are finite"]),
    # the widget's max is not enforced by ComfyUI where a node validates its own inputs: the node refuses it
    ("iterations-over-max", dict(method="geometric_median", iterations=10001), ("m1", "m2"),
     ["Combine Models", "input 'iterations'", "10001", "1 to 10000"]),
    ("iterations-2-64", dict(method="geometric_median", iterations=2 ** 64), ("m1", "m2"),
     ["input 'iterations'", "1 to 10000"]),
    ("gm-weights-1-0-ok", dict(method="geometric_median", weights="1,0", iterations=3), ("m1", "m2"), None),
]


@pytest.mark.parametrize("case_id,settings,models,expected", PROMPT_CASES, ids=[c[0] for c in PROMPT_CASES])
def test_prompt_catalogue(server, case_id, settings, models, expected):
    """Save Checkpoint writes into models/checkpoints/<prefix>: everything else there is an input."""
    everything = server.base / "models", server.base / "output"
    before = {k: v for folder in everything for k, v in digest(folder).items()}
    prompt = combine_prompt(server.info, models, prefix=f"hostile/{case_id}", **settings)
    if expected is None:
        server.run_prompt(prompt, timeout=240)
    else:
        with pytest.raises(RuntimeError) as info:
            server.run_prompt(prompt, timeout=240)
        message = str(info.value)
        assert all(e in message for e in expected), message
        assert "MergeNodeError" in message, message  # the pack's own one-line error, not a crash inside
    after = {k: v for folder in everything for k, v in digest(folder).items()}
    new = sorted(set(after) - set(before))
    assert {k: after[k] for k in before} == before, "inputs changed"
    if expected is None:
        assert len(new) == 1 and new[0].startswith(f"checkpoints/hostile/{case_id}") and new[0].endswith(
            ".safetensors"), new
    else:
        leftovers = [p for folder in everything for p in folder.rglob(f"*{case_id}*")]
        assert new == [] and leftovers == [], f"an output or partial file was left: {new} {leftovers}"
