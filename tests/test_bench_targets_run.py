"""The targets and peers benchmarks still run and print their rows (so they cannot silently rot).

Nothing about speed is asserted here: performance is measured by ``benchmarks/bench_targets.py``
and ``benchmarks/bench_peers.py``, not by unit tests. This only runs them with tiny counts; a
peer whose optional package (the ``bench`` extra) is missing is skipped, with the reason.
"""

from __future__ import annotations

import importlib.util
import re

import pytest

from tests.benchrun import import_benchmark, run_benchmark

RATIO = r"\d+\.\d\dx"


def _row(out: str, label: str) -> str:
    line = next((row for row in out.splitlines() if row.startswith(label)), None)
    assert line is not None, f"no row {label!r} in:\n{out}"
    return line


def test_fanout_rows_carry_both_stacks_and_ratios() -> None:
    out = run_benchmark("bench_targets.py", "--quick", "--only", "fanout", "--fanout", "1,2",
                        "--seconds", "0.3")
    for sessions in (1, 2):
        line = _row(out, f"observe to {sessions} session(s)")
        assert len(re.findall(RATIO, line)) == 2, line


def test_publisher_and_sessions_rows() -> None:
    out = run_benchmark("bench_targets.py", "--quick", "--only", "publisher,sessions",
                        "--seconds", "0.3", "--sessions", "5", "--publisher-sessions", "2",
                        "--gets", "30")
    for label in ("publisher stopped", "publisher running"):
        cells = _row(out, label).split()
        assert all(float(cell.replace(",", "")) >= 0 for cell in cells[-4:]), cells
    assert re.search(r"publications/s from the plugin thread: [\d,]+", out), out
    for label in ("server memory per session (KiB)", "sessions established per second"):
        assert len(re.findall(RATIO, _row(out, label))) == 1, out


@pytest.mark.timeout(60)
def test_target_table_names_every_measured_target_with_a_verdict() -> None:
    # Two child servers (raw and RAIN) and the codec rows: the peers part is the peers script's
    # own code, run by test_peers_row below.
    out = run_benchmark("bench_targets.py", "--quick", "--only", "pipelined,codec",
                        "--windows", "4", "--pipelined", "100", "--sequential", "20",
                        "--codec-iterations", "50", timeout=50)
    for label in ("4 in flight", "p50, one request in flight (us)"):
        assert len(re.findall(RATIO, _row(out, label))) >= 1, out
    assert len(re.findall(RATIO, _row(out, "codec request encode+decode"))) == 1, out
    table = out[out.index("issue 9 target (item 7)"):]
    rows = {
        "pipelined gets, 4 in flight (req/s)": ">= 0.5x",
        "p50, one request in flight (us)": "<= 1.2x",
        "codec encode+decode of a request vs orjson (ns)": "<= 3x",
        "building a request envelope vs the dict (ns)": "<= 5x",
    }
    for label, goal in rows.items():
        line = _row(table.split("\n", 2)[2], label)
        assert re.search(RATIO + r"\s+" + re.escape(goal) + r"\s+(yes|NO)$", line), line
    met = re.search(r"targets met: (\d+) of (\d+)", table)
    assert met is not None, table
    assert int(met[2]) == len(rows), table
    assert int(met[1]) == sum(row.endswith(" yes") for row in table.splitlines()), table


def test_verdicts_compare_the_ratio_with_the_goal_in_the_right_direction() -> None:
    check = import_benchmark("bench_targets").ratio_target
    assert check("rate", 50, 100, 0.5, higher=True).met
    assert not check("rate", 49, 100, 0.5, higher=True).met
    assert check("latency", 120, 100, 1.2, higher=False).met
    assert not check("latency", 121, 100, 1.2, higher=False).met
    assert not check("no baseline", 1, 0, 1.2, higher=False).met  # never met by a zero
    row = check("latency", 121, 100, 1.2, higher=False)
    assert (row.shown, row.goal) == ("1.21x", "<= 1.2x")


@pytest.mark.parametrize("stack", ["lime", "caproto", "asyncua"])
def test_peers_row(stack: str) -> None:
    module = {"lime": "lime_python", "caproto": "caproto", "asyncua": "asyncua"}[stack]
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed (the optional 'bench' extra)")
    out = run_benchmark("bench_peers.py", "--quick", "--only", f"raw,rain-curve,{stack}",
                        "--requests", "64", "--window", "4")
    assert len(re.findall(RATIO, _row(out, "RAIN (CURVE)"))) == 1, out
    label = {"lime": "lime-python", "caproto": "caproto CA", "asyncua": "asyncua OPC UA"}[stack]
    assert len(re.findall(RATIO, _row(out, label))) == 2, out
    assert re.search(r"RAIN \(CURVE\) / best peer: " + RATIO, out), out
