"""The instrument server's CPU per published sample with many subscribers: fan-out through a
NATS cluster (each sample published once, copied by the broker) beside direct ZeroMQ (each
sample sent once per session), in the same run, on the same server process (issue 11, item 3).

Set-up: a 3-node nats-server cluster on loopback whose users come from ``rain nats-config``'s
generator; one RAIN server in a child process listening on both ``tcp://127.0.0.1:0`` (ZeroMQ,
CURVE) and ``nats://`` (cluster node 1); client child processes, each holding its share of the
sessions (over NATS spread across the three nodes), each session subscribed to one parameter.
For each session count and transport the server publishes ``--samples`` samples at
``--rate`` per second, then waits until the clients have every sample (or ``--timeout``).

Measured: the server process's CPU time (``time.process_time``: every thread) from the first
publication until the clients had them all, less its idle CPU over the same wall time (taken
just before, with the same sessions connected); divided by the samples. NATS heartbeats are set
to a minute (a link that carries samples needs none; idle links would add a time-based cost
that is not fan-out). A ZeroMQ subscriber that cannot keep up loses samples at the server
(bounded queue, counted as drops); the table says how many each run delivered.

Run: ``python benchmarks/bench_nats_fanout.py`` (10, 100 and 1,000 sessions, 4 client
processes); ``--quick`` for a smoke run (a few seconds).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))

from _common import ratio  # noqa: E402

from rain_envelopes.keys import AuthorizedKeys, Identity  # noqa: E402

QUIET = {"heartbeat_interval": 60.0, "heartbeat_timeout": 180.0, "max_queue": 1_000_000}
PARAMETER = "wx.temp"


def _seed(identity: Identity) -> bytes:
    return bytes(identity.signing_key)


def _identity(seed: bytes) -> Identity:
    import nacl.signing

    return Identity(nacl.signing.SigningKey(seed))


# ------------------------------------------------------------------------------ server child


def server_main(conn: Connection, station_seed: bytes, clients: dict[bytes, str],
                nats_url: str) -> None:
    asyncio.run(_serve(conn, station_seed, clients, nats_url))


async def _serve(conn: Connection, station_seed: bytes, clients: dict[bytes, str],
                 nats_url: str) -> None:
    from rain_envelopes.auth import ServerAuthenticator
    from rain_envelopes.server import Limits, Parameter, Server
    from rain_envelopes.transport import ServerSecurity
    from rain_transport_nats.connection import BACKGROUND

    station = _identity(station_seed)
    keys = AuthorizedKeys.from_mapping(clients)
    wx = Parameter(PARAMETER, value=0)
    server = Server([wx], node="station@bench", authenticator=ServerAuthenticator(keys),
                    identity=station, authorized_keys=keys,
                    limits=Limits(max_sessions=5000, queue_length=1000))
    loop = asyncio.get_running_loop()
    async with server:
        security = ServerSecurity(identity=station, authorized_keys=keys)
        [zmq] = await server.listen(["tcp://127.0.0.1:0"], security=security)
        [nats] = await server.listen([nats_url], security=security, options=QUIET)
        conn.send(("endpoints", zmq.endpoints[0], nats.endpoints[0]))
        live = server._live[PARAMETER]
        value = 0
        while True:
            command, *args = await loop.run_in_executor(None, conn.recv)
            if command == "stop":
                break
            if command == "status":
                fanned = len(live.observes.fanned)
                conn.send((len(live.subscriptions) + fanned, fanned))
            elif command == "idle":
                started = time.process_time()
                await asyncio.sleep(args[0])
                conn.send(time.process_time() - started)
            elif command == "publish":
                count, rate = args
                started_cpu, started = time.process_time(), time.monotonic()
                for index in range(count):
                    value += 1
                    wx.publish(value)
                    await asyncio.sleep(max(0.0, started + (index + 1) / rate - time.monotonic()))
                # Until every sample has been handed to the transports (bounded polling: the
                # benchmark's own bookkeeping, not part of what is measured).
                while BACKGROUND or any(len(s) for s in live.subscriptions):  # noqa: ASYNC110
                    await asyncio.sleep(0.005)
                conn.send(("published", time.process_time() - started_cpu,
                           time.monotonic() - started))
            elif command == "cpu":
                conn.send((time.process_time(), time.monotonic()))
    conn.send("stopped")


# ------------------------------------------------------------------------------ client child


def client_main(conn: Connection, seed: bytes, station_key: bytes, endpoints: list[str],
                sessions: int) -> None:
    asyncio.run(_subscribe(conn, seed, station_key, endpoints, sessions))


async def _subscribe(conn: Connection, seed: bytes, station_key: bytes, endpoints: list[str],
                     sessions: int) -> None:
    from rain_envelopes.channel import connect
    from rain_envelopes.envelopes import Command
    from rain_envelopes.errors import TransportError

    me = _identity(seed)
    received = [0]
    channels = []

    def on_observe(command: Command) -> None:
        received[0] += 1

    async def one(index: int) -> None:
        endpoint = endpoints[index % len(endpoints)]
        options = QUIET if endpoint.startswith("nats") else None
        for attempt in range(5):  # a loaded loopback can drop a connect now and then
            try:
                channel = await connect(endpoint, identity=me, server_key=station_key,
                                        establish_timeout=60.0, command_timeout=60.0,
                                        transport_options=options)
                break
            except TransportError:
                if attempt == 4:
                    raise
                await asyncio.sleep(0.5 * (attempt + 1))
        channels.append(channel)
        await channel.subscribe(f"/params/{PARAMETER}", on_observe)

    limit = asyncio.Semaphore(10)

    async def bounded(index: int) -> None:
        async with limit:
            await one(index)

    await asyncio.gather(*(bounded(i) for i in range(sessions)))
    conn.send(("ready", len(channels)))
    loop = asyncio.get_running_loop()
    while True:
        command = await loop.run_in_executor(None, conn.recv)
        if command == "count":
            conn.send(received[0])
        elif command == "reset":
            received[0] = 0
            conn.send("ok")
        elif command == "stop":
            break
    await asyncio.gather(*(c.finish() for c in channels), return_exceptions=True)
    conn.send("stopped")


# ------------------------------------------------------------------------------ controller


def run(session_counts: Sequence[int], samples: int, rate: float, processes: int,
        timeout: float, idle_seconds: float = 2.0) -> list[dict[str, Any]]:
    from rain_transport_nats.config import ServerGrant, authorization_block
    from tests.nats.broker import start_cluster

    context = multiprocessing.get_context("spawn")
    station = Identity.generate()
    people = [Identity.generate() for _ in range(processes)]
    clients = {p.public_key: f"bench{i}@lab" for i, p in enumerate(people)}
    grant = ServerGrant(station.public_key, "station@bench", clients)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="rain-bench-nats-") as folder:
        cluster = start_cluster(Path(folder), 3, authorization=authorization_block([grant]))
        try:
            parent, child = context.Pipe()
            server = context.Process(target=server_main, daemon=True,
                                     args=(child, _seed(station), clients, cluster[0].url))
            server.start()
            _, zmq_endpoint, _ = parent.recv()
            for sessions in session_counts:
                for kind in ("zmq", "nats"):
                    endpoints = ([zmq_endpoint] if kind == "zmq"
                                 else [node.url for node in cluster])
                    rows.append(_measure(context, parent, station, people, endpoints, kind,
                                         sessions, samples, rate, processes, timeout,
                                         idle_seconds))
                    row = rows[-1]
                    print(f"  {kind:4} {sessions:5} sessions: {row['per_sample_us']:9.1f} us/sample"
                          f" (raw {row['raw_us']:.1f}), delivered {row['delivered']:.1%},"
                          f" fanned out {row['fanned_out']}/{sessions}", flush=True)
            parent.send(("stop",))
            parent.recv()
            server.join(10)
        finally:
            for node in cluster:
                node.stop()
    return rows


def _measure(context: Any, server: Connection, station: Identity, people: list[Identity],
             endpoints: list[str], kind: str, sessions: int, samples: int, rate: float,
             processes: int, timeout: float, idle_seconds: float) -> dict[str, Any]:
    shares = [sessions // processes + (1 if i < sessions % processes else 0)
              for i in range(processes)]
    children = []
    for person, share in zip(people, shares, strict=True):
        if not share:
            continue
        parent, child = context.Pipe()
        process = context.Process(target=client_main, daemon=True,
                                  args=(child, _seed(person), station.public_key, endpoints, share))
        process.start()
        children.append((process, parent))
    for _, pipe in children:
        message = pipe.recv()
        assert message[0] == "ready", message
    # Every subscription in place (and, over NATS, handed over to its group) before measuring.
    deadline = time.monotonic() + timeout
    while True:
        server.send(("status",))
        total, fanned = server.recv()
        if total >= sessions and (kind == "zmq" or fanned >= sessions):
            break
        if time.monotonic() > deadline:
            break
        time.sleep(0.1)
    server.send(("idle", idle_seconds))
    idle_cpu = server.recv()
    server.send(("cpu",))
    cpu0, wall0 = server.recv()
    server.send(("publish", samples, rate))
    server.recv()
    expected = samples * sessions
    got = 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = 0
        for _, pipe in children:
            pipe.send("count")
            got += pipe.recv()
        if got >= expected:
            break
        time.sleep(0.05)
    server.send(("cpu",))
    cpu1, wall1 = server.recv()
    for _, pipe in children:
        pipe.send("stop")
    for process, pipe in children:
        with _quiet():
            pipe.recv()
        process.join(20)
        if process.is_alive():
            process.kill()
    raw = (cpu1 - cpu0) / samples
    idle = idle_cpu / idle_seconds * (wall1 - wall0) / samples
    return {"kind": kind, "sessions": sessions, "raw_us": raw * 1e6,
            "per_sample_us": max(raw - idle, 0.0) * 1e6, "delivered": got / expected,
            "fanned_out": fanned}


class _quiet:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return True


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", default="10,100,1000")
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--rate", type=float, default=20.0, help="samples per second")
    parser.add_argument("--processes", type=int, default=4, help="client processes")
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--idle", type=float, default=2.0,
                        help="seconds of idle CPU measured before each run")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 2 sessions")
    args = parser.parse_args(argv)
    if args.quick:
        args.sessions, args.samples, args.rate, args.processes = "2", 10, 100.0, 1
        args.idle = 0.2
    counts = [int(n) for n in args.sessions.split(",")]
    print(f"server CPU per sample, {args.samples} samples at {args.rate:g}/s, "
          f"{args.processes} client processes, {os.cpu_count()} CPUs", flush=True)
    rows = run(counts, args.samples, args.rate, args.processes, args.timeout, args.idle)
    by = {(row["kind"], row["sessions"]): row for row in rows}
    base = {kind: by[(kind, counts[0])]["per_sample_us"] for kind in ("zmq", "nats")}
    print()
    print(f"{'sessions':>8}  {'ZeroMQ us/sample':>17}  {'NATS us/sample':>15}  "
          f"{'NATS/ZeroMQ':>11}  {'ZeroMQ vs first':>15}  {'NATS vs first':>13}")
    for sessions in counts:
        zmq, nats = by[("zmq", sessions)], by[("nats", sessions)]
        print(f"{sessions:>8}  {zmq['per_sample_us']:>17.1f}  {nats['per_sample_us']:>15.1f}  "
              f"{ratio(nats['per_sample_us'], zmq['per_sample_us']):>11}  "
              f"{ratio(zmq['per_sample_us'], base['zmq']):>15}  "
              f"{ratio(nats['per_sample_us'], base['nats']):>13}")


if __name__ == "__main__":
    main()
