"""Import rules (DESIGN.md §2), checked on the source so no import order can hide a breach.

- the protocol core imports neither asyncio nor zmq, directly or through another module;
- the protocol core does no I/O: it imports no module that reaches files, sockets, processes or
  threads (os, pathlib, io, socket, sqlite3, ...) and calls no ``open``/``print``/``input``.
  Imports under ``if TYPE_CHECKING:`` never run and are allowed. The one way out is the key
  file methods kept on the key classes for compatibility (``Identity.load`` ...): keys.py may
  import the key-files module, and only inside a function, where a call hands over to it;
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
#: Modules whose purpose is I/O (files, sockets, processes, threads, terminals, the network).
IO_MODULES = {
    "os", "pathlib", "io", "socket", "asyncio", "zmq", "sqlite3", "shutil", "tempfile",
    "subprocess", "select", "selectors", "ssl", "mmap", "fcntl", "resource", "signal",
    "threading", "multiprocessing", "concurrent", "urllib", "http", "glob", "fileinput",
    "logging", "sys", "aiohttp", "nats",
}
IO_CALLS = {"open", "print", "input"}
#: The one sanctioned edge out of the core: keys.py -> keyfiles, inside the compatibility methods.
DEFERRED = {"keys": {"keyfiles"}}


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node of ``tree`` except what sits under ``if TYPE_CHECKING:`` (never executed)."""
    out: list[ast.AST] = []
    todo = [tree]
    while todo:
        node = todo.pop()
        out.append(node)
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and ast.unparse(child.test) in {
                "TYPE_CHECKING", "typing.TYPE_CHECKING",
            }:
                todo.extend(child.orelse)
                continue
            todo.append(child)
    return out


def _imports(path: Path, *, runtime_only: bool = False) -> tuple[set[str], set[str]]:
    """(absolute top-level modules, sibling modules imported relatively)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    absolute: set[str] = set()
    relative: set[str] = set()
    for node in _runtime_nodes(tree) if runtime_only else ast.walk(tree):
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


def _module_level_relative(path: Path) -> set[str]:
    """Sibling modules imported outside any function (so on import, not on a call)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    todo: list[ast.AST] = [tree]
    while todo:
        node = todo.pop()
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            continue
        if isinstance(node, ast.ImportFrom) and node.level:
            found.update(
                {node.module.split(".")[0]} if node.module else {a.name for a in node.names}
            )
        todo.extend(ast.iter_child_nodes(node))
    return found


def _io_calls(path: Path) -> set[str]:
    """Names in IO_CALLS called anywhere in the module (``open(...)``, ``print(...)``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {
        node.func.id
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
        and node.func.id in IO_CALLS
    }


def test_core_modules_import_no_asyncio_and_no_zmq() -> None:
    for name in CORE:
        absolute, relative = _imports(PACKAGE / f"{name}.py")
        assert not absolute & FORBIDDEN_IN_CORE, f"{name}.py imports {absolute & FORBIDDEN_IN_CORE}"
        outside = relative - set(CORE) - DEFERRED.get(name, set())
        assert not outside, f"core module {name}.py imports non-core {outside}"


def test_core_modules_do_no_io() -> None:
    for name in CORE:
        path = PACKAGE / f"{name}.py"
        absolute, _ = _imports(path, runtime_only=True)
        assert not absolute & IO_MODULES, f"{name}.py imports I/O modules {absolute & IO_MODULES}"
        assert not _io_calls(path), f"{name}.py calls {_io_calls(path)}"
        deferred = _module_level_relative(path) & DEFERRED.get(name, set())
        assert not deferred, f"{name}.py imports {deferred} on import, not only inside a method"


def test_the_key_files_module_is_outside_the_core() -> None:
    # The I/O the core used to hold lives here; the core's key classes hand over to it.
    assert "keyfiles" not in CORE
    absolute, _ = _imports(PACKAGE / "keyfiles.py")
    assert "os" in absolute


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


def test_the_io_check_catches_a_breach(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from pathlib import Path\n"
        "import os.path\n"
        "from .keyfiles import load\n"
        "def f():\n    from .keyfiles import save\n    return open('x').read()\n"
    )
    absolute, _ = _imports(bad, runtime_only=True)
    assert absolute & IO_MODULES == {"os"}  # pathlib is type-only, so it does not count
    assert _io_calls(bad) == {"open"}
    assert _module_level_relative(bad) == {"keyfiles"}  # the import in f() is not counted
