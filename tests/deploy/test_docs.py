"""The docs cannot rot: the site builds strictly, the generated reference pages are current, every
link from the README and every `docs/<page>.md#<anchor>` named in the code resolves, nothing names a
README section by its title, the README fits on a screen, and every heading the README had before
docs/ existed maps to a page (docs/readme-map.yaml). Each check is also shown failing."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest
import yaml

import tools.docs
from tools.protos import ROOT

DOCS = ROOT / "docs"
MKDOCS = [sys.executable, "-m", "mkdocs"]
# What names the docs from code: a page by its path from the root, maybe with an anchor.
DOCS_REFERENCE = re.compile(r"\bdocs/((?:[\w-]+/)*[\w-]+\.md)(?:#([\w-]+))?")
# What named a README section by its title: the word, then a quoted title close by, or "... section".
SECTION_BY_TITLE = re.compile("READ" + r"ME[^\n\"]{0,24}\"[A-Z][^\"\n]*\"|READ" + r"ME's [\w ]*(?:section|notes)\b")
# Where code and tests live (what a comment or test could point from).
CODE = ("services", "cutout", "tests", "bench", "tools", "k8s", "protos", "clients", "fuzz")
CODE_FILES = ("Dockerfile", "Makefile", "mkdocs.yml", "pyproject.toml", ".ci/run")
# The README before it was cut to a screen (issue #31), when git history is at hand.
README_BEFORE = "1b4da82"


def _build(config: Path, site: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    return subprocess.run(
        [*MKDOCS, "build", "--strict", "-f", str(config), "-d", str(site)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    built = _build(ROOT / "mkdocs.yml", out)
    assert built.returncode == 0, built.stdout + built.stderr
    return out


def _html(site: Path, page: str) -> Path:
    """Where mkdocs (directory URLs) writes docs/<page>."""
    stem = page.removesuffix(".md")
    if stem == "index" or stem.endswith("/index"):
        return site / f"{stem}.html"
    return site / stem / "index.html"


def _ids(html: Path) -> set[str]:
    return set(re.findall(r'\sid="([^"]+)"', html.read_text()))


def broken(site: Path, page: str, anchor: str | None) -> str | None:
    """Why docs/<page>#<anchor> does not resolve in the built site, or None."""
    if not (DOCS / page).is_file():
        return f"docs/{page} does not exist"
    if not page.endswith(".md"):
        return None if (site / page).is_file() else f"docs/{page} is not copied into the built site"
    html = _html(site, page)
    if not html.is_file():
        return f"docs/{page} is not in the built site (not in mkdocs.yml's nav?)"
    if anchor and anchor not in _ids(html):
        return f"docs/{page} has no section #{anchor}"
    return None


def readme_links(text: str) -> list[tuple[str, str | None]]:
    """Every link from the README into docs/: (page, anchor)."""
    links = re.findall(r"\]\(docs/([^)#\s]+)(?:#([^)\s]+))?\)", text)
    return [(page, anchor or None) for page, anchor in links]


def bad_references(paths: list[Path], site: Path) -> list[str]:
    """README sections named by title, and docs pages or anchors that do not exist, in `paths`."""
    problems = []
    for path in paths:
        try:
            text = path.read_text()
        except (UnicodeDecodeError, IsADirectoryError):
            continue
        where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
        for line_number, line in enumerate(text.splitlines(), 1):
            for match in SECTION_BY_TITLE.finditer(line):
                problems.append(f"{where}:{line_number}: names a README section: {match.group(0)!r}")
            for page, anchor in DOCS_REFERENCE.findall(line):
                reason = broken(site, page, anchor or None)
                if reason:
                    problems.append(f"{where}:{line_number}: {reason}")
    return problems


def _code_files() -> list[Path]:
    tracked = subprocess.run(
        ["git", "ls-files", *CODE, *CODE_FILES], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    return [ROOT / name for name in tracked if (ROOT / name).is_file()]


def _headings(markdown: str) -> list[str]:
    """ATX headings outside fenced code."""
    headings, fenced = [], False
    for line in markdown.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced and (match := re.match(r"#{1,6} (.+)", line)):
            headings.append(match.group(1).strip())
    return headings


# --- the checks ------------------------------------------------------------------------------


def test_the_site_builds_strictly(site: Path):
    assert (site / "index.html").is_file()


def test_the_reference_pages_are_what_the_code_gives():
    assert tools.docs.stale_pages() == [], "run `python -m tools.docs`"


def test_the_readme_fits_on_a_screen_and_opens_with_the_before_after_picture():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 200
    first_screen = "\n".join(lines[:15])
    picture = re.search(r"!\[[^\]]*\]\((docs/images/[^)]+\.png)\)", first_screen)
    assert picture, "the README's first screen shows no before/after picture"
    assert (ROOT / picture.group(1)).is_file()


def test_every_link_from_the_readme_into_the_docs_resolves(site: Path):
    links = readme_links((ROOT / "README.md").read_text())
    assert len(links) > 20
    assert [reason for page, anchor in links if (reason := broken(site, page, anchor))] == []


def test_code_names_docs_pages_that_exist_and_no_readme_section(site: Path):
    files = _code_files()
    assert any(DOCS_REFERENCE.search(path.read_text(errors="replace")) for path in files)
    assert bad_references(files, site) == []


def test_every_heading_the_readme_had_maps_to_a_page(site: Path):
    mapping = yaml.safe_load((DOCS / "readme-map.yaml").read_text())
    assert [reason for target in mapping.values() if (reason := broken(site, *_split(target)))] == []
    before = subprocess.run(
        ["git", "show", f"{README_BEFORE}:README.md"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    if before.returncode != 0:
        pytest.skip(f"commit {README_BEFORE} is not in this clone's history; the map's targets were checked")
    assert sorted(set(_headings(before.stdout)) - set(mapping)) == []


def test_the_benchmark_page_shows_the_plots_make_bench_writes():
    page = (DOCS / "benchmarks.md").read_text()
    for name in ("throughput", "latency", "references"):
        assert f"](images/bench/{name}.png)" in page
        assert (DOCS / "images" / "bench" / f"{name}.png").is_file()


def defaults_that_differ(text: str) -> list[str]:
    """`NAME` (default) quoted in a prose page, against the settings classes' defaults.

    A paragraph that opens with a service's name and prefix, "Gateway (`CUTOUT_GATEWAY_`): ...",
    quotes that service's settings; any other quotes a setting some service has. Values with a
    unit after them (50 MiB) are left to the reader.
    """
    defaults: dict[str, dict[str, float]] = {}
    for title, cls in tools.docs._settings_classes():
        for name, field in cls.model_fields.items():
            value = field.get_default(call_default_factory=True)
            if isinstance(value, int | float | Decimal) and not isinstance(value, bool):
                defaults.setdefault(name.upper(), {})[title] = float(value)
    wrong = []
    for paragraph in text.split("\n\n"):
        scope = re.match(r"(\w+) \(`CUTOUT_\w+_`\)", paragraph)
        quoted = re.findall(r"`(?:<PREFIX>)?([A-Z][A-Z0-9_]+)` \((-?\d+(?:\.\d+)?)(?=[),:;])", paragraph)
        for name, value in quoted:
            known = defaults.get(name, {})
            if scope and scope.group(1) in known:
                known = {scope.group(1): known[scope.group(1)]}
            if known and float(value) not in known.values():
                wrong.append(f"{name} ({value}): the code says {known}")
    return wrong


def test_the_settings_page_quotes_the_defaults_the_code_has():
    page = (DOCS / "operations" / "settings.md").read_text()
    assert len(re.findall(r"` \(\d", page)) > 50
    assert defaults_that_differ(page) == []
    assert defaults_that_differ("Gateway (`CUTOUT_GATEWAY_`): `WORK_IN_FLIGHT` (64: slots)") == [
        "WORK_IN_FLIGHT (64): the code says {'Gateway': 32.0}"
    ]


def test_each_section_make_bench_writes_is_in_one_page():
    pages = sorted(DOCS.rglob("*.md"))
    for section in ("bench", "models", "erase-bench"):
        holding = [p for p in pages if f"<!-- {section}:start -->" in p.read_text()]
        assert len(holding) == 1 and f"<!-- {section}:end -->" in holding[0].read_text(), (section, holding)


def test_a_section_is_written_where_its_marks_are(tmp_path: Path):
    (tmp_path / "a.md").write_text("# A\n\n<!-- t:start -->\nold\n<!-- t:end -->\n\nafter\n")
    (tmp_path / "b.md").write_text("# B\n")
    assert tools.docs.replace_section("t", "new\n", tmp_path) == [tmp_path / "a.md"]
    assert (tmp_path / "a.md").read_text() == "# A\n\n<!-- t:start -->\nnew\n<!-- t:end -->\n\nafter\n"
    assert (tmp_path / "b.md").read_text() == "# B\n"


def _split(target: str) -> tuple[str, str | None]:
    page, _, anchor = target.partition("#")
    return page, anchor or None


# --- and each fails when it should -----------------------------------------------------------


@pytest.fixture(scope="module")
def copy_of_the_docs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tree = tmp_path_factory.mktemp("docs-copy")
    shutil.copytree(DOCS, tree / "docs")
    shutil.copy(ROOT / "mkdocs.yml", tree / "mkdocs.yml")
    return tree


@pytest.mark.parametrize(
    "link",
    ["[gone](no-such-page.md)", "[gone](api/index.md#no-such-section)", "![gone](images/no-such-picture.png)"],
)
def test_a_broken_link_fails_the_build(copy_of_the_docs: Path, tmp_path: Path, link: str):
    page = copy_of_the_docs / "docs" / "cli.md"
    original = page.read_text()
    try:
        page.write_text(original + f"\nSee {link}.\n")
        built = _build(copy_of_the_docs / "mkdocs.yml", tmp_path / "site")
    finally:
        page.write_text(original)
    assert built.returncode != 0
    assert "no-such" in built.stdout + built.stderr


def test_a_stale_reference_page_is_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    shutil.copytree(DOCS / "reference", tmp_path / "reference")
    monkeypatch.setattr(tools.docs, "REFERENCE", tmp_path / "reference")
    assert tools.docs.stale_pages() == []
    errors = tmp_path / "reference" / "errors.md"
    errors.write_text(errors.read_text().replace("`OVERLOADED` | `RESOURCE_EXHAUSTED`", "`OVERLOADED` | `ABORTED`"))
    assert tools.docs.stale_pages() == ["docs/reference/errors.md"]


def test_a_reference_to_a_section_that_does_not_exist_is_found(site: Path, tmp_path: Path):
    source = tmp_path / "module.py"
    docs = "do" + "cs/"  # spelt apart, so that this file's own scan does not find them
    lines = {
        f"# see {docs}operations/faults.md#overload": None,
        f"# see {docs}operations/faults.md#no-such-section": "has no section #no-such-section",
        f"# see {docs}operations/no-such-page.md": "does not exist",
        "# measured (" + "READ" + 'ME, "Overload")': "names a README section",
        "# see the " + "READ" + "ME's benchmark notes": "names a README section",
    }
    source.write_text("\n".join(lines) + "\n")
    problems = bad_references([source], site)
    assert len(problems) == 4
    for line, (text, expected) in enumerate(lines.items(), 1):
        found = [p for p in problems if p.startswith(f"{source}:{line}:")]
        assert (expected is None and not found) or (expected and expected in found[0]), (text, found)


def test_a_readme_link_to_a_missing_anchor_is_found(site: Path):
    docs = "do" + "cs/"
    links = readme_links(f"[x]({docs}api/index.md) [y]({docs}api/index.md#nothing-here) [z]({docs}nope.md)")
    reasons = [broken(site, page, anchor) for page, anchor in links]
    assert reasons[0] is None
    assert "no section #nothing-here" in (reasons[1] or "") and "does not exist" in (reasons[2] or "")
