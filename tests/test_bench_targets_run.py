"""The targets and peers benchmarks still run and print their rows (so they cannot silently rot).

Nothing about speed is asserted here: performance is measured by ``benchmarks/bench_targets.py``
and ``benchmarks/bench_peers.py``, not by unit tests. This only runs them with tiny counts; a
peer whose optional package (the ``bench`` extra) is missing is skipped, with the reason.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
RATIO = r"\d+\.\d\dx"


def _run(script: str, *arguments: str, timeout: float = 20) -> str:
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


def _row(out: str, label: str) -> str:
    line = next((row for row in out.splitlines() if row.startswith(label)), None)
    assert line is not None, f"no row {label!r} in:\n{out}"
    return line


def test_fanout_rows_carry_both_stacks_and_ratios() -> None:
    out = _run("bench_targets.py", "--quick", "--only", "fanout", "--fanout", "1,2",
               "--seconds", "0.3")
    for sessions in (1, 2):
        line = _row(out, f"observe to {sessions} session(s)")
        assert len(re.findall(RATIO, line)) == 2, line


def test_publisher_and_sessions_rows() -> None:
    out = _run("bench_targets.py", "--quick", "--only", "publisher,sessions",
               "--seconds", "0.3", "--sessions", "5", "--publisher-sessions", "2",
               "--gets", "30")
    for label in ("publisher stopped", "publisher running"):
        cells = _row(out, label).split()
        assert all(float(cell.replace(",", "")) >= 0 for cell in cells[-4:]), cells
    assert re.search(r"publications/s from the plugin thread: [\d,]+", out), out
    for label in ("server memory per session (KiB)", "sessions established per second"):
        assert len(re.findall(RATIO, _row(out, label))) == 1, out


@pytest.mark.parametrize("stack", ["lime", "caproto", "asyncua"])
def test_peers_row(stack: str) -> None:
    module = {"lime": "lime_python", "caproto": "caproto", "asyncua": "asyncua"}[stack]
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed (the optional 'bench' extra)")
    out = _run("bench_peers.py", "--quick", "--only", f"raw,rain-curve,{stack}",
               "--requests", "64", "--window", "4")
    assert len(re.findall(RATIO, _row(out, "RAIN (CURVE)"))) == 1, out
    label = {"lime": "lime-python", "caproto": "caproto CA", "asyncua": "asyncua OPC UA"}[stack]
    assert len(re.findall(RATIO, _row(out, label))) == 2, out
    assert re.search(r"RAIN \(CURVE\) / best peer: " + RATIO, out), out
