"""An asyncio TCP fault proxy for tests: put a bad link between a client and a server.

``FaultProxy`` listens on an ephemeral port of 127.0.0.1 and forwards every connection it accepts
to a target ``(host, port)``. Faults are switched at run time and apply at once to every current
connection and to every new one::

    async with FaultProxy(("127.0.0.1", server_port)) as proxy:
        channel = await connect(proxy.endpoint, ...)     # "tcp://127.0.0.1:NNNN"
        proxy.blackhole()                                # the link dies silently
        ...
        proxy.pass_through()                             # and comes back

Theory of operation
-------------------

Each accepted connection (client side) gets its own connection to the target (server side) and
two *pipes*, one per direction: ``UPSTREAM`` (client to server) and ``DOWNSTREAM`` (server to
client). A pipe is two tasks around a FIFO queue of ``(arrival time, bytes)``: a reader that
reads whatever the source sends and stamps it on arrival, and a writer that takes the head of the
queue and decides, under the proxy's mode *at that moment*, when and how much of it to deliver.
Nothing ever sleeps per chunk in the reader, so one slow delivery never holds up reading, and
nothing is shared between connections except the bandwidth budget (below). Every decision is
re-taken whenever the mode changes, so a switch reaches bytes already queued.

Modes (:class:`Mode`, set with :meth:`FaultProxy.set_mode` or the shortcut methods):

``pass`` (:meth:`~FaultProxy.pass_through`)
    Forward bytes both ways as they come. End of stream (FIN) is forwarded as a half-close.

``reset`` (:meth:`~FaultProxy.reset`)
    Abort every connection with a TCP RST on both sides (``SO_LINGER`` 0, then close: the peers
    see ``ConnectionResetError`` or, if they were not reading, end of stream), and abort each new
    connection as soon as it is accepted, without dialling the target. A refused-looking dead
    server. :meth:`~FaultProxy.reset_all` does the same to current connections once and leaves
    the mode alone: a link cut after which clients may reconnect.

``blackhole`` (:meth:`~FaultProxy.blackhole`)
    Keep every connection open but silently discard every byte both ways, including bytes that
    were queued and not yet delivered, and a FIN that arrives meanwhile (a dead link sends no
    FIN). Neither peer's TCP notices anything: only application or ZMTP heartbeats can. Data
    discarded is gone: the peers see a byte stream with a hole in it when the mode is switched
    back. The hole falls between chunks as read, so small messages are lost whole; ZMTP with
    CURVE carries on after whole lost messages (its nonces need only increase), but a hole in
    the middle of a frame breaks any framed protocol.

``latency`` (:meth:`~FaultProxy.latency`)
    Deliver each chunk one-way delay after it arrived at the proxy, per direction, in order.
    Delivery is due at *arrival time + current delay*, so a chunk that arrives while earlier ones
    are waiting does not add their delay to its own: the delay is a property of the link, not a
    queue of sleeps. Changing the delay applies to queued chunks too (order is kept).

``bandwidth`` (:meth:`~FaultProxy.bandwidth`)
    Limit throughput to N bytes/s per direction for the whole proxy (the connections share the
    link, as on a real one): data is sent in pieces of about 20 ms worth of the rate (at least
    1 byte), and each piece books the link for ``len(piece) / rate`` seconds. An idle link earns
    no credit, so a burst goes out at the rate from its first byte.

``slicer`` (:meth:`~FaultProxy.slicer`)
    Forward data in tiny slices (1 to 7 bytes by default, sizes from a seeded random generator),
    one write and one event-loop turn each, so the receiver sees frames split at every possible
    place. Sockets use TCP_NODELAY (asyncio's default), so each slice leaves as its own segment.

Independently of the mode, :meth:`~FaultProxy.stall` holds every byte (the readers keep reading
and queueing, nothing is delivered, nothing is lost) until :meth:`~FaultProxy.resume` delivers
what was held, in order, under the mode then in force: a link that stalls for a while and comes
back, as TCP would deliver after its retransmissions succeed. Held bytes are kept in memory
without a bound; this is a test utility.

Counters for assertions: :attr:`~FaultProxy.accepted` (connections accepted so far),
:attr:`~FaultProxy.connections` (live ones), :attr:`~FaultProxy.resets` (connections the proxy
aborted), and per :class:`Direction` ``received`` (read from the source), ``forwarded``
(written to the destination), ``discarded`` (dropped by the blackhole), ``writes`` (write
calls, i.e. slices) and :attr:`~FaultProxy.held` (queued, not yet delivered).
:meth:`~FaultProxy.wait_until` waits for any condition on them with a timeout: tests wait on
what the proxy saw, never on a sleep.

:meth:`~FaultProxy.close` (or leaving ``async with``) stops listening, aborts every connection
and awaits every task the proxy started, so nothing leaks from one test to the next. Only
loopback addresses and ephemeral ports are used unless the caller says otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import random
import socket
import struct
from collections import deque
from collections.abc import Callable
from types import TracebackType

__all__ = ["Direction", "FaultProxy", "Mode", "ProxiedConnection"]

# SO_LINGER on, timeout 0: close() sends RST instead of FIN and drops unsent data.
_LINGER_RST = struct.pack("ii", 1, 0)


class Mode(enum.StrEnum):
    """What the proxy does to the bytes it forwards (see the module docstring)."""

    PASS = "pass"
    RESET = "reset"
    BLACKHOLE = "blackhole"
    LATENCY = "latency"
    BANDWIDTH = "bandwidth"
    SLICER = "slicer"


class Direction(enum.StrEnum):
    """One way through the proxy."""

    UPSTREAM = "upstream"  # client -> server
    DOWNSTREAM = "downstream"  # server -> client


def _abort_with_rst(writer: asyncio.StreamWriter | None) -> None:
    """Close the socket under ``writer`` so that the peer gets a RST; never raises."""
    if writer is None:
        return
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
    writer.transport.abort()


async def _wait_event(event: asyncio.Event, timeout: float | None) -> None:
    """Wait for ``event`` for at most ``timeout`` seconds (a timer: no error when it runs out)."""
    if timeout is None:
        await event.wait()
        return
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            await event.wait()


class _Pipe:
    """One direction of one connection: a reader task and a writer task around a FIFO queue."""

    def __init__(
        self,
        proxy: FaultProxy,
        direction: Direction,
        source: asyncio.StreamReader,
        destination: asyncio.StreamWriter,
    ) -> None:
        self.proxy = proxy
        self.direction = direction
        self.source = source
        self.destination = destination
        self.queue: deque[tuple[float, bytes]] = deque()
        self.eof = False
        self.wake = asyncio.Event()

    async def read_loop(self) -> None:
        proxy, loop = self.proxy, asyncio.get_running_loop()
        while True:
            data = await self.source.read(proxy.read_size)
            if not data:
                if proxy.mode is not Mode.BLACKHOLE:
                    self.eof = True  # a dead link loses the FIN as well
                    self.wake.set()
                return
            proxy._count(proxy.received, self.direction, len(data))
            if proxy.mode is Mode.BLACKHOLE:
                proxy._count(proxy.discarded, self.direction, len(data))
                continue
            self.queue.append((loop.time(), data))
            self.wake.set()

    async def write_loop(self) -> None:
        proxy, loop, direction = self.proxy, asyncio.get_running_loop(), self.direction
        while True:
            # Cleared before looking: whatever changes after this wakes the waits below.
            self.wake.clear()
            if not self.queue:
                if self.eof:
                    if self.destination.can_write_eof():
                        self.destination.write_eof()
                    return
                await _wait_event(self.wake, None)
                continue
            if proxy.stalled:
                await _wait_event(self.wake, None)
                continue
            mode = proxy.mode
            arrival, data = self.queue[0]
            if mode is Mode.BLACKHOLE:
                self.queue.popleft()
                proxy._count(proxy.discarded, direction, len(data))
                continue
            now = loop.time()
            if mode is Mode.LATENCY:
                due = arrival + proxy.delay[direction]
                if due > now:
                    await _wait_event(self.wake, due - now)
                    continue
            piece = data
            if mode is Mode.BANDWIDTH:
                free = proxy._link_free[direction]
                if free > now:
                    await _wait_event(self.wake, free - now)
                    continue
                rate = proxy.rate[direction]
                piece = data[: max(1, int(rate * 0.02))]
                proxy._link_free[direction] = now + len(piece) / rate
            elif mode is Mode.SLICER:
                piece = data[: proxy._rng.randint(*proxy.slice_sizes)]
            if len(piece) == len(data):
                self.queue.popleft()
            else:
                self.queue[0] = (arrival, data[len(piece) :])
            self.destination.write(piece)
            proxy.writes[direction] += 1
            proxy._count(proxy.forwarded, direction, len(piece))
            await self.destination.drain()
            if mode is Mode.SLICER:
                await asyncio.sleep(0)  # one loop turn per slice: the receiver may read each


class ProxiedConnection:
    """One client connection through the proxy and its connection to the target."""

    def __init__(
        self, proxy: FaultProxy, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self._proxy = proxy
        self._client_reader = reader
        self.client: asyncio.StreamWriter = writer
        self.server: asyncio.StreamWriter | None = None
        #: The client's (host, port) as the proxy saw it.
        self.peer: tuple[str, int] = writer.get_extra_info("peername")
        self.pipes: tuple[_Pipe, ...] = ()
        self.aborted = False
        self.task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<ProxiedConnection from {self.peer[0]}:{self.peer[1]}>"

    def wake(self) -> None:
        for pipe in self.pipes:
            pipe.wake.set()

    def abort(self) -> None:
        """RST both sides now and stop forwarding. Idempotent."""
        if self.aborted:
            return
        self.aborted = True
        _abort_with_rst(self.client)
        _abort_with_rst(self.server)
        if self.task is not None and self.task is not asyncio.current_task():
            self.task.cancel()

    async def run(self) -> None:
        proxy = self._proxy
        try:
            try:
                async with asyncio.timeout(proxy.connect_timeout):
                    reader, writer = await asyncio.open_connection(*proxy.target)
            except (OSError, TimeoutError):
                self.abort()  # as a server that refuses would: the client gets a RST
                return
            self.server = writer
            if self.aborted:  # reset while we dialled
                _abort_with_rst(writer)
                return
            self.pipes = (
                _Pipe(proxy, Direction.UPSTREAM, self._client_reader, writer),
                _Pipe(proxy, Direction.DOWNSTREAM, reader, self.client),
            )
            try:
                # A task group: a failure in one loop cancels the other three.
                async with asyncio.TaskGroup() as group:
                    for pipe in self.pipes:
                        group.create_task(pipe.read_loop())
                        group.create_task(pipe.write_loop())
            except* (ConnectionError, OSError):
                self.abort()  # pass a reset on: abort both sides, as a cut path would
            if not self.aborted:
                for side in (self.client, self.server):
                    side.close()
        finally:
            proxy._forget(self)


class FaultProxy:
    """A TCP proxy from an ephemeral port on ``host`` to ``target`` with switchable faults.

    Use as ``async with FaultProxy(("127.0.0.1", port)) as proxy:`` (or ``await start()`` and
    ``await close()``). The mode starts as ``pass``. See the module docstring for the modes.
    """

    def __init__(
        self,
        target: tuple[str, int],
        *,
        host: str = "127.0.0.1",
        seed: int = 0,
        read_size: int = 65536,
        connect_timeout: float = 5.0,
    ) -> None:
        self.target = target
        self.host = host
        self.read_size = read_size
        self.connect_timeout = connect_timeout
        self.mode = Mode.PASS
        self.stalled = False
        #: One-way delay per direction for ``latency``, seconds.
        self.delay: dict[Direction, float] = dict.fromkeys(Direction, 0.0)
        #: Bytes per second per direction for ``bandwidth``.
        self.rate: dict[Direction, float] = dict.fromkeys(Direction, float("inf"))
        #: Smallest and largest slice for ``slicer``, bytes.
        self.slice_sizes: tuple[int, int] = (1, 7)
        self.received: dict[Direction, int] = dict.fromkeys(Direction, 0)
        self.forwarded: dict[Direction, int] = dict.fromkeys(Direction, 0)
        self.discarded: dict[Direction, int] = dict.fromkeys(Direction, 0)
        self.writes: dict[Direction, int] = dict.fromkeys(Direction, 0)
        #: Connections accepted so far, and connections the proxy aborted with a RST.
        self.accepted = 0
        self.resets = 0
        self._rng = random.Random(seed)
        self._link_free: dict[Direction, float] = dict.fromkeys(Direction, 0.0)
        self._connections: set[ProxiedConnection] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self._changed = asyncio.Event()
        self._port: int | None = None

    # ------------------------------------------------------------------------ life cycle

    async def start(self) -> FaultProxy:
        """Listen on an ephemeral port of ``host``. Returns self."""
        if self._server is not None:
            raise RuntimeError("the proxy is already started")
        self._server = await asyncio.start_server(self._accept, self.host, 0)
        self._port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def close(self) -> None:
        """Stop listening, abort every connection and wait for every task. Idempotent."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for connection in list(self._connections):
            connection.abort()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if server is not None:
            await server.wait_closed()

    async def __aenter__(self) -> FaultProxy:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    # ------------------------------------------------------------------------ addresses

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)`` the proxy listens on."""
        if self._port is None:
            raise RuntimeError("the proxy is not started")
        return self.host, self._port

    @property
    def port(self) -> int:
        return self.address[1]

    @property
    def endpoint(self) -> str:
        """The listening address as a ZeroMQ endpoint, ``tcp://127.0.0.1:NNNN``."""
        host, port = self.address
        return f"tcp://{host}:{port}"

    # ------------------------------------------------------------------------ faults

    def set_mode(
        self,
        mode: Mode | str,
        *,
        delay: float | tuple[float, float] | None = None,
        rate: float | tuple[float, float] | None = None,
        slice_sizes: tuple[int, int] | None = None,
    ) -> None:
        """Switch every connection, current and new, to ``mode``.

        ``delay`` (seconds) and ``rate`` (bytes/s) take one value for both directions or an
        ``(upstream, downstream)`` pair; ``slice_sizes`` is ``(smallest, largest)``. Given values
        are kept for later switches to the same mode.
        """
        mode = Mode(mode)
        if delay is not None:
            self.delay = self._per_direction(delay, "delay", minimum=0.0)
        if rate is not None:
            self.rate = self._per_direction(rate, "rate", minimum=1.0)
        if slice_sizes is not None:
            low, high = slice_sizes
            if not 1 <= low <= high:
                raise ValueError(f"slice_sizes must be 1 <= smallest <= largest: {slice_sizes}")
            self.slice_sizes = (low, high)
        self.mode = mode
        if mode is Mode.RESET:
            self.reset_all()
        self._wake_all()

    def pass_through(self) -> None:
        """Mode ``pass``: forward bytes both ways."""
        self.set_mode(Mode.PASS)

    def reset(self) -> None:
        """Mode ``reset``: RST every connection, now and as each new one is accepted."""
        self.set_mode(Mode.RESET)

    def blackhole(self) -> None:
        """Mode ``blackhole``: connections stay open, every byte is silently dropped."""
        self.set_mode(Mode.BLACKHOLE)

    def latency(self, upstream: float, downstream: float | None = None) -> None:
        """Mode ``latency``: one-way delay in seconds (``downstream`` defaults to the same)."""
        down = upstream if downstream is None else downstream
        self.set_mode(Mode.LATENCY, delay=(upstream, down))

    def bandwidth(self, upstream: float, downstream: float | None = None) -> None:
        """Mode ``bandwidth``: bytes per second per direction (shared by all connections)."""
        down = upstream if downstream is None else downstream
        self.set_mode(Mode.BANDWIDTH, rate=(upstream, down))

    def slicer(self, smallest: int = 1, largest: int = 7) -> None:
        """Mode ``slicer``: forward in slices of ``smallest`` to ``largest`` bytes."""
        self.set_mode(Mode.SLICER, slice_sizes=(smallest, largest))

    def reset_all(self) -> None:
        """RST every current connection once; the mode is unchanged (new connections pass)."""
        for connection in list(self._connections):
            if not connection.aborted:
                self.resets += 1
                connection.abort()
        self._notify()

    def stall(self) -> None:
        """Hold every byte, both ways, until :meth:`resume` (nothing is lost)."""
        self.stalled = True
        self._wake_all()

    def resume(self) -> None:
        """Deliver what :meth:`stall` held, in order, and go on under the current mode."""
        self.stalled = False
        self._wake_all()

    # ------------------------------------------------------------------------ counters

    @property
    def connections(self) -> tuple[ProxiedConnection, ...]:
        """The live connections."""
        return tuple(self._connections)

    @property
    def bytes_forwarded(self) -> int:
        """Bytes delivered, both directions together."""
        return sum(self.forwarded.values())

    @property
    def held(self) -> int:
        """Bytes read and neither delivered nor discarded yet (stalled or delayed), both ways."""
        return sum(len(data) for c in self._connections for p in c.pipes for _, data in p.queue)

    async def wait_until(self, condition: Callable[[], bool], timeout: float = 5.0) -> None:
        """Return once ``condition()`` is true; it is checked after every change of a counter.

        Raises TimeoutError when it is still false after ``timeout`` seconds.
        """
        async with asyncio.timeout(timeout):
            while not condition():
                await self._changed.wait()

    # ------------------------------------------------------------------------ internals

    @staticmethod
    def _per_direction(
        value: float | tuple[float, float], name: str, *, minimum: float
    ) -> dict[Direction, float]:
        up, down = value if isinstance(value, tuple) else (value, value)
        if up < minimum or down < minimum:
            raise ValueError(f"{name} must be at least {minimum:g}: {value}")
        return {Direction.UPSTREAM: float(up), Direction.DOWNSTREAM: float(down)}

    def _notify(self) -> None:
        # Waiters hold the old event; a fresh one is armed for the next change.
        self._changed.set()
        self._changed = asyncio.Event()

    def _count(self, counter: dict[Direction, int], direction: Direction, n: int) -> None:
        counter[direction] += n
        self._notify()

    def _wake_all(self) -> None:
        for connection in self._connections:
            connection.wake()
        self._notify()

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        connection = ProxiedConnection(self, reader, writer)
        if self.mode is Mode.RESET or self._server is None:
            self.resets += 1
            connection.abort()
            self._notify()
            return
        self._connections.add(connection)
        task = asyncio.create_task(connection.run(), name=f"faultproxy-{connection.peer[1]}")
        connection.task = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        self._notify()

    def _forget(self, connection: ProxiedConnection) -> None:
        self._connections.discard(connection)
        self._notify()
