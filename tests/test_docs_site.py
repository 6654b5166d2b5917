"""The documentation site builds, with no warning, and shows every page.

``mkdocs build --strict`` (``mkdocs.yml`` at the root, the ``docs`` extra, which the ``test``
extra brings) turns every warning into a failure: a link to a page or an anchor that does not
exist, a page that is not in the navigation, a ``:::`` API block naming something that cannot
be found. The navigation is built by ``docs/site_hooks.py`` from the folders, so these tests
also check that it leaves no page out and keeps the documentation's four parts in order.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
BUILD_TIMEOUT = 150.0


def _hooks() -> ModuleType:
    spec = importlib.util.spec_from_file_location("rain_site_hooks", DOCS / "site_hooks.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _nav_pages(nav: list[Any]) -> list[str]:
    pages: list[str] = []
    for item in nav:
        if isinstance(item, str):
            pages.append(item)
        elif isinstance(item, dict):
            for value in item.values():
                pages += _nav_pages(value) if isinstance(value, list) else [value]
    return pages


def _build(config: Path, out: Path) -> subprocess.CompletedProcess[str]:
    if importlib.util.find_spec("mkdocs") is None:
        pytest.fail("mkdocs is not installed: pip install -e '.[test]' (it brings the docs extra)")
    # Not --quiet: mkdocs 1.6 counts warnings for --strict through its log, and --quiet
    # silences them before they are counted (a broken link then builds "cleanly").
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict",
         "--config-file", str(config), "--site-dir", str(out)],
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1", "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
        check=False,
    )


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    result = _build(ROOT / "mkdocs.yml", out)
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout}{result.stderr}"
    return out


@pytest.mark.timeout(BUILD_TIMEOUT + 30)
def test_the_site_builds_strict_with_every_page(site: Path) -> None:
    pages = sorted(path.relative_to(DOCS) for path in DOCS.rglob("*.md"))
    missing = [str(page) for page in pages if not (site / page.with_suffix(".html")).exists()]
    assert not missing, f"pages not on the site: {missing}"
    # Every page is searchable.
    index = json.loads((site / "search" / "search_index.json").read_text("utf-8"))
    located = {entry["location"].split("#", 1)[0] for entry in index["docs"]}
    unsearched = [str(p) for p in pages if str(p.with_suffix(".html")) not in located]
    assert not unsearched, f"pages missing from the search index: {unsearched}"


@pytest.mark.timeout(BUILD_TIMEOUT + 30)
def test_the_api_pages_are_rendered_from_the_docstrings(site: Path) -> None:
    modules = (site / "reference" / "modules.html").read_text("utf-8")
    # mkdocstrings rendered the real signature and docstring of a function...
    assert 'id="rain_envelopes.keys.load_public_key"' in modules
    assert "Raises <code>KeyFileError</code>" in modules or "KeyFileError" in modules
    assert 'id="rain_transport_zmq.ZmqOptions"' in modules
    # ...and the reST roles of the docstrings did not leak into the page.
    for role in (":class:", ":meth:", ":func:", ":data:", ":attr:", ":mod:"):
        assert role not in modules, f"{role} left in the rendered API page"
    # The generated reference and the state diagram are there too.
    assert 'id="client"' in (site / "reference" / "api.html").read_text("utf-8")
    assert 'class="mermaid"' in (site / "explanation" / "session.html").read_text("utf-8")


@pytest.mark.timeout(BUILD_TIMEOUT + 30)
def test_a_broken_link_or_anchor_fails_the_build(tmp_path: Path) -> None:
    # The site's own configuration, on two small pages: the strict build must refuse them.
    docs = tmp_path / "docs"
    (docs / "howto").mkdir(parents=True)
    (docs / "index.md").write_text("# Home\n\n[keys](howto/keys.md#no-such-part)\n", "utf-8")
    (docs / "howto" / "keys.md").write_text("# Keys\n\n[gone](gone.md)\n", "utf-8")
    config = (ROOT / "mkdocs.yml").read_text("utf-8")
    config = config.replace("docs_dir: docs", f"docs_dir: {docs}")
    config = config.replace("- docs/site_hooks.py", f"- {DOCS / 'site_hooks.py'}")
    (tmp_path / "mkdocs.yml").write_text(config, "utf-8")
    result = _build(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert result.returncode != 0
    assert "does not contain an anchor '#no-such-part'" in result.stderr
    assert "'gone.md'" in result.stderr


def test_the_navigation_holds_every_page_in_the_four_parts() -> None:
    hooks = _hooks()
    nav = hooks.site_nav(DOCS)
    listed = _nav_pages(nav)
    pages = sorted(path.relative_to(DOCS).as_posix() for path in DOCS.rglob("*.md"))
    assert sorted(listed) == pages
    assert len(listed) == len(set(listed))
    titles = [next(iter(item)) for item in nav if isinstance(item, dict)]
    assert titles[:5] == ["Home", "Tutorials", "How-to guides", "Reference", "Explanation"]
    tutorials = dict(item for entry in nav if isinstance(entry, dict) for item in entry.items())
    assert tutorials["Tutorials"][0] == "tutorial/index.md"


def test_a_new_page_joins_its_section_without_a_config_edit(tmp_path: Path) -> None:
    hooks = _hooks()
    for page in ("index.md", "howto/keys.md", "howto/zz-new.md", "howto/aa-new.md",
                 "explanation/session.md", "extras/notes.md", "tutorial/index.md"):
        (tmp_path / page).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / page).write_text("# x\n", "utf-8")
    nav = hooks.site_nav(tmp_path)
    sections = {name: pages for item in nav for name, pages in item.items()}
    # Known pages first in reading order, then the others by name.
    assert sections["How-to guides"] == ["howto/keys.md", "howto/aa-new.md", "howto/zz-new.md"]
    # A folder nobody planned for still reaches the site, under its own name.
    assert sections["Extras"] == ["extras/notes.md"]
    assert list(sections) == ["Home", "Tutorials", "How-to guides", "Explanation", "Extras"]


def test_docstring_roles_are_cleaned_as_sphinx_would() -> None:
    hooks = _hooks()
    html = (
        '<p>See :class:<code>Client</code> and :meth:<code>~rain_envelopes.Client.get</code>'
        " for more::</p>\n<p>::</p>\n<pre>code</pre>"
    )
    assert hooks.clean_docstring_html(html) == (
        "<p>See <code>Client</code> and <code>get</code> for more:</p>\n<pre>code</pre>"
    )
