"""The command line's heap policy: a freed buffer of a merge's size serves the next one without new page faults."""
from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# Allocate, touch and free a 48 MiB tensor (above glibc's largest adaptive threshold, below ours) five times and
# print the fewest minor page faults of the last four (a small allocation may land in the freed block between
# two rounds, so one round may still take fresh memory).
CHILD = r"""
import resource, sys, torch
from merge_core.heap import keep_freed_buffers
if sys.argv[1] == "policy":
    assert keep_freed_buffers()
def faults_of_one_buffer():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t = torch.empty(48 << 20, dtype=torch.uint8)
    t.fill_(1)
    del t
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
faults_of_one_buffer()
print(min(faults_of_one_buffer() for _ in range(4)))
"""

glibc = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                           reason="the policy tunes glibc's malloc")


def faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", CHILD, mode], cwd=REPO, capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


@glibc
def test_a_freed_buffer_is_reused_without_faulting_its_pages_again():
    pages = (48 << 20) // 4096
    assert faults("default") > pages // 2  # without the policy every buffer is fresh memory
    assert faults("policy") < pages // 20


def test_a_file_merge_run_as_the_program_sets_it_and_a_call_from_python_does_not(monkeypatch, tmp_path, capsys):
    """The heap policy, and mapped inputs with it (io/mapped_file.py): the program's process alone."""
    from merge_core.cli import app
    calls = []
    monkeypatch.setattr(app, "keep_freed_buffers", lambda: calls.append(1))
    monkeypatch.setattr(app.mapped_file, "enable", lambda: calls.append(2))
    missing = str(tmp_path / "missing.safetensors")
    merge = ["merge", missing, missing, "-o", str(tmp_path / "out.safetensors")]
    assert app.main(merge) == 2
    assert calls == []  # the caller's process, not ours
    monkeypatch.setattr(sys, "argv", ["merge-suite", "blocks", missing])
    assert app.main() == 2
    assert calls == []  # not a file merge
    monkeypatch.setattr(sys, "argv", ["merge-suite", *merge])
    assert app.main() == 2
    assert calls == [1, 2]
