"""State-file benchmark: what exactly-once, persistent sets cost, against raw pyzmq, in one run.

Run ``python benchmarks/bench_store.py`` (about 30 s on 2 cores) or ``--quick`` (a few seconds;
``tests/test_benchmarks_run.py`` runs it so this script cannot silently rot). ``--dir DIR``
puts the state files in DIR (default: a temporary folder next to this script, so on the disk
a server would use; a tmpfs would make every fsync free). Results: ``docs/reference/benchmarks.md``.

Scenarios, all on ``tcp://127.0.0.1`` with CURVE on, the server in a child process (as in
``bench_roundtrip.py``, whose raw pyzmq server and client this reuses):

1. **raw** - the raw pyzmq echo server of ``bench_roundtrip.py``: the floor of a round trip,
   with no disk at all;
2. **memory** - the full ``Server``, no state file: ``set /params/x`` with a command id (so the
   in-memory exactly-once window is used) on a parameter whose setter is a plain function (run
   in the plugin thread pool, as an instrument's would be);
3. **batch** - the same with a state file, ``durability="batch"``: an in-progress record before
   the setter and the outcome with the value after it, two commits, synced at checkpoints;
4. **sync** - the same with ``durability="sync"``: two commits, each waiting for an fsync.

For each: sequential set latency (p50/p99 of one set at a time) and pipelined sets per second
(``--window`` sets in flight). Then two in-process figures: the cost of one bare SQLite commit
of a small row in WAL mode with ``synchronous=FULL`` and ``NORMAL`` (the disk's floor for the
two modes), and the time ``Server.start()`` takes to restore ``--restore`` stored values through
their setters (the restart cost of a state file).

Not part of the pytest suite: performance is measured here, never asserted in unit tests.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import multiprocessing
import os
import platform
import sqlite3
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ratio
from bench_roundtrip import (
    RawClient,
    _start_raw_server,
    measure_pipelined,
    measure_sequential,
    percentile,
)

from rain_envelopes.auth import ServerAuthenticator
from rain_envelopes.channel import connect
from rain_envelopes.envelopes import CommandStatus
from rain_envelopes.keys import AuthorizedKeys, Identity
from rain_envelopes.server import Parameter, Server
from rain_envelopes.server.store import StateStore
from rain_envelopes.transport import ServerSecurity

URI = "/params/x"
SCENARIOS = ("raw", "memory", "batch", "sync")
PHASE_TIMEOUT = 300.0
START_TIMEOUT = 30.0


@dataclass(frozen=True)
class Settings:
    sequential: int = 1000
    pipelined: int = 5000
    window: int = 16
    warmup: int = 100
    commits: int = 300
    restore: int = 1000
    folder: Path | None = None

    @classmethod
    def quick(cls) -> Settings:
        return cls(sequential=100, pipelined=400, window=8, warmup=20, commits=30, restore=100)


@dataclass
class Result:
    p50_us: float = 0.0
    p99_us: float = 0.0
    mean_us: float = 0.0
    throughput: float = 0.0


# =========================================================================== server process


def _server_main(scenario: str, conn: Connection, client_key: bytes, state: str | None) -> None:
    logging.basicConfig(level=logging.ERROR)
    try:
        asyncio.run(_serve(scenario, conn, client_key, state))
    finally:
        conn.close()


async def _serve(scenario: str, conn: Connection, client_key: bytes, state: str | None) -> None:
    loop = asyncio.get_running_loop()
    stopped = asyncio.Event()
    loop.add_reader(conn.fileno(), stopped.set)  # any message (or EOF) means stop
    stop: Callable[[], Awaitable[None]]
    if scenario == "raw":
        endpoint, server_key, stop = await _start_raw_server(client_key)
    else:
        identity = Identity.generate()
        authorized = AuthorizedKeys.from_mapping({client_key: "bench@local"})
        knob = Parameter("x", value=0.0, schema={"type": "number"}, setter=_apply)
        server = Server(
            [knob], node="station@bench", authenticator=ServerAuthenticator(authorized),
            identity=identity, authorized_keys=authorized,
            state=state, durability="batch" if scenario == "batch" else "sync",
        )
        await server.start()
        await server.listen(["tcp://127.0.0.1:0"], security=ServerSecurity(identity, authorized))
        endpoint, server_key, stop = server.endpoints[0], identity.public_key, server.close
    conn.send(("ready", (endpoint, server_key)))
    try:
        async with asyncio.timeout(PHASE_TIMEOUT * 2):
            await stopped.wait()
    finally:
        loop.remove_reader(conn.fileno())
        await stop()


def _apply(value: float) -> None:
    """The instrument: accepts the value at once."""


class ServerProcess:
    """One scenario's server in a spawned child process."""

    def __init__(self, scenario: str, client_key: bytes, state: Path | None) -> None:
        context = multiprocessing.get_context("spawn")
        self.conn, child_conn = context.Pipe()
        self.process = context.Process(
            target=_server_main,
            args=(scenario, child_conn, client_key, str(state) if state else None),
            name=f"bench-store-{scenario}", daemon=True,
        )
        self.process.start()
        child_conn.close()
        if not self.conn.poll(START_TIMEOUT):
            self.stop()
            raise TimeoutError(f"{scenario} server did not start within {START_TIMEOUT} s")
        verb, (self.endpoint, self.server_key) = self.conn.recv()
        assert verb == "ready"

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.send(("stop", None))
        self.process.join(15.0)
        if self.process.is_alive():  # our own child, by its handle
            self.process.terminate()
            self.process.join(5.0)
        self.conn.close()


# =========================================================================== measuring


async def run_scenario(scenario: str, settings: Settings, folder: Path) -> Result:
    raw_keypair = zmq.curve_keypair()
    client_identity = Identity.generate()
    client_key = raw_keypair[0] if scenario == "raw" else client_identity.public_key
    state = folder / f"{scenario}.db" if scenario in ("batch", "sync") else None
    server = ServerProcess(scenario, client_key, state)
    close: Callable[[], Awaitable[None]]
    try:
        request: Callable[[], Awaitable[Any]]
        if scenario == "raw":
            raw = RawClient(server.endpoint, server.server_key, raw_keypair)

            async def request() -> Any:
                return await raw.get(URI)

            async def close_raw() -> None:
                raw.close()

            close = close_raw
        else:
            channel = await connect(
                server.endpoint, identity=client_identity, server_key=server.server_key,
                command_timeout=30.0,
            )
            values = iter(range(1 << 62))

            async def request() -> Any:
                # channel.set gives every set a fresh command id: each one is recorded.
                return await channel.set(URI, float(next(values)))

            close = channel.finish
        try:
            async with asyncio.timeout(PHASE_TIMEOUT):
                first = await request()
                if scenario != "raw" and first.status is not CommandStatus.SUCCESS:
                    raise RuntimeError(f"{scenario}: unexpected response {first!r}")
                await measure_sequential(request, settings.warmup)
                times = sorted(await measure_sequential(request, settings.sequential))
                await measure_pipelined(request, settings.warmup, settings.window)
                elapsed = await measure_pipelined(request, settings.pipelined, settings.window)
        finally:
            with contextlib.suppress(Exception):
                await close()
    finally:
        server.stop()
    return Result(
        p50_us=percentile(times, 0.50) / 1000,
        p99_us=percentile(times, 0.99) / 1000,
        mean_us=sum(times) / len(times) / 1000,
        throughput=settings.pipelined / elapsed,
    )


def commit_cost_us(folder: Path, synchronous: str, count: int) -> float:
    """Mean microseconds of one small-row commit in WAL mode with ``synchronous``."""
    path = folder / f"commit-{synchronous.lower()}.db"
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode = WAL")
        db.execute(f"PRAGMA synchronous = {synchronous}")
        db.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v BLOB)")
        started = time.perf_counter()
        for key in range(count):
            db.execute("BEGIN IMMEDIATE")
            db.execute("INSERT INTO t VALUES (?, ?)", (key, b"x" * 200))
            db.execute("COMMIT")
        return (time.perf_counter() - started) / count * 1e6
    finally:
        db.close()


async def restore_cost(folder: Path, count: int) -> tuple[float, float]:
    """(ms restoring ``count`` stored values, ms for the whole start()) of a restarted server."""
    path = folder / "restore.db"
    with StateStore.open(path, durability="batch") as store:
        for index in range(count):
            store.store_value(f"p{index}", float(index), "2026-01-01T00:00:00.000Z", 1)
    parameters = [
        Parameter(f"p{index}", value=0.0, schema={"type": "number"}, setter=_apply)
        for index in range(count)
    ]
    server = Server(parameters, node="station@bench", state=path)
    started = time.perf_counter()
    await server.start()
    total = time.perf_counter() - started
    try:
        assert server.restore_seconds is not None
        assert all(p.value == float(i) for i, p in enumerate(parameters))
        return server.restore_seconds * 1000, total * 1000
    finally:
        await server.close()


# =========================================================================== report


def render(results: dict[str, Result], commits: tuple[float, float],
           restore: tuple[float, float], settings: Settings, wall: float) -> str:
    rows = [
        ("sequential p50 latency (us)", "p50_us", 1),
        ("sequential p99 latency (us)", "p99_us", 1),
        ("sequential mean latency (us)", "mean_us", 1),
        (f"pipelined sets/s (window {settings.window})", "throughput", 0),
    ]
    header = f"{'metric':<40}{'raw pyzmq':>11}" + "".join(
        f"{name:>11}{'ratio':>8}" for name in SCENARIOS[1:]
    )
    lines = [
        "RAIN state-file benchmark: set over tcp://127.0.0.1, CURVE on, server in a child process",
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}, pyzmq {zmq.__version__},"
        f" SQLite {sqlite3.sqlite_version}; state files in"
        f" {'--dir' if settings.folder else 'a temporary folder next to this script'};"
        f" {settings.sequential} sequential + {settings.pipelined} pipelined sets per scenario",
        "raw pyzmq: an echo round trip (no disk); ratio = ours / raw pyzmq",
        "",
        header,
        "-" * len(header),
    ]
    raw = results["raw"]
    for label, attribute, digits in rows:
        base = getattr(raw, attribute)
        line = f"{label:<40}{base:>11,.{digits}f}"
        for name in SCENARIOS[1:]:
            value = getattr(results[name], attribute)
            line += f"{value:>11,.{digits}f}{ratio(value, base):>8}"
        lines.append(line)
    lines += [
        "",
        f"{'bare SQLite commit, WAL (us)':<40}{'FULL':>11}{'NORMAL':>11}",
        f"{'  one small row, mean':<40}{commits[0]:>11,.1f}{commits[1]:>11,.1f}",
        "",
        f"restart: {settings.restore} stored values restored through their setters in"
        f" {restore[0]:,.1f} ms (start() in all {restore[1]:,.1f} ms)",
        "",
        f"total wall time {wall:.1f} s",
    ]
    return "\n".join(lines)


async def main_async(settings: Settings, folder: Path) -> str:
    started = time.perf_counter()
    results = {name: await run_scenario(name, settings, folder) for name in SCENARIOS}
    commits = (
        commit_cost_us(folder, "FULL", settings.commits),
        commit_cost_us(folder, "NORMAL", settings.commits),
    )
    restore = await restore_cost(folder, settings.restore)
    return render(results, commits, restore, settings, time.perf_counter() - started)


def parse_args(argv: list[str] | None = None) -> Settings:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="small counts (a few seconds)")
    parser.add_argument("--sequential", type=int, help="sequential sets per scenario")
    parser.add_argument("--pipelined", type=int, help="pipelined sets per scenario")
    parser.add_argument("--window", type=int, help="sets in flight when pipelined")
    parser.add_argument("--warmup", type=int, help="warm-up sets before each phase")
    parser.add_argument("--commits", type=int, help="bare SQLite commits timed per mode")
    parser.add_argument("--restore", type=int, help="stored values restored at start")
    parser.add_argument("--dir", type=Path, dest="folder", help="where the state files go")
    args = parser.parse_args(argv)
    settings = Settings.quick() if args.quick else Settings()
    changes: dict[str, Any] = {}
    for name in ("sequential", "pipelined", "window", "warmup", "commits", "restore"):
        value = getattr(args, name)
        if value is not None:
            if not 1 <= value <= 10_000_000:
                parser.error(f"--{name} must be between 1 and 10,000,000")
            changes[name] = value
    if args.folder is not None:
        if not args.folder.is_dir():
            parser.error(f"--dir {args.folder} is not a folder")
        changes["folder"] = args.folder
    return Settings(**{**settings.__dict__, **changes})


def main(argv: list[str] | None = None) -> int:
    settings = parse_args(argv)
    base = settings.folder or Path(__file__).resolve().parent
    with tempfile.TemporaryDirectory(prefix="bench-store-", dir=base) as folder:
        print(asyncio.run(main_async(settings, Path(folder))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
