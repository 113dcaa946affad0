"""The compiled kernels (the C files beside this module), built on first use with the system C compiler.

- median3.c: SciPy's median filter selects from 81 values per element of a 3x3 conv kernel,
  which made smoothAdd ten times slower than every other calc mode. The kernel shares the
  sorting between overlapping windows and is exact (``median3_kernel4d`` below).
- linear.c: the four linear merge modes fused with decoding the stored inputs (times a per-tensor
  scale) and encoding the output, bit for bit torch's values (``fused_linear.py``); and the two passes
  of a scaled fp8 output (max |x|, then x / scale encoded) without float32 temporaries.

They are plain C with no Python or torch headers, so building them takes a few seconds; the library is cached under
``$XDG_CACHE_HOME/merge-suite/native`` keyed by the sources, flags and compiler. Loading a
shared library runs its code, so only a library this user built is loaded: the cache
folder must be ours and writable by nobody else (0700), the file too, and its sha256
must match the one recorded when it was built; it is checked and loaded through one
open descriptor. Otherwise it is built again into a fresh private temporary folder. Without a
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
import stat
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Optional

import torch

from ..threads import compute_threads

SOURCES = tuple(Path(__file__).with_name(name) for name in ("median3.c", "linear.c"))
# -ffp-contract=off: no a*b+c fused behind our back (linear.c fuses only where torch does);
# -fno-trapping-math lets the branch-free selections vectorise (it changes no value)
FLAGS = ("-O3", "-ffp-contract=off", "-fno-trapping-math", "-shared", "-fPIC")
MAX_THREADS = 8
PARALLEL_MIN = 1 << 16  # smaller tensors are not worth a thread pool
_lock = threading.Lock()
_lib: Optional[ctypes.CDLL] = None
_tried = False
log = logging.getLogger(__name__)


def _cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "merge-suite" / "native"


def _private(st: os.stat_result, kind) -> bool:
    """Ours, of the expected kind, and writable by nobody else."""
    return kind(st.st_mode) and st.st_uid == os.getuid() and not st.st_mode & 0o022


def _compile(cc: str, target: Path) -> None:
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        subprocess.run([cc, *FLAGS, "-o", tmp, *map(str, SOURCES), "-lm"], check=True,
                       capture_output=True, timeout=120)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _open_verified(path: Path, expected: Optional[str]) -> Optional[ctypes.CDLL]:
    """Load ``path`` if it is ours, private and (when ``expected`` is given) has that sha256; checked and
    loaded through one descriptor, so the file cannot be swapped in between."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None
    try:
        if not _private(os.fstat(fd), stat.S_ISREG):
            return None
        digest = hashlib.sha256()
        for block in iter(lambda: os.read(fd, 1 << 20), b""):
            digest.update(block)
        if expected is not None and digest.hexdigest() != expected:
            return None
        via_fd = f"/proc/self/fd/{fd}"
        return ctypes.CDLL(via_fd if os.path.exists(via_fd) else str(path))
    except OSError:  # not a loadable library (damaged): built again by the caller
        return None
    finally:
        os.close(fd)


def _recorded_hash(record: Path) -> Optional[str]:
    try:
        if not _private(os.lstat(record), stat.S_ISREG):
            return None
        return record.read_text().strip() or None
    except OSError:
        return None


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _load_cached(cc: str, digest: str) -> Optional[ctypes.CDLL]:
    """From the private cache folder (built there when missing or not verified); None if the folder is not private."""
    from ..io.output_file import write_bytes
    folder = _cache_dir()
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    if _private(os.lstat(folder), stat.S_ISDIR):
        os.chmod(folder, 0o700)  # ours and writable by us only: also keep others from reading it
    else:
        log.warning("merge_suite: %s is not a private folder of this user; the native kernel is built elsewhere",
                    folder)
        return None
    target, record = folder / f"kernels-{digest}.so", folder / f"kernels-{digest}.so.sha256"
    lib = _open_verified(target, _recorded_hash(record)) if _recorded_hash(record) else None
    if lib is None:
        _compile(cc, target)
        write_bytes(record, _sha256(target).encode(), overwrite=True, input_name="native cache")
        lib = _open_verified(target, _recorded_hash(record))
    return lib


def _load_private_temp(cc: str) -> Optional[ctypes.CDLL]:
    """Build into a fresh 0700 temporary folder and load from there (the folder is removed after)."""
    folder = Path(tempfile.mkdtemp(prefix="merge-suite-native-"))
    try:
        target = folder / "kernels.so"
        _compile(cc, target)
        return _open_verified(target, _sha256(target))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _build() -> Optional[ctypes.CDLL]:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not cc:
        return None
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in SOURCES) + " ".join(FLAGS).encode()
                            + version.encode()).hexdigest()[:16]
    lib = _load_cached(cc, digest) or _load_private_temp(cc)
    if lib is None:
        return None
    lib.median3_kernel4d.argtypes = [ctypes.c_void_p, ctypes.c_void_p] + [ctypes.c_int64] * 6
    lib.median3_kernel4d.restype = ctypes.c_int
    for fused in (lib.merge_linear, lib.merge_linear_portable):
        fused.argtypes = (ctypes.c_int, ctypes.c_double, ctypes.c_double, *(ctypes.c_void_p, ctypes.c_int) * 4,
                          ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_float,
                          ctypes.c_void_p)
        fused.restype = ctypes.c_int
    lib.abs_max_bits.argtypes = (ctypes.c_void_p, ctypes.c_int64, ctypes.c_int)
    lib.abs_max_bits.restype = ctypes.c_uint32
    lib.encode_divided.argtypes = (ctypes.c_void_p, ctypes.c_int64, ctypes.c_float, ctypes.c_int, ctypes.c_void_p,
                                   ctypes.c_int)
    lib.encode_divided.restype = ctypes.c_int
    return lib


def library() -> Optional[ctypes.CDLL]:
    """The loaded kernels, or None when they are disabled or cannot be built here."""
    global _lib, _tried
    with _lock:
        if not _tried:
            _tried = True
            if os.environ.get("MERGE_SUITE_NATIVE", "1") != "0":
                try:
                    _lib = _build()
                except (OSError, subprocess.SubprocessError) as exc:
                    log.info("merge_suite: native kernels unavailable (%s); using the torch path", exc)
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
