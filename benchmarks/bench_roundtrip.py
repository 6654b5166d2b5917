"""Round-trip benchmark: RAIN over ZeroMQ + CURVE against a raw pyzmq baseline, in one run.

Run ``python benchmarks/bench_roundtrip.py`` (about 20 s on 2 cores) or ``--quick`` (a few
seconds; ``tests/test_benchmarks_run.py`` runs it so this script cannot silently rot).
``--help`` lists the knobs; ``--profile DIR`` profiles both ends (pyinstrument if installed,
else cProfile on thread CPU time). Results and analysis: ``docs/reference/benchmarks.md``.

Scenarios, all on ``tcp://127.0.0.1`` with CURVE on and a ZAP handler answering:

1. **raw** - the floor for asyncio Python: a DEALER client and a ROUTER echo server written with
   plain pyzmq sockets driven from the event loop the efficient way (one wake-up drains every
   queued frame with non-blocking calls), orjson on both sides (the server parses the request
   and writes back a response of the same shape and size as ours, the client parses it and
   resolves the future waiting under its id);
2. **channel** - our stack without the server application: ``ServerChannel`` whose
   ``on_command`` returns ``cmd.success(sample)``, a ``ClientChannel`` doing ``get``;
3. **server** - the full ``rain_envelopes.server.Server`` with one stored parameter,
   ``get /params/x`` (URI split, access check, routing, sample document).

For each: sequential request/response latency (p50/p99 of one request at a time) and pipelined
throughput (``--window`` requests outstanding: that many coroutines each awaiting its own
request, the way an application issues concurrent commands), plus the CPU each process spent per
request during the pipelined phase (process CPU time, so it includes libzmq's I/O thread and the
CURVE crypto). Finally codec micro-benchmarks: ``encode`` + ``decode`` of a typical request and
response against ``orjson.dumps`` + ``orjson.loads`` of the same dict.

Process layout: **the server runs in a child process** (multiprocessing, spawn), the client in
this one. With both ends in one event loop every request would pay for both sides on one core
and the two stacks would interleave in the same loop, which measures neither a client nor a
server; on a 2-core machine separate processes give each end its own core, as in deployment.
A fresh child serves each scenario, so no scenario inherits another's heap or sockets.

Not part of the pytest suite: performance is measured here, never asserted in unit tests.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import logging
import multiprocessing
import os
import platform
import pstats
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import orjson
import zmq
import zmq.auth.thread

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import KeyCheck, pipe_inbox, ratio

from rain_envelopes.auth import ServerAuthenticator
from rain_envelopes.channel import ClientChannel, ServerChannel, connect
from rain_envelopes.codec import decode, encode, to_json_object
from rain_envelopes.envelopes import Command, CommandMethod
from rain_envelopes.keys import AuthorizedKeys, Identity
from rain_envelopes.server import SAMPLE_TYPE, Parameter, Server
from rain_envelopes.transport import ServerSecurity, transport_factory

URI = "/params/x"
VALUE = 21.5
TIMESTAMP = "2026-01-01T00:00:00.000Z"
EPOCH = "20260101T000000Z-0badcafe"
SCENARIOS = ("raw", "channel", "server")
#: Upper bound on any one phase; a stuck benchmark fails instead of hanging.
PHASE_TIMEOUT = 120.0
START_TIMEOUT = 30.0


@dataclass(frozen=True)
class Settings:
    sequential: int = 3000
    pipelined: int = 20000
    window: int = 64
    warmup: int = 300
    codec_iterations: int = 20000
    rounds: int = 3
    profile: Path | None = None

    @classmethod
    def quick(cls) -> Settings:
        return cls(sequential=200, pipelined=1000, window=16, warmup=50, codec_iterations=1000,
                   rounds=2)


@dataclass
class Result:
    p50_us: float = 0.0
    p99_us: float = 0.0
    mean_us: float = 0.0
    throughput: float = 0.0
    server_cpu_us: float = 0.0
    server_loop_cpu_us: float = 0.0
    client_cpu_us: float = 0.0
    client_loop_cpu_us: float = 0.0


def sample(seq: int) -> dict[str, Any]:
    return {"value": VALUE, "timestamp": TIMESTAMP, "seq": seq, "epoch": EPOCH}


# =========================================================================== profiling


class Profiler:
    """pyinstrument (sampling, low overhead) when installed, else cProfile on thread CPU time.

    cProfile's default wall clock charges a call for the time its thread was preempted, which
    on 2 busy cores makes every zmq ``send`` look expensive; thread CPU time does not.
    """

    def __init__(self) -> None:
        try:
            import pyinstrument  # optional: pip install pyinstrument (not a dependency)
        except ImportError:
            self._sampler: Any = None
            self._tracer: cProfile.Profile | None = cProfile.Profile(time.thread_time)
            self._tracer.enable()
        else:
            self._tracer = None
            self._sampler = pyinstrument.Profiler(interval=0.0005, async_mode="disabled")
            self._sampler.start()

    def stop(self, stem: Path) -> Path:
        """Stop and write a text report next to ``stem``; returns its path."""
        report = stem.with_suffix(".txt")
        if self._sampler is not None:
            self._sampler.stop()
            report.write_text(self._sampler.output_text(unicode=False, color=False))
        else:
            assert self._tracer is not None
            self._tracer.disable()
            self._tracer.dump_stats(stem.with_suffix(".pstats"))
            with report.open("w") as out:
                stats = pstats.Stats(self._tracer, stream=out)
                stats.sort_stats("tottime").print_stats(40)
                stats.sort_stats("cumulative").print_stats(60)
        return report


# =========================================================================== server processes


def _server_main(
    scenario: str, conn: Connection, client_key: bytes, profile_path: str | None
) -> None:
    """Child-process entry: serve ``scenario`` until the parent says stop."""
    # The listener's start-up self-test logs a refused probe key: expected, and not news here.
    logging.basicConfig(level=logging.ERROR)
    try:
        asyncio.run(_serve(scenario, conn, client_key, profile_path))
    finally:
        conn.close()


async def _serve(
    scenario: str, conn: Connection, client_key: bytes, profile_path: str | None
) -> None:
    stop: Callable[[], Awaitable[None]]
    if scenario == "raw":
        endpoint, server_key, stop = await _start_raw_server(client_key)
    elif scenario == "channel":
        endpoint, server_key, stop = await _start_channel_server(client_key)
    elif scenario == "server":
        endpoint, server_key, stop = await _start_rain_server(client_key)
    else:
        raise ValueError(f"unknown scenario {scenario!r}")
    loop = asyncio.get_running_loop()
    commands = pipe_inbox(conn)
    conn.send(("ready", (endpoint, server_key)))
    profiler: Profiler | None = None
    try:
        for _ in range(1000):  # a handful of control messages per run; bounded anyway
            verb, _argument = await commands.get()
            if verb == "stop":
                break
            if verb == "cpu":
                # Whole process (with libzmq's I/O thread) and this, the event-loop thread.
                conn.send(("cpu", (time.process_time(), time.thread_time())))
            elif verb == "profile-on":
                if profile_path is not None:
                    profiler = Profiler()
                conn.send(("ok", None))
            elif verb == "profile-off":
                if profiler is not None and profile_path is not None:
                    profiler.stop(Path(profile_path))
                    profiler = None
                conn.send(("ok", None))
    finally:
        with contextlib.suppress(OSError, ValueError):
            loop.remove_reader(conn.fileno())
        await stop()


# --------------------------------------------------------------------------- 1. raw pyzmq


async def _start_raw_server(
    client_key: bytes,
) -> tuple[str, bytes, Callable[[], Awaitable[None]]]:
    """A ROUTER echo server: orjson in, a response of our shape out, drained in batches."""
    loop = asyncio.get_running_loop()
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context(1)
    authenticator = zmq.auth.thread.ThreadAuthenticator(ctx)
    authenticator.start()
    authenticator.configure_curve_callback("*", KeyCheck(client_key))
    public, secret = zmq.curve_keypair()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.setsockopt(zmq.CURVE_SERVER, 1)
    router.setsockopt(zmq.CURVE_PUBLICKEY, public)
    router.setsockopt(zmq.CURVE_SECRETKEY, secret)
    # Far above any window: a ROUTER drops a reply silently at its send HWM, and at 1,024 in
    # flight a limit of 1,000 lost one now and then, leaving its request waiting forever.
    router.setsockopt(zmq.RCVHWM, 100_000)
    router.setsockopt(zmq.SNDHWM, 100_000)
    router.bind("tcp://127.0.0.1:0")
    endpoint = router.getsockopt_string(zmq.LAST_ENDPOINT)
    fd = router.getsockopt(zmq.FD)
    assert isinstance(fd, int)
    seq = 0
    scheduled = False

    def drain() -> None:
        nonlocal seq, scheduled
        scheduled = False
        for _ in range(256):
            try:
                routing_id = router.recv(zmq.NOBLOCK)
            except zmq.Again:
                return  # drained to EAGAIN: the next arrival raises a fresh edge
            data = router.recv(zmq.NOBLOCK)
            request = orjson.loads(data)
            seq += 1
            request["type"] = SAMPLE_TYPE
            request["resource"] = sample(seq)
            request["status"] = "success"
            router.send(routing_id, zmq.NOBLOCK | zmq.SNDMORE)
            router.send(orjson.dumps(request), zmq.NOBLOCK)
        if not scheduled:  # a full batch: let the loop breathe, then carry on
            scheduled = True
            loop.call_soon(drain)

    loop.add_reader(fd, drain)
    loop.call_soon(drain)

    async def stop() -> None:
        loop.remove_reader(fd)
        router.close(linger=0)
        authenticator.stop()
        ctx.destroy(linger=0)

    return endpoint, public, stop


# --------------------------------------------------------------------------- 2. channel


async def _start_channel_server(
    client_key: bytes,
) -> tuple[str, bytes, Callable[[], Awaitable[None]]]:
    """Our transport listener + ServerChannel with a plain ``on_command`` (no server app)."""
    identity = Identity.generate()
    authorized = AuthorizedKeys.from_mapping({client_key: "bench@local"})
    listener = transport_factory("tcp://127.0.0.1:0").listen(
        ["tcp://127.0.0.1:0"], ServerSecurity(identity, authorized)
    )
    await listener.start()
    authenticator = ServerAuthenticator(authorized)
    channels: list[ServerChannel] = []
    counter = iter(range(1, 1 << 62))

    def on_command(command: Command) -> Command:
        return command.success(sample(next(counter)), SAMPLE_TYPE)

    async def accept_loop() -> None:
        async for transport in listener:
            channel = ServerChannel(transport, node="bench@local", authenticator=authenticator)
            channel.on_command = on_command
            channels.append(channel)
            await channel.establish_session()

    accepting = asyncio.create_task(accept_loop())

    async def stop() -> None:
        accepting.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await accepting
        for channel in channels:
            await channel.close()
        await listener.close()

    return listener.endpoints[0], identity.public_key, stop


# --------------------------------------------------------------------------- 3. full server


async def _start_rain_server(
    client_key: bytes,
) -> tuple[str, bytes, Callable[[], Awaitable[None]]]:
    """The full RAIN server with one stored (in-memory) parameter."""
    identity = Identity.generate()
    authorized = AuthorizedKeys.from_mapping({client_key: "bench@local"})
    server = Server(
        [Parameter("x", value=VALUE, unit="degC", description="benchmark value")],
        node="station@bench",
        authenticator=ServerAuthenticator(authorized),
        identity=identity,
        authorized_keys=authorized,
    )
    await server.start()
    await server.listen(
        ["tcp://127.0.0.1:0"], security=ServerSecurity(identity, authorized)
    )
    return server.endpoints[0], identity.public_key, server.close


# =========================================================================== clients


class RawClient:
    """A DEALER client driven from the loop: one wake-up drains every queued response."""

    def __init__(
        self, endpoint: str, server_public: bytes, keypair: tuple[bytes, bytes]
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context(1)
        public, secret = keypair
        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, public)
        sock.setsockopt(zmq.CURVE_SECRETKEY, secret)
        sock.setsockopt(zmq.CURVE_SERVERKEY, server_public)
        sock.connect(endpoint)
        self._sock = sock
        fd = sock.getsockopt(zmq.FD)
        assert isinstance(fd, int)
        self._fd = fd
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._prefix = os.urandom(4).hex() + "-"
        self._counter = 0
        self._scheduled = False
        self._loop.add_reader(fd, self._drain)

    def _kick(self) -> None:
        # A send may consume the FD's edge for input already queued: look again soon.
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._drain)

    def _drain(self) -> None:
        self._scheduled = False
        sock, pending = self._sock, self._pending
        for _ in range(256):
            try:
                data = sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            response = orjson.loads(data)
            future = pending.pop(response["id"], None)
            if future is not None and not future.done():
                future.set_result(response)
        self._kick()

    async def get(self, uri: str) -> dict[str, Any]:
        self._counter += 1
        request_id = f"{self._prefix}{self._counter}"
        future: asyncio.Future[dict[str, Any]] = self._loop.create_future()
        self._pending[request_id] = future
        data = orjson.dumps({"id": request_id, "method": "get", "uri": uri})
        for _ in range(10_000):  # bounded wait for room (never needed at these windows)
            try:
                self._sock.send(data, zmq.NOBLOCK)
                break
            except zmq.Again:
                await asyncio.sleep(0.001)
        else:
            raise TimeoutError("no room to send")
        self._kick()
        try:
            return await future
        finally:
            self._pending.pop(request_id, None)

    def close(self) -> None:
        self._loop.remove_reader(self._fd)
        self._sock.close(linger=0)
        self._ctx.destroy(linger=0)


# =========================================================================== measuring


async def measure_sequential(request: Callable[[], Awaitable[Any]], count: int) -> list[int]:
    """Nanoseconds of each of ``count`` requests, one at a time."""
    clock = time.perf_counter_ns
    times: list[int] = []
    append = times.append
    for _ in range(count):
        started = clock()
        await request()
        append(clock() - started)
    return times


async def measure_pipelined(
    request: Callable[[], Awaitable[Any]], count: int, window: int
) -> float:
    """Seconds for ``count`` requests with ``window`` in flight (``window`` coroutines)."""
    per_worker, extra = divmod(count, window)

    async def worker(share: int) -> None:
        for _ in range(share):
            await request()

    started = time.perf_counter()
    await asyncio.gather(*(worker(per_worker + (i < extra)) for i in range(window)))
    return time.perf_counter() - started


def percentile(sorted_values: list[int], fraction: float) -> float:
    index = min(len(sorted_values) - 1, max(0, round(fraction * (len(sorted_values) - 1))))
    return float(sorted_values[index])


class ServerProcess:
    """One scenario's server in a spawned child process, driven through a pipe."""

    def __init__(self, scenario: str, client_key: bytes, profile_path: Path | None) -> None:
        context = multiprocessing.get_context("spawn")
        self.conn, child_conn = context.Pipe()
        self.process = context.Process(
            target=_server_main,
            args=(scenario, child_conn, client_key, str(profile_path) if profile_path else None),
            name=f"bench-server-{scenario}",
            daemon=True,
        )
        self.process.start()
        child_conn.close()
        self.endpoint, self.server_key = self._expect("ready", START_TIMEOUT)

    def _expect(self, verb: str, timeout: float) -> Any:
        if not self.conn.poll(timeout):
            raise TimeoutError(f"server process did not answer {verb!r} within {timeout} s")
        try:
            got, argument = self.conn.recv()
        except EOFError:
            self.process.join(5.0)
            raise RuntimeError(
                f"server process ended (exit code {self.process.exitcode}); see its traceback"
                " above"
            ) from None
        if got != verb:
            raise RuntimeError(f"server process answered {got!r}, expected {verb!r}")
        return argument

    def ask(self, verb: str) -> Any:
        self.conn.send((verb, None))
        return self._expect("ok" if verb.startswith("profile") else verb, 10.0)

    def cpu(self) -> tuple[float, float]:
        """(process, event-loop thread) CPU seconds of the server process so far."""
        process, thread = self.ask("cpu")
        return float(process), float(thread)

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.send(("stop", None))
        self.process.join(10.0)
        if self.process.is_alive():  # our own child, by its handle
            self.process.terminate()
            self.process.join(5.0)
        self.conn.close()


async def run_scenario(scenario: str, settings: Settings) -> Result:
    raw_keypair = zmq.curve_keypair()  # Z85; the raw server's ZAP handler admits this one
    client_identity: Identity | None = None
    if scenario == "raw":
        client_key = raw_keypair[0]
    else:
        client_identity = Identity.generate()
        client_key = client_identity.public_key
    profile_dir = settings.profile
    server_profile = profile_dir / f"{scenario}-server" if profile_dir else None
    server = ServerProcess(scenario, client_key, server_profile)
    close: Callable[[], Awaitable[None]] | None = None
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
            assert client_identity is not None
            channel: ClientChannel = await connect(
                server.endpoint,
                identity=client_identity,
                server_key=server.server_key,
                command_timeout=30.0,
            )

            async def request() -> Any:
                return await channel.get(URI)

            close = channel.finish

        async with asyncio.timeout(PHASE_TIMEOUT):
            first = await request()
            check_response(scenario, first)
            await measure_sequential(request, settings.warmup)
            times = sorted(await measure_sequential(request, settings.sequential))
            await measure_pipelined(request, settings.warmup, settings.window)
            profiler = None
            if profile_dir is not None and scenario != "raw":
                server.ask("profile-on")
                profiler = Profiler()
            # Rounds, each timed on its own: the best one is the least disturbed by whatever
            # else the machine runs; CPU time is summed over all of them.
            share, rest = divmod(settings.pipelined, settings.rounds)
            best = float("inf")
            server_before = server.cpu()
            client_before = time.process_time(), time.thread_time()
            for index in range(settings.rounds):
                count = share + (index < rest)
                elapsed = await measure_pipelined(request, count, settings.window)
                best = min(best, elapsed / count)
            client_after = time.process_time(), time.thread_time()
            server_after = server.cpu()
            if profiler is not None:
                assert profile_dir is not None
                profiler.stop(profile_dir / f"{scenario}-client")
                server.ask("profile-off")
    finally:
        if close is not None:
            with contextlib.suppress(Exception):
                await close()
        server.stop()
    per_request = 1e6 / settings.pipelined
    return Result(
        p50_us=percentile(times, 0.50) / 1000,
        p99_us=percentile(times, 0.99) / 1000,
        mean_us=sum(times) / len(times) / 1000,
        throughput=1 / best,
        server_cpu_us=(server_after[0] - server_before[0]) * per_request,
        server_loop_cpu_us=(server_after[1] - server_before[1]) * per_request,
        client_cpu_us=(client_after[0] - client_before[0]) * per_request,
        client_loop_cpu_us=(client_after[1] - client_before[1]) * per_request,
    )


def check_response(scenario: str, response: Any) -> None:
    """The first answer must be a real success of the expected shape (no silent nonsense)."""
    if scenario == "raw":
        ok = response.get("status") == "success" and response["resource"]["value"] == VALUE
    else:
        ok = isinstance(response, Command) and response.resource["value"] == VALUE
    if not ok:
        raise RuntimeError(f"{scenario}: unexpected response {response!r}")


# --------------------------------------------------------------------------- codec


def _best_ns(function: Callable[[], object], iterations: int, repeats: int = 5) -> float:
    """Best-of-``repeats`` nanoseconds per call (the least disturbed run)."""
    best = float("inf")
    clock = time.perf_counter_ns
    for _ in range(repeats):
        started = clock()
        for _ in range(iterations):
            function()
        best = min(best, (clock() - started) / iterations)
    return best


def codec_rows(iterations: int) -> list[tuple[str, float, float]]:
    """(label, ours ns, orjson ns) for the typical request and response."""
    request = Command(CommandMethod.GET, URI, id="0badcafe-12345")
    response = request.success(sample(12345), SAMPLE_TYPE)
    rows = []
    for label, envelope in (("request", request), ("response", response)):
        data = encode(envelope)
        obj = to_json_object(envelope)
        assert orjson.loads(data) == obj
        assert decode(data) == envelope
        rows.append((
            f"codec {label} encode+decode (ns)",
            _best_ns(partial(_roundtrip, envelope), iterations),
            _best_ns(partial(_orjson_roundtrip, obj), iterations),
        ))
        rows.append((
            f"codec {label} encode (ns)",
            _best_ns(partial(encode, envelope), iterations),
            _best_ns(partial(orjson.dumps, obj), iterations),
        ))
        rows.append((
            f"codec {label} decode (ns)",
            _best_ns(partial(decode, data), iterations),
            _best_ns(partial(orjson.loads, data), iterations),
        ))
    rows.append((
        "build request: Command(...) vs dict (ns)",
        _best_ns(partial(Command, CommandMethod.GET, URI, id="0badcafe-12345"), iterations),
        _best_ns(_request_dict, iterations),
    ))
    rows.append((
        "build response: cmd.success() vs dict (ns)",
        _best_ns(partial(_success, request), iterations),
        _best_ns(_response_dict, iterations),
    ))
    return rows


def _roundtrip(envelope: Command) -> object:
    return decode(encode(envelope))


def _orjson_roundtrip(obj: dict[str, Any]) -> object:
    return orjson.loads(orjson.dumps(obj))


def _success(request: Command) -> object:
    return request.success(sample(12345), SAMPLE_TYPE)


def _request_dict() -> object:
    return {"id": "0badcafe-12345", "method": "get", "uri": URI}


def _response_dict() -> object:
    return {
        "id": "0badcafe-12345", "method": "get", "uri": URI, "type": SAMPLE_TYPE,
        "resource": sample(12345), "status": "success",
    }


# =========================================================================== report


def _fmt(value: float, digits: int = 0) -> str:
    return f"{value:,.{digits}f}"


def render(results: dict[str, Result], codec: list[tuple[str, float, float]],
           settings: Settings, wall: float) -> str:
    raw, channel, server = results["raw"], results["channel"], results["server"]
    rows = [
        ("sequential p50 latency (us)", "p50_us", 1),
        ("sequential p99 latency (us)", "p99_us", 1),
        ("sequential mean latency (us)", "mean_us", 1),
        (f"pipelined throughput (req/s, window {settings.window})", "throughput", 0),
        ("server CPU/request, process (us, pipelined)", "server_cpu_us", 1),
        ("  of which event-loop thread (us)", "server_loop_cpu_us", 1),
        ("client CPU/request, process (us, pipelined)", "client_cpu_us", 1),
        ("  of which event-loop thread (us)", "client_loop_cpu_us", 1),
    ]
    header = (
        f"{'metric':<46}{'raw pyzmq':>12}{'channel':>12}{'ratio':>9}"
        f"{'server':>12}{'ratio':>9}"
    )
    lines = [
        "RAIN round-trip benchmark: tcp://127.0.0.1, CURVE on, server in a child process",
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}, pyzmq {zmq.__version__},"
        f" libzmq {zmq.zmq_version()}, orjson {orjson.__version__};"
        f" {settings.sequential} sequential + {settings.pipelined} pipelined requests"
        f" per scenario (throughput: best of {settings.rounds} rounds)",
        "ratio = ours / raw pyzmq (latency and CPU: lower is better; throughput: higher is better)",
        "",
        header,
        "-" * len(header),
    ]
    for label, attribute, digits in rows:
        r, c, s = (getattr(x, attribute) for x in (raw, channel, server))
        lines.append(
            f"{label:<46}{_fmt(r, digits):>12}{_fmt(c, digits):>12}{ratio(c, r):>9}"
            f"{_fmt(s, digits):>12}{ratio(s, r):>9}"
        )
    title = "micro-benchmark (per call, best of 5 runs)"
    codec_header = f"{title:<46}{'ours':>12}{'orjson':>12}{'ratio':>9}"
    lines += ["", codec_header, "-" * len(codec_header)]
    for label, ours, baseline in codec:
        lines.append(
            f"{label:<46}{_fmt(ours):>12}{_fmt(baseline):>12}{ratio(ours, baseline):>9}"
        )
    lines += ["", f"total wall time {wall:.1f} s"]
    return "\n".join(lines)


def print_profiles(directory: Path) -> None:
    print(f"\nprofiles of the pipelined phase (channel and server scenarios) in {directory}:")
    for path in sorted(directory.glob("*.txt")):
        print(f"  {path}")


async def main_async(settings: Settings) -> str:
    started = time.perf_counter()
    results: dict[str, Result] = {}
    for scenario in SCENARIOS:
        results[scenario] = await run_scenario(scenario, settings)
    codec = codec_rows(settings.codec_iterations)
    return render(results, codec, settings, time.perf_counter() - started)


def parse_args(argv: list[str] | None = None) -> Settings:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="small counts (a few seconds)")
    parser.add_argument("--sequential", type=int, help="sequential requests per scenario")
    parser.add_argument("--pipelined", type=int, help="pipelined requests per scenario")
    parser.add_argument("--window", type=int, help="requests in flight when pipelined")
    parser.add_argument("--warmup", type=int, help="warm-up requests before each phase")
    parser.add_argument("--codec-iterations", type=int, help="calls per codec timing")
    parser.add_argument("--rounds", type=int, help="timed slices of the pipelined phase")
    parser.add_argument(
        "--profile", type=Path, help="profile both ends of the pipelined phase into DIR"
    )
    args = parser.parse_args(argv)
    settings = Settings.quick() if args.quick else Settings()
    changes = {
        name: getattr(args, name)
        for name in ("sequential", "pipelined", "window", "warmup", "codec_iterations", "rounds")
        if getattr(args, name) is not None
    }
    for name, value in changes.items():
        if not 1 <= value <= 10_000_000:
            parser.error(f"--{name.replace('_', '-')} must be between 1 and 10,000,000")
    merged = {**settings.__dict__, **changes}
    if merged["pipelined"] < merged["rounds"] * merged["window"]:
        parser.error("--pipelined must be at least --rounds x --window")
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
        changes["profile"] = args.profile
    return Settings(**{**settings.__dict__, **changes})


def main(argv: list[str] | None = None) -> int:
    settings = parse_args(argv)
    table = asyncio.run(main_async(settings))
    print(table)
    if settings.profile is not None:
        print_profiles(settings.profile)
    return 0


if __name__ == "__main__":
    sys.exit(main())
