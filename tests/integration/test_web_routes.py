"""The web extension's HTTP routes (nodes/routes.py): the browser sees merge_core's own answers."""
import asyncio
import gzip
import json
import time
from pathlib import Path

import pytest

from merge_suite.merge_core.architectures import SD1, SD3, SDXL
from merge_suite.merge_core.blocks.weights import SDXL_FROM_26
from merge_suite.merge_core.blocks.elemental import parse_elemental
from merge_suite.merge_core.blocks.presets import presets
from merge_suite.nodes import routes

REPO = Path(__file__).resolve().parents[2]


def test_editor_data_is_the_python_side_data():
    data = routes.editor_data()
    assert data["layouts"]["sd1"]["blocks"] == list(SD1.blocks)
    assert data["layouts"]["sdxl"]["blocks"] == list(SDXL.blocks)
    assert data["presets"] == {k: list(v) for k, v in presets().items()}
    for layout in data["layouts"].values():
        grouped = [b for g in ("BASE", "IN", "MID", "OUT") for b in layout["groups"][g]]
        assert grouped == layout["blocks"], "groups partition the blocks in order"
        assert layout["groups"]["MID"] == ["M00"]


def test_block_weights_are_parsed_as_the_node_parses_them():
    grad_v = routes.check_block_weights("GRAD_V")
    assert grad_v["ok"] and grad_v["layout"] == "sd1" and grad_v["preset"] == "GRAD_V"
    assert grad_v["values"] == list(presets()["GRAD_V"])
    xl = routes.check_block_weights("GRAD_V", "sdxl")
    assert xl["values"] == [presets()["GRAD_V"][i] for i in SDXL_FROM_26]
    twenty = routes.check_block_weights(",".join(str(i / 20) for i in range(20)))
    assert twenty["layout"] == "sdxl" and twenty["values"] == [i / 20 for i in range(20)]
    assert routes.check_block_weights("  ")["empty"]


@pytest.mark.parametrize("text, layout, expect", [
    ("0.5,0.5,junk", "auto", "value #3 'junk' is not a number"),
    ("0.5,0.5", "auto", "has 2 values"),
    (",".join(["0.1"] * 20), "sd1", "has 20 values"),
    ("GRADV", "auto", "neither a preset name"),
])
def test_bad_block_weights_give_the_nodes_message(text, layout, expect):
    answer = routes.check_block_weights(text, layout)
    assert not answer["ok"] and expect in answer["error"] and answer["fix"]
    if text == "0.5,0.5":
        assert "26" in answer["fix"] and "20" in answer["fix"]


@pytest.mark.parametrize("text, bad", [
    ("OUT03-OUT05:attn2:0.5\nIN99:attn:1", "IN99:attn:1"),
    ("OUT03::1,,OUT04:attn2", "OUT04:attn2"),
    ("OUT03::1\r\nOUT04:ff:x\r\n", "OUT04:ff:x"),
    ("IN01:attn:1, NOT :ff:0", "NOT :ff:0"),
])
def test_elemental_errors_carry_the_span_of_the_bad_entry(text, bad):
    answer = routes.check_elemental(text, "sd1")
    assert not answer["ok"]
    assert text[answer["start"]:answer["end"]].strip() == bad
    assert f"entry #{answer['entry']}" in answer["error"]


def test_valid_elemental_counts_rules_per_layout():
    assert routes.check_elemental("OUT03-OUT05:attn2:0.5\nIN01::1", "sd1") == {"ok": True, "rules": 2,
                                                                               "layout": "sd1"}
    assert not routes.check_elemental("OUT10::1", "sdxl")["ok"]  # SDXL has OUT00-OUT08


@pytest.mark.parametrize("layout, arch, block", [("sd1", SD1, "OUT04"), ("sdxl", SDXL, "IN04"), ("sd1", SD1, "M00")])
def test_listed_elements_match_keys_of_that_block(layout, arch, block):
    elements = routes.block_elements(layout, block)["elements"]
    assert elements and len(set(elements)) == len(elements)
    with gzip.open(REPO / "merge_core" / "architectures" / "keysets" / f"{layout}.json.gz") as f:
        keys = [k for k in json.loads(f.read()) if arch.block_of(k) == block]
    for element in elements:
        rules = parse_elemental(f"{block}:{element}:0.5", arch)
        assert any(rules[0].matches(k, block) for k in keys), element
    assert not routes.block_elements(layout, "NOPE")["ok"]


def test_routes_answer_over_http():
    from aiohttp import web
    from aiohttp.test_utils import TestClient, TestServer

    async def scenario():
        table = web.RouteTableDef()
        routes.register(table)
        app = web.Application()
        app.add_routes(table)
        async with TestClient(TestServer(app)) as client:
            data = await (await client.get("/merge_suite/editor_data")).json()
            checked = await (await client.post("/merge_suite/check/block_weights",
                                               json={"text": "FLAT_25", "layout": "auto"})).json()
            bad = await (await client.post("/merge_suite/check/elemental", json={"text": "OUT03:x"})).json()
            elements = await (await client.get("/merge_suite/elements?layout=sdxl&block=M00")).json()
        return data, checked, bad, elements

    data, checked, bad, elements = asyncio.run(scenario())
    assert len(data["presets"]) == len(presets())
    assert checked["values"] == list(presets()["FLAT_25"])
    assert bad["entry"] == 1 and bad["start"] == 0 and bad["end"] == 7
    assert elements["elements"]


def test_route_bodies_are_typed():
    """Malformed JSON and wrong types are a BadRequest (answered 400), never a server exception."""
    assert routes.text_fields(b'{"text": "GRAD_V"}', "auto") == ("GRAD_V", "auto")
    for body in (b"{", b"[1]", b'{"text": 1}', b'{"text": "x", "layout": 3}', b"[" * 100000):
        with pytest.raises(routes.BadRequest):
            routes.text_fields(body, "auto")


@pytest.mark.parametrize("keyset, name, joint", [("sd3-medium", "sd3:24", 24), ("sd35-medium", "sd3:24", 24),
                                                 ("sd35-large", "sd3:38", 38)])
def test_a_run_reports_its_models_layout_and_the_editor_gets_that_layout(keyset, name, joint):
    """SD3-medium and SD3.5-medium have 24 joint blocks, SD3.5-large 38: the layout a run reports (what the
    node parsed against) is sized by the model, and the routes answer with that layout, not the full-size one."""
    with gzip.open(REPO / "merge_core" / "architectures" / "keysets" / f"{keyset}.json.gz") as f:
        arch = SD3.sized(json.loads(f.read()), bare=True)
    assert routes.sized_name(arch) == name
    ids = ["BASE", "IN", *(f"J{i:02d}" for i in range(joint)), "OUT"]
    layout = routes.family_layout(name)
    assert layout["ok"] and layout["blocks"] == ids and layout["groups"]["J"] == ids[2:-1]
    assert layout["layout"] == f"BASE, IN, J00-J{joint - 1:02d}, OUT"
    listed = routes.check_block_weights(",".join(["0.5"] * len(ids)), name)
    assert listed["ok"] and listed["layout"] == name and listed["info"]["blocks"] == ids
    assert routes.check_block_weights("", name) == {"ok": True, "empty": True, "layout": name, "info": listed["info"]}
    if joint == 24:  # the full-size list and ids past the model's last block are refused, as the node refuses them
        assert not routes.check_block_weights(",".join(["0.5"] * 41), name)["ok"]
        assert "J30" in routes.check_block_weights("J30=1", name)["error"]
    assert "info" not in routes.check_block_weights("J30=1", "sd3")  # full size: in editor_data already


def test_sized_layout_names_of_other_families_and_bad_names():
    assert routes.sized_name(SD1) is None  # SD layouts are not sized: the editor's SD behaviour is unchanged
    flux = routes.family_layout("flux1:2,3")
    assert flux["layout"] == "CLIP, T5, IN, D00-D01, S00-S02, OUT" and flux["groups"]["BASE"] == ["CLIP", "T5"]
    assert routes.family_layout("wan:30,0")["layout"] == "BASE, IN, B00-B29, OUT"
    for bad in ("sd3:", "sd3:x", "sd3:24,1", "sd3:-1", "sd3:1000", "sd3:２", "sd1:3", "nope:1", "flux1:19"):
        answer = routes.family_layout(bad)
        assert not answer["ok"] and f"unknown layout '{bad}'" in answer["error"] and "sd3:24" in answer["error"]


def test_merge_nodes_send_the_layout_they_used(tiny):
    """The merge nodes' ui carries the sized layout (the browser test checks the editor follows it)."""
    import tiny_families
    from merge_suite.nodes.merge import ModelMerge
    a, b = (tiny_families.build_model("sd3", seed) for seed in (1, 2))
    ui = ModelMerge.execute(model_a=a, model_b=b, mode="Weight sum", alpha=0.5, beta=0.0).ui
    assert ui["merge_suite_layout"] == ["sd3:2"] and ui["text"][0].startswith("SD3/SD3.5 - ")
    sd = ModelMerge.execute(model_a=tiny("model", "sd1", 1), model_b=tiny("model", "sd1", 2), mode="Weight sum",
                            alpha=0.5, beta=0.0).ui
    assert "merge_suite_layout" not in sd


def test_check_routes_bound_their_work_by_the_layouts_real_size():
    """A 1 MB body on layout flux1:999,999 took 17 s of CPU per request. A sized layout may give
    each container at most twice the family's full-size count, a text at most MAX_TEXT_CHARS characters."""
    assert routes.family_layout("flux1:38,76")["ok"] and routes.family_layout("wan:40,8")["ok"]  # VACE blocks
    for bad in ("flux1:999,999", "flux1:39,38", "flux1:19,77", "qwen_image:121", "wan:40,17"):
        assert not routes.family_layout(bad)["ok"], bad
        with pytest.raises(routes.BadRequest, match=f"'layout' '{bad}' is not a layout"):
            routes.text_fields(json.dumps({"text": "ALL=0.5", "layout": bad}).encode(), "auto")
    assert routes.text_fields(json.dumps({"text": "ALL=0.5", "layout": "not-sized"}).encode(), "auto")[1] == "not-sized"
    longest = "ALL=0.5, " * (routes.MAX_TEXT_CHARS // 9)
    assert routes.text_fields(json.dumps({"text": longest}).encode(), "auto")[0] == longest
    with pytest.raises(routes.BadRequest, match="at most 16384 are checked"):
        routes.text_fields(json.dumps({"text": longest + "x" * 10}).encode(), "auto")
    assert len(json.dumps({"text": "\u00e9" * routes.MAX_TEXT_CHARS, "layout": "flux1:38,76"})) <= routes.MAX_BODY_BYTES
    start = time.perf_counter()
    for layout in ("auto", "flux1:38,76", "qwen_image:120", "sdxl"):
        for text in (longest, ",".join(["0.5"] * (routes.MAX_TEXT_CHARS // 4)), "D00-S37=0.5, " * 1200):
            routes.check_block_weights(text[:routes.MAX_TEXT_CHARS], layout)
    assert time.perf_counter() - start < 10  # 12 of the largest checks; one took 17 s before
