"""Nodes send their text outputs as ui.text, which web/js/text_outputs.js shows on the node."""
from merge_suite.nodes.analysis import ElementsBrowser
from merge_suite.nodes.merge import ModelMerge
from merge_suite.nodes.ui import MAX_LINES, text_ui


def test_merge_node_sends_its_text_outputs(tiny):
    out = ModelMerge.execute(model_a=tiny("model", "sd1", 1), model_b=tiny("model", "sd1", 2), mode="Weight sum",
                             alpha=0.3, beta=0.25, blocks_alpha="GRAD_V")
    texts = list(out.result[1:])  # the report, and the recipe where the node has one
    assert out.ui == {"text": texts}
    assert "OUT11" in texts[0] and all(isinstance(t, str) and t for t in texts)


def test_elements_table_is_sent_whole_when_short(tiny):
    out = ElementsBrowser.execute(block="OUT04", match="attn2", model=tiny("model", "sd1", 1))
    assert out.ui == {"text": [out.result[0]]} and "attn2" in out.result[0]


def test_long_tables_are_cut_on_the_node_only():
    table = "\n".join(f"row {i}" for i in range(MAX_LINES + 600))
    shown = text_ui(table, "short")["text"]
    lines = shown[0].splitlines()
    assert lines[:MAX_LINES] == table.splitlines()[:MAX_LINES]
    assert len(lines) == MAX_LINES + 1 and "600 more lines" in lines[-1]
    assert shown[1] == "short"
