"""What answering a request costs the channel (issue 9, item 6).

- A handler that answers at once is answered inside the reader's wake-up: no task at all.
- A handler that returns a future costs no task either; its answer is queued by a callback.
- A coroutine handler costs one task per request, which sends the answer in its last step.
- Answers of futures finished in the same loop turn leave in one ``send_batch`` (the
  writer's), and the request bound counts every answer in the works and frees its place.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Coroutine, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

from rain_envelopes.auth import ServerAuthenticator
from rain_envelopes.channel import ClientChannel, ServerChannel
from rain_envelopes.envelopes import Command, CommandStatus, ReasonCode
from rain_envelopes.keys import AuthorizedKeys, Identity
from rain_envelopes.memory import memory_transport_pair
from rain_envelopes.transport import Transport
from tests.passthrough import PassThroughTransport

ALICE = Identity.generate()
KEYS = AuthorizedKeys({ALICE.public_key: "alice@irf"})
STEP = 5.0  # seconds any single wait may take before the test fails
REQUESTS = 50


class CountingBatches(PassThroughTransport):
    """Counts the server's ``send_batch`` calls and the frames in each."""

    def __init__(self, inner: Transport) -> None:
        super().__init__(inner)
        self.batches: list[int] = []

    async def receive_batch(self) -> list[bytes]:
        return await self.inner.receive_batch()

    async def send_batch(self, frames: list[bytes]) -> None:
        self.batches.append(len(frames))
        await self.inner.send_batch(frames)


@asynccontextmanager
async def channels(
    **server_options: Any,
) -> AsyncIterator[tuple[ClientChannel, ServerChannel, CountingBatches]]:
    client_end, server_end = memory_transport_pair()
    counting = CountingBatches(server_end)
    server = ServerChannel(
        counting, node="srv@irf/main", authenticator=ServerAuthenticator(KEYS), **server_options
    )
    client = ClientChannel(client_end, node="alice@irf/lab", identity=ALICE)
    try:
        async with asyncio.timeout(STEP):
            await asyncio.gather(server.establish_session(), client.establish_session())
        yield client, server, counting
    finally:
        await client.close()
        await server.close()


@contextmanager
def counting_tasks() -> Iterator[list[str]]:
    """The names of the coroutines of every task created on the loop meanwhile."""
    loop = asyncio.get_running_loop()
    made: list[str] = []

    def factory(
        loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any], **kwargs: Any
    ) -> asyncio.Task[Any]:
        made.append(getattr(coro, "__qualname__", repr(coro)))
        return asyncio.Task(coro, loop=loop, **kwargs)

    loop.set_task_factory(factory)  # type: ignore[arg-type]
    try:
        yield made
    finally:
        loop.set_task_factory(None)


def _requests(client: ClientChannel) -> list[asyncio.Future[Command]]:
    # Made before the task count starts: the client's tasks are the test's, not the server's.
    return [
        asyncio.ensure_future(client.send_command(Command("get", f"/x/{i}")))
        for i in range(REQUESTS)
    ]


async def _answers(requests: list[asyncio.Future[Command]]) -> list[Command]:
    async with asyncio.timeout(STEP):
        return await asyncio.gather(*requests)


async def test_a_handler_that_answers_at_once_costs_no_task() -> None:
    async with channels() as (client, server, _):
        server.on_command = lambda command: command.success({"uri": command.uri})
        requests = _requests(client)
        with counting_tasks() as made:
            answers = await _answers(requests)
        assert [a.resource for a in answers] == [{"uri": f"/x/{i}"} for i in range(REQUESTS)]
        assert made == []


async def test_a_handler_that_returns_a_future_costs_no_task_and_its_answers_share_a_flush(
) -> None:
    loop = asyncio.get_running_loop()
    waiting: list[tuple[Command, asyncio.Future[Command]]] = []
    all_arrived = asyncio.Event()

    def handler(command: Command) -> asyncio.Future[Command]:
        future: asyncio.Future[Command] = loop.create_future()
        waiting.append((command, future))
        if len(waiting) == REQUESTS:
            all_arrived.set()
        return future

    async with channels(max_requests_in_progress=REQUESTS) as (client, server, counting):
        server.on_command = handler
        requests = _requests(client)
        with counting_tasks() as made:
            async with asyncio.timeout(STEP):
                await all_arrived.wait()
            # The bound is full: one more request is refused, and reaches no handler.
            extra = await client.send_command(Command("get", "/one-too-many"))
            assert extra.status is CommandStatus.FAILURE
            assert extra.reason is not None
            assert extra.reason.code == ReasonCode.AUTHORIZATION_QUOTA_EXCEEDED
            assert len(waiting) == REQUESTS
            before = len(counting.batches)
            for command, future in waiting:  # every answer ready in the same loop turn
                future.set_result(command.success({"uri": command.uri}))
            answers = await _answers(requests)
        assert all(a.status is CommandStatus.SUCCESS for a in answers)
        # One writer task for the channel's life, no task per request ...
        assert made == ["Channel._write_loop"]
        # ... and the fifty answers left in one batch.
        assert counting.batches[before:] == [REQUESTS]
        assert server._in_progress == 0  # their places are free again


async def test_a_coroutine_handler_costs_one_task_per_request_and_no_writer() -> None:
    gate = asyncio.Event()
    started = 0
    all_started = asyncio.Event()

    async def slow(command: Command) -> Command:
        nonlocal started
        started += 1
        if started == REQUESTS:
            all_started.set()
        await gate.wait()
        return command.success({"uri": command.uri})

    async with channels() as (client, server, _):
        server.on_command = slow
        requests = _requests(client)
        with counting_tasks() as made:
            async with asyncio.timeout(STEP):
                await all_started.wait()
            gate.set()
            answers = await _answers(requests)
        assert [a.resource for a in answers] == [{"uri": f"/x/{i}"} for i in range(REQUESTS)]
        # The coroutine runs inside its request's task, which flushes the answer itself.
        assert made == ["Channel._finish_command"] * REQUESTS
        assert server._in_progress == 0


async def test_a_failed_awaitable_is_answered_through_the_one_error_boundary() -> None:
    loop = asyncio.get_running_loop()

    def handler(command: Command) -> asyncio.Future[Command]:
        future: asyncio.Future[Command] = loop.create_future()
        loop.call_soon(future.set_exception, RuntimeError("boom"))
        return future

    async with channels() as (client, server, _):
        server.on_command = handler
        async with asyncio.timeout(STEP):
            answer = await client.send_command(Command("get", "/fails"))
        assert answer.status is CommandStatus.FAILURE
        assert answer.reason == server.handler_fault
        assert server._in_progress == 0
