"""Tests of the fault proxy (tests/faultproxy.py): each mode against a plain asyncio echo server,
then a real RAIN session over ZeroMQ through the proxy.

Waits are on data, on the proxy's counters (``wait_until``) or on events, each with a timeout.
The timing checks (latency, bandwidth) assert lower bounds, which a loaded machine cannot break,
and upper bounds with wide margins, which only a proxy that serialises its delays can break.

A RAIN channel ended by a reset says why: ``close_reason`` is "link lost" (code 11) and its
state is no longer ``established`` (issue 8).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Callable

import pytest

from rain_envelopes.channel import ClientChannel, connect
from rain_envelopes.errors import CommandTimeout
from rain_envelopes.keys import AuthorizedKeys, Identity
from rain_envelopes.server import Parameter, Server
from tests.faultproxy import Direction, FaultProxy, Mode

from .server.conftest import ZMQ, Keys, running_server

UP, DOWN = Direction.UPSTREAM, Direction.DOWNSTREAM
WAIT = 5.0  # upper bound of any wait for something that must happen


class EchoServer:
    """A TCP echo server on an ephemeral port of 127.0.0.1 that records what it saw."""

    def __init__(self) -> None:
        self.received = 0
        self.connections: list[asyncio.StreamWriter] = []
        self.ended = 0  # connections that ended (EOF or reset)
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self._changed = asyncio.Event()
        self.port = 0

    async def __aenter__(self) -> EchoServer:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self.connections:
            writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    @property
    def target(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_until(self, condition: Callable[[], bool], timeout: float = WAIT) -> None:
        async with asyncio.timeout(timeout):
            while not condition():
                await self._changed.wait()

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections.append(writer)
        task = asyncio.create_task(self._echo(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        self._notify()

    async def _echo(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                self.received += len(data)
                self._notify()
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            self.ended += 1
            self._notify()
            writer.close()


async def read_exactly(reader: asyncio.StreamReader, n: int, timeout: float = WAIT) -> bytes:
    async with asyncio.timeout(timeout):
        return await reader.readexactly(n)


async def expect_reset(reader: asyncio.StreamReader, timeout: float = 2.0) -> None:
    """The connection under ``reader`` must end (RST, or EOF) within ``timeout`` seconds."""
    async with asyncio.timeout(timeout):
        with contextlib.suppress(ConnectionResetError):
            assert await reader.read(1) == b""


@contextlib.asynccontextmanager
async def echo_through_proxy() -> AsyncIterator[tuple[EchoServer, FaultProxy]]:
    async with EchoServer() as echo, FaultProxy(echo.target) as proxy:
        yield echo, proxy


async def open_client(
    proxy: FaultProxy,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = proxy.address
    return await asyncio.open_connection(host, port)


async def wait_received(proxy: FaultProxy, direction: Direction, total: int) -> None:
    """Wait until the proxy has read ``total`` bytes from that direction's source."""
    await proxy.wait_until(lambda: proxy.received[direction] == total)


def proxy_tasks() -> list[asyncio.Task[object]]:
    return [t for t in asyncio.all_tasks() if t.get_name().startswith("faultproxy")]


# ------------------------------------------------------------------------------ raw TCP


@pytest.mark.timeout(10)
async def test_pass_echoes_and_close_leaves_nothing() -> None:
    async with echo_through_proxy() as (echo, proxy):
        assert proxy.endpoint == f"tcp://127.0.0.1:{proxy.port}"
        assert proxy.mode is Mode.PASS
        clients = [await open_client(proxy) for _ in range(2)]
        for i, (reader, writer) in enumerate(clients):
            payload = f"hello {i}".encode() * 100
            writer.write(payload)
            assert await read_exactly(reader, len(payload)) == payload
        assert proxy.accepted == 2
        assert len(proxy.connections) == 2
        assert proxy.forwarded == {UP: 1400, DOWN: 1400} == proxy.received
        assert proxy.bytes_forwarded == 2800
        assert proxy.held == 0
        assert len(echo.connections) == 2

        # A client's FIN goes through as a half-close; the server's then comes back.
        reader, writer = clients[0]
        writer.write_eof()
        async with asyncio.timeout(WAIT):
            assert await reader.read() == b""
        await proxy.wait_until(lambda: len(proxy.connections) == 1)
        writer.close()
        still_open = clients[1][0]
    # Leaving the proxy aborts what is still open and leaves no task behind.
    await expect_reset(still_open)
    assert proxy_tasks() == []
    clients[1][1].close()


@pytest.mark.timeout(10)
async def test_reset_aborts_current_and_new_connections() -> None:
    async with echo_through_proxy() as (echo, proxy):
        reader, writer = await open_client(proxy)
        writer.write(b"ping")
        assert await read_exactly(reader, 4) == b"ping"

        proxy.reset()
        await expect_reset(reader)  # within 2 s
        # The server's side was cut too, and the proxy holds nothing.
        await echo.wait_until(lambda: echo.ended == 1)
        await proxy.wait_until(lambda: not proxy.connections)
        assert proxy.resets == 1

        # New connections are accepted by the kernel, then reset without dialling the server.
        late_reader, late_writer = await open_client(proxy)
        await expect_reset(late_reader)
        assert proxy.resets == 2
        assert len(echo.connections) == 1

        # reset_all is a one-shot cut: the mode stays pass and new connections work.
        proxy.pass_through()
        again_reader, again_writer = await open_client(proxy)
        again_writer.write(b"again")
        assert await read_exactly(again_reader, 5) == b"again"
        proxy.reset_all()
        await expect_reset(again_reader)
        assert proxy.mode is Mode.PASS
        assert proxy.resets == 3
        fresh_reader, fresh_writer = await open_client(proxy)
        fresh_writer.write(b"fresh")
        assert await read_exactly(fresh_reader, 5) == b"fresh"
        for w in (writer, late_writer, again_writer, fresh_writer):
            w.close()


@pytest.mark.timeout(10)
async def test_blackhole_drops_both_ways_and_keeps_the_connection() -> None:
    async with echo_through_proxy() as (echo, proxy):
        reader, writer = await open_client(proxy)
        writer.write(b"one")
        assert await read_exactly(reader, 3) == b"one"

        proxy.blackhole()
        writer.write(b"lost upstream")
        await proxy.wait_until(lambda: proxy.discarded[UP] == 13)
        server_side = echo.connections[0]
        server_side.write(b"lost downstream")
        await proxy.wait_until(lambda: proxy.discarded[DOWN] == 15)
        assert echo.received == 3  # the server never got the blackholed bytes
        assert len(proxy.connections) == 1  # and nobody saw the link drop
        assert echo.ended == 0

        proxy.pass_through()
        writer.write(b"two")
        # The first bytes the client reads are the new echo: nothing blackholed arrived late.
        assert await read_exactly(reader, 3) == b"two"
        assert echo.received == 6
        assert proxy.accepted == 1
        assert proxy.forwarded == {UP: 6, DOWN: 6}
        writer.close()


@pytest.mark.timeout(15)
async def test_latency_delays_each_chunk_without_serialising() -> None:
    delay = 0.4
    async with echo_through_proxy() as (_, proxy):
        reader, writer = await open_client(proxy)
        proxy.latency(delay)
        started = time.monotonic()
        writer.write(b"x")
        assert await read_exactly(reader, 1) == b"x"
        round_trip = time.monotonic() - started
        assert round_trip >= 2 * delay

        # Five chunks, each read by the proxy on its own before the next is sent: with a delay
        # per chunk in sequence they would take 5 x 0.4 s upstream alone; with arrival stamps
        # they all come back about one round trip after the last one was sent.
        started = time.monotonic()
        for i in range(5):
            writer.write(bytes([65 + i]))
            await wait_received(proxy, UP, 2 + i)
        assert await read_exactly(reader, 5) == b"ABCDE"  # in order
        elapsed = time.monotonic() - started
        assert 2 * delay <= elapsed < 5 * delay

        # Asymmetric: only the downstream direction is slow (1 s, a wide margin for the
        # upstream bound).
        proxy.latency(0.0, 1.0)
        started = time.monotonic()
        writer.write(b"y")
        await wait_received(proxy, DOWN, 7)
        upstream_done = time.monotonic() - started
        assert await read_exactly(reader, 1) == b"y"
        assert time.monotonic() - started >= 1.0
        assert upstream_done < 1.0
        writer.close()


@pytest.mark.timeout(15)
async def test_bandwidth_caps_the_rate() -> None:
    rate, size = 40_000, 40_000
    async with echo_through_proxy() as (_, proxy):
        reader, writer = await open_client(proxy)
        proxy.bandwidth(rate)
        payload = os.urandom(size)
        started = time.monotonic()
        writer.write(payload)
        assert await read_exactly(reader, size, timeout=10) == payload
        elapsed = time.monotonic() - started
        # Both directions are paced and overlap: the echo takes size/rate, less the first piece
        # of each direction (20 ms of the rate each), and not much more.
        assert elapsed >= (size - 2 * rate * 0.02) / rate
        assert elapsed < size / rate + 3.0
        assert proxy.writes[UP] >= size // int(rate * 0.02)
        writer.close()


@pytest.mark.timeout(10)
async def test_slicer_delivers_the_same_bytes_in_tiny_slices() -> None:
    size = 3000
    async with echo_through_proxy() as (echo, proxy):
        reader, writer = await open_client(proxy)
        proxy.slicer(1, 7)
        payload = os.urandom(size)
        writer.write(payload)
        assert await read_exactly(reader, size) == payload
        # Every write was at most 7 bytes: at least size/7 writes per direction.
        assert proxy.writes[UP] >= size / 7
        assert proxy.writes[DOWN] >= size / 7
        assert proxy.forwarded == {UP: size, DOWN: size}
        assert echo.received == size
        writer.close()


@pytest.mark.timeout(10)
async def test_stall_holds_bytes_and_resume_delivers_them_in_order() -> None:
    async with echo_through_proxy() as (echo, proxy):
        reader, writer = await open_client(proxy)
        writer.write(b"0")
        assert await read_exactly(reader, 1) == b"0"

        proxy.stall()
        for i, chunk in enumerate((b"abc", b"def", b"ghi")):
            writer.write(chunk)
            await wait_received(proxy, UP, 1 + 3 * (i + 1))
        assert proxy.held == 9
        assert echo.received == 1  # nothing went through
        # Stalled bytes from the server side are held too.
        echo.connections[0].write(b"srv")
        await proxy.wait_until(lambda: proxy.received[DOWN] == 4)
        assert proxy.held == 12

        proxy.resume()
        assert await read_exactly(reader, 12) == b"srvabcdefghi"
        assert echo.received == 10
        assert proxy.held == 0
        writer.close()


def test_rejects_bad_settings() -> None:
    proxy = FaultProxy(("127.0.0.1", 1))
    with pytest.raises(ValueError, match="delay"):
        proxy.latency(-1.0)
    with pytest.raises(ValueError, match="rate"):
        proxy.bandwidth(0)
    with pytest.raises(ValueError, match="slice_sizes"):
        proxy.slicer(5, 2)
    with pytest.raises(ValueError, match="flaky"):
        proxy.set_mode("flaky")
    with pytest.raises(RuntimeError, match="not started"):
        _ = proxy.endpoint


# ------------------------------------------------------------------------------ ZeroMQ


@pytest.fixture
def keys() -> Keys:
    station, alice = Identity.generate(), Identity.generate()
    authorized = AuthorizedKeys.from_mapping({alice.public_key_text: "alice@irf"})
    return Keys(station, alice, Identity.generate(), Identity.generate(), Identity.generate(),
                authorized)


async def rain_client(proxy: FaultProxy, keys: Keys) -> ClientChannel:
    return await connect(
        proxy.endpoint,
        identity=keys.alice,
        server_key=keys.station.public_key,
        establish_timeout=5.0,
        command_timeout=5.0,
    )


def server_target(server: Server) -> tuple[str, int]:
    host, port = server.endpoints[0].removeprefix("tcp://").rsplit(":", 1)
    return host, int(port)


zmq_only = pytest.mark.skipif(not ZMQ, reason="no ZMQ transport")


@zmq_only
@pytest.mark.timeout(15)
async def test_rain_session_through_blackhole_stall_and_reset(keys: Keys) -> None:
    parameters = [Parameter("temp", value=20.0)]
    async with (
        running_server(parameters, keys, "tcp") as server,
        FaultProxy(server_target(server)) as proxy,
    ):
        channel = await rain_client(proxy, keys)
        assert (await channel.get("/params/temp")).resource["value"] == 20.0
        assert proxy.accepted == 1

        # Blackhole: the get is lost and times out; the link itself is not noticed as dead.
        proxy.blackhole()
        with pytest.raises(CommandTimeout):
            await channel.get("/params/temp", timeout=0.5)
        assert proxy.discarded[UP] > 0
        assert not channel.closed

        # Back to pass: the lost get was whole ZMTP messages, which CURVE tolerates (its nonces
        # must only increase), so the same session goes on.
        proxy.pass_through()
        assert (await channel.get("/params/temp", timeout=3.0)).resource["value"] == 20.0

        # Stall then resume: the held get is delivered late, in order, and answered.
        proxy.stall()
        pending = asyncio.ensure_future(channel.get("/params/temp", timeout=5.0))
        await proxy.wait_until(lambda: proxy.held > 0)
        assert not pending.done()
        proxy.resume()
        assert (await pending).resource["value"] == 20.0

        # Reset: the ZeroMQ client transport is one connection and does not reconnect, so the
        # channel ends, and promptly (libzmq sees the RST at once).
        proxy.reset()
        async with asyncio.timeout(2.0):
            await channel.wait_closed()
        assert channel.closed
        assert proxy.accepted == 1  # no reconnection behind the session's back
        await channel.close()


@zmq_only
@pytest.mark.timeout(10)
async def test_rain_channel_says_why_after_reset(keys: Keys) -> None:
    async with (
        running_server([Parameter("temp", value=20.0)], keys, "tcp") as server,
        FaultProxy(server_target(server)) as proxy,
    ):
        channel = await rain_client(proxy, keys)
        await channel.get("/params/temp")
        proxy.reset()
        async with asyncio.timeout(2.0):
            await channel.wait_closed()
        try:
            assert channel.close_reason is not None
            assert channel.state.value != "established"
        finally:
            await channel.close()
