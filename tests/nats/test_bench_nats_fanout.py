"""The NATS fan-out benchmark still runs and prints its table (so it cannot silently rot).

Nothing about speed is asserted: ``benchmarks/bench_nats_fanout.py`` measures it. This runs the
``--quick`` variant (a 3-node cluster, one client process, 2 sessions per transport) and checks
that both transports delivered every sample and that the NATS sessions were fanned out.
"""

from __future__ import annotations

import re

import pytest

from tests.benchrun import run_benchmark


@pytest.mark.timeout(90)
def test_the_quick_run_prints_both_transports_side_by_side() -> None:
    out = run_benchmark("bench_nats_fanout.py", "--quick", timeout=80)
    assert re.search(r"zmq\s+2 sessions: .* delivered 100\.0%, fanned out 0/2", out), out
    assert re.search(r"nats\s+2 sessions: .* delivered 100\.0%, fanned out 2/2", out), out
    row = next(line for line in out.splitlines() if line.strip().startswith("2 "))
    assert len(re.findall(r"\d+\.\d\dx", row)) == 3, row
