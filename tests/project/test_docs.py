"""README.md and docs/: every relative link leads to a file of the repository, and the README
stays a page a newcomer reads (the details live in docs/) with a configuration table that is true.

The documentation build (`make docs`, `mkdocs build --strict` in .ci/run) checks more of the same
on the built site: links between pages and their anchors, and that every page is in the nav; these
tests keep the checks that need no build, and the README's own promises."""

import re
from pathlib import Path

import pytest

from call_ledger.settings import Settings
from tests.support.paths import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
# A row of the README's configuration table names one variable, or two as `A` / `B`.
CONFIG_ROW = re.compile(r"^\| `(LEDGER_[A-Z0-9_]+)`(?: / `(LEDGER_[A-Z0-9_]+)`)? \|", re.M)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_leads_to_a_file(page: Path) -> None:
    targets = [t for t in LINK.findall(page.read_text()) if "://" not in t and not t.startswith("mailto:")]
    missing = [t for t in targets if not (page.parent / t).exists()]
    assert not missing, f"{page.name} links to missing files: {missing}"


def test_the_readme_links_every_documentation_page() -> None:
    readme = (ROOT / "README.md").read_text()
    for page in PAGES[1:]:
        assert f"(docs/{page.name})" in readme, f"docs/{page.name} is not reachable from the README"


def test_the_readme_is_a_page_read_in_ten_minutes() -> None:
    lines = (ROOT / "README.md").read_text().count("\n")
    assert lines <= 300, f"README.md has {lines} lines: move the details to a page of docs/"


def test_the_configuration_table_names_every_setting_and_only_settings() -> None:
    rows = {name for pair in CONFIG_ROW.findall((ROOT / "README.md").read_text()) for name in pair if name}
    settings = {f"LEDGER_{field.upper()}" for field in Settings.model_fields}
    assert not settings - rows, f"settings missing from the README's configuration table: {settings - rows}"
    assert not rows - settings, f"README rows that are no setting: {rows - settings}"
