"""What one peer can make a channel spend: requests in progress, and lines of log.

- A session's requests whose answers are in the works are bounded; the rest are refused at
  once with 34, before the handler runs, and each answer frees its place.
- Thousands of bad frames, or of replies dropped for a full peer queue, from one peer are a
  bounded number of log lines, one of which carries the count.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any

import pytest

from rain_envelopes.auth import ServerAuthenticator
from rain_envelopes.channel import ClientChannel, ServerChannel
from rain_envelopes.envelopes import Command, CommandStatus, ReasonCode
from rain_envelopes.errors import QueueFull
from rain_envelopes.keys import AuthorizedKeys, Identity
from rain_envelopes.peerlog import PeerLog
from rain_envelopes.transport import Transport, memory_transport_pair
from tests.passthrough import PassThroughTransport

ALICE = Identity.generate()
KEYS = AuthorizedKeys({ALICE.public_key: "alice@irf"})
STEP = 5.0  # seconds any single wait may take before the test fails


class Clock:
    """A clock the test moves, so a log interval can end without waiting for it."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@asynccontextmanager
async def channels(
    *, wrap_server: Callable[[Transport], Transport] | None = None, **server_options: object
) -> AsyncIterator[tuple[ClientChannel, ServerChannel]]:
    client_end, server_end = memory_transport_pair()
    server = ServerChannel(
        wrap_server(server_end) if wrap_server else server_end,
        node="srv@irf/main",
        authenticator=ServerAuthenticator(KEYS),
        **server_options,  # type: ignore[arg-type]
    )
    client = ClientChannel(client_end, node="alice@irf/lab", identity=ALICE)
    try:
        async with asyncio.timeout(STEP):
            await asyncio.gather(server.establish_session(), client.establish_session())
        yield client, server
    finally:
        await client.close()
        await server.close()


def _lines(caplog: pytest.LogCaptureFixture, *needles: str) -> list[str]:
    return [
        r.getMessage() for r in caplog.records
        if r.name == "rain.channel" and any(n in r.getMessage() for n in needles)
    ]


# ------------------------------------------------------------------------ requests in progress


async def test_requests_beyond_the_bound_are_refused_at_once_and_answers_free_room() -> None:
    bound, sent = 4, 40
    gate = asyncio.Event()
    calls: list[str] = []

    async def slow(command: Command) -> Command:
        await gate.wait()
        return command.success({"uri": command.uri})

    def handler(command: Command) -> Awaitable[Command]:
        calls.append(command.uri or "")
        return slow(command)

    async with channels(max_requests_in_progress=bound) as (client, server):
        server.on_command = handler
        requests = [
            asyncio.ensure_future(client.send_command(Command("get", f"/slow/{i}")))
            for i in range(sent)
        ]
        try:
            # Every request beyond the bound is answered while the first ones still wait.
            refused = 0
            async with asyncio.timeout(STEP):
                for future in asyncio.as_completed(requests):
                    response = await future
                    assert response.status is CommandStatus.FAILURE
                    assert response.reason is not None
                    assert response.reason.code == ReasonCode.AUTHORIZATION_QUOTA_EXCEEDED == 34
                    refused += 1
                    if refused == sent - bound:
                        break
            waiting = [r for r in requests if not r.done()]
            assert len(waiting) == bound
            assert calls == [f"/slow/{i}" for i in range(bound)]  # refused ones never ran
            # A ping is the channel's own business and is never refused.
            async with asyncio.timeout(STEP):
                await client.ping()
            gate.set()
            async with asyncio.timeout(STEP):
                answers = await asyncio.gather(*waiting)
            assert all(a.status is CommandStatus.SUCCESS for a in answers)
            # Their answers freed their places: the bound is available again, in full.
            async with asyncio.timeout(STEP):
                again = await asyncio.gather(
                    *(client.send_command(Command("get", f"/again/{i}")) for i in range(bound))
                )
            assert all(a.status is CommandStatus.SUCCESS for a in again)
        finally:
            gate.set()
            for request in requests:
                request.cancel()


def test_the_bound_must_be_positive() -> None:
    _, server_end = memory_transport_pair()
    with pytest.raises(ValueError, match="max_requests_in_progress"):
        ServerChannel(server_end, node="srv@irf", authenticator=None, max_requests_in_progress=0)


# ------------------------------------------------------------------------------ logging


async def test_thousands_of_bad_frames_are_two_lines_with_a_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="rain.channel")
    clock = Clock()
    peer_log = PeerLog(logging.getLogger("rain.channel"), interval=10.0, clock=clock)
    bad = 3000
    async with channels(peer_log=peer_log) as (client, server):
        server.on_command = lambda command: command.success({})
        for index in range(bad):
            await client.transport.send(b"not json %d" % index)
        # Frames are handled in order: once this is answered, every bad frame has been.
        async with asyncio.timeout(STEP):
            await client.send_command(Command("get", "/after"))
        assert peer_log.counts["bad-frame"] == bad
        assert len(_lines(caplog, "broke the protocol", "bad-frame")) == 1
        clock.now += 10.0
        peer_log.flush()
        lines = _lines(caplog, "broke the protocol", "bad-frame")
        assert len(lines) == 2
        assert lines[1].startswith(f"{bad - 1} more bad-frame events from alice@irf")
        assert not server.closed


class _AlwaysFull(PassThroughTransport):
    """After ``fill()``, every send is refused as if the peer had stopped reading."""

    def __init__(self, inner: Transport, refusals: int) -> None:
        super().__init__(inner)
        self.full = False
        self.refused = 0
        self.enough = asyncio.Event()
        self._refusals = refusals

    async def send(self, data: bytes) -> None:
        if self.full:
            self.refused += 1
            if self.refused >= self._refusals:
                self.enough.set()
            raise QueueFull("peer queue full")
        await self.inner.send(data)


async def test_thousands_of_dropped_replies_are_two_lines_with_a_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="rain.channel")
    clock = Clock()
    peer_log = PeerLog(logging.getLogger("rain.channel"), interval=10.0, clock=clock)
    floods = 3000
    wrapped: list[_AlwaysFull] = []

    def wrap(inner: Transport) -> Transport:
        wrapped.append(_AlwaysFull(inner, floods))
        return wrapped[0]

    async with channels(wrap_server=wrap, peer_log=peer_log) as (client, server):
        server.on_command = lambda command: command.success({})
        wrapped[0].full = True
        for index in range(floods):
            await client.send(Command("get", f"/x/{index}", id=f"g{index}"))
        async with asyncio.timeout(STEP):
            await wrapped[0].enough.wait()
        assert peer_log.counts["queue-full"] >= floods
        assert len(_lines(caplog, "queue full", "queue-full")) == 1
        clock.now += 10.0
        peer_log.flush()
        lines = _lines(caplog, "queue full", "queue-full")
        assert len(lines) == 2
        assert "more queue-full events from alice@irf" in lines[1]
        assert not server.closed


async def test_a_request_cut_off_by_the_end_of_the_session_leaves_no_unawaited_coroutine() -> None:
    made: list[Coroutine[Any, Any, Command]] = []

    async def work(command: Command) -> Command:
        return command.success({})

    async def wrapper(pending: Coroutine[Any, Any, Command]) -> Command:
        return await pending

    def handler(command: Command) -> Coroutine[Any, Any, Command]:
        # As the server does: a coroutine that awaits another it was handed.
        made.append(work(command))
        made.append(wrapper(made[0]))
        return made[-1]

    async with channels(max_requests_in_progress=4) as (_, server):
        server.on_command = handler
        # Dispatched, then the session ends before the request's task ever runs: the
        # handler's coroutine must be closed, not left for Python to warn about.
        server._dispatch_command(Command("get", "/cut", id="c1"))
        tasks = list(server._tasks)
        await server.close()
        await asyncio.wait(tasks, timeout=STEP)  # its done callbacks ran before this returns
    assert [inspect.getcoroutinestate(c) for c in made] == [inspect.CORO_CLOSED] * 2
