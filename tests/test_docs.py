"""The documentation holds together: every relative link of README.md and docs/ reaches a file, and a heading
there when it names one; every block a bench script writes has its markers in docs/BENCHMARKS.md, the one file
the scripts write, and nowhere else."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^(```|~~~).*?^\1\s*$", re.M | re.S)
CODE = re.compile(r"`[^`\n]*`")
# block name -> the bench script that writes it (its marker says so too)
BLOCKS = {"bench": "run_all.py", "learning": "learning.py", "learning-maps": "learning.py", "map-cost": "map_cost.py"}


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every heading's anchor in a Markdown text (a repeated heading gets -1, -2, ... as on GitHub)."""
    seen: dict[str, int] = {}
    found = set()
    for line in FENCE.sub("", text).splitlines():
        heading = re.match(r"#{1,6}\s+(.*)", line)
        if heading:
            base = slug(heading.group(1))
            found.add(base if base not in seen else f"{base}-{seen[base]}")
            seen[base] = seen.get(base, 0) + 1
    return found


def broken_links(page: Path) -> list[str]:
    """The relative links of `page` whose file is missing, or whose #anchor is no heading of that file."""
    broken = []
    for target in LINK.findall(CODE.sub("", FENCE.sub("", page.read_text()))):
        if re.match(r"[a-z]+:", target):
            continue  # http:, https:, mailto:, file:
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target}: no file {dest}")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest.read_text()):
            broken.append(f"{target}: no heading #{anchor} in {dest.name}")
    return broken


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_link_reaches_its_file_and_heading(page):
    assert broken_links(page) == []


def test_a_broken_link_or_anchor_is_found(tmp_path):
    (tmp_path / "OTHER.md").write_text("# Other\n\n## A section (here)\n\n```sh\n# not a heading\n```\n")
    page = tmp_path / "PAGE.md"
    page.write_text("[ok](OTHER.md#a-section-here) [`code`](OTHER.md) [web](https://example.org/x#y)\n"
                    "[gone](MISSING.md) [bad anchor](OTHER.md#not-a-heading) [own](#page) [own bad](#nope)\n"
                    "`[in code](MISSING2.md)`\n\n# Page\n")
    assert broken_links(page) == [f"MISSING.md: no file {tmp_path / 'MISSING.md'}",
                                  "OTHER.md#not-a-heading: no heading #not-a-heading in OTHER.md",
                                  "#nope: no heading #nope in PAGE.md"]


def test_the_readme_is_short():
    """A newcomer reads it in five minutes; reference goes into docs/."""
    assert len((ROOT / "README.md").read_text().splitlines()) <= 300


def test_generated_blocks_live_in_benchmarks_md_only():
    text = (ROOT / "docs" / "BENCHMARKS.md").read_text()
    for name, script in BLOCKS.items():
        begin, end = f"<!-- {name}:begin (written by bench/{script}) -->", f"<!-- {name}:end -->"
        assert text.count(begin) == 1 and text.count(end) == 1, f"docs/BENCHMARKS.md: the {name} block's markers"
        assert text.index(begin) < text.index(end)
        source = (ROOT / "bench" / script).read_text()
        assert "write_doc_block(" in source and f'"{name}"' in source, f"bench/{script} no longer writes {name}"
    others = [ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *(ROOT / "bench").glob("*.md")]
    for page in others:
        if page.name != "BENCHMARKS.md":
            assert ":begin (written by bench/" not in page.read_text(), f"{page}: a generated block outside BENCHMARKS.md"


@pytest.fixture
def convert_read(monkeypatch, tmp_path):
    """bench/convert_read.py with its BENCHMARKS pointing at a copy of docs/BENCHMARKS.md in tmp_path."""
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    sys.modules.pop("convert_read", None)
    import convert_read

    copy = tmp_path / "BENCHMARKS.md"
    copy.write_text((ROOT / "docs" / "BENCHMARKS.md").read_text())
    monkeypatch.setattr(convert_read, "BENCHMARKS", copy)
    yield convert_read
    sys.modules.pop("convert_read", None)


def test_write_doc_block_replaces_only_its_block(convert_read):
    page = convert_read.BENCHMARKS
    before = page.read_text()
    for name, script in BLOCKS.items():
        assert convert_read.write_doc_block(name, script, f"new {name} figures") is True
    after = page.read_text()
    for name, script in BLOCKS.items():
        begin = f"<!-- {name}:begin (written by bench/{script}) -->"
        assert f"{begin}\nnew {name} figures\n<!-- {name}:end -->" in after
    outside = re.compile(r"<!-- ([\w-]+):begin .*?<!-- \1:end -->", re.S)
    assert outside.sub("", after) == outside.sub("", before)  # the text between the blocks is untouched


def test_write_doc_block_without_markers_writes_nothing(convert_read, capsys):
    page = convert_read.BENCHMARKS
    before = page.read_text()
    assert convert_read.write_doc_block("no-such-block", "run_all.py", "figures") is False
    assert page.read_text() == before
    assert "has no no-such-block block" in capsys.readouterr().out
