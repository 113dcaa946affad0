"""The README's node table lists every node the pack registers, once, under its menu name, and no other."""
import asyncio
import re
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def _registered() -> dict[str, str]:
    import merge_suite
    extension = asyncio.run(merge_suite.comfy_entrypoint())
    schemas = [cls.define_schema() for cls in asyncio.run(extension.get_node_list())]
    return {schema.node_id: schema.display_name for schema in schemas}


def _readme_rows() -> list[tuple[str, str]]:
    """(name, node id) of each row of the node table: | [name](docs/...) | `MergeSuite_X` | ... |."""
    return re.findall(r"^\| \[([^\]]+)\]\([^)]+\) \| `(MergeSuite_\w+)` \|", README.read_text(encoding="utf-8"), re.M)


def test_readme_node_table_matches_the_registered_nodes():
    registered = _registered()
    rows = _readme_rows()
    ids = [node_id for _, node_id in rows]
    assert sorted(ids) == sorted(set(ids)), "a node listed twice"
    assert set(ids) == set(registered), {"missing": set(registered) - set(ids), "unknown": set(ids) - set(registered)}
    for name, node_id in rows:  # the menu name, or its start before a parenthesised note
        assert registered[node_id].startswith(name), (node_id, name, registered[node_id])
