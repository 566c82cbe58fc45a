"""Every relative link and image in README.md, CHANGELOG.md and docs/**/*.md points at a file of the repository,
and a link to a heading (``page.md#heading``) at a heading that page has; every ``docs/page.md §Section`` that a
module or test cites names a page and a section that exist. Standard library only: it runs in both venvs and,
without pytest, as ``python3 tests/core/test_doc_links.py``."""
from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Iterator, List, Set, Tuple

REPO = Path(__file__).resolve().parents[2]

_FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
_INLINE_CODE = re.compile(r"`[^`\n]*`")
_MARKDOWN_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REFERENCE_LINK = re.compile(r"^\s*\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$", re.M)
_HTML_LINK = re.compile(r"<(?:img|a|source)\b[^>]*?\b(?:src|href)\s*=\s*[\"']([^\"']+)[\"']", re.I)
_HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$", re.M)
_EXTERNAL = re.compile(r"^(?:[a-z][a-z0-9+.-]*:|//)", re.I)
_CITATION = re.compile(r"\b(docs/[\w./-]*?\.md)(?:\s+§([^\s.,;:)]+(?: [A-Za-z][^\s.,;:)]*)*))?")
_CODE_FOLDERS = ("i4vgen_ext", "scripts", "bench", "tests")


def documents(repo: Path = REPO) -> List[Path]:
    pages = [repo / "README.md", repo / "CHANGELOG.md", *sorted((repo / "docs").rglob("*.md"))]
    return [page for page in pages if page.is_file()]


def _prose(text: str) -> str:
    """The text without fenced code blocks and inline code, where a bracket is code, not a link."""
    return _INLINE_CODE.sub("", _FENCE.sub("", text))


def links(text: str) -> Iterator[str]:
    prose = _prose(text)
    for pattern in (_MARKDOWN_LINK, _REFERENCE_LINK, _HTML_LINK):
        for match in pattern.finditer(prose):
            yield match.group(1)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, markup and punctuation dropped, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading keeps its text
    text = re.sub(r"<[^>]+>", "", text).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> Set[str]:
    found: Set[str] = set()
    for heading in _HEADING.findall(_FENCE.sub("", page.read_text(encoding="utf-8"))):
        base, n = slug(heading), 0
        while (f"{base}-{n}" if n else base) in found:  # GitHub numbers repeated headings
            n += 1
        found.add(f"{base}-{n}" if n else base)
    return found


def broken_links(page: Path, repo: Path = REPO) -> List[Tuple[str, str]]:
    """(link, why) for every relative link of ``page`` that does not resolve."""
    broken = []
    for link in links(page.read_text(encoding="utf-8")):
        if _EXTERNAL.match(link):
            continue
        path, _, anchor = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        if repo.resolve() not in (target, *target.parents):
            broken.append((link, "points outside the repository"))
        elif not target.exists():
            broken.append((link, f"no such file: {target.relative_to(repo.resolve())}"))
        elif anchor and target.suffix == ".md" and anchor not in anchors(target):
            broken.append((link, f"no heading #{anchor} in {target.relative_to(repo.resolve())}"))
    return broken


def section_titles(page: Path) -> Set[str]:
    """Each heading's title without the file it names: "Job" for "## Job (`job.py` and the modules beside it)"."""
    text = _FENCE.sub("", page.read_text(encoding="utf-8"))
    return {re.split(r"\s+\(`", heading, maxsplit=1)[0].strip() for heading in _HEADING.findall(text)}


def broken_citations(source: Path, repo: Path = REPO) -> List[Tuple[str, str]]:
    """(citation, why) for every ``docs/page.md [§Section]`` in ``source`` that names no page or no section."""
    broken = []
    for match in _CITATION.finditer(source.read_text(encoding="utf-8")):
        page, section = repo / match.group(1), match.group(2)
        if not page.is_file():
            broken.append((match.group(0), f"no such file: {match.group(1)}"))
        elif section and not any(section == title or section.startswith(title + " ")
                                 for title in section_titles(page)):
            broken.append((match.group(0), f"no section {section!r} in {match.group(1)}"))
    return broken


def code_files(repo: Path = REPO) -> List[Path]:
    this = Path(__file__).resolve()
    return [path for folder in _CODE_FOLDERS for path in sorted((repo / folder).rglob("*.py"))
            if path.resolve() != this]


def test_the_documents_are_found():
    names = {page.relative_to(REPO).as_posix() for page in documents()}
    assert {"README.md", "docs/README.md"} <= names


def test_every_relative_link_and_image_resolves():
    broken = {page.relative_to(REPO).as_posix(): broken_links(page) for page in documents()}
    assert not {page: found for page, found in broken.items() if found}


def test_every_docs_section_a_module_cites_exists():
    broken = {path.relative_to(REPO).as_posix(): broken_citations(path) for path in code_files()}
    assert not {path: found for path, found in broken.items() if found}


def test_a_citation_of_a_missing_page_or_section_is_found(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "host.md").write_text("# Host\n\n## Job (`job.py`)\n\n## EVS noise (`refine.py`)\n",
                                               encoding="utf-8")
    source = tmp_path / "module.py"
    source.write_text('"""Details: docs/host.md §Job. Noise: docs/host.md §EVS noise and more. See docs/host.md.\n'
                      'Gone: docs/host.md §ControlNet, docs/gone.md §Job, docs/host.md §EVS."""\n', encoding="utf-8")
    found = [citation for citation, _ in broken_citations(source, tmp_path)]
    assert found == ["docs/host.md §ControlNet", "docs/gone.md §Job", "docs/host.md §EVS"]


def test_a_broken_link_a_missing_image_and_a_missing_heading_are_each_found(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "real.md").write_text("# Real page\n\n## Two words\n", encoding="utf-8")
    page = tmp_path / "README.md"
    page.write_text(
        "[ok](docs/real.md) [ok too](docs/real.md#two-words) [web](https://example.com/x.md) [self](#top)\n"
        "# Top\n"
        "[gone](docs/gone.md) ![missing](docs/images/missing.png) [bad anchor](docs/real.md#three-words)\n"
        '<img src="docs/images/also-missing.png" alt="x"> [out](../../etc/passwd)\n'
        "`[not a link](nowhere.md)`\n\n```\n[also not](nowhere.md)\n```\n", encoding="utf-8")
    found = [link for link, _ in broken_links(page, tmp_path)]
    assert found == ["docs/gone.md", "docs/images/missing.png", "docs/real.md#three-words", "../../etc/passwd",
                     "docs/images/also-missing.png"]


def test_heading_anchors_follow_github():
    assert slug("The live WebUI suite (`tests/webui_api/`)") == "the-live-webui-suite-testswebui_api"
    assert slug("EVS refinement (T2I + [T2V] + T2I)") == "evs-refinement-t2i--t2v--t2i"
    assert slug("Your own anchor image (paper §4.5)") == "your-own-anchor-image-paper-45"


def main() -> int:
    failures = {page.relative_to(REPO).as_posix(): broken_links(page) for page in documents()}
    failures.update({path.relative_to(REPO).as_posix(): broken_citations(path) for path in code_files()})
    failures = {page: found for page, found in failures.items() if found}
    for page, found in failures.items():
        for link, why in found:
            print(f"{page}: ({link}) {why}")
    print(f"{len(documents())} documents, {len(code_files())} code files, {sum(map(len, failures.values()))} broken")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
