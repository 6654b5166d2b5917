"""Idle-cost benchmark: what ZMTP heartbeats cost per idle RAIN session (bytes/s and CPU).

Run ``python benchmarks/bench_idle.py`` (100 sessions idle for 30 s per setting, about 2 minutes
on 2 cores) or ``--quick``; ``--help`` lists the knobs. Results: ``docs/reference/
transport-options.md`` (section "What heartbeats cost").

Theory of operation. A server (the full ``rain_envelopes.server.Server``, ZeroMQ + CURVE, one
parameter) runs in a child process (multiprocessing, spawn) so its CPU time is its own; this
process opens ``--sessions`` client sessions to it over ``tcp://127.0.0.1`` and then does
nothing for ``--seconds``. Nothing but heartbeats crosses the links meanwhile: no application
pings (the channels have none by default), no commands. Over that window it measures:

- **bytes and TCP segments** of the server's connections, read from the kernel's per-socket
  counters (``ss -ti``: ``bytes_sent``, ``bytes_received``, ``segs_out``, ``segs_in``) for the
  server's port only, so other traffic on the loopback interface (other tests, other
  programs) does not count, as it would through ``/proc/net/dev``. Payload bytes are what ZMTP
  writes (encrypted PING/PONG commands); "wire" adds 52 bytes of IPv4 + TCP header (with
  timestamps) per segment, ACKs included, as a real link would carry them (add 14 more per
  segment on Ethernet);
- **CPU time** of the server process (``os.times`` user + system, so it includes libzmq's I/O
  thread where heartbeats and their CURVE boxes are handled) and of this client process.

Each heartbeat setting gets a fresh server and fresh sessions. ``heartbeat_ivl = 0`` turns
heartbeats off, the floor against which the others are compared.

Not part of the pytest suite's assertions: ``tests/test_benchmarks_run.py`` only runs it with
tiny counts so it cannot silently rot.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection

import nacl.signing

from rain_envelopes.auth import ServerAuthenticator
from rain_envelopes.channel import ClientChannel, connect
from rain_envelopes.keys import AuthorizedKeys, Identity
from rain_envelopes.server import Limits, Parameter, Server
from rain_envelopes.transport import ServerSecurity

#: IPv4 (20) + TCP with the timestamp option (32) bytes per segment.
HEADER_BYTES = 52
START_TIMEOUT = 30.0
DEFAULT_SETTINGS = ("0,0,0", "10,30,30", "2,4,6", "1,5,5")


@dataclass(frozen=True)
class Heartbeats:
    ivl: float
    timeout: float
    ttl: float

    @classmethod
    def parse(cls, text: str) -> Heartbeats:
        parts = [float(part) for part in text.split(",")]
        if len(parts) != 3:
            raise argparse.ArgumentTypeError(f"{text!r}: expected IVL,TIMEOUT,TTL in seconds")
        return cls(*parts)

    def options(self) -> dict[str, float]:
        return {"heartbeat_ivl": self.ivl, "heartbeat_timeout": self.timeout,
                "heartbeat_ttl": self.ttl}

    def __str__(self) -> str:
        if self.ivl == 0:
            return "off"
        return f"{self.ivl:g}/{self.timeout:g}/{self.ttl:g} s"


@dataclass
class Counters:
    bytes: int = 0
    segments: int = 0


def tcp_counters(port: int) -> Counters:
    """Sum the kernel's counters over the established TCP sockets whose local port is ``port``."""
    out = subprocess.run(
        ["ss", "-tinH", "state", "established", f"( sport = :{port} )"],
        capture_output=True, text=True, check=True, timeout=10,
    ).stdout
    total = Counters()
    for name, value in re.findall(r"\b(bytes_sent|bytes_received|segs_out|segs_in):(\d+)", out):
        if name.startswith("bytes"):
            total.bytes += int(value)
        else:
            total.segments += int(value)
    return total


def process_cpu() -> float:
    times = os.times()
    return times.user + times.system


# =========================================================================== server (child)


def server_child(conn: Connection, secret: bytes, client_public: bytes, options: dict[str, float],
                 sessions: int) -> None:
    asyncio.run(_serve(conn, secret, client_public, options, sessions))


async def _serve(conn: Connection, secret: bytes, client_public: bytes,
                 options: dict[str, float], sessions: int) -> None:
    station = Identity(nacl.signing.SigningKey(secret))
    authorized = AuthorizedKeys({client_public: "bench@irf"})
    server = Server(
        [Parameter("x", value=1.0)],
        node="station@irf",
        authenticator=ServerAuthenticator(authorized),
        limits=Limits(max_sessions=sessions + 10),
        identity=station,
        authorized_keys=authorized,
    )
    loop = asyncio.get_running_loop()
    async with server:
        await server.listen(
            ["tcp://127.0.0.1:0"],
            security=ServerSecurity(identity=station, authorized_keys=authorized),
            options=options,
        )
        conn.send(server.endpoints[0])
        while True:
            request = await loop.run_in_executor(None, conn.recv)
            if request == "stop":
                break
            conn.send((process_cpu(), len(server.sessions)))


# =========================================================================== client (here)


@dataclass
class Row:
    setting: Heartbeats
    sessions: int
    seconds: float
    payload: Counters
    server_cpu: float
    client_cpu: float

    def per_session(self, value: float) -> float:
        return value / self.sessions / self.seconds


async def measure(setting: Heartbeats, sessions: int, seconds: float) -> Row:
    station, client = Identity.generate(), Identity.generate()
    context = multiprocessing.get_context("spawn")
    conn, child_conn = context.Pipe()
    child = context.Process(
        target=server_child,
        args=(child_conn, bytes(station.signing_key), client.public_key, setting.options(),
              sessions),
        daemon=True,
    )
    child.start()
    loop = asyncio.get_running_loop()

    async def ask() -> tuple[float, int]:
        conn.send("cpu")
        answer: tuple[float, int] = await asyncio.wait_for(
            loop.run_in_executor(None, conn.recv), START_TIMEOUT
        )
        return answer

    channels: list[ClientChannel] = []
    try:
        endpoint: str = await asyncio.wait_for(loop.run_in_executor(None, conn.recv),
                                               START_TIMEOUT)
        port = int(endpoint.rsplit(":", 1)[1])
        for _ in range(sessions):
            channels.append(await connect(
                endpoint, identity=client, server_key=station.public_key,
                transport_options=setting.options(),
            ))
        # A client is established when `established` arrives; the server counts the session a
        # moment later (after its own establish_session returns), so ask until it agrees.
        deadline = time.monotonic() + START_TIMEOUT
        _, served = await ask()
        while served != sessions and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            _, served = await ask()
        if served != sessions:
            raise RuntimeError(f"the server serves {served} sessions, expected {sessions}")
        # Let establishment traffic (and delayed ACKs) settle before the window opens.
        await asyncio.sleep(1.0)
        before, server_before, client_before = tcp_counters(port), (await ask())[0], process_cpu()
        started = time.monotonic()
        await asyncio.sleep(seconds)  # the measurement: idle links, nothing to wait for
        after, server_after, client_after = tcp_counters(port), (await ask())[0], process_cpu()
        elapsed = time.monotonic() - started
        if any(channel.closed for channel in channels):
            raise RuntimeError("a session ended while idle: heartbeats too tight for this host")
        return Row(
            setting, sessions, elapsed,
            Counters(after.bytes - before.bytes, after.segments - before.segments),
            server_after - server_before, client_after - client_before,
        )
    finally:
        for channel in channels:
            await channel.close()
        conn.send("stop")
        child.join(10)
        if child.is_alive():
            child.kill()


def table(rows: list[Row]) -> str:
    lines = [
        f"{'heartbeats (ivl/timeout/ttl)':<30}{'payload B/s':>12}{'wire B/s':>10}"
        f"{'segs/s':>8}{'server CPU':>12}{'client CPU':>12}",
        f"{'per idle session':<30}{'':>12}{'':>10}{'':>8}{'(us/s)':>12}{'(us/s)':>12}",
    ]
    for row in rows:
        payload = row.per_session(row.payload.bytes)
        segments = row.per_session(row.payload.segments)
        wire = payload + HEADER_BYTES * segments
        lines.append(
            f"{row.setting!s:<30}{payload:>12.1f}{wire:>10.1f}{segments:>8.2f}"
            f"{row.per_session(row.server_cpu) * 1e6:>12.1f}"
            f"{row.per_session(row.client_cpu) * 1e6:>12.1f}"
        )
    return "\n".join(lines)


async def main_async(settings: list[Heartbeats], sessions: int, seconds: float) -> str:
    rows = [await measure(setting, sessions, seconds) for setting in settings]
    return (
        f"{sessions} idle CURVE sessions for {seconds:g} s per setting, server in a child process"
        f" (Python {sys.version.split()[0]}, {os.cpu_count()} CPUs)\n" + table(rows)
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="5 sessions for 2 s")
    parser.add_argument("--sessions", type=int, default=100, help="idle sessions (100)")
    parser.add_argument("--seconds", type=float, default=30.0, help="idle window (30 s)")
    parser.add_argument(
        "--heartbeats", type=Heartbeats.parse, action="append", metavar="IVL,TIMEOUT,TTL",
        help="a heartbeat setting to measure (repeatable; 0,0,0 = off); default: "
        + " ".join(DEFAULT_SETTINGS),
    )
    args = parser.parse_args(argv)
    if shutil.which("ss") is None:
        print("this benchmark reads TCP counters with ss (iproute2), which is not installed",
              file=sys.stderr)
        return 2
    sessions, seconds = (5, 2.0) if args.quick else (args.sessions, args.seconds)
    settings = args.heartbeats or [Heartbeats.parse(text) for text in DEFAULT_SETTINGS]
    print(asyncio.run(main_async(settings, sessions, seconds)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
