"""The state-file benchmark still runs and prints its table (so it cannot silently rot).

Nothing about speed is asserted here: performance is measured by ``benchmarks/bench_store.py``,
not by unit tests. This only runs it with tiny counts, its state files in a temporary folder.
"""

from __future__ import annotations

import re
from pathlib import Path

from tests.benchrun import run_benchmark

RATIO = r"\d+\.\d\dx"


def test_bench_store_quick_prints_every_mode_with_ratios(tmp_path: Path) -> None:
    out = run_benchmark(
        "bench_store.py", "--quick", "--dir", str(tmp_path),
        "--sequential", "30", "--pipelined", "60", "--window", "4", "--warmup", "10",
        "--commits", "10", "--restore", "20",
        timeout=60,
    )
    header = next((row for row in out.splitlines() if row.startswith("metric")), "")
    assert header.split() == [
        "metric", "raw", "pyzmq", "memory", "ratio", "batch", "ratio", "sync", "ratio",
    ]
    for label in (
        "sequential p50 latency (us)",
        "sequential p99 latency (us)",
        "pipelined sets/s (window 4)",
    ):
        line = next((row for row in out.splitlines() if row.startswith(label)), None)
        assert line is not None, f"no row {label!r} in:\n{out}"
        assert len(re.findall(RATIO, line)) == 3, line
    assert re.search(r"one small row, mean\s+[\d,.]+\s+[\d,.]+", out), out
    assert re.search(r"restart: 20 stored values restored .* in [\d,.]+ ms", out), out
    # The state files went where they were told, and were cleaned up.
    assert list(tmp_path.iterdir()) == []
