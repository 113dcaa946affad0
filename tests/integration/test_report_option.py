"""The merge nodes' per-key report option (SuperMerger's 'print change') on real ComfyUI models."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_merge_nodes import LABELS  # noqa: E402

from merge_suite.nodes.merge import CheckpointMerge, ModelMerge  # noqa: E402


def test_report_keys_lists_every_key_with_its_ratios(tiny):
    a, b = tiny("model", "sd1", 1), tiny("model", "sd1", 2)
    params = dict(mode=LABELS["weight_sum"], alpha=0.5, beta=0.25, elemental="OUT05:attn2:0.9")
    short = ModelMerge.execute(model_a=a, model_b=b, **params).result[1]
    full = ModelMerge.execute(model_a=a, model_b=b, report_keys=True, **params).result[1]
    keys = a.get_key_patches("diffusion_model.")
    assert full.startswith(short) and len(full.splitlines()) >= len(short.splitlines()) + len(keys)
    line = next(ln for ln in full.splitlines() if "output_blocks.5.1.transformer_blocks.0.attn2.to_q.weight" in ln)
    assert "OUT05" in line and "0.9" in line and "merge" in line
    assert not any("output_blocks" in ln for ln in short.splitlines())


def test_checkpoint_merge_reports_keys_of_both_parts(tiny):
    ma, ca = tiny("model", "sd1", 1), tiny("clip", "sd1", 1)
    mb, cb = tiny("model", "sd1", 2), tiny("clip", "sd1", 2)
    report = CheckpointMerge.execute(model_a=ma, clip_a=ca, model_b=mb, clip_b=cb, mode=LABELS["weight_sum"],
                                     alpha=0.5, beta=0.25, report_keys=True).result[2]
    assert "diffusion_model.input_blocks.1.0.in_layers.2.weight" in report and "text_model" in report
