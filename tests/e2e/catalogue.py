"""What the fault catalogues (tests/e2e/test_faults_*.py, test_hostile_*.py) share: many command lines run in one
subprocess through merge_core.cli.main (a fresh interpreter per case would cost seconds each) and the verdict
on each, prompt nodes built from the server's /object_info, and a digest of a folder to prove that inputs
stayed byte-identical."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# argv lists in sys.argv[1] (JSON); prints [[exit status, stderr], ...]; a raised exception is 'raised' plus
# its traceback on stderr, which no case accepts
DRIVER = """
import contextlib, io, json, sys
from merge_core.cli import main
out = []
for argv in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            rc = main(argv)
        except SystemExit as exc:
            rc = exc.code
        except BaseException as exc:  # a traceback is a failure of the case
            import traceback; traceback.print_exc(file=err); rc = 'raised'
    out.append([rc, err.getvalue()])
print(json.dumps(out))
"""


def run_cli(runs: list[list[str]], preamble: str = "", timeout: float = 300) -> list[tuple]:
    """(exit status, stderr) of each argv, run one after another in one subprocess; ``preamble`` is Python run
    first (e.g. a guard that fails a case instead of letting it write somewhere it must not)."""
    res = subprocess.run([sys.executable, "-c", preamble + DRIVER, json.dumps(runs)], cwd=REPO,
                         capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, res.stderr
    return [tuple(r) for r in json.loads(res.stdout.strip().splitlines()[-1])]


def one_line_error(rc, stderr: str, fragments) -> bool:
    """A refusal as every catalogue expects it: exit status 2, one line starting 'error:', no traceback, and
    every fragment in it."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    return (rc == 2 and len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in stderr
            and all(f in lines[0] for f in fragments))


def digest(folder: Path) -> dict:
    """sha256 of every file below folder (a server's logs and database left out)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.suffix != ".log" and "comfyui.db" not in p.name}


def node(info, class_type, **inputs):
    """A prompt node with every widget input not given at its default (first option for combos)."""
    spec = info[class_type]["input"]
    filled = {}
    for name, entry in {**spec.get("required", {}), **spec.get("optional", {})}.items():
        kind, opts = entry[0], (entry[1] if len(entry) > 1 else {})
        if name in inputs:
            continue
        if isinstance(kind, list):
            filled[name] = opts.get("default", kind[0] if kind else "")
        elif kind == "COMBO":
            filled[name] = opts.get("default", (opts.get("options") or [""])[0])
        elif "default" in opts:
            filled[name] = opts["default"]
    return {"class_type": class_type, "inputs": {**filled, **inputs}}
