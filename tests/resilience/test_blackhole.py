"""A black-holed link (no FIN, no RST, every byte dropped both ways) is noticed by both ends
within the detection target of issue 8 (6 s).

A reconnecting :class:`~rain_envelopes.client.Client` talks to a ``rain serve`` child through
the fault proxy; once the session is up and idle the proxy is switched to ``blackhole``. The
client must report ``lost`` (its defaults ping a link idle for 2 s and give it up after 3 s
without an answer), and the server must end the session (its log says ``session ended``,
``failed`` or ``lost``), both within 6 s.
The server has no application ping: it relies on ZMTP heartbeats, so the test runs once with
the server's default transport options (what an operator gets: the target of issue 8) and once
with heartbeats set through the config's ``[transport]`` table to 1 s / 4 s, which shows that
the table reaches the listener and that the measurement can pass. (Heartbeats of 2 s / 6 s, as
RELIABILITY.md recommends, are not enough for 6 s: the first PING after the link dies goes out
up to one interval later and then waits a whole timeout, 8 s in all.)

Each side's time is measured from the switch to blackhole; the server's by polling its log
(a child process offers no event to wait on), every 50 ms.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from rain_envelopes.client import ClientState

from ..adversarial.live import make_site
from ..faultproxy import FaultProxy
from .helpers import QUICK, Station

TARGET = 6.0
#: Slack for the measurement itself: the 50 ms log poll and the child's scheduling.
SLACK = 0.25
#: How long the test waits before giving up on a side (beyond the target, to report it).
PATIENCE = 12.0
POLL = 0.05
#: The server's line for a session that ended, however it ended ("ended" for a clean finish;
#: a lost link is "failed" or "lost" depending on the version).
ENDED = re.compile(r"rain\.server: session (ended|failed|lost):")

#: Worst case one interval plus one timeout: 5 s.
CONFIGURED = {"heartbeat_ivl": 1.0, "heartbeat_timeout": 4.0, "heartbeat_ttl": 4.0}


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "transport", [None, CONFIGURED], ids=["server-defaults", "server-heartbeats-1s-4s"]
)
async def test_both_sides_notice_a_blackholed_link_within_six_seconds(
    tmp_path: Path, transport: dict[str, float] | None
) -> None:
    station = Station(make_site(tmp_path, transport=transport))
    server = await asyncio.to_thread(station.start)
    port = urlsplit(server.endpoint).port
    assert port is not None
    loop = asyncio.get_running_loop()
    client_took: float | None = None
    server_took: float | None = None
    try:
        async with (
            FaultProxy(("127.0.0.1", port)) as proxy,
            station.client(proxy.endpoint, backoff=QUICK) as client,
        ):
            changes = client.changes()
            await client.get("/params/sampling_interval")
            await _wait_log(server.log_text, "rain.server: session established", 5.0)
            log_mark = server.log_bytes()
            proxy.blackhole()
            began = loop.time()

            async def client_side() -> float:
                async for change in changes:
                    if change.state is ClientState.LOST:
                        return loop.time() - began
                raise AssertionError("the client closed without reporting lost")

            async def server_side() -> float:
                await _wait_log(lambda: server.log_text(log_mark), ENDED.pattern, PATIENCE)
                return loop.time() - began

            results = await asyncio.gather(
                asyncio.wait_for(client_side(), PATIENCE),
                server_side(),
                return_exceptions=True,
            )
            client_took = results[0] if isinstance(results[0], float) else None
            server_took = results[1] if isinstance(results[1], float) else None
            await proxy.close()  # so that closing the client does not wait on a dead link
    finally:
        with contextlib.suppress(Exception):
            station.stop()

    def shown(took: float | None) -> str:
        return f"{took:.2f} s" if took is not None else f"not within {PATIENCE:g} s"

    print(
        f"\n[resilience] blackhole ({'defaults' if transport is None else transport}):"
        f" client noticed after {shown(client_took)}, server after {shown(server_took)}"
    )
    assert client_took is not None, f"the client did not notice within {PATIENCE:g} s"
    assert client_took <= TARGET + SLACK, (
        f"client noticed the dead link after {shown(client_took)} (target {TARGET:g} s)"
    )
    assert server_took is not None, f"the server did not notice within {PATIENCE:g} s"
    assert server_took <= TARGET + SLACK, (
        f"server noticed the dead link after {shown(server_took)} (target {TARGET:g} s)"
    )


async def _wait_log(read: Callable[[], str], pattern: str, timeout: float) -> None:
    """Poll a child's log until ``pattern`` matches a line (TimeoutError after ``timeout``)."""
    async with asyncio.timeout(timeout):
        while True:
            if re.search(pattern, read(), re.MULTILINE):
                return
            await asyncio.sleep(POLL)
