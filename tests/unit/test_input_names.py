"""One table says what each front end calls the engine's inputs; an error renamed for it keeps its text otherwise."""
import pytest

from merge_core.errors import MergeInputError
from merge_core.input_names import (CLI, CLI_COMBINE, CLI_LORA, CLIP_NODE, FILE_NODE, FRONT_END_NAMES, MODEL_NODE,
                                    front_end_name, renamed)


@pytest.mark.parametrize("front_end,engine,shown", [
    (CLI, "blocks_alpha", "--blocks"), (CLI, "model_b", "model B (2nd file)"), (CLI, "output", "-o"),
    (FILE_NODE, "model_c", "file_c"), (FILE_NODE, "output", "filename_prefix"),
    (CLIP_NODE, "model_a", "clip_a"), (MODEL_NODE, "model_a", "model_a"),
    (CLI_COMBINE, "model_a", "--base"), (CLI_LORA, "model_a", "TUNED"), (CLI_LORA, "lbw_presets", "--presets"),
])
def test_each_front_end_names_the_engines_inputs(front_end, engine, shown):
    assert front_end_name(engine, front_end) == shown


def test_a_name_a_front_end_does_not_rename_is_kept():
    for front_end in FRONT_END_NAMES:
        assert front_end_name("elemental_full_key", front_end) == "elemental_full_key"


def test_renamed_changes_only_the_input_name():
    exc = MergeInputError("model_b", "is not a checkpoint.", "give a .safetensors file.")
    assert renamed(exc, FILE_NODE) is exc
    assert exc.describe("Merge") == "Merge: input 'file_b': is not a checkpoint. Fix: give a .safetensors file."
