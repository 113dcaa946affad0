"""Property-based: the block-weight parser either parses or raises MergeInputError, never anything else."""
from hypothesis import given, settings
from hypothesis import strategies as st

from merge_core.architectures import SD1, SDXL
from merge_core.blocks.weights import parse_block_weights
from merge_core.errors import MergeInputError

tokens = st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(str), st.sampled_from(
    ["", " ", "R", "U", "X", "GRAD_V", "1e400", "-0", ",", "\n", "0x1", "1_0", "∞"]), st.text(max_size=5))


@settings(max_examples=300, deadline=None)
@given(st.lists(tokens, max_size=30), st.sampled_from([",", ", ", "\n"]), st.sampled_from([SD1, SDXL]))
def test_parser_never_crashes(parts, sep, arch):
    text = sep.join(parts)
    try:
        bw = parse_block_weights(text, arch)
    except MergeInputError as exc:
        assert exc.input_name == "block_weights" and exc.fix
        return
    if bw is not None:
        assert len(bw.values) == arch.n_blocks
