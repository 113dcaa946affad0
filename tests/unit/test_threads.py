"""merge_core.threads: torch's thread setting is scoped to merge_core's work and restored on every exit;
the thread count never changes a merge's result."""
import threading

import pytest
import torch
from test_merge_api import small_model

from merge_core.methods import filters
from merge_core.methods import native
from merge_core import threads as thread_policy
from merge_core.api import plan_merge
from merge_core.engine import DictSink, run_merge
from merge_core.io.sources import open_source


@pytest.fixture
def outside():
    """Run each test from a known outside setting (2 threads) and put the session's back afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield 2
    torch.set_num_threads(before)


def test_scope_sets_and_restores_also_on_exceptions(outside):
    with thread_policy.torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == outside
    with pytest.raises(KeyError):
        with thread_policy.torch_threads(3):
            assert torch.get_num_threads() == 3
            raise KeyError("boom")
    assert torch.get_num_threads() == outside


def test_nested_scopes_restore_the_enclosing_setting(outside):
    with thread_policy.torch_threads(1):
        with thread_policy.torch_threads(3):
            assert torch.get_num_threads() == 3
            with pytest.raises(ValueError):
                with thread_policy.torch_threads(2):
                    raise ValueError
            assert torch.get_num_threads() == 3
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == outside


def test_scopes_overlapping_across_threads_leave_the_outside_setting(outside):
    """Two threads open scopes that overlap in time and close in either order; afterwards new
    threads and this one see the setting from before any scope."""
    for first_out in (0, 1):
        _overlap_scopes(first_out, outside)


def _overlap_scopes(first_out: int, outside: int) -> None:
    """Thread 0 opens a 1-thread scope, thread 1 a 3-thread one; thread ``first_out`` closes first."""
    opened = [threading.Event(), threading.Event()]
    release = [threading.Event(), threading.Event()]
    done = [threading.Event(), threading.Event()]
    seen = {}

    def worker(i):
        with thread_policy.torch_threads(1 + i * 2):
            seen[i] = torch.get_num_threads()
            opened[i].set()
            release[i].wait(5)
        done[i].set()
    workers = [threading.Thread(target=worker, args=(i,)) for i in (0, 1)]
    workers[0].start()
    opened[0].wait(5)
    workers[1].start()
    opened[1].wait(5)
    release[first_out].set()
    done[first_out].wait(5)
    release[1 - first_out].set()
    for w in workers:
        w.join(5)
    assert seen == {0: 1, 1: 3}
    later = {}
    fresh = threading.Thread(target=lambda: later.setdefault("n", torch.get_num_threads()))
    fresh.start()
    fresh.join(5)
    assert later["n"] == outside
    assert torch.get_num_threads() == outside


def test_compute_threads_takes_the_idle_cores(tmp_path, monkeypatch):
    loadavg = tmp_path / "loadavg"
    loadavg.write_text("3.10 2.00 1.50 3/180 4242\n")
    no_tasks = str(tmp_path / "no-tasks")
    assert thread_policy.busy_cpus(str(loadavg), no_tasks) == 2  # 3 runnable, one of them the caller
    assert thread_policy.busy_cpus(str(tmp_path / "missing")) == 0
    tasks = tmp_path / "task"
    for tid, state in ((11, "R"), (12, "S"), (13, "R")):  # the caller and one more of ours run
        (tasks / str(tid)).mkdir(parents=True)
        (tasks / str(tid) / "stat").write_text(f"{tid} (python (merge) x) {state} 1 2 3\n")
    assert thread_policy.own_running(str(tasks)) == 2
    assert thread_policy.busy_cpus(str(loadavg), str(tasks)) == 1  # our own read-ahead is not "busy"
    assert thread_policy.own_running() >= 1  # the calling thread itself, on this machine
    monkeypatch.setattr(thread_policy, "available_cpus", lambda: 4)
    for busy, want, capped in ((0, 4, 2), (1, 3, 2), (3, 1, 1), (9, 1, 1)):
        monkeypatch.setattr(thread_policy, "busy_cpus", lambda busy=busy: busy)
        assert thread_policy.compute_threads() == want
        assert thread_policy.compute_threads(limit=2) == capped


def _large_model(sd1_keys, seed):
    """Real SD1 key names (so the plan sees an SD1 checkpoint); some keys big enough for torch to
    split an operation between threads (> its 32 K-element grain), 2-D and 3x3-conv shaped."""
    keys = {k: s for k, s in sd1_keys.items() if k.startswith("model.diffusion_model.")}
    model = small_model(keys, seed)
    gen = torch.Generator().manual_seed(seed + 100)
    big = [k for k in keys if k.endswith(".weight") and len(keys[k]) in (2, 4)][::40]
    for k in big:
        shape = (256, 320) if len(keys[k]) == 2 else (64, 96, 3, 3)
        model[k] = (torch.randn(shape, generator=gen) * 0.05).half()
    return model, big


@pytest.mark.parametrize("mode,calc", [("Weight sum", "normal"), ("Add difference", "normal"),
                                       ("Weight sum", "cosineA"), ("Add difference", "smoothAdd"),
                                       ("Add difference", "trainDifference")])
def test_merge_results_are_bit_identical_with_1_and_n_threads(sd1_keys, monkeypatch, outside, mode, calc):
    models = [_large_model(sd1_keys, seed) for seed in (1, 2, 3)]
    big = models[0][1]
    results, used = {}, {}
    for n in (1, 2, 4):
        monkeypatch.setattr(thread_policy, "MERGE_THREADS", n)  # the engine's setting
        monkeypatch.setattr(filters, "compute_threads", lambda limit=None, n=n: n)  # smoothAdd's filter
        monkeypatch.setattr(native, "compute_threads", lambda limit=None, n=n: n)
        sources = {name: open_source(m, name.upper()) for name, (m, _) in zip("abc", models)}
        plan = plan_merge(sources, mode, 0.3, 0.25, calcmode=calc)
        seen = set()
        results[n] = run_merge(plan, sources, DictSink(),
                               progress=lambda *_, seen=seen: seen.add(torch.get_num_threads()))
        used[n] = seen
        assert torch.get_num_threads() == outside
    assert used == {1: {1}, 2: {2}, 4: {4}}
    for k in results[1]:
        assert torch.equal(results[1][k], results[2][k]) and torch.equal(results[1][k], results[4][k]), k
    assert not any(torch.equal(results[1][k], models[0][0][k]) for k in big)  # the big keys were merged


def test_merge_runs_on_one_thread_and_restores_after_a_failure(sd1_keys, outside):
    model, _ = _large_model(sd1_keys, 1)
    sources = {"a": open_source(model, "A"), "b": open_source(_large_model(sd1_keys, 2)[0], "B")}
    plan = plan_merge(sources, "Weight sum", 0.5)
    seen = []

    def progress(done, total):
        seen.append(torch.get_num_threads())
        if done == 5:
            raise RuntimeError("stop here")
    with pytest.raises(RuntimeError, match="stop here"):
        run_merge(plan, sources, DictSink(), progress=progress)
    assert seen == [thread_policy.MERGE_THREADS] * 5 == [1] * 5
    assert torch.get_num_threads() == outside
