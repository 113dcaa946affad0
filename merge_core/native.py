"""The compiled 3^4 median kernel (native/median3.c), built on first use with the system C compiler.

SciPy's median filter selects from 81 values per element of a 3x3 conv kernel, which
made smoothAdd ten times slower than every other calc mode. The C kernel shares the
sorting between overlapping windows and is exact. It is plain C with no Python or
torch headers, so building it takes about a second; the library is cached under
``$XDG_CACHE_HOME/merge-suite/native`` keyed by the source and compiler. Without a
compiler (or with MERGE_SUITE_NATIVE=0) callers fall back to the pure torch/numpy
path, which gives the same values, only slower.
"""
from __future__ import annotations

import concurrent.futures as cf
import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Optional

import torch

from .threads import compute_threads

SOURCE = Path(__file__).with_name("native") / "median3.c"
MAX_THREADS = 8
PARALLEL_MIN = 1 << 16  # smaller tensors are not worth a thread pool
_lock = threading.Lock()
_lib: Optional[ctypes.CDLL] = None
_tried = False
log = logging.getLogger(__name__)


def _cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "merge-suite" / "native"


def _build() -> Optional[ctypes.CDLL]:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not cc:
        return None
    source = SOURCE.read_bytes()
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    digest = hashlib.sha256(source + version.encode()).hexdigest()[:16]
    target = _cache_dir() / f"median3-{digest}.so"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
        os.close(fd)
        try:
            subprocess.run([cc, "-O3", "-shared", "-fPIC", "-o", tmp, str(SOURCE)], check=True,
                           capture_output=True, timeout=120)
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    lib = ctypes.CDLL(str(target))
    lib.median3_kernel4d.argtypes = [ctypes.c_void_p, ctypes.c_void_p] + [ctypes.c_int64] * 6
    lib.median3_kernel4d.restype = ctypes.c_int
    return lib


def library() -> Optional[ctypes.CDLL]:
    """The loaded kernel, or None when it is disabled or cannot be built here."""
    global _lib, _tried
    with _lock:
        if not _tried:
            _tried = True
            if os.environ.get("MERGE_SUITE_NATIVE", "1") != "0":
                try:
                    _lib = _build()
                except (OSError, subprocess.SubprocessError) as exc:
                    log.info("merge_suite: native median kernel unavailable (%s); using the torch path", exc)
    return _lib


def median3_kernel4d(x: torch.Tensor) -> Optional[torch.Tensor]:
    """3^4 median (SciPy reflect) of a CPU float32 (n0, n1, n2, n3) tensor with n2, n3 <= 3, or None
    when the kernel does not apply (other shapes, NaN, no compiler)."""
    if (x.dim() != 4 or x.dtype != torch.float32 or not x.is_cpu or x.shape[2] > 3 or x.shape[3] > 3
            or x.numel() == 0 or torch.isnan(x).any()):
        return None
    lib = library()
    if lib is None:
        return None
    src = x.contiguous()
    out = torch.empty_like(src)
    n0 = src.shape[0]
    # only the cores idle now: a span on a core another process holds would finish last (threads.py)
    threads = compute_threads(MAX_THREADS) if src.numel() >= PARALLEL_MIN else 1
    bounds = [n0 * i // threads for i in range(threads + 1)]
    spans = [(lo, hi) for lo, hi in zip(bounds, bounds[1:]) if hi > lo]

    def run(span):  # ctypes releases the GIL, so the spans run in parallel
        return lib.median3_kernel4d(src.data_ptr(), out.data_ptr(), *src.shape, *span)
    if len(spans) == 1:
        codes = [run(spans[0])]
    else:
        with cf.ThreadPoolExecutor(len(spans)) as pool:
            codes = list(pool.map(run, spans))
    if any(codes):
        raise MemoryError("merge_suite: the native median kernel could not allocate its buffers")
    return out
