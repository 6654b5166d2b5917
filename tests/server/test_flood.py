"""A flood from one authorised client costs a real server bounded memory and log (issue 7).

`rain serve` runs in a child process on tcp://127.0.0.1 (ZeroMQ + CURVE). One client, with a
valid key, pipelines 50,000 gets of a getter that takes 3 s and never reads an answer. The
server's resident memory (VmRSS) must stay within 64 MiB of its baseline during the flood and
fall back to within 16 MiB of it within 5 s of the client leaving; its log must stay small.
Measured before the per-session bound: peak +108 MiB, still +126 MiB 5 s after the client
left; with it: +0.2 MiB, and one `queue-full` line in the log for the whole flood.

The only sleeping here is the getter's own (the slow instrument under test) and the sampling
of /proc between checks, which is measurement, not synchronisation.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rain_envelopes.channel import ClientChannel
from rain_envelopes.envelopes import Command, CommandMethod
from rain_envelopes.errors import QueueFull
from rain_envelopes.keys import AuthorizedKeys, Identity
from rain_envelopes.transport import ClientSecurity, transport_factory

from .conftest import ZMQ
from .stall import StallableTransport

pytestmark = [
    pytest.mark.skipif(not ZMQ, reason="no ZMQ transport"),
    pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc"),
]

MIB = 1024 * 1024
GETS = 50_000
FLOOD_SECONDS = 6.0
GROWTH_LIMIT = 64 * MIB
SETTLED_LIMIT = 16 * MIB
SETTLE_SECONDS = 5.0
LOG_LIMIT = 64 * 1024  # bytes of server log for the whole flood

PLUGIN = '''
import time

from rain_envelopes.server import parameter


@parameter()
def slow() -> int:
    """An instrument that takes 3 s to answer."""
    time.sleep(3.0)
    return 1
'''

CONFIG = """
identity = "station@irf"
listen = ["tcp://127.0.0.1:0"]
key_file = "station.key"
authorized_keys = "authorized_keys"
allow = ["127.0.0.1/32"]
plugins = "plugins"
"""


def rss(pid: int) -> int:
    """Resident memory of process ``pid``, in bytes."""
    text = Path(f"/proc/{pid}/status").read_text()
    found = re.search(r"^VmRSS:\s+(\d+) kB", text, re.MULTILINE)
    assert found, text
    return int(found.group(1)) * 1024


class Served:
    def __init__(self, folder: Path) -> None:
        self.log = folder / "server.log"
        self._log_file = open(self.log, "w")  # noqa: SIM115 - closed in stop()
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAIN_")}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "rain_envelopes.cli", "serve", str(folder / "rain.toml")],
            stdout=subprocess.PIPE, stderr=self._log_file, text=True, env=env,
        )
        assert self.process.stdout is not None
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            line = pool.submit(self.process.stdout.readline).result(timeout=15)
        found = re.search(r"serving \S+ on (tcp://\S+)", line)
        if found is None:
            self.stop()
            raise AssertionError(f"server did not start: {line!r}\n{self.log.read_text()}")
        self.endpoint = found.group(1)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
        try:
            self.process.wait(timeout=10)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait(5)
            self._log_file.close()
            if self.process.stdout is not None:
                self.process.stdout.close()


@pytest.fixture
def station(tmp_path: Path) -> Iterator[tuple[Served, Identity, Identity]]:
    server_key, alice = Identity.generate(), Identity.generate()
    server_key.save(tmp_path / "station.key")
    AuthorizedKeys.from_mapping({alice.public_key_text: "alice@irf"}).save(
        tmp_path / "authorized_keys"
    )
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "slow.py").write_text(PLUGIN)
    (tmp_path / "rain.toml").write_text(CONFIG)
    served = Served(tmp_path)
    try:
        yield served, server_key, alice
    finally:
        served.stop()


async def test_a_client_pipelining_slow_gets_costs_bounded_memory_and_log(
    station: tuple[Served, Identity, Identity],
) -> None:
    served, server_key, alice = station
    pid = served.process.pid
    endpoint = served.endpoint
    inner = transport_factory(endpoint).connect(
        endpoint, ClientSecurity(identity=alice, server_key=server_key.public_key)
    )
    transport = StallableTransport(inner)
    channel = ClientChannel(transport, identity=alice, node="alice@irf")
    await channel.establish_session(timeout=10.0)
    baseline = rss(pid)
    log_before = served.log.stat().st_size
    transport.stall()  # from now on the client never reads an answer
    peak = baseline
    loop = asyncio.get_running_loop()
    started = loop.time()
    sent = 0
    sending = 0.0
    try:
        while sent < GETS:
            try:
                await channel.send(Command(CommandMethod.GET, "/params/slow", id=f"g{sent}"))
            except QueueFull:
                # The server pushes back through libzmq; measure while we wait for room.
                peak = max(peak, rss(pid))
                await asyncio.sleep(0.01)
                continue
            sent += 1
            if sent == GETS:
                sending = loop.time() - started
            if sent % 500 == 0:
                peak = max(peak, rss(pid))
                await asyncio.sleep(0)
        while loop.time() - started < FLOOD_SECONDS:
            peak = max(peak, rss(pid))
            await asyncio.sleep(0.1)
    finally:
        await channel.close()
    left = time.monotonic()
    after = rss(pid)
    while after > baseline + SETTLED_LIMIT and time.monotonic() - left < SETTLE_SECONDS:
        await asyncio.sleep(0.1)
        after = rss(pid)
    settled_in = time.monotonic() - left
    log_bytes = served.log.stat().st_size - log_before
    print(
        f"\nflood: {sent} gets sent in {sending:.1f} s, held {loop.time() - started:.1f} s; "
        f"server RSS baseline {baseline / MIB:.1f} MiB, peak {peak / MIB:.1f} MiB "
        f"(+{(peak - baseline) / MIB:.1f}), "
        f"after {after / MIB:.1f} MiB (+{(after - baseline) / MIB:.1f}) within "
        f"{settled_in:.1f} s; log {log_bytes} bytes"
    )
    assert served.process.poll() is None, "the server died"
    assert sent == GETS
    assert peak - baseline <= GROWTH_LIMIT
    assert after - baseline <= SETTLED_LIMIT
    assert log_bytes <= LOG_LIMIT, served.log.read_text()[-4000:]
