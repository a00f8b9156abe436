"""The README stays a front page: short, readable lines, and every relative link leads somewhere."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
# Pages whose relative links are checked: the front page and the results page it sends readers to.
LINKED_PAGES = [README, ROOT / "docs" / "results" / "README.md"]

FENCE = re.compile(r"^```.*?^```", re.S | re.M)
CODE_SPAN = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"\[[^\]\n]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*$", re.M)


def _prose(text: str) -> str:
    """The text without code blocks and code spans, where brackets are not links."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def _anchors(md: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation other than '-' and '_' dropped, spaces to '-'."""
    anchors, seen = set(), {}
    for title in HEADING.findall(FENCE.sub("", md.read_text(encoding="utf-8"))):  # "# ..." in code is no heading
        slug = re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        anchors.add(slug if n == 0 else f"{slug}-{n}")
    return anchors


def _relative_links(page: Path) -> list[str]:
    links = LINK.findall(_prose(page.read_text(encoding="utf-8")))
    return [t for t in links if not re.match(r"[a-z][a-z0-9+.-]*:", t)]  # skip https:, mailto:


def test_readme_is_short_with_readable_lines():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; details belong in docs/"
    long = [(i, len(line)) for i, line in enumerate(lines, 1) if len(line) > 400]
    assert not long, f"README.md lines over 400 characters (line, length): {long}"


def test_readme_starts_with_the_two_setup_commands():
    head = "\n".join(README.read_text(encoding="utf-8").splitlines()[:20])
    assert "make demo" in head and "make test" in head


@pytest.mark.parametrize("page", LINKED_PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    broken = []
    for target in _relative_links(page):
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(f"{target} (no heading with that anchor)")
    assert not broken, f"{page.relative_to(ROOT)}: broken links: {broken}"


def test_the_anchor_rule_matches_githubs():
    # Anchors as GitHub renders them for headings of this repository (benchmarks/README.md).
    md = ROOT / "benchmarks" / "README.md"
    assert {"gpu-figures-nvidia-h200-2026-11-30", "cli-start-up-benchmarkscli_startuppy"} <= _anchors(md)
