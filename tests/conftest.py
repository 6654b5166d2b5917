"""Shared test configuration.

Every test is bounded in time: a test that runs past its limit fails with TimeLimitExceeded (and a
traceback of where it hung) instead of stalling CI. The default is 30 s; mark a test with
``@pytest.mark.timeout(SECONDS)`` to change it. Uses SIGALRM from the standard library, so it
needs no plugin (POSIX only, which is what CI runs on).
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from typing import Any

import pytest

DEFAULT_TIMEOUT = 30.0


class TimeLimitExceeded(Exception):
    """Raised inside a test that ran past its time limit."""


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "timeout(seconds): fail the test after this many seconds")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    marker = item.get_closest_marker("timeout")
    limit = float(marker.args[0]) if marker else DEFAULT_TIMEOUT

    def on_alarm(signum: int, frame: Any) -> None:
        raise TimeLimitExceeded(f"{item.nodeid} ran longer than {limit:g} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, limit)
    try:
        return (yield)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
