"""Issue 9's targets (item 7), every one beside its raw pyzmq baseline in the same run.

Run ``python benchmarks/bench_targets.py --repeats 3`` (4 to 8 minutes on 2 cores): it measures
every target and ends with one table of them (figure, baseline, ratio, goal, met or not).
``--quick`` takes a few seconds (``tests/test_bench_targets_run.py`` runs it so this script
cannot silently rot). ``--help`` lists the knobs; ``--only pipelined,codec,peers`` picks parts;
``--profile DIR`` writes a pyinstrument text profile of the RAIN server during each fan-out
measurement and while the sessions are established (``bench_roundtrip.py --profile`` does the
same for pipelined gets). Results:
``docs/reference/benchmarks.md``.

Every process talks over ``tcp://127.0.0.1`` (ephemeral ports) with CURVE on. The parts:

1. **pipelined** (and the one-in-flight p50): ``bench_roundtrip.py``'s raw drain echo and full
   server, each in a fresh child process, at 64 and at 1,024 requests in flight (interleaved,
   raw then RAIN, once per repeat); the sequential p50 comes from the 64-in-flight runs;
2. **codec**: ``bench_roundtrip.py``'s micro-benchmarks, encode+decode of a request against
   orjson and building a request ``Command`` against building the dict;
3. **fan-out**: one parameter published as fast as the server allows (a task on the server's
   loop calling ``publish`` and yielding after each) to 1, 10 and 100 subscribed sessions,
   against a raw CURVE ROUTER sending the same observe frames (encoded once per update) to as
   many DEALERs. Server and subscribers each run in their own child process; this process only
   steers and reads counters. Reported: updates delivered per second (summed over the
   subscribers, counted where they arrive) and server process CPU per delivered update.
4. **publisher**: a plugin thread calling ``Parameter.publish`` in a tight loop while 100
   sessions observe it, and another client doing one ``get`` of a second parameter at a time:
   the get's p50/p99/max, against the same with the publisher stopped.
5. **sessions**: 1,000 sessions opened to a server in a child process (64 establishing at
   once): server RSS growth per session and sessions established per second, against raw
   DEALERs connecting to a CURVE ROUTER and exchanging one frame;
6. **peers**: ``bench_peers.py``'s stacks at 64 in flight (raw, RAIN with CURVE, lime-python,
   caproto, asyncua; a peer whose package is missing is reported as skipped).

Every phase is bounded in time (and every loop in count): a stuck phase fails, never hangs.
Not part of the pytest suite's assertions: performance is measured here, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import multiprocessing
import os
import platform
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import nacl.signing
import orjson
import zmq
import zmq.asyncio
import zmq.auth.thread

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_peers
import bench_roundtrip
from _common import KeyCheck, pipe_inbox, print_run, ratio

from rain_envelopes.auth import ServerAuthenticator
from rain_envelopes.channel import ClientChannel, connect
from rain_envelopes.keys import AuthorizedKeys, Identity
from rain_envelopes.server import SAMPLE_TYPE, Limits, Parameter, Server
from rain_envelopes.transport import ServerSecurity

TIMESTAMP = "2026-01-01T00:00:00.000Z"
EPOCH = "20260101T000000Z-0badcafe"
VALUE = 21.5
START_TIMEOUT = 60.0
ASK_TIMEOUT = 60.0
PARTS = ("pipelined", "codec", "fanout", "publisher", "sessions", "peers")
#: "A few milliseconds": the most a thread publisher may add to a get's p99 (issue 9, item 7).
PUBLISHER_DELAY_GOAL_MS = 5.0


@dataclass(frozen=True)
class Settings:
    windows: tuple[int, ...] = (64, 1024)
    pipelined: int = 20000  # per run; at least 30 x the window (30,720 at 1,024)
    sequential: int = 3000
    codec_iterations: int = 20000
    peer_requests: int = 6000
    peer_window: int = 64
    fanout: tuple[int, ...] = (1, 10, 100)
    seconds: float = 3.0
    warmup: float = 1.0
    publisher_sessions: int = 100
    gets: int = 2000
    sessions: int = 1000
    parallel: int = 64
    repeats: int = 1
    parts: tuple[str, ...] = PARTS
    profile: Path | None = None

    @classmethod
    def quick(cls) -> Settings:
        return cls(windows=(8, 32), pipelined=200, sequential=50, codec_iterations=200,
                   peer_requests=64, peer_window=8, fanout=(1, 4), seconds=0.5, warmup=0.2,
                   publisher_sessions=4, gets=100, sessions=20, parallel=8)


def observe_frame(seq: int) -> bytes:
    """An observe envelope as the server sends it (the same shape and size)."""
    return orjson.dumps({
        "method": "observe", "uri": "/params/x", "type": SAMPLE_TYPE,
        "resource": {"value": VALUE + seq % 7, "timestamp": TIMESTAMP, "seq": seq,
                     "epoch": EPOCH},
    })


def rss_bytes() -> int:
    """Resident set size of this process (Linux /proc; 0 where unavailable)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


# =========================================================================== child processes


class Role:
    """What a child process does; answers the parent's verbs."""

    async def start(self) -> Any:
        return None

    async def handle(self, verb: str, argument: Any) -> Any:
        raise ValueError(f"{type(self).__name__}: unknown verb {verb!r}")

    async def stop(self) -> None:
        return None


class RainServer(Role):
    """The full server: ``x`` (published by the benchmark) and ``y`` (read by gets)."""

    def __init__(self, client_key: bytes, max_sessions: int) -> None:
        self.client_key = client_key
        self.max_sessions = max_sessions
        self.published = 0
        self._task: asyncio.Task[None] | None = None
        self._thread: threading.Thread | None = None
        self._halt = threading.Event()

    async def start(self) -> Any:
        identity = Identity.generate()
        authorized = AuthorizedKeys.from_mapping({self.client_key: "bench@local"})
        self.x = Parameter("x", value=0.0, unit="degC", description="published")
        self.server = Server(
            [self.x, Parameter("y", value=VALUE, description="read")],
            node="station@bench",
            authenticator=ServerAuthenticator(authorized),
            identity=identity,
            authorized_keys=authorized,
            limits=Limits(max_sessions=self.max_sessions, max_subscriptions=16),
        )
        await self.server.start()
        await self.server.listen(
            ["tcp://127.0.0.1:0"], security=ServerSecurity(identity, authorized)
        )
        return self.server.endpoints[0], identity.public_key

    async def _publish_on_loop(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        x = self.x
        for seq in range(100_000_000):  # bounded by time, and by count anyway
            if seq % 64 == 0 and time.monotonic() > deadline:
                break
            x.publish(VALUE + seq % 7)
            self.published += 1
            await asyncio.sleep(0)

    def _publish_from_thread(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        x, halt = self.x, self._halt
        for seq in range(100_000_000):
            if seq % 256 == 0 and (halt.is_set() or time.monotonic() > deadline):
                break
            x.publish(VALUE + seq % 7)
            self.published += 1

    async def handle(self, verb: str, argument: Any) -> Any:
        if verb == "publish":
            self._task = asyncio.create_task(self._publish_on_loop(float(argument)))
        elif verb == "thread":
            self._halt.clear()
            self._thread = threading.Thread(
                target=self._publish_from_thread, args=(float(argument),), daemon=True
            )
            self._thread.start()
        elif verb == "quiet":
            await self._quiet()
            return self.published
        else:
            return await super().handle(verb, argument)
        return None

    async def _quiet(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._thread is not None:
            self._halt.set()
            await asyncio.to_thread(self._thread.join, 10.0)
            self._thread = None

    async def stop(self) -> None:
        await self._quiet()
        await self.server.close()


class RawServer(Role):
    """A CURVE ROUTER: answers each DEALER's hello, and can stream observe frames to all."""

    def __init__(self, client_key: bytes) -> None:
        self.client_key = client_key
        self.peers: list[bytes] = []
        self.published = 0
        self.drops = 0
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> Any:
        self.loop = asyncio.get_running_loop()
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context(1)
        self.ctx.set(zmq.MAX_SOCKETS, 4096)
        self.auth = zmq.auth.thread.ThreadAuthenticator(self.ctx)
        self.auth.start()
        self.auth.configure_curve_callback("*", KeyCheck(self.client_key))
        public, secret = zmq.curve_keypair()
        router = self.ctx.socket(zmq.ROUTER)
        router.setsockopt(zmq.LINGER, 0)
        router.setsockopt(zmq.CURVE_SERVER, 1)
        router.setsockopt(zmq.CURVE_PUBLICKEY, public)
        router.setsockopt(zmq.CURVE_SECRETKEY, secret)
        router.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a full peer raises Again, not a silent drop
        router.bind("tcp://127.0.0.1:0")
        self.router = router
        fd = router.getsockopt(zmq.FD)
        assert isinstance(fd, int)
        self.fd = fd
        self.loop.add_reader(fd, self._drain)
        return router.getsockopt_string(zmq.LAST_ENDPOINT), public

    def _drain(self) -> None:
        router = self.router
        for _ in range(256):
            try:
                routing_id = router.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            router.recv(zmq.NOBLOCK)  # the hello
            self.peers.append(routing_id)
            router.send(routing_id, zmq.NOBLOCK | zmq.SNDMORE)
            router.send(b"welcome", zmq.NOBLOCK)
        self.loop.call_soon(self._drain)

    async def _stream(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        router, peers = self.router, list(self.peers)
        for seq in range(100_000_000):
            if seq % 64 == 0 and time.monotonic() > deadline:
                break
            frame = observe_frame(seq)  # encoded once, the same bytes to every peer
            full = False
            for routing_id in peers:
                try:
                    router.send(routing_id, zmq.NOBLOCK | zmq.SNDMORE)
                    router.send(frame, zmq.NOBLOCK)
                except zmq.Again:
                    self.drops += 1
                    full = True
            self.published += 1
            # Let the loop breathe every few updates, and at once when a peer is full (its
            # frame was dropped by the HWM and counted, as the server's subscription does).
            if full or seq % 8 == 7:
                await asyncio.sleep(0)

    async def handle(self, verb: str, argument: Any) -> Any:
        if verb == "peers":
            return len(self.peers)
        if verb == "publish":
            self._task = asyncio.create_task(self._stream(float(argument)))
            return None
        if verb == "quiet":
            if self._task is not None:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
                self._task = None
            return self.published
        return await super().handle(verb, argument)

    async def stop(self) -> None:
        await self.handle("quiet", None)
        self.loop.remove_reader(self.fd)
        self.router.close(linger=0)
        self.auth.stop()
        self.ctx.destroy(linger=0)


class RainSubscribers(Role):
    """``count`` sessions observing ``/params/x``; counts every observe that arrives."""

    def __init__(self, endpoint: str, server_key: bytes, seed: bytes, count: int) -> None:
        self.endpoint, self.server_key, self.count = endpoint, server_key, count
        self.identity = Identity(nacl.signing.SigningKey(seed))
        self.received = 0
        self.channels: list[ClientChannel] = []

    def _on_observe(self, _command: Any) -> None:
        self.received += 1

    async def start(self) -> Any:
        gate = asyncio.Semaphore(32)

        async def one() -> None:
            async with gate:
                channel = await connect(
                    self.endpoint, identity=self.identity, server_key=self.server_key,
                    command_timeout=30.0,
                )
                self.channels.append(channel)
                await channel.subscribe("/params/x", self._on_observe)

        async with asyncio.timeout(START_TIMEOUT):
            await asyncio.gather(*(one() for _ in range(self.count)))
        return len(self.channels)

    async def handle(self, verb: str, argument: Any) -> Any:
        if verb == "count":
            return self.received
        return await super().handle(verb, argument)

    async def stop(self) -> None:
        await _finish_all(self.channels)


class RawSubscribers(Role):
    """``count`` CURVE DEALERs; each says hello, then parses and counts every frame."""

    def __init__(self, endpoint: str, server_key: bytes, keypair: tuple[bytes, bytes],
                 count: int) -> None:
        self.endpoint, self.server_key, self.keypair, self.count = (
            endpoint, server_key, keypair, count)
        self.received = 0

    async def start(self) -> Any:
        loop = asyncio.get_running_loop()
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context(1)
        self.ctx.set(zmq.MAX_SOCKETS, 4096)
        self.socks: list[zmq.Socket[bytes]] = []
        welcomed = 0
        all_in = loop.create_future()
        for _ in range(self.count):
            sock = self.ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.CURVE_PUBLICKEY, self.keypair[0])
            sock.setsockopt(zmq.CURVE_SECRETKEY, self.keypair[1])
            sock.setsockopt(zmq.CURVE_SERVERKEY, self.server_key)
            sock.connect(self.endpoint)
            sock.send(b"hello")
            self.socks.append(sock)

            def drain(sock: zmq.Socket[bytes] = sock) -> None:
                nonlocal welcomed
                for _ in range(256):
                    try:
                        data = sock.recv(zmq.NOBLOCK)
                    except zmq.Again:
                        return
                    if data == b"welcome":
                        welcomed += 1
                        if welcomed == self.count and not all_in.done():
                            all_in.set_result(None)
                        continue
                    orjson.loads(data)
                    self.received += 1
                loop.call_soon(drain)

            fd = sock.getsockopt(zmq.FD)
            loop.add_reader(fd, drain)
            loop.call_soon(drain)
        await asyncio.wait_for(all_in, START_TIMEOUT)
        return self.count

    async def handle(self, verb: str, argument: Any) -> Any:
        if verb == "count":
            return self.received
        return await super().handle(verb, argument)

    async def stop(self) -> None:
        loop = asyncio.get_running_loop()
        for sock in self.socks:
            loop.remove_reader(sock.getsockopt(zmq.FD))
            sock.close(linger=0)
        self.ctx.destroy(linger=0)


async def _finish_all(channels: list[ClientChannel]) -> None:
    async def finish(channel: ClientChannel) -> None:
        with contextlib.suppress(Exception):
            await channel.finish(timeout=5.0)

    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(60.0):
            await asyncio.gather(*(finish(channel) for channel in channels))


ROLES: dict[str, Callable[..., Role]] = {
    "rain-server": RainServer,
    "raw-server": RawServer,
    "rain-subscribers": RainSubscribers,
    "raw-subscribers": RawSubscribers,
}


def _child_main(role: str, arguments: tuple[Any, ...], conn: Connection) -> None:
    logging.basicConfig(level=logging.ERROR)
    try:
        asyncio.run(_child(ROLES[role](*arguments), conn))
    finally:
        conn.close()


async def _child(role: Role, conn: Connection) -> None:
    loop = asyncio.get_running_loop()
    conn.send(("ok", await role.start()))
    inbox = pipe_inbox(conn)
    profiler: Any = None
    try:
        for _ in range(10_000):  # a handful of verbs per run; bounded anyway
            verb, argument = await inbox.get()
            if verb == "stop":
                break
            if verb == "cpu":
                reply: Any = time.process_time()
            elif verb == "rss":
                reply = rss_bytes()
            elif verb == "profile-on":
                import pyinstrument  # the dev extra

                profiler = pyinstrument.Profiler(interval=0.0005, async_mode="disabled")
                profiler.start()
                reply = None
            elif verb == "profile-off":
                if profiler is not None:
                    profiler.stop()
                    text = profiler.output_text(unicode=False, color=False)
                    await asyncio.to_thread(Path(argument).write_text, text)
                profiler = None
                reply = None
            else:
                reply = await role.handle(verb, argument)
            conn.send(("ok", reply))
    finally:
        with contextlib.suppress(OSError, ValueError):
            loop.remove_reader(conn.fileno())
        await role.stop()


class Child:
    """One role in a spawned child process, steered through a pipe."""

    def __init__(self, role: str, *arguments: Any) -> None:
        context = multiprocessing.get_context("spawn")
        self.conn, child_conn = context.Pipe()
        self.process = context.Process(
            target=_child_main, args=(role, arguments, child_conn),
            name=f"bench-{role}", daemon=True,
        )
        self.process.start()
        child_conn.close()
        self.info = self._answer(START_TIMEOUT)

    def _answer(self, timeout: float) -> Any:
        if not self.conn.poll(timeout):
            raise TimeoutError(f"{self.process.name} did not answer within {timeout} s")
        try:
            _ok, reply = self.conn.recv()
        except EOFError:
            self.process.join(5.0)
            raise RuntimeError(
                f"{self.process.name} ended (exit code {self.process.exitcode});"
                " see its traceback above"
            ) from None
        return reply

    def ask(self, verb: str, argument: Any = None) -> Any:
        self.conn.send((verb, argument))
        return self._answer(ASK_TIMEOUT)

    async def ask_async(self, verb: str, argument: Any = None) -> Any:
        return await asyncio.to_thread(self.ask, verb, argument)

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.send(("stop", None))
        self.process.join(70.0)
        if self.process.is_alive():  # our own child, by its handle
            self.process.terminate()
            self.process.join(5.0)
        self.conn.close()


# =========================================================================== parts


@dataclass
class FanOut:
    rate: float  # updates delivered per second, all subscribers together
    server_cpu_us: float  # server process CPU per delivered update
    client_cpu_us: float  # subscriber process CPU per delivered update


def fanout(kind: str, sessions: int, settings: Settings) -> FanOut:
    if kind == "raw":
        keypair = zmq.curve_keypair()
        server = Child("raw-server", keypair[0])
    else:
        identity = Identity.generate()
        server = Child("rain-server", identity.public_key, sessions + 16)
    subscribers: Child | None = None
    try:
        endpoint, server_key = server.info
        if kind == "raw":
            subscribers = Child("raw-subscribers", endpoint, server_key, keypair, sessions)
        else:
            seed = bytes(identity.signing_key)
            subscribers = Child("rain-subscribers", endpoint, server_key, seed, sessions)
        run = settings.warmup + settings.seconds + 5.0
        server.ask("publish", run)
        time.sleep(settings.warmup)
        profiling = settings.profile is not None and kind == "rain"
        if profiling:
            server.ask("profile-on")
        count0, cpu0, sub0 = subscribers.ask("count"), server.ask("cpu"), subscribers.ask("cpu")
        started = time.perf_counter()
        time.sleep(settings.seconds)
        count1, cpu1, sub1 = subscribers.ask("count"), server.ask("cpu"), subscribers.ask("cpu")
        elapsed = time.perf_counter() - started
        if profiling:
            assert settings.profile is not None
            server.ask("profile-off", str(settings.profile / f"fanout-{sessions}-server.txt"))
        server.ask("quiet")
    finally:
        if subscribers is not None:
            subscribers.stop()
        server.stop()
    delivered = max(1, count1 - count0)
    return FanOut(delivered / elapsed, (cpu1 - cpu0) * 1e6 / delivered,
                  (sub1 - sub0) * 1e6 / delivered)


@dataclass
class Latency:
    p50_ms: float
    p99_ms: float
    max_ms: float
    count: int


async def _get_latencies(channel: ClientChannel, count: int, seconds: float) -> Latency:
    times: list[float] = []
    deadline = time.monotonic() + seconds
    for _ in range(count):
        if time.monotonic() > deadline:
            break
        started = time.perf_counter()
        await channel.get("/params/y")
        times.append((time.perf_counter() - started) * 1e3)
    times.sort()
    return Latency(times[len(times) // 2], times[min(len(times) - 1, int(len(times) * 0.99))],
                   times[-1], len(times))


async def publisher(settings: Settings) -> tuple[Latency, Latency, float]:
    """(get latency quiet, get latency under a thread publisher, publications per second)."""
    identity = Identity.generate()
    server = Child("rain-server", identity.public_key, settings.publisher_sessions + 16)
    subscribers: Child | None = None
    channel: ClientChannel | None = None
    try:
        endpoint, server_key = server.info
        subscribers = Child("rain-subscribers", endpoint, server_key,
                            bytes(identity.signing_key), settings.publisher_sessions)
        channel = await connect(endpoint, identity=identity, server_key=server_key,
                                command_timeout=60.0)
        limit = settings.seconds * 4 + 30.0
        await _get_latencies(channel, 50, limit)
        quiet = await _get_latencies(channel, settings.gets, settings.seconds)
        await server.ask_async("thread", settings.seconds + 2.0)
        await asyncio.sleep(min(0.5, settings.warmup))
        started = time.perf_counter()
        busy = await _get_latencies(channel, settings.gets, settings.seconds)
        published = await server.ask_async("quiet")
        rate = published / (time.perf_counter() - started + min(0.5, settings.warmup))
    finally:
        if channel is not None:
            await _finish_all([channel])
        if subscribers is not None:
            subscribers.stop()
        server.stop()
    return quiet, busy, rate


@dataclass
class Sessions:
    per_session_kib: float
    per_second: float


async def sessions_rain(settings: Settings) -> Sessions:
    identity = Identity.generate()
    server = Child("rain-server", identity.public_key, settings.sessions + 16)
    channels: list[ClientChannel] = []
    try:
        endpoint, server_key = server.info
        # One session first, so the server's one-time costs (imports, first buffers) are paid.
        channels.append(await connect(endpoint, identity=identity, server_key=server_key))
        await asyncio.sleep(0.5)
        before = await server.ask_async("rss")
        gate = asyncio.Semaphore(settings.parallel)
        if settings.profile is not None:
            await server.ask_async("profile-on")

        async def one() -> None:
            async with gate:
                channels.append(await connect(
                    endpoint, identity=identity, server_key=server_key,
                    establish_timeout=60.0,
                ))

        started = time.perf_counter()
        async with asyncio.timeout(START_TIMEOUT * 4):
            await asyncio.gather(*(one() for _ in range(settings.sessions)))
        elapsed = time.perf_counter() - started
        if settings.profile is not None:
            await server.ask_async(
                "profile-off", str(settings.profile / f"sessions-{settings.sessions}-server.txt"))
        await asyncio.sleep(1.0)
        after = await server.ask_async("rss")
    finally:
        await _finish_all(channels)
        server.stop()
    return Sessions((after - before) / settings.sessions / 1024, settings.sessions / elapsed)


async def sessions_raw(settings: Settings) -> Sessions:
    keypair = zmq.curve_keypair()
    server = Child("raw-server", keypair[0])
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context(1)
    ctx.set(zmq.MAX_SOCKETS, 4096)
    socks: list[Any] = []
    try:
        endpoint, server_key = server.info
        actx = zmq.asyncio.Context(ctx)
        await asyncio.sleep(0.5)
        before = await server.ask_async("rss")
        gate = asyncio.Semaphore(settings.parallel)

        async def one() -> None:
            async with gate:
                sock = actx.socket(zmq.DEALER)
                socks.append(sock)
                sock.setsockopt(zmq.LINGER, 0)
                sock.setsockopt(zmq.CURVE_PUBLICKEY, keypair[0])
                sock.setsockopt(zmq.CURVE_SECRETKEY, keypair[1])
                sock.setsockopt(zmq.CURVE_SERVERKEY, server_key)
                sock.connect(endpoint)
                await sock.send(b"hello")
                await sock.recv()

        started = time.perf_counter()
        async with asyncio.timeout(START_TIMEOUT * 4):
            await asyncio.gather(*(one() for _ in range(settings.sessions)))
        elapsed = time.perf_counter() - started
        await asyncio.sleep(1.0)
        after = await server.ask_async("rss")
    finally:
        for sock in socks:
            sock.close(linger=0)
        ctx.destroy(linger=0)
        server.stop()
    return Sessions((after - before) / settings.sessions / 1024, settings.sessions / elapsed)


async def pipelined(window: int, settings: Settings, sequential: int
                    ) -> dict[str, bench_roundtrip.Result]:
    """``bench_roundtrip.py``'s raw echo and full server at ``window`` in flight, raw first."""
    quick = settings.pipelined < 1000
    config = bench_roundtrip.Settings(
        sequential=sequential, pipelined=max(settings.pipelined, window * 30), window=window,
        warmup=20 if quick else 300, codec_iterations=1, rounds=2 if quick else 3,
    )
    return {scenario: await bench_roundtrip.run_scenario(scenario, config)
            for scenario in ("raw", "server")}


PEER_STACKS = ("raw", "rain-curve", "lime", "caproto", "asyncua")


async def peers(settings: Settings) -> tuple[dict[str, float], dict[str, str]]:
    """(median gets/s per stack, why a stack was skipped), ``bench_peers.py``'s way."""
    logging.getLogger("asyncua").setLevel(logging.ERROR)  # it warns of a shortened timeout
    environment = bench_peers.loopback_ca_environment()
    os.environ.update(environment)  # the caproto client reads it, in this process
    config = bench_peers.Settings(
        requests=settings.peer_requests, window=settings.peer_window,
        rounds=2 if settings.peer_requests < 1000 else 3, repeats=settings.repeats,
        stacks=PEER_STACKS,
    )
    skipped = {stack: why for stack in PEER_STACKS
               if (why := bench_peers.available(stack)) is not None}
    rates: dict[str, list[float]] = {stack: [] for stack in PEER_STACKS if stack not in skipped}
    for _ in range(settings.repeats):  # interleaved, so a busy moment hits every stack alike
        for stack in rates:
            rates[stack].append(await bench_peers.run_stack(stack, config, environment))
    return {stack: statistics.median(r) for stack, r in rates.items()}, skipped


@dataclass(frozen=True)
class Target:
    """One of issue 9's targets as measured: our figure, its baseline, and the verdict."""

    label: str
    ours: str
    baseline: str
    shown: str  # the ratio (or the added delay) as compared with the goal
    goal: str
    met: bool


def ratio_target(label: str, ours: float, baseline: float, goal: float, higher: bool,
                 digits: int = 0) -> Target:
    value = ours / baseline if baseline else 0.0
    met = value >= goal if higher else 0 < value <= goal
    return Target(label, f"{ours:,.{digits}f}", f"{baseline:,.{digits}f}", f"{value:.2f}x",
                  f"{'>=' if higher else '<='} {goal:g}x", met)


def render_targets(targets: list[Target]) -> list[str]:
    header = (f"{'issue 9 target (item 7)':<52}{'RAIN':>10}{'baseline':>10}{'ratio':>9}"
              f"{'goal':>11}{'met':>5}")
    lines = ["", header, "-" * len(header)]
    for t in targets:
        lines.append(f"{t.label:<52}{t.ours:>10}{t.baseline:>10}{t.shown:>9}{t.goal:>11}"
                     f"{'yes' if t.met else 'NO':>5}")
    lines.append("(baseline: raw pyzmq in the same run, but for the publisher row (the same"
                 " server with the publisher stopped) and the peers row (the best peer))")
    met = sum(t.met for t in targets)
    lines.append(f"targets met: {met} of {len(targets)}")
    return lines


# =========================================================================== report


def _median(values: list[float]) -> float:
    return statistics.median(values)


async def main_async(settings: Settings) -> list[str]:
    lines = [
        "RAIN targets benchmark: tcp://127.0.0.1, CURVE on, every server in a child process",
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}, pyzmq {zmq.__version__},"
        f" libzmq {zmq.zmq_version()}, orjson {orjson.__version__}; medians of"
        f" {settings.repeats} run(s), {settings.seconds:g} s per fan-out/publisher measurement",
        "ratio = RAIN / raw pyzmq",
    ]
    targets: list[Target] = []
    if "pipelined" in settings.parts:
        header = (f"{'pipelined gets, full server':<34}{'raw req/s':>12}{'RAIN req/s':>12}"
                  f"{'ratio':>8}{'raw cpu/req':>13}{'RAIN cpu/req':>14}{'ratio':>8}")
        lines += ["", header, "-" * len(header)]
        p50s: dict[str, list[float]] = {"raw": [], "server": []}
        for window in settings.windows:
            runs: dict[str, list[bench_roundtrip.Result]] = {"raw": [], "server": []}
            first = window == settings.windows[0]
            for _ in range(settings.repeats):
                for scenario, result in (await pipelined(
                        window, settings, settings.sequential if first else 20)).items():
                    runs[scenario].append(result)
                    if first:
                        p50s[scenario].append(result.p50_us)
            raw_rate = _median([r.throughput for r in runs["raw"]])
            rate = _median([r.throughput for r in runs["server"]])
            raw_cpu = _median([r.server_cpu_us for r in runs["raw"]])
            cpu = _median([r.server_cpu_us for r in runs["server"]])
            lines.append(f"{f'{window} in flight':<34}{raw_rate:>12,.0f}{rate:>12,.0f}"
                         f"{ratio(rate, raw_rate):>8}{raw_cpu:>13,.1f}{cpu:>14,.1f}"
                         f"{ratio(cpu, raw_cpu):>8}")
            targets.append(ratio_target(f"pipelined gets, {window} in flight (req/s)", rate,
                                        raw_rate, 0.5, higher=True))
        raw_p50, p50 = _median(p50s["raw"]), _median(p50s["server"])
        lines.append(f"{'p50, one request in flight (us)':<34}{raw_p50:>12,.1f}{p50:>12,.1f}"
                     f"{ratio(p50, raw_p50):>8}")
        lines.append("(cpu/req: server process CPU in us per request, pipelined)")
        targets.append(ratio_target("p50, one request in flight (us)", p50, raw_p50, 1.2,
                                    higher=False, digits=1))
    if "codec" in settings.parts:
        header = f"{'codec (ns per call, best of 5)':<46}{'RAIN':>10}{'orjson':>10}{'ratio':>8}"
        lines += ["", header, "-" * len(header)]
        rows: dict[str, list[tuple[float, float]]] = {}
        for _ in range(settings.repeats):
            for label, ours, baseline in bench_roundtrip.codec_rows(settings.codec_iterations):
                rows.setdefault(label, []).append((ours, baseline))
        medians = {label: (_median([o for o, _ in v]), _median([b for _, b in v]))
                   for label, v in rows.items()}
        for label, (ours, baseline) in medians.items():
            short = label.removesuffix(" (ns)")
            lines.append(f"{short:<46}{ours:>10,.0f}{baseline:>10,.0f}"
                         f"{ratio(ours, baseline):>8}")
        ours, baseline = medians["codec request encode+decode (ns)"]
        targets.append(ratio_target("codec encode+decode of a request vs orjson (ns)", ours,
                                    baseline, 3.0, higher=False))
        ours, baseline = medians["build request: Command(...) vs dict (ns)"]
        targets.append(ratio_target("building a request envelope vs the dict (ns)", ours,
                                    baseline, 5.0, higher=False))
    if "fanout" in settings.parts:
        header = (f"{'fan-out of one parameter':<34}{'raw upd/s':>12}{'RAIN upd/s':>12}"
                  f"{'ratio':>8}{'raw cpu/upd':>13}{'RAIN cpu/upd':>14}{'ratio':>8}"
                  f"{'sub cpu/upd':>13}")
        lines += ["", header, "-" * len(header)]
        for sessions in settings.fanout:
            fruns: dict[str, list[FanOut]] = {"raw": [], "rain": []}
            for _ in range(settings.repeats):
                for kind in ("raw", "rain"):
                    fruns[kind].append(await asyncio.to_thread(fanout, kind, sessions, settings))
            raw = FanOut(*(_median([getattr(r, f) for r in fruns["raw"]])
                           for f in ("rate", "server_cpu_us", "client_cpu_us")))
            ours_f = FanOut(*(_median([getattr(r, f) for r in fruns["rain"]])
                              for f in ("rate", "server_cpu_us", "client_cpu_us")))
            lines.append(
                f"{f'observe to {sessions} session(s)':<34}{raw.rate:>12,.0f}"
                f"{ours_f.rate:>12,.0f}{ratio(ours_f.rate, raw.rate):>8}"
                f"{raw.server_cpu_us:>13,.1f}{ours_f.server_cpu_us:>14,.1f}"
                f"{ratio(ours_f.server_cpu_us, raw.server_cpu_us):>8}"
                f"{ours_f.client_cpu_us:>13,.1f}"
            )
            if sessions == max(settings.fanout):
                targets.append(ratio_target(
                    f"observe fan-out to {sessions} sessions (updates/s)", ours_f.rate,
                    raw.rate, 0.5, higher=True))
        lines.append("(cpu/upd: process CPU in us per delivered update; sub: RAIN subscribers)")
    if "publisher" in settings.parts:
        header = (f"{'get while a thread publishes':<34}{'p50 ms':>10}{'p99 ms':>10}"
                  f"{'max ms':>10}{'gets':>8}")
        lines += ["", header, "-" * len(header)]
        results = [await publisher(settings) for _ in range(settings.repeats)]
        figures: list[tuple[float, float]] = []
        for index, label in ((0, "publisher stopped"), (1, "publisher running")):
            picked = [r[1] if index else r[0] for r in results]
            p99 = _median([p.p99_ms for p in picked])
            figures.append((_median([p.p50_ms for p in picked]), p99))
            lines.append(
                f"{label + f' ({settings.publisher_sessions} observers)':<34}"
                f"{figures[-1][0]:>10,.2f}{p99:>10,.2f}"
                f"{_median([p.max_ms for p in picked]):>10,.2f}"
                f"{int(_median([p.count for p in picked])):>8}"
            )
        lines.append(f"publications/s from the plugin thread: "
                     f"{_median([r[2] for r in results]):,.0f}")
        added = figures[1][1] - figures[0][1]
        targets.append(Target(
            f"get p99 while a thread publishes to {settings.publisher_sessions} (ms)",
            f"{figures[1][1]:,.2f}", f"{figures[0][1]:,.2f}", f"{added:+.1f}ms",
            f"<= +{PUBLISHER_DELAY_GOAL_MS:g}ms", added <= PUBLISHER_DELAY_GOAL_MS))
    if "sessions" in settings.parts:
        header = (f"{f'{settings.sessions} established sessions':<34}{'raw':>12}{'RAIN':>12}"
                  f"{'ratio':>8}")
        lines += ["", header, "-" * len(header)]
        raws = [await sessions_raw(settings) for _ in range(settings.repeats)]
        ours_runs = [await sessions_rain(settings) for _ in range(settings.repeats)]
        picked_s: dict[str, tuple[float, float]] = {}
        for label, field in (("server memory per session (KiB)", "per_session_kib"),
                             ("sessions established per second", "per_second")):
            r = _median([getattr(x, field) for x in raws])
            o = _median([getattr(x, field) for x in ours_runs])
            picked_s[field] = (o, r)
            lines.append(f"{label:<34}{r:>12,.1f}{o:>12,.1f}{ratio(o, r):>8}")
        o, r = picked_s["per_session_kib"]
        targets.append(Target(f"server memory per session, {settings.sessions} (KiB)",
                              f"{o:,.1f}", f"{r:,.1f}", ratio(o, r), "<= 20 KiB", o <= 20.0))
        o, r = picked_s["per_second"]
        targets.append(Target("sessions established per second", f"{o:,.0f}", f"{r:,.0f}",
                              ratio(o, r), ">= 1,000/s", o >= 1000.0))
    if "peers" in settings.parts:
        header = (f"{f'gets/s, {settings.peer_window} in flight':<34}{'gets/s':>12}"
                  f"{'vs raw':>8}")
        lines += ["", header, "-" * len(header)]
        rates, skipped = await peers(settings)
        raw_rate = rates.get("raw", 0.0)
        for stack in PEER_STACKS:
            label = bench_peers.LABELS[stack]
            if stack in skipped:
                lines.append(f"{label:<34}  skipped: {skipped[stack]}")
            else:
                lines.append(f"{label:<34}{rates[stack]:>12,.0f}"
                             f"{ratio(rates[stack], raw_rate):>8}")
        found = {s: rates[s] for s in ("lime", "caproto", "asyncua") if s in rates}
        if found and "rain-curve" in rates:
            best = max(found, key=lambda s: found[s])
            lines.append(f"best peer: {bench_peers.LABELS[best]}")
            targets.append(ratio_target(
                f"gets/s at {settings.peer_window} in flight vs the best peer ({best})",
                rates["rain-curve"], found[best], 3.0, higher=True))
    if targets:
        lines += render_targets(targets)
    return lines


def parse_args(argv: list[str] | None = None) -> Settings:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="tiny counts (a few seconds)")
    parser.add_argument("--only", help=f"comma-separated parts of {','.join(PARTS)}")
    parser.add_argument("--windows", help="comma-separated requests in flight, e.g. 64,1024")
    parser.add_argument("--pipelined", type=int, help="pipelined gets per run (>= 30 x window)")
    parser.add_argument("--sequential", type=int, help="one-in-flight gets per run (the p50)")
    parser.add_argument("--codec-iterations", type=int, help="calls per codec timing")
    parser.add_argument("--peer-requests", type=int, help="gets per peer run")
    parser.add_argument("--peer-window", type=int, help="gets in flight for the peers")
    parser.add_argument("--fanout", help="comma-separated subscriber counts, e.g. 1,10,100")
    parser.add_argument("--seconds", type=float, help="length of each measurement")
    parser.add_argument("--sessions", type=int, help="sessions to establish")
    parser.add_argument("--publisher-sessions", type=int, help="observers during the publisher")
    parser.add_argument("--gets", type=int, help="gets at most per publisher phase")
    parser.add_argument("--repeats", type=int, help="runs per figure (medians reported)")
    parser.add_argument("--profile", type=Path,
                        help="pyinstrument profiles of fan-out and sessions into DIR")
    args = parser.parse_args(argv)
    settings = Settings.quick() if args.quick else Settings()
    changes: dict[str, Any] = {}
    if args.only:
        parts = tuple(p.strip() for p in args.only.split(",") if p.strip())
        if not set(parts) <= set(PARTS):
            parser.error(f"--only takes {', '.join(PARTS)}")
        changes["parts"] = parts
    for name, limit in (("windows", 100_000), ("fanout", 1000)):
        text = getattr(args, name)
        if text:
            try:
                counts = tuple(int(n) for n in text.split(","))
            except ValueError:
                parser.error(f"--{name} takes comma-separated whole numbers")
            if not all(1 <= n <= limit for n in counts):
                parser.error(f"--{name} counts must be between 1 and {limit:,}")
            changes[name] = counts
    if args.seconds is not None:
        if not 0.1 <= args.seconds <= 120:
            parser.error("--seconds must be between 0.1 and 120")
        changes["seconds"] = args.seconds
    for name in ("sessions", "publisher_sessions", "gets", "repeats", "pipelined",
                 "sequential", "codec_iterations", "peer_requests", "peer_window"):
        value = getattr(args, name)
        if value is not None:
            if not 1 <= value <= 10_000_000:
                parser.error(f"--{name.replace('_', '-')} must be between 1 and 10,000,000")
            changes[name] = value
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
        changes["profile"] = args.profile
    return replace(settings, **changes)


def main(argv: list[str] | None = None) -> int:
    return print_run(main_async, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
