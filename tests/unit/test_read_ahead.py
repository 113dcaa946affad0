"""merge_core/read_ahead.py: loads come back in plan order, within the byte budget, errors at their key."""
import concurrent.futures as cf
import threading

import pytest

from merge_core.read_ahead import ReadAhead


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
        for key in keys:
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
