"""Loading plugin files: every ``*.py`` file and package in a folder declares parameters.

Each plugin is imported under its own namespaced module name, ``rain_plugins.f<hash>.<name>``,
where the hash is of the folder's absolute path. So a plugin called ``json.py`` or ``zmq.py``
never shadows an installed module, two folders never collide, and plugins in one folder can share
code with relative imports (``from . import _helpers``). Files and folders whose names start
with ``_`` or ``.`` are not loaded as plugins (use them for shared helpers).

Invariants: a load either returns every declared parameter or raises :class:`PluginError` naming
the file and line of the culprit (an import error, a syntax error, a ``sys.exit()`` at import, a
bad declaration, or the same parameter name declared twice); nothing is half-loaded. Each call
imports the files afresh, so two servers loading the same folder never share parameter objects.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import sys
import traceback
import types
from collections.abc import Iterable
from pathlib import Path

from .errors import PluginError
from .parameters import Parameter, _collector

__all__ = ["check_unique", "load_plugins", "plugin_namespace"]

log = logging.getLogger(__name__)

ROOT_PACKAGE = "rain_plugins"


def plugin_namespace(folder: Path) -> str:
    """The package name plugins of ``folder`` are imported under."""
    digest = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:12]
    return f"{ROOT_PACKAGE}.f{digest}"


def _ensure_package(name: str, path: list[str]) -> None:
    module = sys.modules.get(name)
    if module is None:
        module = types.ModuleType(name, "RAIN plugin namespace (made by the plugin loader)")
        module.__path__ = path
        module.__package__ = name
        sys.modules[name] = module
    else:
        module.__path__ = path


def _plugin_sources(folder: Path) -> list[tuple[str, Path, bool]]:
    """(module name, file to execute, is package) for each plugin, in name order."""
    found: list[tuple[str, Path, bool]] = []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith(("_", ".")):
            continue
        if entry.is_file() and entry.suffix == ".py":
            stem, source, package = entry.stem, entry, False
        elif entry.is_dir() and (entry / "__init__.py").is_file():
            stem, source, package = entry.name, entry / "__init__.py", True
        else:
            continue
        if not stem.isidentifier():
            raise PluginError(
                "plugin name must be a Python identifier (letters, digits, '_')", path=str(entry)
            )
        found.append((stem, source, package))
    return found


def _import_failure(exc: BaseException, source: Path, folder: Path) -> PluginError:
    """A PluginError pointing at the line of the plugin where the import failed."""
    if isinstance(exc, PluginError):
        return exc
    path, line = str(source), None
    if isinstance(exc, SyntaxError) and exc.filename:
        path, line = exc.filename, exc.lineno
    else:
        root = str(folder.resolve())
        for frame in reversed(traceback.extract_tb(exc.__traceback__)):
            if str(Path(frame.filename).resolve()).startswith(root):
                path, line = frame.filename, frame.lineno
                break
    if isinstance(exc, SystemExit):
        code = "" if exc.code is None else repr(exc.code)
        message = (
            f"plugin called sys.exit({code}) while being imported; a plugin that cannot start"
            " should raise an exception saying why"
        )
        return PluginError(message, path=path, line=line)
    detail = str(exc).splitlines()[0] if str(exc) else ""
    message = f"plugin failed to import: {type(exc).__name__}" + (f": {detail}" if detail else "")
    return PluginError(message, path=path, line=line)


def check_unique(parameters: Iterable[Parameter]) -> None:
    """Raise PluginError naming both declarations when two parameters share a name."""
    seen: dict[str, Parameter] = {}
    for param in parameters:
        first = seen.get(param.name)
        if first is not None and first is not param:
            where = f"{first.path}:{first.line}" if first.path else "elsewhere"
            raise PluginError(
                f"parameter {param.name!r} is declared twice (first at {where})",
                path=param.path,
                line=param.line,
            )
        seen[param.name] = param


def load_plugins(folder: str | Path) -> list[Parameter]:
    """Import every plugin in ``folder`` and return the parameters they declare.

    Raises PluginError (with file and line) on any failure.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise PluginError("plugin folder does not exist or is not a folder", path=str(folder))
    namespace = plugin_namespace(folder)
    # Forget a previous load of this folder so every load runs the plugin code afresh.
    for name in [n for n in sys.modules if n == namespace or n.startswith(namespace + ".")]:
        del sys.modules[name]
    _ensure_package(ROOT_PACKAGE, [])
    _ensure_package(namespace, [str(folder.resolve())])

    declared: list[Parameter] = []
    token = _collector.set(declared)
    try:
        for stem, source, package in _plugin_sources(folder):
            module_name = f"{namespace}.{stem}"
            if module_name in sys.modules:
                continue  # already imported by another plugin of this folder
            spec = importlib.util.spec_from_file_location(
                module_name,
                source,
                submodule_search_locations=[str(source.parent)] if package else None,
            )
            if spec is None or spec.loader is None:
                raise PluginError("cannot be imported as a Python module", path=str(source))
            module = importlib.util.module_from_spec(spec)
            sys.modules[module_name] = module
            try:
                spec.loader.exec_module(module)
            except (Exception, SystemExit) as exc:
                # SystemExit too: a plugin's sys.exit() must not end the server silently
                # (issue 10); KeyboardInterrupt still stops the load as the user asked.
                sys.modules.pop(module_name, None)
                log.debug("plugin %s failed to import", source, exc_info=True)
                raise _import_failure(exc, source, folder) from exc
            log.info("loaded plugin %s", source)
    finally:
        _collector.reset(token)

    check_unique(declared)
    for param in declared:
        param.check()
    return declared
