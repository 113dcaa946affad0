"""merge_core/io/mapped_file.py: mapped reads give the bytes positioned reads give, let each key's pages go once
done, never map more than their limit, and a streamed merge of mapped files writes the same file."""
import mmap
import os
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from merge_core.api import plan_merge
from merge_core.engine import run_merge
from merge_core.io import mapped_file
from merge_core.io.safetensors_file import SafetensorsReader
from merge_core.io.sinks import FileSink
from merge_core.io.sources import open_source

UNET = "model.diffusion_model."
linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mapped reads are Linux-only")


def rss_file_bytes() -> int:
    """The file pages this process has mapped in (RssFile of /proc/self/status)."""
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("RssFile:"))
    return int(line.split()[1]) * 1024


def _model(seed: int, big: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    tensors = {UNET + f"input_blocks.{i}.0.proj_in.weight": torch.randn(256, 1024, generator=gen) for i in range(1, 6)}
    tensors[UNET + "out.0.bias"] = torch.randn(7, generator=gen).half()  # unaligned offsets after it
    tensors[UNET + "out.2.weight"] = torch.randn(3, 5, generator=gen).to(torch.bfloat16)
    tensors[UNET + "time_embed.0.weight"] = torch.randn(33, 17, generator=gen).to(torch.float8_e4m3fn)
    tensors[UNET + "label_emb.0.0.bias"] = torch.arange(5, dtype=torch.int64)
    if big:
        tensors[UNET + "middle_block.1.proj_out.weight"] = torch.randn(big, generator=gen)
    return tensors


@linux
def test_mapped_reads_equal_positioned_reads_and_stay_valid_after_release_and_close(tmp_path):
    path = tmp_path / "a.safetensors"
    tensors = _model(1)
    save_file(tensors, str(path))
    plain, mapped = SafetensorsReader(path, mapped=False), SafetensorsReader(path, mapped=True)
    assert plain.mapping is None and mapped.mapping is not None
    views = {}
    for key in tensors:
        views[key] = mapped.get(key)
        assert torch.equal(views[key], plain.get(key)) and views[key].dtype == tensors[key].dtype
        assert bytes(mapped.raw(key)) == bytes(plain.raw(key))
        mapped.release(key)
    mapped.close()
    plain.close()
    for key, view in views.items():  # released and closed: the views map their pages in again
        assert torch.equal(view.view(torch.uint8), tensors[key].view(torch.uint8))


@linux
def test_release_lets_a_keys_pages_go_and_the_limit_bounds_what_stays_mapped(tmp_path, monkeypatch):
    path = tmp_path / "big.safetensors"
    numel = 16 << 20  # 64 MiB of float32
    save_file({"w": torch.ones(numel), "v": torch.full((numel,), 2.0)}, str(path))
    monkeypatch.setattr(mapped_file, "POPULATE_BYTES", 1 << 30)
    reader = SafetensorsReader(path, mapped=True)
    before = rss_file_bytes()
    w = reader.get("w")  # mapped in on the read, before anything touches it
    assert rss_file_bytes() - before > 0.9 * numel * 4
    reader.release("w")
    assert rss_file_bytes() - before < 0.1 * numel * 4
    assert float(w[-1]) == 1.0  # still valid
    reader.release("w")
    monkeypatch.setattr(mapped_file, "LIMIT_BYTES", 80 << 20)  # room for one of the two
    reader.get("w")
    reader.get("v")  # never released by its caller: past the limit, "w" goes
    assert rss_file_bytes() - before < 1.1 * numel * 4
    reader.close()


@linux
def test_streamed_merge_of_mapped_files_writes_the_same_file_and_leaves_no_pages_mapped(tmp_path):
    a, b, c = _model(1, big=8 << 20), _model(2, big=8 << 20), _model(3, big=8 << 20)
    for name, tensors in zip("abc", (a, b, c)):
        save_file(tensors, str(tmp_path / f"{name}.safetensors"))
    outputs = []
    for mapped in (False, True):
        before = rss_file_bytes()
        with mapped_file_policy(mapped):
            sources = {name: open_source(str(tmp_path / f"{name}.safetensors"), name.upper()) for name in "abc"}
        assert all(src.mapped == mapped for src in sources.values())
        plan = plan_merge(sources, "Add difference", alpha=0.3)
        out = tmp_path / f"out_{mapped}.safetensors"
        run_merge(plan, sources, FileSink(out))
        if mapped:  # 3 x 32 MiB of inputs streamed: none of it left mapped in
            assert rss_file_bytes() - before < 16 << 20
        for src in sources.values():
            src.close()
        outputs.append(out.read_bytes())
    assert outputs[0] == outputs[1]
    merged = load_file(str(tmp_path / "out_True.safetensors"))
    key = UNET + "input_blocks.1.0.proj_in.weight"
    assert torch.allclose(merged[key], a[key] + 0.3 * (b[key] - c[key]), atol=1e-6)
    assert torch.equal(merged[UNET + "label_emb.0.0.bias"], a[UNET + "label_emb.0.0.bias"])  # copied from A


@linux
def test_a_read_maps_in_at_most_its_head_ahead_and_the_rest_as_touched(tmp_path, monkeypatch):
    path = tmp_path / "big.safetensors"
    numel = 16 << 20  # 64 MiB of float32
    save_file({"w": torch.arange(numel, dtype=torch.float32)}, str(path))
    monkeypatch.setattr(mapped_file, "POPULATE_BYTES", 8 << 20)
    reader = SafetensorsReader(path, mapped=True)
    before = rss_file_bytes()
    w = reader.get("w")
    assert 7 << 20 < rss_file_bytes() - before < 12 << 20
    assert torch.equal(w, torch.arange(numel, dtype=torch.float32))  # the rest faulted in as read
    assert rss_file_bytes() - before > 0.9 * numel * 4
    reader.close()


@linux
def test_a_large_keys_input_pages_go_as_the_kernel_passes_them(tmp_path, monkeypatch):
    """Its result grows while its inputs shrink, instead of on top of them: the pages left after each step of the
    kernel are a step's, not the key's (engine/linear.py, LET_GO_ELEMENTS); only whole pages inside a span go."""
    from merge_core.engine import linear
    from merge_core.methods import fused_linear
    if not fused_linear.available():
        pytest.skip("no C compiler: the torch path merges without steps")
    numel, key = 16 << 20, UNET + "middle_block.1.proj_out.weight"  # 64 MiB of float32 per input
    for name, seed in (("a", 1), ("b", 2)):
        save_file({key: torch.randn(numel, generator=torch.Generator().manual_seed(seed))},
                  str(tmp_path / f"{name}.safetensors"))
    monkeypatch.setattr(mapped_file, "POPULATE_BYTES", 1 << 30)  # the whole key mapped in ahead
    reader = SafetensorsReader(tmp_path / "a.safetensors", mapped=True)
    before = rss_file_bytes()
    w = reader.get(key)
    reader.release(key, (4097, 4 * numel // 2))  # not the page holding byte 4097, nor any past the middle
    assert 0.4 * numel * 4 < rss_file_bytes() - before < 0.6 * numel * 4
    assert torch.equal(w[:4], load_file(str(tmp_path / "a.safetensors"))[key][:4])  # mapped in again
    reader.close()

    monkeypatch.setattr(linear, "LET_GO_ELEMENTS", 1 << 20)  # 4 MiB steps
    real_span, left = fused_linear.merge_span, {}

    def span(*args, **kwargs):
        counts = real_span(*args, **kwargs)
        mapped_in = rss_file_bytes() - left["before"]
        left["least"] = min(left.get("least", mapped_in), mapped_in)
        return counts
    monkeypatch.setattr(fused_linear, "merge_span", span)
    outputs = []
    for steps in (True, False):
        if not steps:
            monkeypatch.setattr(linear, "LET_GO_ELEMENTS", numel)  # one step: nothing goes before the end
        left.clear()
        with mapped_file_policy(True):
            sources = {name: open_source(str(tmp_path / f"{name}.safetensors"), name.upper()) for name in "ab"}
        left["before"] = rss_file_bytes()
        out = tmp_path / f"out_{steps}.safetensors"
        run_merge(plan_merge(sources, "Weight sum", alpha=0.3), sources, FileSink(out))
        for src in sources.values():
            src.close()
        outputs.append(out.read_bytes())
        if steps:  # at the last steps, at most the pages of a step or two per input and half
            assert left["least"] < 24 << 20
        else:
            assert left["least"] > 0.9 * 2 * numel * 4
    assert outputs[0] == outputs[1]


@linux
def test_a_bare_diffusion_model_read_with_a_checkpoint_prefix_lets_its_pages_go_too(tmp_path, monkeypatch):
    """The prefixed view of a bare diffusion-model file (io/bare_unet.py) hands hints and releases to its file."""
    from merge_core.io.bare_unet import PREFIX, PrefixedSource
    from merge_core.io.file_source import FileSource
    path = tmp_path / "unet.safetensors"
    numel = 16 << 20
    save_file({"input_blocks.0.0.weight": torch.ones(numel)}, str(path))
    source = FileSource(path)
    source.reader.close()
    source.reader = SafetensorsReader(path, mapped=True)
    prefixed = PrefixedSource(source)
    monkeypatch.setattr(mapped_file, "POPULATE_BYTES", 1 << 30)
    before = rss_file_bytes()
    prefixed.prefetch(PREFIX + "input_blocks.0.0.weight")
    assert float(prefixed.get(PREFIX + "input_blocks.0.0.weight")[0]) == 1.0
    assert rss_file_bytes() - before > 0.9 * numel * 4
    prefixed.release(PREFIX + "input_blocks.0.0.weight")
    assert rss_file_bytes() - before < 0.1 * numel * 4
    prefixed.close()


@linux
def test_an_input_shortened_while_mapped_is_an_error_naming_it_not_a_crash(tmp_path, monkeypatch):
    from merge_core.errors import MergeInputError
    path = tmp_path / "a.safetensors"
    save_file({"a": torch.ones(1 << 20), "b": torch.ones(1 << 20)}, str(path))
    reader = SafetensorsReader(path, input_name="model_b", mapped=True)
    os.truncate(path, 4 * mmap.PAGESIZE)  # another program rewrites the file meanwhile
    for read in (reader.get, reader.raw):
        with pytest.raises(MergeInputError, match="changed while it was read") as info:
            read("b")
        assert info.value.input_name == "model_b" and "a.safetensors" in str(info.value)
    reader.close()
    # shortened inside a tensor's part that the math would map in (past the head mapped in ahead)
    save_file({"a": torch.ones(1 << 20), "b": torch.ones(1 << 20)}, str(path))
    monkeypatch.setattr(mapped_file, "POPULATE_BYTES", 1 << 20)
    reader = SafetensorsReader(path, input_name="model_b", mapped=True)
    os.truncate(path, reader.tensors["b"].begin + (2 << 20))
    with pytest.raises(MergeInputError, match="changed while it was read"):
        reader.get("b")
    reader.close()


def test_only_linux_with_madvise_maps(monkeypatch):
    monkeypatch.setattr(mapped_file, "_enabled", False)
    monkeypatch.setattr(sys, "platform", "win32")
    assert mapped_file.enable() is False and not mapped_file.enabled()
    monkeypatch.setattr(sys, "platform", "linux")
    assert mapped_file.enable() is hasattr(mmap.mmap, "madvise")
    assert mapped_file.enable(False) is False


class mapped_file_policy:
    """The process policy switched for the sources opened inside the block (the command line's, in a test)."""

    def __init__(self, on: bool):
        self.on = on

    def __enter__(self):
        self.was = mapped_file.enabled()
        mapped_file.enable(self.on)

    def __exit__(self, *exc):
        mapped_file.enable(self.was)


def test_rss_helper_reads_this_process():
    if not os.path.exists("/proc/self/status"):
        pytest.skip("no /proc")
    assert rss_file_bytes() > 0
