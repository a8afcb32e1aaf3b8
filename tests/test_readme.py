"""The README is a card and docs/ holds the record: every picture and relative link they show resolves,
the card stays short, and it carries the test command that .ci/run runs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]
TEST_COMMAND = 'pip install -r requirements.txt -e ".[dev]" && HF_HUB_OFFLINE=1 python -m pytest -q'
APP_COMMAND = "pip install -r requirements.txt && python app.py"
MAX_README_LINES = 250

FENCE = re.compile(r"^\s*(```|~~~)")
# [text](target) and ![alt](target); the target ends at the first space (a title may follow) or ")".
MARKDOWN_LINK = re.compile(r"(!?)\[(?:[^\]\\]|\\.)*\]\(\s*<?([^)\s>]+)>?(?:\s+[\"'][^)]*[\"'])?\s*\)")
HTML_IMAGE = re.compile(r"<img\b[^>]*\bsrc\s*=\s*[\"']([^\"']+)[\"']", re.IGNORECASE)
INLINE_CODE = re.compile(r"`[^`]*`")


def prose(text: str) -> str:
    """The page without fenced code blocks and inline code (a link inside code is not a link)."""
    kept, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            kept.append(INLINE_CODE.sub("", line))
    return "\n".join(kept)


def links(page: Path) -> list[tuple[bool, str]]:
    """(is an image, target) for every markdown link and image and every <img src> of a page."""
    text = prose(page.read_text(encoding="utf-8"))
    found = [(bang == "!", target) for bang, target in MARKDOWN_LINK.findall(text)]
    found += [(True, src) for src in HTML_IMAGE.findall(text)]
    return found


def is_external(target: str) -> bool:
    return re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE) is not None or target.startswith("//")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`([^`]*)`", r"\1", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    found = set()
    fenced = False
    for line in page.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        match = None if fenced else re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match:
            base = slug(match.group(1))
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
    return found


def local_targets(kind: str) -> list[tuple[Path, str]]:
    pairs = []
    for page in PAGES:
        for is_image, target in links(page):
            if is_external(target) or (kind == "image") != is_image:
                continue
            pairs.append((page, target))
    return pairs


def test_docs_exist() -> None:
    names = {page.name for page in DOCS}
    assert {"method.md", "training.md", "benchmarks.md", "audit.md", "app.md"} <= names


def test_readme_shows_a_screenshot_of_the_app() -> None:
    assert any(is_image and target.startswith("artifacts/") for is_image, target in links(README))


@pytest.mark.parametrize("page,target", local_targets("image"),
                         ids=lambda value: value.name if isinstance(value, Path) else value)
def test_image_exists(page: Path, target: str) -> None:
    assert not target.startswith("#"), f"{page.name}: an image cannot point to an anchor: {target}"
    path = (page.parent / target.split("#")[0].split("?")[0]).resolve()
    assert path.is_file(), f"{page.relative_to(ROOT)}: image {target} is not a file in the repository"
    assert ROOT in path.parents, f"{page.relative_to(ROOT)}: image {target} lies outside the repository"


@pytest.mark.parametrize("page,target", local_targets("link"),
                         ids=lambda value: value.name if isinstance(value, Path) else value)
def test_relative_link_resolves(page: Path, target: str) -> None:
    file_part, _, anchor = target.partition("#")
    path = (page.parent / file_part).resolve() if file_part else page
    assert path.exists(), f"{page.relative_to(ROOT)}: link {target} points to nothing in the repository"
    assert path == ROOT or ROOT in path.parents, f"{page.relative_to(ROOT)}: link {target} leaves the repository"
    if anchor and path.suffix == ".md":
        assert anchor in anchors(path), f"{page.relative_to(ROOT)}: link {target}: no heading #{anchor} there"


def test_every_page_is_linked_from_the_readme() -> None:
    linked = {(README.parent / target.partition("#")[0]).resolve()
              for is_image, target in links(README) if not is_image and not is_external(target)}
    assert {page.resolve() for page in DOCS} <= linked


def test_readme_is_a_card() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines; at most {MAX_README_LINES}"


def test_readme_keeps_the_space_front_matter() -> None:
    text = README.read_text(encoding="utf-8")
    assert text.startswith("---\n")
    front = text.split("---\n", 2)[1]
    for key in ("sdk: gradio", "app_file: app.py", "python_version:"):
        assert key in front


def test_readme_has_the_two_commands() -> None:
    text = README.read_text(encoding="utf-8")
    assert TEST_COMMAND in text
    assert APP_COMMAND in text


def test_ci_runs_the_readme_test_command() -> None:
    ci = ROOT / ".ci" / "run"
    assert TEST_COMMAND in ci.read_text(encoding="utf-8").splitlines()


def test_readme_headline_table_reads_in_a_minute() -> None:
    """At most 10 rows, each one line of three cells: what, the figure, the link to its table."""
    text = README.read_text(encoding="utf-8")
    section = text.split("## Headline figures", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")][2:]  # less the header and its rule
    assert 1 <= len(rows) <= 10, f"{len(rows)} rows in the headline table"
    for row in rows:
        cells = [cell.strip() for cell in row.strip("|").split(" | ")]
        assert len(cells) == 3 and all(cells), row
        assert re.search(r"\]\([^)]+\)", cells[2]), f"no link in the last cell: {row}"
