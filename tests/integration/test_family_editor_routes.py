"""The block-weight editor's data on every declared family: the family's layout with its groups (one per
numbered stack), a block-weight check in the family's own ids, and the elements browser's list of a block,
all from the declaration and its full-size key inventory (no table elsewhere to forget)."""
import pytest

from merge_suite.merge_core.architectures import TRANSFORMERS
from merge_suite.nodes.routes import block_elements, check_block_weights, editor_data, family_layout


@pytest.mark.parametrize("arch", TRANSFORMERS, ids=lambda a: a.name)
def test_each_family_has_its_layout_groups_and_elements(arch):
    payload = family_layout(arch.name)
    assert payload["ok"] and payload["blocks"] == list(arch.blocks)
    assert arch.name in editor_data()["families"]
    groups = payload["groups"]
    for part in arch.numbered:
        if part.default:
            assert groups[part.prefix] == list(part.ids(part.default))
    first = arch.numbered[0].ids(1)[0]
    checked = check_block_weights(f"{first}=0.3, OUT=0.7", arch.name)
    assert checked["ok"] and checked["values"][arch.blocks.index(first)] == 0.3
    elements = block_elements(arch.name, first)
    assert elements["ok"] and elements["elements"], f"{arch.name}: no element listed for {first}"
