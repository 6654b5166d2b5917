"""Running a benchmark script from a smoke test: one place for how it is started and judged.

The smoke tests only check that ``benchmarks/*.py`` still run and print their rows (speed is
never asserted in tests). :func:`run_benchmark` starts the script in a child interpreter from
the benchmarks folder, bounded by ``timeout``, and returns its standard output; a missing
script, a run past the bound or a non-zero exit fails the test with the tail of its stderr.
:func:`import_benchmark` imports a script as a module, for tests of its pure helpers.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

#: The repository's benchmarks folder.
BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def run_benchmark(script: str, *arguments: str, timeout: float = 20) -> str:
    """Run ``benchmarks/<script>`` with ``arguments``; its standard output."""
    path = BENCHMARKS / script
    if not path.is_file():
        pytest.fail(f"{path} is missing")
    try:
        done = subprocess.run(
            [sys.executable, str(path), *arguments],
            capture_output=True, text=True, timeout=timeout, cwd=BENCHMARKS,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{script} took longer than {exc.timeout} s")
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def import_benchmark(name: str) -> ModuleType:
    """``benchmarks/<name>.py`` imported as a module (the folder is on the path only meanwhile,
    as the scripts import each other by name)."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(BENCHMARKS))
