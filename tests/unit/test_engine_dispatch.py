"""The engine's loop asks any source or sink for its optional abilities (the protocols' defaults answer for
those without), and gives an n-model plan's settings to the combine handler as they are."""
from __future__ import annotations

import dataclasses
import types

import torch
from test_merge_api import small_model

from merge_core.combine import plan_sources
from merge_core.engine import DictSink, FileSink, run_merge
from merge_core.io.sources import DictSource
from merge_core.plan import KEEP_A, MERGE, Action, KeyPlan, Reason


def test_sources_and_sinks_without_an_ability_answer_with_the_protocols_default():
    source = DictSource({"w": torch.ones(2)})
    assert source.stored("w") is None and source.raw("w") is None and source.buffers is None
    assert source.prefetch("w") is None
    assert DictSink().keeps_tensors and DictSink().encoded_dtype("w") is None
    assert not FileSink("unused.safetensors").keeps_tensors


def test_plan_actions_read_as_their_text_and_reasons_carry_their_detail():
    assert MERGE is Action.MERGE and f"{KEEP_A}" == "keep_a" and str(Action.FROM_B) == "from_b"
    kept = KeyPlan("x.weight", KEEP_A, reason=Reason.NO_BLOCK_RULE, detail="Flux.1")
    assert kept.note == "matches no Flux.1 block rule"
    assert KeyPlan("y.weight", KEEP_A, reason=Reason.ABSENT_FROM_B).note == "absent from B"
    assert KeyPlan("z.weight", MERGE).note == ""


def test_an_n_model_plan_runs_by_its_models_whatever_its_settings_type(sd1_keys):
    """The combine handler asks the settings for the method (its name) and the per-key merge only: settings
    without a merge mode or calc mode give the same bytes."""
    sources = {name: DictSource(small_model(sd1_keys, seed)) for name, seed in (("a", 1), ("m1", 2), ("m2", 3))}
    plan = plan_sources(sources, "ties")
    expected = run_merge(plan, sources, DictSink())
    bare = types.SimpleNamespace(method=plan.settings.method, merge_key=plan.settings.merge_key)
    got = run_merge(dataclasses.replace(plan, settings=bare, nonfinite={}, fallbacks={}), sources, DictSink())
    assert plan.count(MERGE) > 0 and expected.keys() == got.keys()
    assert all(torch.equal(expected[k], got[k]) for k in expected)
