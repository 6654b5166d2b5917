"""The docs cannot drift from the code.

- Generated sections (state diagram, transition table, example sessions, reason codes) must be
  exactly what ``docs/generate.py`` writes from the code today.
- ``examples/first_session.py``, the tutorial's script, must run and print what the tutorial says.
- Interactive examples (```` ```python ```` blocks starting with ``>>>``) run as doctests, the
  blocks of one page as one session.
- Programs marked ``<!-- test: run -->`` just above their ```` ```python ```` block run as scripts.
- Blocks marked ``<!-- test: file NAME -->`` are written to files of that name, one folder per
  page; a ``pyproject.toml`` among them has its entry points registered, and every
  ``test_*.py`` among them runs under pytest (the how-to on writing a transport).
- Relative links between pages point at files that exist.
"""

from __future__ import annotations

import doctest
import importlib.util
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
SCRIPT_TIMEOUT = 30.0

_FENCE = re.compile(
    r"(?:<!-- test: (?P<directive>run|file (?P<filename>[\w.-]+)) -->\n)?"
    r"```(?P<language>python|toml)\n(?P<code>.*?)```",
    re.DOTALL,
)
_LINK = re.compile(r"\]\((?P<target>[^)#\s]+)(?:#[^)]*)?\)")


def _load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("rain_docs_generate", DOCS / "generate.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _pages() -> list[Path]:
    return sorted(DOCS.rglob("*.md"))


def _blocks(kind: str) -> list[tuple[str, str]]:
    """``(page:line, code)`` of every python block that is a doctest or a marked script."""
    found = []
    for page in _pages():
        text = page.read_text("utf-8")
        for match in _FENCE.finditer(text):
            code = match["code"]
            is_doctest = match["language"] == "python" and code.lstrip().startswith(">>>")
            is_script = match["directive"] == "run"
            if (kind == "doctest" and is_doctest) or (kind == "script" and is_script):
                line = text.count("\n", 0, match.start("code")) + 1
                found.append((f"{page.relative_to(ROOT)}:{line}", code))
    return found


def _file_pages() -> dict[str, dict[str, str]]:
    """``{page: {file name: content}}`` for every page with ``test: file`` blocks."""
    out: dict[str, dict[str, str]] = {}
    for page in _pages():
        files = {
            match["filename"]: match["code"]
            for match in _FENCE.finditer(page.read_text("utf-8"))
            if match["filename"]
        }
        if files:
            out[str(page.relative_to(ROOT))] = files
    return out


def _register_entry_points(pyproject: str, folder: Path) -> None:
    """Make ``folder`` look like an installed distribution with ``pyproject``'s entry points."""
    project = tomllib.loads(pyproject)["project"]
    info = folder / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n"
    )
    lines = []
    for group, entries in project.get("entry-points", {}).items():
        lines.append(f"[{group}]")
        lines += [f"{name} = {target}" for name, target in entries.items()]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")


def _run(
    args: list[str], *, cwd: Path = ROOT, path: tuple[Path, ...] = ()
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(p) for p in (*path, ROOT))}
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=SCRIPT_TIMEOUT,
        check=False,
    )


# ------------------------------------------------------------------------------ generated


def test_generated_sections_match_the_code() -> None:
    generate = _load_generator()
    stale = [str(path.relative_to(ROOT)) for path in generate.stale()]
    assert not stale, f"{stale} differ from the code: run `python docs/generate.py` and commit"


def test_a_hand_edit_inside_a_generated_section_is_undone() -> None:
    generate = _load_generator()
    page = DOCS / "explanation" / "session.md"
    text = page.read_text("utf-8")
    edited = text.replace("stateDiagram-v2\n", "stateDiagram-v2\n    hand --> edit\n", 1)
    assert edited != text
    assert generate.render(edited) == text


def test_every_reason_code_is_documented() -> None:
    from rain_envelopes import ReasonCode

    generate = _load_generator()
    table = generate.reason_codes()
    for member in ReasonCode:
        assert f"| {member.value} | `{member.name}` |" in table


def test_unknown_or_unclosed_sections_are_refused() -> None:
    generate = _load_generator()
    with pytest.raises(ValueError, match="unknown generated section"):
        generate.render("<!-- BEGIN GENERATED: nope -->\n<!-- END GENERATED -->")
    with pytest.raises(ValueError, match="no matching END"):
        generate.render("<!-- BEGIN GENERATED: diagram -->\n")


# ------------------------------------------------------------------------------ the tutorial


@pytest.mark.timeout(SCRIPT_TIMEOUT + 10)
def test_first_session_example_runs_as_the_tutorial_says() -> None:
    result = _run(["examples/first_session.py"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "client: established as alice@lab/laptop with station@lab",
        "server: peer authenticated as alice@lab",
        "client: get /params/temp -> 21.5",
        "client: set /params/temp 19.0 -> 19.0",
        "client: get /params/wind failed with code 67",
        "server: message 'hello station'",
        "client: receipt for m1: received",
        "client: receipt for m1: consumed",
        "client: subscribed, current value 19.0",
        "client: update /params/temp -> 18.5",
        "client: session finished; server: session finished",
    ]


def test_tutorial_shows_the_script_it_runs() -> None:
    page = (DOCS / "tutorial" / "index.md").read_text("utf-8")
    script = (ROOT / "examples" / "first_session.py").read_text("utf-8")
    blocks = [match["code"] for match in _FENCE.finditer(page)]
    assert script in blocks, "docs/tutorial/index.md must show examples/first_session.py verbatim"


# ------------------------------------------------------------------------------ code samples


def _doctest_pages() -> dict[str, list[tuple[str, str]]]:
    pages: dict[str, list[tuple[str, str]]] = {}
    for where, code in _blocks("doctest"):
        pages.setdefault(where.rsplit(":", 1)[0], []).append((where, code))
    return pages


@pytest.mark.parametrize(("page", "blocks"), list(_doctest_pages().items()))
def test_interactive_examples(page: str, blocks: list[tuple[str, str]]) -> None:
    # The ``>>>`` blocks of one page are one interactive session, read top to bottom.
    parser = doctest.DocTestParser()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    session: dict[str, object] = {}
    output: list[str] = []
    for where, code in blocks:
        test = parser.get_doctest(code, session, where, where, 0)
        test.globs = session  # get_doctest copies the namespace; keep one for the page
        runner.run(test, out=output.append, clear_globs=False)
    assert runner.failures == 0, "".join(output)


@pytest.mark.timeout(SCRIPT_TIMEOUT + 10)
@pytest.mark.parametrize(("where", "code"), _blocks("script"))
def test_marked_programs_run(where: str, code: str, tmp_path: Path) -> None:
    script = tmp_path / "sample.py"
    script.write_text(code, "utf-8")
    # In a scratch folder: a program may write files (the key-file example of keys.md does).
    result = _run([str(script)], cwd=tmp_path)
    assert result.returncode == 0, f"{where} failed:\n{result.stdout}\n{result.stderr}"


@pytest.mark.timeout(3 * SCRIPT_TIMEOUT)
@pytest.mark.parametrize(("where", "files"), list(_file_pages().items()))
def test_example_packages_pass_their_tests(
    where: str, files: dict[str, str], tmp_path: Path
) -> None:
    for name, content in files.items():
        (tmp_path / name).write_text(content, "utf-8")
    if "pyproject.toml" in files:
        _register_entry_points(files["pyproject.toml"], tmp_path)
    tests = sorted(name for name in files if name.startswith("test_") and name.endswith(".py"))
    assert tests, f"{where} has example files but no test_*.py to run them"
    result = _run(
        [
            "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--rootdir={tmp_path}",
            "-o", "asyncio_mode=auto", "-o", "asyncio_default_fixture_loop_scope=function",
            *tests,
        ],
        cwd=tmp_path,
        path=(tmp_path,),
    )
    assert result.returncode == 0, f"{where}:\n{result.stdout}\n{result.stderr}"


def test_relative_links_resolve() -> None:
    broken = []
    for page in _pages():
        for match in _LINK.finditer(page.read_text("utf-8")):
            target = match["target"]
            if "://" in target or target.startswith("mailto:"):
                continue
            if not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
    assert not broken, f"broken links: {broken}"
