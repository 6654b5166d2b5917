"""MkDocs hooks for the RAIN documentation site (``hooks:`` in ``mkdocs.yml``).

Theory of operation. Two small jobs, both at build time, neither touching the pages on disk:

1. **The navigation is built from the folders.** ``mkdocs.yml`` has no ``nav:``; when MkDocs
   loads its config, :func:`on_config` walks ``docs/`` and makes one section per folder, in the
   order of the documentation's four parts (tutorials, how-to guides, reference, explanation).
   Pages named in :data:`PAGE_ORDER` come first in that order; any other page of the folder
   follows, sorted by file name, so a page someone adds is on the site (and in the search
   index) without an edit here. A page in a folder this file does not know gets a section named
   after the folder rather than being left out. Page titles are the pages' own first headings.
2. **Docstrings written for Sphinx read cleanly.** The package's docstrings use reST roles
   (``:class:`Client```) and ``::`` before literal blocks. mkdocstrings renders docstrings as
   Markdown, which leaves ``:class:`` in front of the code span; :func:`on_page_content` drops
   the role (and the ``~module.`` prefix, as Sphinx would) from the HTML of API pages, turns
   the ``::`` that ends a paragraph into ``:`` and drops a ``::`` that stands alone.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

#: The documentation's parts: folder, section title.
SECTIONS: tuple[tuple[str, str], ...] = (
    ("tutorial", "Tutorials"),
    ("howto", "How-to guides"),
    ("reference", "Reference"),
    ("explanation", "Explanation"),
)

#: Reading order of the pages known when this was written; other pages follow, by file name.
PAGE_ORDER: dict[str, tuple[str, ...]] = {
    "tutorial": ("index.md", "weather-station.md"),
    "howto": (
        "keys.md", "flaky-links.md", "scripts.md", "embed.md", "write-a-plugin.md",
        "access-rules.md", "discovery.md", "write-a-transport.md",
    ),
    "reference": (
        "api.md", "modules.md", "errors.md", "reason-codes.md", "cli.md", "config.md",
        "server.md", "transport-options.md", "wire-format.md", "benchmarks.md", "profiles.md",
    ),
    "explanation": (
        "architecture.md", "session.md", "protocol.md", "security.md", "reliability.md",
    ),
}


def site_nav(docs: Path) -> list[Any]:
    """The navigation for every Markdown page under ``docs``, in reading order."""
    nav: list[Any] = []
    if (docs / "index.md").exists():
        nav.append({"Home": "index.md"})
    known = [folder for folder, _ in SECTIONS]
    others = sorted(
        path.name for path in docs.iterdir() if path.is_dir() and path.name not in known
    )
    titles = dict(SECTIONS)
    for folder in [*known, *others]:
        pages = sorted(
            path.relative_to(docs / folder).as_posix() for path in (docs / folder).rglob("*.md")
        ) if (docs / folder).is_dir() else []
        if not pages:
            continue
        order = PAGE_ORDER.get(folder, ())
        pages.sort(key=lambda page: (order.index(page) if page in order else len(order), page))
        title = titles.get(folder, folder.replace("-", " ").replace("_", " ").capitalize())
        nav.append({title: [f"{folder}/{page}" for page in pages]})
    loose = sorted(path.name for path in docs.glob("*.md") if path.name != "index.md")
    nav += loose
    return nav


def on_config(config: Any) -> Any:
    if not config["nav"]:
        config["nav"] = site_nav(Path(config["docs_dir"]))
    return config


_ROLE = re.compile(
    r":(?:class|meth|func|data|attr|exc|mod|obj|const):"
    r"(?P<open><code[^>]*>)(?P<tilde>~)?(?P<text>[^<]+)</code>"
)
_LITERAL_ALONE = re.compile(r"<p>::</p>\s*")
_LITERAL_INTRO = re.compile(r"::</p>")


def _role(match: re.Match[str]) -> str:
    text = match["text"]
    if match["tilde"]:
        text = text.rsplit(".", 1)[-1]
    return f"{match['open']}{text}</code>"


def clean_docstring_html(html: str) -> str:
    """``html`` with reST roles and ``::`` paragraph ends rendered as a reader expects."""
    html = _LITERAL_ALONE.sub("", _ROLE.sub(_role, html))
    return _LITERAL_INTRO.sub(":</p>", html)


def on_page_content(html: str, **_: Any) -> str:
    # Only pages with mkdocstrings output carry docstrings.
    if 'class="doc doc-' not in html:
        return html
    return clean_docstring_html(html)
