import pytest

from merge_core.architectures import SD1, SDXL
from merge_core.blocks.weights import parse_block_weights
from merge_core.errors import MergeInputError
from merge_core.blocks.presets import presets

SDXL_KEPT = ["BASE"] + [f"IN{i:02d}" for i in range(9)] + ["M00"] + [f"OUT{i:02d}" for i in range(9)]


def test_all_38_presets_have_26_values():
    table = presets()
    assert len(table) == 38
    assert all(len(v) == 26 for v in table.values())
    assert table["ALL_A"] == (0.0,) * 26 and table["ALL_B"] == (1.0,) * 26
    assert table["GRAD_V"][:3] == (0.0, 1.0, 0.9166666667)
    assert table["OUT12_5"][13] == 0.5  # M00


@pytest.mark.parametrize("name", ["SMOOTHSTEP", "COSINE", "REVERSE-SMOOTHSTEP", "TRUE_CUBIC_HERMITE",
                                  "SMOOTHSTEP*2", "R_SMOOTHSTEP/4"])
def test_preset_names_resolve_first_even_with_letter_e(name):
    bw = parse_block_weights(name, SD1)
    assert bw.values == presets()[name]


def test_numbers_and_base():
    text = ",".join(str(i / 100) for i in range(26))
    bw = parse_block_weights(text, SD1)
    assert bw.base == 0.0 and bw.of("IN00") == 0.01 and bw.of("M00") == 0.13 and bw.of("OUT11") == 0.25


def test_sd1_list_converted_for_sdxl():
    values = [i / 100 for i in range(26)]
    bw = parse_block_weights(",".join(map(str, values)), SDXL)
    names26 = list(SD1.blocks)
    assert bw.blocks == SDXL.blocks
    assert list(bw.values) == [values[names26.index(b)] for b in SDXL_KEPT]


def test_sdxl_20_values_and_preset_conversion():
    bw = parse_block_weights(",".join(["0.5"] * 20), SDXL)
    assert bw.values == (0.5,) * 20
    grad = parse_block_weights("GRAD_V", SDXL)
    assert grad.of("M00") == presets()["GRAD_V"][13] and grad.of("OUT08") == presets()["GRAD_V"][22]


def test_empty_is_none():
    assert parse_block_weights("", SD1) is None
    assert parse_block_weights("   ", SD1) is None
    assert parse_block_weights(None, SD1) is None
    assert parse_block_weights("\n\n\t", SD1) is None  # whitespace alone is an empty field


@pytest.mark.parametrize("text", [",,,,", ",", " , ", ",\n,", "\n,,\n"])
def test_commas_alone_are_refused_not_taken_as_no_block_weights(text):
    """A list whose numbers were lost is a mistake, not a request for the scalar everywhere."""
    with pytest.raises(MergeInputError) as info:
        parse_block_weights(text, SD1, "blocks_alpha", 0.5)
    assert info.value.input_name == "blocks_alpha" and "holds only commas" in str(info.value)
    assert "\n" not in str(info.value) and "leave it empty" in str(info.value)


@pytest.mark.parametrize("text", [" , ; ", ";", ";;"])
def test_other_separators_alone_are_not_a_preset(text):
    with pytest.raises(MergeInputError, match="neither a preset name nor a list of numbers"):
        parse_block_weights(text, SD1, "blocks_alpha", 0.5)


@pytest.mark.parametrize("text,fragment", [
    (",".join(["0.5"] * 25), "25 values"),
    (",".join(["0.5"] * 20), "20 values"),
    ("GRAD_Q", "GRAD_Q"),
    ("grad_v", "Did you mean 'GRAD_V'"),
    ("0.5,abc" + ",0.5" * 24, "'abc'"),
    ("0.5,,0.5", "empty"),
    ("R" + ",0.5" * 25, "random tokens"),
    ("nan" + ",0.5" * 25, "not finite"),
])
def test_bad_text_names_input_and_fragment(text, fragment):
    with pytest.raises(MergeInputError) as info:
        parse_block_weights(text, SD1, "blocks_alpha")
    assert info.value.input_name == "blocks_alpha"
    assert fragment in str(info.value)
    assert "Fix:" in str(info.value)


def test_wrong_count_for_sdxl_mentions_both_forms():
    with pytest.raises(MergeInputError, match="26 .*or 20"):
        parse_block_weights(",".join(["1"] * 12), SDXL)
