"""Shared pieces of the resilience suite (issue 8, item 8): a live ``rain serve`` that can be
killed and started again on the same port with the same keys, reconnecting clients of it, and
the few measures the tests report (percentiles, a least-squares slope).

The child-process machinery is the adversarial suite's (:mod:`tests.adversarial.live`), reused
by import; what is added here is only what a *restart* needs: the first server binds an
ephemeral port, and the config is then pinned to that port so that every later start listens
where the clients keep dialling.
"""

from __future__ import annotations

import asyncio
import re
import signal
import statistics
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rain_envelopes.client import Backoff, Client

from ..adversarial.live import LiveServer, Site

__all__ = [
    "MIB",
    "QUICK",
    "Station",
    "percentile",
    "slope_per_minute",
    "wait_for",
]

MIB = 1024 * 1024


class Station:
    """One site's server over time: ``start`` (ephemeral port the first time, the same port
    afterwards), ``kill`` (SIGKILL, no clean-up at all), ``start`` again, ``stop``.

    Each start logs to its own file (``server-N.log``) so a test can read what each run said.
    """

    def __init__(self, site: Site) -> None:
        self.site = site
        self.server: LiveServer | None = None
        self.endpoint: str | None = None
        self.starts = 0
        self.logs: list[Path] = []

    def start(self) -> LiveServer:
        """Start ``rain serve`` (blocking until it prints its endpoint: call it in a thread
        from async code). Raises AssertionError with the log when it does not start."""
        assert self.server is None, "already running"
        self.starts += 1
        log = self.site.folder / f"server-{self.starts}.log"
        self.logs.append(log)
        server = LiveServer(self.site.config, log)
        if self.endpoint is None:
            self.endpoint = server.endpoint
            self._pin(server.endpoint)
        else:
            assert server.endpoint == self.endpoint, (server.endpoint, self.endpoint)
        self.server = server
        return server

    def kill(self) -> int:
        """``kill -9`` the server; returns its exit status (-9)."""
        server, self.server = self.server, None
        assert server is not None, "not running"
        return server.stop(signal.SIGKILL)

    def stop(self) -> int | None:
        """Stop politely (SIGTERM) if running; the exit status. A server that does not exit
        within 10 s is killed and reported with AssertionError."""
        server, self.server = self.server, None
        if server is None:
            return None
        try:
            return server.stop()
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"rain serve did not exit within 10 s of SIGTERM (killed):\n"
                f"{server.log_text()[-2000:]}"
            ) from None

    def client(self, endpoint: str | None = None, **options: Any) -> Client:
        """A reconnecting client of this station as alice (who may get, set and subscribe),
        to ``endpoint`` (a fault proxy's, say) or straight to the server."""
        assert self.endpoint is not None, "start the server first"
        return Client(
            endpoint or self.endpoint,
            identity=self.site.alice,
            server_key=self.site.station.public_key,
            **options,
        )

    def _pin(self, endpoint: str) -> None:
        text = self.site.config.read_text()
        text, count = re.subn(r"(?m)^listen = .*$", f'listen = ["{endpoint}"]', text)
        assert count == 1, "the config has no listen line to pin"
        self.site.config.write_text(text)


#: A backoff for tests that are not about the backoff itself.
QUICK = Backoff(initial=0.05, maximum=0.5)


async def wait_for(condition: Callable[[], bool], event: asyncio.Event, timeout: float) -> None:
    """Wait until ``condition()`` holds, re-checking whenever ``event`` is set (the caller sets
    it at every change it makes); TimeoutError after ``timeout`` seconds."""
    async with asyncio.timeout(timeout):
        while not condition():
            event.clear()
            await event.wait()


def percentile(values: Sequence[float], fraction: float) -> float:
    """The ``fraction`` quantile (0.5: median) of ``values`` by linear interpolation."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    if len(ordered) == 1:
        return ordered[0]
    position = fraction * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def slope_per_minute(samples: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope of ``(seconds, value)`` samples, in value units per minute."""
    if len(samples) < 2:
        return 0.0
    times = [t for t, _ in samples]
    values = [v for _, v in samples]
    return statistics.linear_regression(times, values).slope * 60.0
