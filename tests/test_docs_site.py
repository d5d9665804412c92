"""The documentation site's navigation (mkdocs.yml) and its pages (docs/) agree.

`mkdocs build --strict` in `make test` fails on the same faults (mkdocs.yml sets
`validation.nav.omitted_files: warn`); this test says which page, from pytest alone.
"""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def nav_pages(entries: list) -> list[str]:
    """Every page path named in a mkdocs `nav` tree (sections nest lists of {title: page})."""
    pages: list[str] = []
    for entry in entries:
        value = next(iter(entry.values())) if isinstance(entry, dict) else entry
        pages += nav_pages(value) if isinstance(value, list) else [value]
    return pages


def site_config() -> dict:
    return yaml.safe_load((ROOT / "mkdocs.yml").read_text())


def test_every_page_is_in_the_nav_and_every_nav_entry_exists() -> None:
    config = site_config()
    nav = nav_pages(config["nav"])
    on_disk = sorted(str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md"))
    assert len(nav) == len(set(nav)), "a page is listed twice in mkdocs.yml's nav"
    assert sorted(set(on_disk) - set(nav)) == [], "pages under docs/ missing from mkdocs.yml's nav"
    assert sorted(set(nav) - set(on_disk)) == [], "nav entries in mkdocs.yml without a page under docs/"


def test_the_site_builds_offline_into_build_and_strictly() -> None:
    config = site_config()
    assert config["docs_dir"] == "docs" and config["site_dir"] == "build/site"
    assert config["theme"]["name"] == "material" and config["theme"]["font"] is False  # no web fonts fetched
    assert config["validation"]["nav"]["omitted_files"] == "warn"  # so --strict fails on a page left out
    assert config["validation"]["links"]["anchors"] == "warn"  # and on a link to a missing heading
    makefile = (ROOT / "Makefile").read_text()
    test_target = makefile.split("\ntest:", 1)[1].split("\n\n", 1)[0]
    assert "mkdocs build --strict" in test_target
