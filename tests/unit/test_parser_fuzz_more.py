"""Property-based: the Adjust and Include/Exclude parsers parse or raise MergeInputError, nothing else."""
from hypothesis import given, settings
from hypothesis import strategies as st

from merge_core.methods.adjust import parse_adjust
from merge_core.architectures import SD1, SDXL
from merge_core.errors import MergeInputError
from merge_core.blocks.selection import parse_selection

numbers = st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(str),
                    st.sampled_from(["", " ", "x", "1e999", "-0", "R"]), st.text(max_size=3))
targets = st.one_of(st.sampled_from(["include:", "exclude:", "OUT03", "IN00-IN05", "OUT99", "VAE", "Adjust",
                                     "attn2", ",", " ", "-", "M00-"]), st.text(max_size=4))


@settings(max_examples=300, deadline=None)
@given(st.lists(numbers, max_size=10))
def test_adjust_parser_never_crashes(parts):
    try:
        adj = parse_adjust(",".join(parts))
    except MergeInputError as exc:
        assert exc.input_name == "adjust" and exc.fix
        return
    assert adj is None or len(adj.values) in (7, 8)


@settings(max_examples=300, deadline=None)
@given(st.lists(targets, max_size=12), st.sampled_from([SD1, SDXL]))
def test_selection_parser_never_crashes(parts, arch):
    try:
        sel = parse_selection(" ".join(parts), arch)
    except MergeInputError as exc:
        assert exc.input_name == "include_exclude" and exc.fix
        return
    assert sel is None or (sel.mode in ("include", "exclude") and sel.blocks <= set(arch.blocks))
