"""merge_core/io/buffers.py: a streamed merge reuses its read buffers, and never a caller's tensor or a
buffer a result lives in."""
import pytest
import torch
from safetensors.torch import save_file

from merge_core.api import plan_merge
from merge_core.engine import DictSink, run_merge
from merge_core.io.buffers import MIN_BYTES, BufferPool
from merge_core.io.sources import open_source
from merge_core.pipeline import WriteBehind

UNET = "model.diffusion_model."


def _model(seed):
    gen = torch.Generator().manual_seed(seed)
    # several keys above MIN_BYTES (float32 512x1024 = 2 MiB), so buffers are given back and reused
    return {UNET + f"input_blocks.{i}.0.proj_in.weight": torch.randn(512, 1024, generator=gen) for i in range(1, 9)}


def test_pool_reuses_a_given_buffer_and_refuses_one_the_result_lives_in():
    pool = BufferPool()
    first = pool.take(MIN_BYTES)
    ptr = first.data_ptr()
    pool.give(first.view(torch.float32), result=first[:16])  # the result shares the memory: kept out
    assert pool.take(MIN_BYTES).data_ptr() != ptr
    pool.give(first.view(torch.float32), result=torch.zeros(4))
    assert pool.take(MIN_BYTES).data_ptr() == ptr
    assert pool.take(MIN_BYTES).data_ptr() != ptr  # handed out once only


def test_pool_holds_at_most_its_byte_limit_and_lets_the_oldest_buffers_go():
    """Buffers of a few large keys would otherwise stay to the end of the merge: past limit_bytes the oldest go,
    and a buffer larger than the whole limit is not kept at all."""
    pool = BufferPool(limit_bytes=3 * MIN_BYTES)
    first, second, third = (pool.take(MIN_BYTES) for _ in range(3))
    for buf in (first, second, third):
        pool.give(buf)
    big = pool.take(4 * MIN_BYTES)
    pool.give(big)  # over the limit on its own: dropped
    fourth = pool.take(2 * MIN_BYTES)  # fresh (no pooled buffer fits), given back: first and second must go
    pool.give(fourth)
    held = [pool.take(MIN_BYTES).data_ptr() for _ in range(2)]  # the smallest that fits first
    assert held == [third.data_ptr(), fourth.data_ptr()]
    assert pool.take(MIN_BYTES).data_ptr() not in {first.data_ptr(), second.data_ptr()}
    assert pool.take(2 * MIN_BYTES).data_ptr() != big.data_ptr()


def test_file_merge_with_reused_buffers_equals_the_in_memory_merge_and_leaves_dict_inputs_alone(tmp_path):
    a, b, c = _model(1), _model(2), _model(3)
    keep = {k: v.clone() for k, v in c.items()}
    save_file(a, str(tmp_path / "a.safetensors"))
    save_file(b, str(tmp_path / "b.safetensors"))
    want = {k: a[k] + 0.3 * (b[k] - c[k]) for k in a}
    for c_source in (open_source(c, "C"), open_source(str(tmp_path / "a.safetensors"), "C")):
        sources = {"a": open_source(str(tmp_path / "a.safetensors"), "A"),
                   "b": open_source(str(tmp_path / "b.safetensors"), "B"), "c": c_source}
        plan = plan_merge(sources, "Add difference", alpha=0.3)
        out = run_merge(plan, sources, DictSink())
        expected = want if c_source.name == "C" else {k: a[k] + 0.3 * (b[k] - a[k]) for k in a}
        for key in a:
            torch.testing.assert_close(out[key], expected[key], rtol=0, atol=1e-6)
        assert all(torch.equal(c[k], keep[k]) for k in c)  # a caller's tensors are never read into
        assert all(getattr(s, "buffers", None) is None for s in sources.values())  # the pool ends with the merge


def test_a_file_merge_computes_later_keys_into_written_results_memory(tmp_path, monkeypatch):
    """With a file sink (which keeps no tensor), each result's memory serves a later key once the writer
    has written it: the file still equals the in-memory merge key by key, and result memory was reused."""
    from safetensors.torch import load_file

    from merge_core.engine import FileSink, linear, stream
    from merge_core.methods import fused_linear
    if not fused_linear.available():
        return  # the torch path allocates its results itself
    a, b = _model(4), _model(5)
    save_file(a, str(tmp_path / "a.safetensors"))
    save_file(b, str(tmp_path / "b.safetensors"))

    def sources():
        return {"a": open_source(str(tmp_path / "a.safetensors"), "A"),
                "b": open_source(str(tmp_path / "b.safetensors"), "B")}
    in_memory = run_merge(plan_merge(sources(), "Weight sum", alpha=0.3), sources(), DictSink())
    results = []
    real = linear.fused_merge
    monkeypatch.setattr(linear, "fused_merge", lambda *args, **kw: results.append(r := real(*args, **kw)) or r)
    # every put waits for its write: a result's memory is back in the pool before the next key (with the
    # default budget it comes back whenever the writer is done, which a slow machine may make later)
    monkeypatch.setattr(stream, "WriteBehind", lambda executor, budget: WriteBehind(executor, budget=0))
    src = sources()
    run_merge(plan_merge(src, "Weight sum", alpha=0.3), src, FileSink(str(tmp_path / "o.safetensors")))
    pointers = [r[0].data_ptr() for r in results]
    assert len(pointers) == len(a) and len(set(pointers)) < len(pointers), "results computed into reused memory"
    written = load_file(str(tmp_path / "o.safetensors"))
    for key in a:
        assert torch.equal(written[key], in_memory[key]), key


def test_deeply_nested_json_is_a_one_line_error_not_a_recursion_error(tmp_path):
    """A header of 100,000 nested brackets (and the same inside metadata the readers parse)."""
    import struct

    from merge_core.errors import MergeInputError
    from merge_core.io.json_limits import loads_bounded
    from merge_core.io.quantized import layer_config
    from merge_core.io.safetensors_file import SafetensorsReader
    from merge_core.lora.metadata import _tags
    deep = "[" * 100_000
    path = tmp_path / "deep.safetensors"
    path.write_bytes(struct.pack("<Q", len(deep)) + deep.encode())
    before = path.read_bytes()
    with pytest.raises(MergeInputError) as info:
        SafetensorsReader(path, "model_a")
    text = str(info.value)
    assert "\n" not in text and "deep.safetensors" in text and "nested more than" in text, text
    assert path.read_bytes() == before
    for bad in (deep, "{" + '"a":[' * 300 + "1" + "]" * 300 + "}", b"\xff", "[1,"):
        with pytest.raises(ValueError, match="the cache"):
            loads_bounded(bad, "the cache")
    assert loads_bounded('{"a": [1, {"b": 2}]}', "x") == {"a": [1, {"b": 2}]}
    assert layer_config({"_quantization_metadata": deep}) is None
    assert _tags(deep) == {}
