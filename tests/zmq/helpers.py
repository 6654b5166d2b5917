"""Helpers for the ZeroMQ transport tests: bounded waits, log watching, listeners and clients.

Everything binds ``tcp://127.0.0.1:0`` (or an ipc path under ``tmp_path``) and reads back the
real endpoint, so tests never fight over ports. Helpers bound every wait with a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import zmq
import zmq.utils.z85

from rain_envelopes.keys import AuthorizedKeys, Identity
from rain_transport_zmq import ZmqOptions, ZmqPeerTransport, ZmqTransport, ZmqTransportListener

T = TypeVar("T")

#: Upper bound for any single wait in these tests (seconds).
STEP = 5.0


async def bounded(awaitable: Awaitable[T], seconds: float = STEP) -> T:
    """Await with a deadline; a hang becomes a TimeoutError naming nothing but failing fast."""
    async with asyncio.timeout(seconds):
        return await awaitable


class LogWatcher(logging.Handler):
    """Collects the transport's log messages; a test awaits the one that proves an event.

    Waiting on the log line the code emits at the moment something happens (a refusal, a
    dropped frame, a closed link) is event-driven: no polling, no sleeps.
    """

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.messages: list[str] = []
        self._waiters: list[tuple[str, int, asyncio.Future[None]]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())
        for fragment, times, waiter in list(self._waiters):
            if not waiter.done() and self.count(fragment) >= times:
                waiter.get_loop().call_soon_threadsafe(_resolve, waiter)

    def count(self, fragment: str) -> int:
        return sum(fragment in message for message in self.messages)

    async def wait_for(self, fragment: str, times: int = 1, seconds: float = STEP) -> None:
        """Return once ``fragment`` was logged ``times`` times; TimeoutError after ``seconds``."""
        if self.count(fragment) >= times:
            return
        waiter = asyncio.get_running_loop().create_future()
        entry = (fragment, times, waiter)
        self._waiters.append(entry)
        try:
            await bounded(waiter, seconds)
        finally:
            self._waiters.remove(entry)


async def eventually(predicate: Callable[[], bool], seconds: float = STEP) -> None:
    """Return once ``predicate()`` holds; TimeoutError after ``seconds``.

    Only for state nothing signals (a counter another thread bumps, a descriptor set): it
    looks every 10 ms within the deadline. Prefer waiting on a log line or an event.
    """
    async with asyncio.timeout(seconds):
        while not predicate():  # noqa: ASYNC110 - nothing signals this state
            await asyncio.sleep(0.01)


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


@contextlib.asynccontextmanager
async def listening(
    identity: Identity,
    keys: AuthorizedKeys,
    endpoint: str = "tcp://127.0.0.1:0",
    **kwargs: Any,
) -> AsyncIterator[ZmqTransportListener]:
    """A started secure listener, closed on exit."""
    listener = ZmqTransportListener(endpoint, identity=identity, authorized_keys=keys, **kwargs)
    await bounded(listener.start())
    try:
        yield listener
    finally:
        await bounded(listener.close())


async def accept_peer(listener: ZmqTransportListener) -> ZmqPeerTransport:
    """The listener's next peer, within ``STEP``; it must be a ZeroMQ peer transport."""
    peer = await bounded(listener.accept())
    assert isinstance(peer, ZmqPeerTransport)
    return peer


def client_for(
    listener: ZmqTransportListener,
    identity: Identity,
    server: Identity,
    *,
    endpoint: str | None = None,
    options: ZmqOptions | dict[str, Any] | None = None,
) -> ZmqTransport:
    return ZmqTransport(
        endpoint or listener.endpoints[0],
        identity=identity,
        server_key=server.public_key,
        options=options,
    )


def raw_curve_dealer(
    context: zmq.Context[Any], identity: Identity, server: Identity
) -> zmq.Socket[Any]:
    """A bare DEALER holding ``identity``'s CURVE keys and pinning ``server``: an attacker's (or
    a careless client's) socket, with none of our transport's manners. Not yet connected."""
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    public, secret = identity.curve_keypair()
    sock.curve_publickey = zmq.utils.z85.encode(public)
    sock.curve_secretkey = zmq.utils.z85.encode(secret)
    sock.curve_serverkey = zmq.utils.z85.encode(server.curve_keypair()[0])
    return sock


def port_of(endpoint: str) -> int:
    return int(endpoint.rsplit(":", 1)[1])


class Stopwatch:
    def __init__(self) -> None:
        self.start = time.perf_counter()

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start
