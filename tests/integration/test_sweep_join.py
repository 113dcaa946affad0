"""Sweep Join Lists: parts in order with their labels, text as its own label, label counts checked."""
import pytest

from merge_suite.nodes.errors import MergeNodeError
from merge_suite.nodes.sweep import SweepJoin


def test_join_keeps_order_and_labels():
    models = [object(), object(), object()]
    values, labels = SweepJoin.execute(a=models[:2], a_labels=["alpha=0", "alpha=1"], b=[models[2]],
                                       b_labels=["A + (B - base)"]).result
    assert values == models and labels == ["alpha=0", "alpha=1", "A + (B - base)"]


def test_text_values_label_themselves():
    assert SweepJoin.execute(a=["a red circle"], c=["a blue square"]).result == \
        (["a red circle", "a blue square"], ["a red circle", "a blue square"])


@pytest.mark.parametrize("kwargs,match", [
    (dict(a=[object()]), r"input 'a_labels': is not connected"),
    (dict(a=["x"], b=[1, 2], b_labels=["one"]), r"input 'b_labels': has 1 labels for 2 values"),
])
def test_bad_join_names_the_input(kwargs, match):
    with pytest.raises(MergeNodeError, match=match) as info:
        SweepJoin.execute(**kwargs)
    assert "Fix:" in str(info.value)
