"""RAIN's gets per second beside its peers, each doing its own equivalent of a get, in one run.

Needs the ``bench`` extra (``pip install -e '.[bench]'``: lime-python, caproto, asyncua); a
peer whose package is missing is reported as skipped. Run ``python benchmarks/bench_peers.py``
(about a minute on 2 cores) or ``--quick``. Results: ``docs/reference/benchmarks.md``.

Every stack serves one value from a server in a child process (multiprocessing, spawn) to a
client in this process over 127.0.0.1 on an ephemeral port, with ``--window`` requests in flight
(that many coroutines each awaiting its own request), timed as the best of ``--rounds`` rounds:

- **raw pyzmq** (CURVE): the drain echo of ``bench_roundtrip.py``, the floor;
- **RAIN, CURVE** and **RAIN, insecure**: the full server, ``ClientChannel.get("/params/x")``;
- **lime-python** (no security): lime-python ships envelopes and a client channel but no network
  transport and no server, so its client channel runs over a small asyncio TCP transport written
  here (one JSON envelope per line), against an asyncio server that parses each command with
  lime-python's own ``Command.from_json`` and answers with a lime ``Command``'s ``to_json``. The
  session is marked established by hand (no handshake: lime-python has no server side for one);
  ``process_command_async`` is the get;
- **caproto** (EPICS Channel Access, which has no security layer): a caproto asyncio server with
  one PV, the asyncio client's ``PV.read()``. Name search is kept on loopback:
  ``EPICS_CA_ADDR_LIST=127.0.0.1``, ``EPICS_CA_AUTO_ADDR_LIST=NO``,
  ``EPICS_CAS_INTF_ADDR_LIST=127.0.0.1`` and free ports for the server and its beacons;
- **asyncua** (OPC UA binary, security policy None: its secured policies need certificates,
  not set up here): one variable node, ``Node.read_value()``.

Every loop is bounded in count and every phase in time. Not part of the pytest suite's
assertions: performance is measured here, never asserted (``tests/test_bench_targets_run.py``
only runs it with tiny counts).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import multiprocessing
import os
import platform
import socket
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_run
from bench_roundtrip import RawClient, ServerProcess

from rain_envelopes.auth import ServerAuthenticator
from rain_envelopes.channel import connect
from rain_envelopes.keys import AuthorizedKeys, Identity
from rain_envelopes.server import Parameter, Server
from rain_envelopes.transport import ServerSecurity

VALUE = 21.5
START_TIMEOUT = 30.0
PHASE_TIMEOUT = 120.0
STACKS = ("raw", "rain-curve", "rain-insecure", "lime", "caproto", "asyncua")
LABELS = {
    "raw": "raw pyzmq (CURVE)",
    "rain-curve": "RAIN (CURVE)",
    "rain-insecure": "RAIN (no security)",
    "lime": "lime-python (no security)",
    "caproto": "caproto CA (no security)",
    "asyncua": "asyncua OPC UA (None)",
}
OPTIONAL = {"lime": "lime_python", "caproto": "caproto", "asyncua": "asyncua"}


@dataclass(frozen=True)
class Settings:
    requests: int = 6000
    window: int = 64
    rounds: int = 3
    repeats: int = 3
    stacks: tuple[str, ...] = STACKS

    @classmethod
    def quick(cls) -> Settings:
        return cls(requests=200, window=8, rounds=2, repeats=1)


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def loopback_ca_environment() -> dict[str, str]:
    """Channel Access confined to loopback, on ports no other CA server uses."""
    return {
        "EPICS_CA_ADDR_LIST": "127.0.0.1",
        "EPICS_CA_AUTO_ADDR_LIST": "NO",
        "EPICS_CAS_INTF_ADDR_LIST": "127.0.0.1",
        "EPICS_CAS_BEACON_ADDR_LIST": "127.0.0.1",
        "EPICS_CAS_AUTO_BEACON_ADDR_LIST": "NO",
        "EPICS_CA_SERVER_PORT": str(free_port(socket.SOCK_DGRAM)),
    } | {"EPICS_CA_REPEATER_PORT": (port := str(free_port(socket.SOCK_DGRAM))),
         "EPICS_CAS_BEACON_PORT": port}


# =========================================================================== servers


async def _serve_rain(secure: bool) -> tuple[Any, Callable[[], Awaitable[None]]]:
    identity = Identity.generate()
    client = Identity.generate()
    authorized = AuthorizedKeys.from_mapping({client.public_key: "bench@local"})
    server = Server(
        [Parameter("x", value=VALUE)], node="station@bench",
        authenticator=ServerAuthenticator(authorized) if secure else None,
        identity=identity if secure else None,
        authorized_keys=authorized if secure else None,
    )
    await server.start()
    security = (ServerSecurity(identity, authorized) if secure
                else ServerSecurity(insecure=True))
    await server.listen(["tcp://127.0.0.1:0"], security=security)
    seed = bytes(client.signing_key)
    return (server.endpoints[0], identity.public_key, seed), server.close


async def _serve_lime() -> tuple[Any, Callable[[], Awaitable[None]]]:
    from lime_python import Command

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            for _ in range(100_000_000):
                line = await reader.readline()
                if not line:
                    break
                request = Command.from_json(json.loads(line))
                reply = Command(method=request.method, uri=request.uri,
                                type_n="application/x-rain-sample+json",
                                resource={"value": VALUE}, status="success")
                reply.id = request.id
                writer.write(json.dumps(reply.to_json()).encode() + b"\n")
        except (asyncio.CancelledError, ConnectionError):
            pass  # the benchmark is over: this connection ends with the server
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]

    async def stop() -> None:
        server.close()

    return port, stop


async def _serve_caproto() -> tuple[Any, Callable[[], Awaitable[None]]]:
    from caproto import ChannelDouble
    from caproto.asyncio.server import Context

    context = Context({"bench:x": ChannelDouble(value=VALUE)}, interfaces=["127.0.0.1"])
    task = asyncio.create_task(context.run(log_pv_names=False))
    await asyncio.sleep(0.5)

    async def stop() -> None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task

    return "bench:x", stop


async def _serve_asyncua() -> tuple[Any, Callable[[], Awaitable[None]]]:
    from asyncua import Server as UaServer

    server = UaServer()
    await server.init()
    url = f"opc.tcp://127.0.0.1:{free_port()}/bench/"
    server.set_endpoint(url)
    index = await server.register_namespace("urn:rain-bench")
    objects = server.nodes.objects
    holder = await objects.add_object(index, "bench")
    variable = await holder.add_variable(index, "x", VALUE)
    await server.start()
    return (url, variable.nodeid.to_string()), server.stop


SERVERS: dict[str, Callable[[], Awaitable[tuple[Any, Callable[[], Awaitable[None]]]]]] = {
    "rain-curve": lambda: _serve_rain(True),
    "rain-insecure": lambda: _serve_rain(False),
    "lime": _serve_lime,
    "caproto": _serve_caproto,
    "asyncua": _serve_asyncua,
}


def _peer_main(stack: str, conn: Connection, environment: dict[str, str]) -> None:
    os.environ.update(environment)
    logging.basicConfig(level=logging.ERROR)
    logging.getLogger("caproto").setLevel(logging.CRITICAL)  # beacons nobody listens for
    try:
        asyncio.run(_peer(stack, conn))
    finally:
        conn.close()


async def _peer(stack: str, conn: Connection) -> None:
    loop = asyncio.get_running_loop()
    stopped = asyncio.Event()
    info, stop = await SERVERS[stack]()
    loop.add_reader(conn.fileno(), stopped.set)
    conn.send(("ready", info))
    try:
        await asyncio.wait_for(stopped.wait(), PHASE_TIMEOUT * 4)
    finally:
        loop.remove_reader(conn.fileno())
        await stop()


class PeerProcess:
    def __init__(self, stack: str, environment: dict[str, str]) -> None:
        context = multiprocessing.get_context("spawn")
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_peer_main, args=(stack, child, environment),
                                       name=f"bench-peer-{stack}", daemon=True)
        self.process.start()
        child.close()
        if not self.conn.poll(START_TIMEOUT):
            self.stop()
            raise TimeoutError(f"{stack} server did not start within {START_TIMEOUT} s")
        try:
            _verb, self.info = self.conn.recv()
        except EOFError:
            self.stop()
            raise RuntimeError(f"{stack} server ended; see its traceback above") from None

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.send("stop")
        self.process.join(15.0)
        if self.process.is_alive():  # our own child, by its handle
            self.process.terminate()
            self.process.join(5.0)
        self.conn.close()


# =========================================================================== clients


class LineTransport:
    """lime-python's Transport interface over an asyncio TCP stream, one JSON envelope a line."""

    def __init__(self) -> None:
        from lime_python import Transport

        class _Transport(Transport):  # type: ignore[misc]
            def __init__(self) -> None:
                super().__init__("none", "none")
                self.writer: asyncio.StreamWriter | None = None
                self.reader_task: asyncio.Task[None] | None = None

            async def open_async(self, uri: str | None = None) -> None:
                assert uri is not None
                host, port = uri.rsplit(":", 1)
                reader, self.writer = await asyncio.open_connection(host, int(port))
                self.reader_task = asyncio.create_task(self._read(reader))

            async def _read(self, reader: asyncio.StreamReader) -> None:
                for _ in range(100_000_000):
                    line = await reader.readline()
                    if not line:
                        return
                    self.on_envelope(json.loads(line))

            async def close_async(self) -> None:
                if self.reader_task is not None:
                    self.reader_task.cancel()
                if self.writer is not None:
                    self.writer.close()

            def send(self, envelope: dict[str, Any]) -> None:
                assert self.writer is not None
                self.writer.write(json.dumps(envelope).encode() + b"\n")

            def get_supported_compression(self) -> list[str]:
                return ["none"]

            def set_compression(self, compression: str) -> None:
                return None

            def get_supported_encryption(self) -> list[str]:
                return ["none"]

            def set_encryption(self, encryption: str) -> None:
                return None

            def on_envelope(self, envelope: dict[str, Any]) -> None:  # replaced by the channel
                return None

        self.transport = _Transport()


async def client_for(stack: str, info: Any) -> tuple[Callable[[], Awaitable[Any]],
                                                      Callable[[], Awaitable[None]]]:
    """(one get, close) for ``stack``; the first get is checked to return the value."""
    if stack in ("rain-curve", "rain-insecure"):
        endpoint, server_key, seed = info
        if stack == "rain-curve":
            import nacl.signing

            channel = await connect(endpoint, identity=Identity(nacl.signing.SigningKey(seed)),
                                    server_key=server_key, command_timeout=60.0)
        else:
            channel = await connect(endpoint, insecure=True, command_timeout=60.0)

        async def get() -> Any:
            return (await channel.get("/params/x")).resource["value"]

        return get, channel.finish
    if stack == "lime":
        from lime_python import ClientChannel, Command
        from lime_python.protocol.constants import SessionState

        transport = LineTransport().transport
        await transport.open_async(f"127.0.0.1:{info}")
        lime = ClientChannel(transport)
        lime.state = SessionState.ESTABLISHED  # no handshake: see the module docstring

        async def get() -> Any:
            reply = await lime.process_command_async(Command(method="get", uri="/params/x"), 60)
            return reply.resource["value"]

        return get, transport.close_async
    if stack == "caproto":
        from caproto.asyncio.client import Context

        context = Context()
        (pv,) = await context.get_pvs(info, timeout=10.0)
        await pv.wait_for_connection(timeout=10.0)

        async def get() -> Any:
            return (await pv.read(timeout=60.0)).data[0]

        async def close() -> None:
            await context.disconnect()

        return get, close
    if stack == "asyncua":
        from asyncua import Client as UaClient

        url, nodeid = info
        client = UaClient(url, timeout=60)
        await client.connect()
        node = client.get_node(nodeid)

        async def get() -> Any:
            return await node.read_value()

        return get, client.disconnect
    raise ValueError(stack)


async def measure(get: Callable[[], Awaitable[Any]], settings: Settings) -> float:
    """Best-of-rounds gets per second with ``window`` in flight."""
    best = 0.0
    share = max(settings.window, settings.requests // settings.rounds)
    for _ in range(settings.rounds):
        per, extra = divmod(share, settings.window)

        async def worker(count: int) -> None:
            for _ in range(count):
                await get()

        started = time.perf_counter()
        await asyncio.gather(*(worker(per + (i < extra)) for i in range(settings.window)))
        best = max(best, share / (time.perf_counter() - started))
    return best


async def run_stack(stack: str, settings: Settings, environment: dict[str, str]) -> float:
    if stack == "raw":
        keypair = zmq.curve_keypair()
        server = ServerProcess("raw", keypair[0], None)
        raw = RawClient(server.endpoint, server.server_key, keypair)
        try:
            async with asyncio.timeout(PHASE_TIMEOUT):
                await measure(lambda: raw.get("/params/x"), Settings(
                    requests=settings.window * 4, window=settings.window, rounds=1))
                return await measure(lambda: raw.get("/params/x"), settings)
        finally:
            raw.close()
            server.stop()
    peer = PeerProcess(stack, environment)
    close: Callable[[], Awaitable[None]] | None = None
    try:
        async with asyncio.timeout(PHASE_TIMEOUT):
            get, close = await client_for(stack, peer.info)
            value = await get()
            if abs(float(value) - VALUE) > 1e-9:
                raise RuntimeError(f"{stack}: read {value!r}, expected {VALUE}")
            await measure(get, Settings(requests=settings.window * 4, window=settings.window,
                                        rounds=1))
            return await measure(get, settings)
    finally:
        if close is not None:
            with contextlib.suppress(Exception):
                await close()
        peer.stop()


def available(stack: str) -> str | None:
    """None when ``stack`` can run here, else why not."""
    module = OPTIONAL.get(stack)
    if module is None:
        return None
    try:
        __import__(module)
    except ImportError:
        return f"{module} not installed (pip install -e '.[bench]')"
    return None


async def main_async(settings: Settings) -> list[str]:
    # asyncua's client warns that the server shortened its session timeout: expected here.
    logging.getLogger("asyncua").setLevel(logging.ERROR)
    environment = loopback_ca_environment()
    os.environ.update(environment)  # the caproto client reads it, in this process
    rates: dict[str, list[float]] = {stack: [] for stack in settings.stacks}
    skipped: dict[str, str] = {}
    for stack in settings.stacks:
        reason = available(stack)
        if reason is not None:
            skipped[stack] = reason
    for _ in range(settings.repeats):  # interleaved, so a busy moment hits every stack alike
        for stack in settings.stacks:
            if stack not in skipped:
                rates[stack].append(await run_stack(stack, settings, environment))
    median = {s: statistics.median(r) for s, r in rates.items() if r}
    peers = [median[s] for s in ("lime", "caproto", "asyncua") if s in median]
    best_peer = max(peers) if peers else 0.0
    header = (f"{f'gets/s, {settings.window} in flight':<30}{'gets/s':>10}{'vs raw':>9}"
              f"{'RAIN CURVE vs':>15}")
    lines = [
        "RAIN and its peers: one value read over 127.0.0.1, server in a child process",
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}; {settings.requests}"
        f" gets per run (best of {settings.rounds} rounds), median of {settings.repeats} run(s)",
        "",
        header,
        "-" * len(header),
    ]
    raw = median.get("raw", 0.0)
    rain = median.get("rain-curve", 0.0)
    for stack in settings.stacks:
        if stack in skipped:
            lines.append(f"{LABELS[stack]:<30}  skipped: {skipped[stack]}")
            continue
        rate = median[stack]
        vs_raw = f"{rate / raw:.2f}x" if raw else "n/a"
        vs_rain = f"{rain / rate:.2f}x" if rate and stack != "rain-curve" else ""
        lines.append(f"{LABELS[stack]:<30}{rate:>10,.0f}{vs_raw:>9}{vs_rain:>15}")
    if best_peer and rain:
        lines += ["", f"RAIN (CURVE) / best peer: {rain / best_peer:.2f}x"]
    return lines


def parse_args(argv: list[str] | None = None) -> Settings:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="tiny counts (seconds)")
    parser.add_argument("--requests", type=int, help="gets per run")
    parser.add_argument("--window", type=int, help="gets in flight")
    parser.add_argument("--rounds", type=int, help="timed rounds per run (best reported)")
    parser.add_argument("--repeats", type=int, help="runs per stack (median reported)")
    parser.add_argument("--only", help=f"comma-separated stacks of {','.join(STACKS)}")
    args = parser.parse_args(argv)
    settings = Settings.quick() if args.quick else Settings()
    changes: dict[str, Any] = {}
    for name in ("requests", "window", "rounds", "repeats"):
        value = getattr(args, name)
        if value is not None:
            if not 1 <= value <= 1_000_000:
                parser.error(f"--{name} must be between 1 and 1,000,000")
            changes[name] = value
    if args.only:
        stacks = tuple(s.strip() for s in args.only.split(",") if s.strip())
        if not set(stacks) <= set(STACKS):
            parser.error(f"--only takes {', '.join(STACKS)}")
        changes["stacks"] = stacks
    return Settings(**{**settings.__dict__, **changes})


def main(argv: list[str] | None = None) -> int:
    return print_run(main_async, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
