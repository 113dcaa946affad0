"""merge_core/pipeline.py: loads come back in plan order within the byte budget; puts run in order, the
caller waits only beyond the budget; errors surface at their key or the next call."""
import concurrent.futures as cf
import threading

import pytest

from merge_core.pipeline import ReadAhead, WriteBehind


def test_loads_arrive_in_order_and_the_reader_stays_within_the_budget():
    sizes = {f"k{i}": s for i, s in enumerate([50, 10, 10, 10, 300, 10, 10, 60, 60, 60])}
    keys = list(sizes)
    started = []

    def load(key, after):
        started.append(key)
        assert after == (keys[keys.index(key) + 1] if key != keys[-1] else None)
        return key.upper()

    with cf.ThreadPoolExecutor(1) as reader:
        ahead = ReadAhead(reader, load, keys, sizes.get, budget=100)
        assert [f.result() for f, _ in ahead.queue] == ["K0", "K1", "K2", "K3"]  # 80 bytes; k4 would pass 100
        got = []
        for _ in keys:
            queued = sum(cost for _, cost in ahead.queue)
            assert queued <= 100 or len(ahead.queue) == 1  # one key is always ahead, however large
            got.append(ahead.take())
    assert got == [k.upper() for k in keys] and started == keys


def test_an_error_is_raised_at_its_key_and_cancel_drops_what_has_not_started():
    release = threading.Event()
    ran = []

    def load(key, after):
        ran.append(key)
        if key == "b":
            raise OSError("disk gone")
        if key == "c":
            release.wait(5)
        return key

    with cf.ThreadPoolExecutor(1) as reader:
        ahead = ReadAhead(reader, load, list("abcdefg"), lambda k: 1, budget=10)
        assert ahead.take() == "a"
        with pytest.raises(OSError, match="disk gone"):
            ahead.take()
        ahead.cancel()  # c may be running; d.. have not started
        release.set()
    assert "g" not in ran and ran[:2] == ["a", "b"]


def test_puts_run_in_order_release_after_their_put_and_wait_only_beyond_the_budget():
    done, released, gate = [], [], threading.Event()

    def put(key):
        if key == "k0":
            gate.wait(5)  # the first put is slow: later ones queue behind it
        done.append(key)

    with cf.ThreadPoolExecutor(1) as writer:
        behind = WriteBehind(writer, budget=100)
        for i in range(3):  # 90 bytes pending: none waits
            behind.put(put, f"k{i}", nbytes=30, release=lambda i=i: released.append(f"k{i}"))
        assert done == [] and released == [] and behind.bytes == 90
        gate.set()
        behind.put(put, "k3", nbytes=30, release=lambda: released.append("k3"))  # 120 > 100: waits for k0
        assert done[:1] == ["k0"] and released[:1] == ["k0"] and behind.bytes <= 100
        behind.drain()
    assert done == released == ["k0", "k1", "k2", "k3"]


def test_a_failed_put_raises_at_the_next_call_and_its_buffer_is_not_released():
    released = []

    def put(key):
        if key == "bad":
            raise OSError("disk full")

    with cf.ThreadPoolExecutor(1) as writer:
        behind = WriteBehind(writer, budget=10)
        behind.put(put, "ok", nbytes=5, release=lambda: released.append("ok"))
        with pytest.raises(OSError, match="disk full"):
            behind.put(put, "bad", nbytes=20, release=lambda: released.append("bad"))
            behind.drain()
    assert released == ["ok"]
