"""Merge from files: checkpoints or diffusion models merged key by key on disk, never loaded whole.

ComfyUI's merge nodes need every input loaded (two Flux models are 48 GB of RAM); here merge_core's
streamed engine reads one key of each file at a time and writes the result to a new numbered file
in the same models folder (merge_core.io.output_file: atomic, never overwriting). The result is then
loaded by ComfyUI's own loader, like any file in that folder. A content key (each input's real path
in the folder, device and inode, size, mtime and ctime, plus every setting) is stored in the file's
metadata and its name, so a second run with the same inputs and settings loads the existing file
instead of merging again; two runs at once (two servers on one folder) take turns on a lock file, and
the second loads the first's file.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Optional

from comfy_api.latest import io

from ..merge_core.api import merge_files
from ..merge_core.errors import MergeInputError
from ..merge_core.input_names import FILE_NODE, renamed
from ..merge_core.io.precision import BLOCK_FORMATS, PRECISIONS
from ..merge_core.io.quantized import LEGACY_LAYOUT, PER_LAYER_LAYOUT
from ..merge_core.io.output_file import check_prefix
from ..merge_core.io.safetensors_file import SafetensorsReader
from ..merge_core.nonfinite import warning as nonfinite_warning
from ..merge_core.plan import Reason
from .errors import named_errors
from .history_log import record_file_merge
from .merge_fields import BLOCK_WEIGHTS, alpha_beta_problems, merge_params, resolve_block_weights, settings_inputs
from .save import numbered_names, output_path
from .search import search_fields
from .shared import CATEGORY, progress_bar

AS_A = "as A"
NONE = "none"
EXTENSIONS = (".safetensors", ".gguf")
CONTENT_KEY = "merge_suite_content_key"
PRECISION_TIP = ("Output precision. 'as A': each tensor as model A stored it (fp8 and scaled fp8 stay so, "
                 "re-scaled, in A's layout; quantised GGUF tensors become bf16). scaled_fp8: ComfyUI's scaled "
                 "fp8 (linear weights fp8 with a per-tensor scale, the rest bf16) in the layout this ComfyUI "
                 "loads, like its own quantised files.")


def file_names(kind: str) -> list[str]:
    """Safetensors and GGUF files in one of ComfyUI's model folders (GGUF is not in its own list)."""
    import folder_paths
    names = set()
    for root in folder_paths.get_folder_paths(kind):
        if os.path.isdir(root):
            files, _ = folder_paths.recursive_search(root, excluded_dir_names=[".git"])
            names.update(folder_paths.filter_files_extensions(files, EXTENSIONS))
    return sorted(names)


def _identity(path: str, roots: list[str]) -> list:
    """What tells one input file from any other, and from itself before a change: its real path relative to
    the model folder (v1/model.safetensors and v2/model.safetensors differ), device and inode (a file
    replaced by another), size, modification time in ns, and the inode's change time, which os.utime cannot
    set back (a file rewritten in place with its old size and restored mtime still differs). Hashing 24 GB
    files would take minutes."""
    real = os.path.realpath(path)
    st = os.stat(real)
    name = real
    for root in roots:
        base = os.path.realpath(root)
        if os.path.commonpath((base, real)) == base:
            name = os.path.relpath(real, base)
            break
    return [Path(name).as_posix(), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def content_key(paths: dict[str, str], settings: dict, precision: str, roots: list[str] = ()) -> str:
    """sha256 of the inputs' identities (_identity) and every setting that changes the result. A file written
    under an older key (base name, size, mtime) is no longer found: it is merged again, once."""
    body = {"inputs": {k: _identity(p, list(roots)) for k, p in paths.items()}, "settings": settings,
            "precision": precision}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def existing_result(folder: Path, name: str, key: str) -> Optional[Path]:
    """A file written earlier by this node for the same content key, if one is still there (a listing, not
    a glob: a prefix such as 'x[1]' is a name)."""
    for candidate in numbered_names(folder, name):
        try:
            with SafetensorsReader(candidate) as reader:
                if reader.metadata.get(CONTENT_KEY) == key:
                    return candidate
        except MergeInputError:
            continue  # a damaged file is not a result
    return None


LOCK_POLL_S = 0.25


@contextmanager
def same_merge_lock(folder: str, key: str, waiting: Callable[[], None] = lambda: None):
    """Held while one content key is merged, by every process that shares the models folder (two servers):
    the second waits, then finds and loads the first's file instead of merging again and failing at the
    end on the name the first one took. ``.merge-suite-<key>.lock`` in the kind's first model folder (it
    exists before any sub-folder is made), flock'ed (released by the kernel if the holder dies), removed
    by its holder. Where locking is not possible (no fcntl, folder missing or read-only) the merge runs
    unlocked; execute then still reuses a result that appears at the target. ``waiting`` is called while
    waiting (it raises on an interrupt)."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    path = os.path.join(folder, f".merge-suite-{key[:32]}.lock")
    fd, logged = -1, False
    while fd < 0:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
        except OSError:
            break
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not logged:
                    logging.info("merge_suite: waiting for another merge of the same files and settings (%s)", path)
                    logged = True
                try:
                    waiting()
                except BaseException:
                    os.close(fd)
                    raise
                time.sleep(LOCK_POLL_S)
            except OSError:  # a file system without locks
                os.close(fd)
                fd = -2
                break
        if fd < 0:
            break
        try:  # the holder before us removed the file: our lock is on a name no one else will open
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except OSError:
            same = False
        if not same:
            os.close(fd)
            fd = -1
    try:
        yield
    finally:
        if fd >= 0:
            try:
                os.unlink(path)
            except OSError:
                pass
            os.close(fd)


def core_settings(params: dict) -> dict:
    """The Merge node's widgets and options as merge_files' keyword arguments."""
    params = resolve_block_weights(params)
    return params | {name: params[name] or None for name in BLOCK_WEIGHTS}


def _merge(*args, **kwargs) -> None:
    """merge_files, its errors naming this node's inputs (file_b, not model_b). Keys of A that B or C lacks
    keep A's tensor (as in SuperMerger, e.g. Flux dev's guidance with schnell); the node has no report
    output, so the log says how many and which input lacked them, and which keys held NaN/inf input
    values (as the CLI's warning does)."""
    try:
        plan = merge_files(*args, **kwargs)
    except MergeInputError as exc:  # merge_core names the files as the MODEL-merge nodes' inputs
        raise renamed(exc, FILE_NODE) from None
    for which, absent_from in (("B", Reason.ABSENT_FROM_B), ("C", Reason.ABSENT_FROM_C)):
        absent = [kp.key for kp in plan.keys if kp.reason is absent_from]
        if absent:
            logging.warning("merge_suite: %d tensors of file_a are absent from file_%s and were kept from A "
                            "(first: '%s')", len(absent), which.lower(), absent[0])
    if plan.nonfinite:  # as the CLI warns: the values pass through the formula (merge_core/nonfinite.py)
        logging.warning("merge_suite: %s", nonfinite_warning(plan.nonfinite).replace("inputs", "input files", 1))


def host_scaled_layout() -> str:
    """How an explicit scaled_fp8 output is written here: ComfyUI's own layout where its loader reads
    per-layer ``comfy_quant`` configs (it converts older files with ``comfy.utils.convert_old_quants``:
    0.33), else the ``scaled_fp8`` marker layout, the only one 0.3.75 reads (io/precision.py). A check
    of what the host can do, not of its version; ``comfy.quant_ops`` alone would not tell, 0.3.75 has it."""
    import comfy.utils
    return PER_LAYER_LAYOUT if callable(getattr(comfy.utils, "convert_old_quants", None)) else LEGACY_LAYOUT


def host_block_formats() -> tuple[str, ...]:
    """mxfp8/nvfp4 outputs where this host's loader reads their comfy_quant layout (0.33), else none."""
    return BLOCK_FORMATS if host_scaled_layout() == PER_LAYER_LAYOUT else ()


def _interrupted() -> None:
    """Raises ComfyUI's interrupt exception when the user pressed Cancel (while waiting for a lock)."""
    import comfy.model_management
    comfy.model_management.throw_exception_if_processing_interrupted()


def _device() -> str:
    import comfy.model_management
    return "cuda" if comfy.model_management.get_torch_device().type == "cuda" else "cpu"


class _FileMerge(io.ComfyNode):
    """Shared shape of the checkpoint and diffusion-model file merges; subclasses declare the folder."""

    FOLDER = ""
    NODE_ID = DISPLAY = DESCRIPTION = ""
    PREFIX = "merge_suite/merged"

    @classmethod
    def outputs(cls) -> list:
        return []

    @classmethod
    def define_schema(cls):
        names = file_names(cls.FOLDER)
        return io.Schema(
            node_id=cls.NODE_ID, display_name=cls.DISPLAY, category=CATEGORY, description=cls.DESCRIPTION,
            inputs=[io.Combo.Input("file_a", options=names, tooltip=f"Model A (in {cls.FOLDER}): the base."),
                    io.Combo.Input("file_b", options=names, tooltip="Model B."),
                    *settings_inputs(),
                    io.Combo.Input("precision", options=[AS_A, *PRECISIONS, *host_block_formats()], default=AS_A,
                                   tooltip=PRECISION_TIP),
                    io.String.Input("filename_prefix", default=cls.PREFIX,
                                    tooltip=f"Name inside the {cls.FOLDER} folder; a content key and "
                                            "'_00001_.safetensors' are appended, so nothing is overwritten."),
                    io.Combo.Input("file_c", options=[NONE, *names], default=NONE, optional=True,
                                   tooltip="Model C: required by Add difference, Triple sum and sum Twice.")],
            outputs=[*cls.outputs(), io.String.Output(display_name="file_name",
                                                      tooltip=f"The merged file, relative to {cls.FOLDER}.")],
            **search_fields(cls.NODE_ID),
        )

    @classmethod
    def validate_inputs(cls, alpha=None, beta=None) -> bool | str:
        return alpha_beta_problems(cls, alpha, beta)

    @classmethod
    def load(cls, name: str) -> tuple:
        return ()

    @classmethod
    def fingerprint_inputs(cls, file_a=None, file_b=None, file_c=NONE, **_) -> str:
        """The input files' identities (_identity): ComfyUI runs the node again when a file changed on disk
        (rewritten in place, replaced) instead of returning its cached output for the same widget values."""
        import folder_paths
        roots = folder_paths.get_folder_paths(cls.FOLDER)
        seen = []
        for value in (file_a, file_b, file_c):
            full = folder_paths.get_full_path(cls.FOLDER, value) if isinstance(value, str) and value != NONE else None
            try:
                seen.append(_identity(full, roots) if full else value)
            except (OSError, ValueError):
                seen.append(value)
        return json.dumps(seen, default=str)

    @classmethod
    def _merged(cls, paths: dict, prefix: str, key: str, settings: dict, precision: str, layout: str) -> Path:
        """The file for this content key: found, or merged now. A file of the same key that appears at the
        target while merging (another server that does not share our lock) is the same result: it is used
        and ours discarded, instead of failing after the work."""
        target = output_path(prefix, cls.FOLDER)
        name = target.name[:target.name.rindex("_", 0, -len("_.safetensors"))]  # the prefix's name, dates expanded
        done = existing_result(target.parent, name, key)
        if done is not None:
            logging.info("merge_suite: same inputs and settings as %s: loading it", done)
            return done
        try:
            _merge(paths["a"], paths["b"], paths.get("c"), str(target),
                   dtype=None if precision == AS_A else precision, scaled_layout=layout,
                   progress=progress_bar(1), device=_device(), extra_metadata={CONTENT_KEY: key}, **settings)
        except MergeInputError:
            done = existing_result(target.parent, name, key) if os.path.lexists(target) else None
            if done is None:
                raise
            logging.info("merge_suite: %s was written meanwhile by another merge of the same files and "
                         "settings: loading it", done)
            return done
        logging.info("merge_suite: merged into %s", target)
        return target

    @classmethod
    def execute(cls, file_a, file_b, precision=AS_A, filename_prefix=PREFIX, file_c=NONE, **inputs):
        import folder_paths
        params, _ = merge_params(inputs)
        with named_errors(cls.DISPLAY):
            paths = {}
            for name, value in (("a", file_a), ("b", file_b), ("c", file_c)):
                if name == "c" and (not value or value == NONE):
                    continue
                full = folder_paths.get_full_path(cls.FOLDER, value)
                if full is None:
                    raise MergeInputError(f"file_{name}", f"'{value}' is not in the {cls.FOLDER} folder.",
                                          "pick a file from the list (refresh it after adding files).")
                paths[name] = full
            settings = core_settings(params)
            layout = host_scaled_layout()
            user_prefix = check_prefix(filename_prefix, cls.FOLDER)  # before any work or folder
            roots = folder_paths.get_folder_paths(cls.FOLDER)
            # a file in 0.33's layout is no result for a 0.3.75 sharing the folder: the layout is in the key
            key = content_key(paths, settings, precision if precision != "scaled_fp8" or layout == LEGACY_LAYOUT
                              else f"{precision}/{layout}", roots)
            prefix = f"{user_prefix}_{key[:12]}"
            output_path(prefix, cls.FOLDER)  # the prefix checked (inside the folder) before waiting or working
            with same_merge_lock(roots[0], key, _interrupted):
                done = cls._merged(paths, prefix, key, settings, precision, layout)
            root = next(r for r in folder_paths.get_folder_paths(cls.FOLDER)
                        if os.path.commonpath((os.path.abspath(r), str(done))) == os.path.abspath(r))
            name = os.path.relpath(done, root)
            record_file_merge(cls.DISPLAY, cls.FOLDER,
                              {"a": file_a, "b": file_b, "c": file_c if "c" in paths else None}, done)
            return io.NodeOutput(*cls.load(name), name)


class CheckpointFileMerge(_FileMerge):
    FOLDER, NODE_ID = "checkpoints", "MergeSuite_CheckpointFileMerge"
    DISPLAY = "Merge Checkpoint Files (streamed)"
    DESCRIPTION = ("Merge two or three checkpoint files key by key from disk into a new checkpoint (for models "
                   "too large to load twice; fp8, scaled fp8 and GGUF inputs), then load it. Same settings as "
                   "Merge Checkpoints; alpha = weight of B. A second run with the same inputs reuses the file.")

    @classmethod
    def outputs(cls) -> list:
        return [io.Model.Output(display_name="MODEL"), io.Clip.Output(display_name="CLIP"),
                io.Vae.Output(display_name="VAE")]

    @classmethod
    def load(cls, name: str) -> tuple:
        import nodes as comfy_nodes
        return tuple(comfy_nodes.CheckpointLoaderSimple().load_checkpoint(name)[:3])


class DiffusionModelFileMerge(_FileMerge):
    FOLDER, NODE_ID = "diffusion_models", "MergeSuite_DiffusionModelFileMerge"
    DISPLAY = "Merge Diffusion Model Files (streamed)"
    PREFIX = "merge_suite/merged_unet"
    DESCRIPTION = ("Merge two or three diffusion-model files (the diffusion_models / unet folder) key by key "
                   "from disk into a new file there, then load it with Load Diffusion Model. Same settings as "
                   "Merge Models; alpha = weight of B. A second run with the same inputs reuses the file.")

    @classmethod
    def outputs(cls) -> list:
        return [io.Model.Output(display_name="MODEL")]

    @classmethod
    def load(cls, name: str) -> tuple:
        import nodes as comfy_nodes
        return tuple(comfy_nodes.UNETLoader().load_unet(name, "default"))


NODES = [CheckpointFileMerge, DiffusionModelFileMerge]
