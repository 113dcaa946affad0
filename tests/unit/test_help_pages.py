"""Help pages (web/docs/<NodeId>.md, shown in ComfyUI's node help panel) cover what a user looks for there:
what the node does, the alpha convention where there is an alpha, each input, an example."""
import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[2] / "web" / "docs"
PAGES = ["MergeSuite_ModelMerge", "MergeSuite_CLIPMerge", "MergeSuite_CheckpointMerge", "MergeSuite_Adjust",
         "MergeSuite_ModelSimilarity", "MergeSuite_Elements", "MergeSuite_TextEncoderTokens",
         "MergeSuite_OptionCalcMode", "MergeSuite_OptionElemental", "MergeSuite_OptionIncludeExclude",
         "MergeSuite_OptionAdjust", "MergeSuite_OptionReport", "MergeSuite_CombineModels",
         "MergeSuite_CheckpointFileMerge", "MergeSuite_DiffusionModelFileMerge", "MergeSuite_MergeFromHistory",
         "MergeSuite_RebasinModel"]
WITH_ALPHA = {"MergeSuite_ModelMerge", "MergeSuite_CLIPMerge", "MergeSuite_CheckpointMerge"}


@pytest.mark.parametrize("node_id", PAGES)
def test_help_page_has_title_inputs_and_example(node_id):
    text = (DOCS / f"{node_id}.md").read_text(encoding="utf-8")
    assert text.startswith("# "), "starts with the node's title"
    sections = re.findall(r"^## (.+)$", text, flags=re.M)
    assert "Inputs" in sections and "Example" in sections, sections
    if node_id in WITH_ALPHA:
        assert re.search(r"alpha is the weight of (model|CLIP) B", text)


def _inputs_section(node_id):
    text = (DOCS / f"{node_id}.md").read_text(encoding="utf-8")
    return text.split("## Inputs", 1)[1].split("\n## ", 1)[0]


def test_checkpoint_page_lists_the_block_ids():
    section = _inputs_section("MergeSuite_CheckpointMerge")
    assert "BASE, IN00, IN01, … IN11, M00, OUT00, … OUT11" in section and "IN08" in section
