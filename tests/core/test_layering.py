"""Import rules (DESIGN.md §2), checked on the source so no import order can hide a breach.

- the protocol core imports neither asyncio nor zmq, directly or through another module;
- nothing in rain_envelopes imports zmq or rain_transport_zmq (transports come by entry point).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import rain_envelopes

PACKAGE = Path(rain_envelopes.__file__).parent
CORE = ["envelopes", "node", "codec", "session", "protocol", "auth", "keys", "errors"]
FORBIDDEN_IN_CORE = {"asyncio", "zmq", "rain_transport_zmq", "trio", "anyio"}


def _imports(path: Path) -> tuple[set[str], set[str]]:
    """(absolute top-level modules, sibling modules imported relatively)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    absolute: set[str] = set()
    relative: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            absolute.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                if node.module:
                    relative.add(node.module.split(".")[0])
                else:
                    relative.update(alias.name for alias in node.names)
            elif node.module:
                absolute.add(node.module.split(".")[0])
    return absolute, relative


def test_core_modules_import_no_asyncio_and_no_zmq() -> None:
    for name in CORE:
        absolute, relative = _imports(PACKAGE / f"{name}.py")
        assert not absolute & FORBIDDEN_IN_CORE, f"{name}.py imports {absolute & FORBIDDEN_IN_CORE}"
        outside = relative - set(CORE)
        assert not outside, f"core module {name}.py imports non-core {outside}"


def test_rain_envelopes_never_imports_zmq() -> None:
    for path in PACKAGE.rglob("*.py"):
        absolute, _ = _imports(path)
        assert "zmq" not in absolute, path
        assert "rain_transport_zmq" not in absolute, path


def test_importing_everything_loads_no_zmq() -> None:
    code = (
        "import sys, pkgutil, importlib, rain_envelopes\n"
        "for m in pkgutil.walk_packages(rain_envelopes.__path__, 'rain_envelopes.'):\n"
        "    importlib.import_module(m.name)\n"
        "prefixes = ('zmq.', 'rain_transport_zmq')\n"
        "bad = [m for m in sys.modules if m == 'zmq' or m.startswith(prefixes)]\n"
        "assert not bad, bad\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr


def test_the_check_catches_a_breach(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import asyncio\nfrom zmq import Socket\nfrom .channel import x\n")
    absolute, relative = _imports(bad)
    assert {"asyncio", "zmq"} <= absolute
    assert relative == {"channel"}
