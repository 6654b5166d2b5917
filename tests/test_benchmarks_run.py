"""The round-trip benchmark still runs and prints its table (so it cannot silently rot).

Nothing about speed is asserted here: performance is measured by
``benchmarks/bench_roundtrip.py``, not by unit tests. This only runs it with tiny counts.
"""

from __future__ import annotations

import re

import pytest

from tests.benchrun import run_benchmark

RATIO = r"\d+\.\d\dx"


def test_bench_roundtrip_quick_prints_the_table_with_ratios() -> None:
    out = run_benchmark(
        "bench_roundtrip.py", "--quick",
        "--sequential", "50", "--pipelined", "200", "--window", "8",
        "--warmup", "20", "--codec-iterations", "200", "--rounds", "2",
    )
    header = next((row for row in out.splitlines() if row.startswith("metric")), "")
    assert header.split() == ["metric", "raw", "pyzmq", "channel", "ratio", "server", "ratio"]
    # Every round-trip row carries a figure for all three stacks and both ratios ours/raw.
    for label in (
        "sequential p50 latency (us)",
        "sequential p99 latency (us)",
        "pipelined throughput (req/s, window 8)",
        "server CPU/request, process (us, pipelined)",
        "client CPU/request, process (us, pipelined)",
    ):
        line = next((row for row in out.splitlines() if row.startswith(label)), None)
        assert line is not None, f"no row {label!r} in:\n{out}"
        assert len(re.findall(RATIO, line)) == 2, line
    # The codec rows compare with raw orjson, with a ratio each.
    codec = [row for row in out.splitlines() if row.startswith("codec ")]
    assert len(codec) == 6, out
    assert all(re.search(RATIO + r"\s*$", row) for row in codec), codec


@pytest.mark.timeout(120)
def test_bench_idle_runs_and_prints_a_row_per_setting() -> None:
    out = run_benchmark(
        "bench_idle.py", "--sessions", "2", "--seconds", "0.5",
        "--heartbeats", "0,0,0", "--heartbeats", "2,4,6",
        timeout=90,  # two server processes started and stopped; slow on a busy machine
    )
    rows = [row.split() for row in out.splitlines()]
    labels = [row[0] for row in rows if row]
    assert "off" in labels, out
    assert "2/4/6" in labels, out
    for row in rows:
        if row and row[0] in ("off", "2/4/6"):
            figures = row[-5:]  # bytes/s on the wire and as payload, segments/s, two CPUs
            assert all(float(cell) >= 0 for cell in figures), row
