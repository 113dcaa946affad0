"""The applied-ratio report is exact: its counts come from the plan, checked here by hand."""
import subprocess
import sys
from pathlib import Path

from safetensors.torch import save_file
from spec_blocks import sd1_block
from test_merge_api import small_model

from merge_core.api import plan_merge
from merge_core.report import applied_report
from merge_core.io.sources import DictSource

REPO = Path(__file__).resolve().parents[2]


def test_report_counts_blocks_rules_and_exclusions(sd1_keys):
    a, b = small_model(sd1_keys, 1), small_model(sd1_keys, 2)
    plan = plan_merge({"a": DictSource(a), "b": DictSource(b)}, "Weight sum", blocks_alpha="FLAT_25",
                      elemental="OUT03-OUT05:attn2:0.5\nIN11:in_layers:1\nIN11::0.3",  # rule 2: all overridden
                      include_exclude="exclude: VAE")
    text = applied_report(plan, per_key=True)
    lines = text.splitlines()
    out04 = next(line for line in lines if line.startswith("OUT04 "))
    n_attn2 = sum(1 for k in sd1_keys if sd1_block(k) == "OUT04" and "attn2" in k)
    n_out04 = sum(1 for k in sd1_keys if sd1_block(k) == "OUT04" and ("weight" in k or "bias" in k))
    assert out04.split()[1:] == ["0.2500", "-", str(n_out04), "0", str(n_attn2)]
    rule = next(line for line in lines if line.startswith("1 "))
    assert rule.split()[-1] == str(3 * n_attn2)  # OUT03-OUT05 have the same transformer layout
    assert "1 rule(s) matched no key, e.g. 'IN11:in_layers:1'" in text
    n_vae = sum(1 for k in sd1_keys if k.startswith("first_stage_model."))
    assert f"{n_vae} excluded" in text
    assert "model.diffusion_model.out.2.weight" in text  # per-key rows
    assert "alpha 0.5 not used: blocks_alpha gives every block's alpha" in text


def test_report_says_nothing_of_an_override_without_block_weights(sd1_keys):
    a, b = small_model(sd1_keys, 1), small_model(sd1_keys, 2)
    text = applied_report(plan_merge({"a": DictSource(a), "b": DictSource(b)}, "Weight sum", alpha=0.3))
    assert "not used" not in text


def test_cli_report(tmp_path, sd1_keys):
    for name, seed in (("a", 1), ("b", 2)):
        save_file(small_model(sd1_keys, seed), tmp_path / f"{name}.safetensors")
    res = subprocess.run([sys.executable, "-m", "merge_core", "merge", str(tmp_path / "a.safetensors"),
                          str(tmp_path / "b.safetensors"), "--blocks", "GRAD_V", "--report", "blocks", "-q",
                          "-o", str(tmp_path / "o.safetensors")], cwd=REPO, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "M00" in res.stdout and "by elemental" in res.stdout


def test_report_does_not_call_the_scalar_unused_under_named_block_weights(sd1_keys):
    a, b = small_model(sd1_keys, 1), small_model(sd1_keys, 2)
    text = applied_report(plan_merge({"a": DictSource(a), "b": DictSource(b)}, "Weight sum", alpha=0.3,
                                     blocks_alpha="OUT11=1"))
    assert "not used" not in text
    assert next(line for line in text.splitlines() if line.startswith("IN00 ")).split()[1] == "0.3000"
