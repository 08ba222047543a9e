"""What a release is made of: one version, a changelog that names it, a README that is a
landing page, and a docs site whose every page is in its navigation."""
from __future__ import annotations

import configparser
import json
import re
from pathlib import Path

import pytest

import ranet_edge

ROOT = Path(__file__).resolve().parents[1]


def test_the_version_lives_in_one_place():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    assert cfg["metadata"]["version"] == "attr: ranet_edge.__version__"
    assert json.loads((ROOT / "js" / "package.json").read_text())["version"] == ranet_edge.__version__
    versions = re.findall(r"^## (\d+\.\d+\.\d+)\s*$", (ROOT / "CHANGELOG.md").read_text(), re.M)
    assert versions and versions[0] == ranet_edge.__version__, "the newest CHANGELOG.md section names another version"


def test_the_readme_is_a_landing_page():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 250
    assert "make demo" in text and "make test" in text
    for link in re.findall(r"\]\(((?:docs/|CHANGELOG)[^)#]*)", text):  # every link into the docs resolves
        assert (ROOT / link).is_file(), link


def test_every_docs_page_is_in_the_nav():
    yaml = pytest.importorskip("yaml")
    nav = yaml.safe_load((ROOT / "mkdocs.yml").read_text())["nav"]

    def pages(node):
        if isinstance(node, str):
            yield node
        elif isinstance(node, list):
            for n in node:
                yield from pages(n)
        elif isinstance(node, dict):
            for n in node.values():
                yield from pages(n)

    listed = set(pages(nav))
    on_disk = {p.relative_to(ROOT / "docs").as_posix() for p in (ROOT / "docs").rglob("*.md")}
    assert listed == on_disk, (sorted(listed - on_disk), sorted(on_disk - listed))
