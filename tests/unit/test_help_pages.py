"""Help pages (web/docs/<NodeId>.md, shown in ComfyUI's node help panel) cover what issue #7 asks:
what the node does, the alpha convention where there is an alpha, each input, an example."""
import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[2] / "web" / "docs"
PAGES = ["MergeSuite_ModelMerge", "MergeSuite_CLIPMerge", "MergeSuite_CheckpointMerge", "MergeSuite_Adjust",
         "MergeSuite_ModelSimilarity", "MergeSuite_Elements", "MergeSuite_TextEncoderTokens"]
WITH_ALPHA = {"MergeSuite_ModelMerge", "MergeSuite_CLIPMerge", "MergeSuite_CheckpointMerge"}


@pytest.mark.parametrize("node_id", PAGES)
def test_help_page_has_title_inputs_and_example(node_id):
    text = (DOCS / f"{node_id}.md").read_text(encoding="utf-8")
    assert text.startswith("# "), "starts with the node's title"
    sections = re.findall(r"^## (.+)$", text, flags=re.M)
    assert "Inputs" in sections and "Example" in sections, sections
    if node_id in WITH_ALPHA:
        assert re.search(r"alpha is the weight of (model|CLIP) B", text)
