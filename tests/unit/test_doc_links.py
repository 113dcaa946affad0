"""The README and docs/ stay navigable: every relative link (and #section) resolves, code citations of the form
docs/<page>.md#<section> name a real section, lines stay readable, and the README stays a five-minute read."""
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)|<img [^>]*src=\"([^\"]+)\"")
CITATION = re.compile(r"docs/([a-z0-9_-]+\.md)#([a-z0-9_-]+)")
README_MAX_WORDS = 1500
MAX_LINE = 300


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation (code and emphasis marks too) dropped, spaces to
    hyphens; underscores inside words stay."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    found = set()
    fenced = False
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            fenced = not fenced
        match = None if fenced else re.match(r"^#{1,6} (.+)$", line)
        if match:
            base = slug(match.group(1))
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
    return found


def relative_links(page: Path) -> list[str]:
    text = re.sub(r"^```.*?^```", "", page.read_text(encoding="utf-8"), flags=re.M | re.S)
    targets = [a or b for a, b in LINK.findall(text)]
    return [t for t in targets if not re.match(r"^[a-z]+:", t)]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve_to_a_file_and_a_section(page):
    broken = []
    for target in relative_links(page):
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: no such file")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target}: no section '{anchor}' in {file.relative_to(REPO)}")
    assert not broken, broken


def test_code_citations_name_a_section_of_docs():
    """Comments and tests cite docs/<page>.md#<section>; a renamed heading would leave them pointing nowhere."""
    broken = []
    for folder in ("merge_core", "nodes", "tests", "web/js"):
        for source in (REPO / folder).rglob("*"):
            if source.suffix not in {".py", ".js", ".c"} or "node_modules" in source.parts:
                continue
            for page, anchor in CITATION.findall(source.read_text(encoding="utf-8", errors="replace")):
                doc = REPO / "docs" / page
                if not doc.exists() or anchor not in anchors(doc):
                    broken.append(f"{source.relative_to(REPO)}: docs/{page}#{anchor}")
    assert not broken, sorted(set(broken))


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_lines_are_readable(page):
    long = [(n, len(line)) for n, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1)
            if len(line) > MAX_LINE]
    assert not long, f"lines over {MAX_LINE} characters (line, length): {long}"


def test_readme_is_a_five_minute_read():
    """The README says what the pack is, how to start and where the rest is; details belong in docs/."""
    words = len((REPO / "README.md").read_text(encoding="utf-8").split())
    assert words <= README_MAX_WORDS, f"README.md has {words} words; move details into docs/"
