"""The documentation: the site builds strictly (every page, link, anchor and API entry resolves), and
the README is a landing page whose links all lead somewhere."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)\s]*)?\)")


def nav_pages(nav: list) -> set[str]:
    """Every page file named in an mkdocs ``nav`` (nested lists of ``{title: page or list}``)."""
    pages = set()
    for item in nav:
        for value in item.values() if isinstance(item, dict) else [item]:
            pages |= nav_pages(value) if isinstance(value, list) else {value}
    return pages


def readme_links() -> list[str]:
    return [target for target in LINK.findall((ROOT / "README.md").read_text()) if "://" not in target]


def test_the_readme_is_a_landing_page_whose_links_all_exist():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 250
    links = readme_links()
    assert links, "the README links into the documentation"
    missing = [target for target in links if not (ROOT / target).exists()]
    assert not missing, f"README links to missing files: {missing}"


def test_every_documentation_page_the_readme_links_is_on_the_site():
    config = yaml.load((ROOT / "mkdocs.yml").read_text(), Loader=yaml.BaseLoader)
    on_site = {f"docs/{page}" for page in nav_pages(config["nav"])}
    pages = {target for target in readme_links() if target.startswith("docs/") and target.endswith(".md")}
    assert pages and pages <= on_site, sorted(pages - on_site)


@pytest.mark.slow
@pytest.mark.skipif(not importlib.util.find_spec("mkdocs"), reason="needs the docs extra: pip install -e '.[docs]'")
def test_the_site_builds_strictly_with_the_api_reference(tmp_path):
    site = tmp_path / "site"
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    reference = (site / "reference" / "flow" / "index.html").read_text()
    for name in ("Glow", "TarFlow", "FlowMatching", "check_invertible"):
        assert name in reference, f"{name} missing from the generated API reference"
    assert (site / "tutorials" / "01_toy_2d" / "index.html").is_file()
