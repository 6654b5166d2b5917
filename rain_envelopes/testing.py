"""Test helpers shared by RAIN and by anyone writing a transport: a conformance suite.

:class:`TransportConformance` checks the promises of :class:`~rain_envelopes.transport.Transport`
that channels rely on: frames arrive once, whole and in order; ``receive`` returns ``bytes``;
``close`` is idempotent and wakes a pending ``receive``; the end of the link is noticed by both
sides in bounded time; large frames and concurrent senders work; ``receive_batch`` and
``send_batch`` keep the same promises for whole batches (each frame once, whole, in order; the
list given to ``send_batch`` consumed, and left holding what was not sent when it raises), so
their defaults and any transport's own versions are checked alike. A transport's test module
subclasses it and says how to make a connected pair::

    class TestMemoryTransport(TransportConformance):
        @contextlib.asynccontextmanager
        async def pair(self):
            client, server = memory_transport_pair()
            async with client, server:
                yield client, server

The suite needs pytest with pytest-asyncio in auto mode (as configured in pyproject.toml) but
does not import pytest itself. Every await is bounded by ``asyncio.timeout``, so a transport that
loses a frame fails a test instead of hanging it.

What the suite deliberately does not require (so a ZeroMQ-like transport can pass): empty frames
(an envelope is never empty), delivery of frames still in flight when the sender closes (only that
whatever arrives is an in-order prefix), or ``closed`` turning true on the peer's close before a
``receive`` has noticed it.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager as AsyncContextManager
from typing import TypeVar

from .errors import QueueFull, TransportClosed
from .memory import memory_transport_pair
from .transport import Transport

__all__ = ["TransportConformance", "memory_transport_pair"]

_T = TypeVar("_T")


class TransportConformance(ABC):
    """The contract every Transport must meet. Subclass it as ``Test<Name>`` and define ``pair``.

    Class attributes a subclass may override to match its transport's documented limits:
    """

    #: Size of the frame in the large-message test, sent both ways. The default fits the ZMQ
    #: server's recommended MAXMSGSIZE of 256 KiB with 1 KiB to spare for framing.
    large_frame_size: int = 255 * 1024
    #: Frames sent each way in the ordering test.
    frame_count: int = 1000
    #: Concurrent sending tasks, and frames each sends, in the concurrency test.
    concurrent_senders: int = 8
    frames_per_sender: int = 100
    #: Seconds any single step of a test may take.
    step_timeout: float = 10.0
    #: Seconds after the peer closed by which ``receive`` must raise TransportClosed.
    peer_close_timeout: float = 5.0

    @abstractmethod
    def pair(self) -> AsyncContextManager[tuple[Transport, Transport]]:
        """A connected ``(client end, server end)``, both open; both closed on exit."""

    # -------------------------------------------------------------------------- helpers

    @contextlib.asynccontextmanager
    async def connected(self) -> AsyncIterator[tuple[Transport, Transport]]:
        """``pair()`` with its opening and closing each bounded by ``step_timeout``."""
        manager = self.pair()
        ends = await self.bounded(manager.__aenter__(), "opening the pair")
        try:
            yield ends
        except BaseException as exc:
            exit_call = manager.__aexit__(type(exc), exc, exc.__traceback__)
            if not await self.bounded(exit_call, "closing the pair"):
                raise
        else:
            await self.bounded(manager.__aexit__(None, None, None), "closing the pair")

    async def each_direction(
        self, check: Callable[[Transport, Transport], Awaitable[None]]
    ) -> None:
        """Run ``check(one_end, other_end)`` on a fresh pair as (client, server), then on
        another as (server, client), so every promise is checked from both sides."""
        async with self.connected() as (client, server):
            await check(client, server)
        async with self.connected() as (client, server):
            await check(server, client)

    async def bounded(self, awaitable: Awaitable[_T], what: str) -> _T:
        """Await ``awaitable`` for at most ``step_timeout``; fail naming ``what`` otherwise."""
        try:
            async with asyncio.timeout(self.step_timeout):
                return await awaitable
        except TimeoutError:
            raise AssertionError(f"{what} took longer than {self.step_timeout:g} s") from None

    async def send_frame(self, transport: Transport, data: bytes) -> None:
        """Send one frame, waiting out QueueFull.

        QueueFull is documented back-pressure (a full peer queue), not a failure, so the suite
        retries after yielding for a millisecond until ``step_timeout``.
        """

        async def attempt() -> None:
            while True:
                try:
                    await transport.send(data)
                    return
                except QueueFull:
                    await asyncio.sleep(0.001)

        await self.bounded(attempt(), f"sending a {len(data)}-byte frame")

    async def receive_frame(self, transport: Transport) -> bytes:
        """Receive one frame within ``step_timeout`` and check that it is ``bytes``."""
        frame = await self.bounded(transport.receive(), "receiving a frame")
        assert type(frame) is bytes, f"receive() returned {type(frame).__name__}, not bytes"
        return frame

    async def expect_closed(self, call: Callable[[], Awaitable[object]], what: str) -> None:
        """Assert that ``call()`` raises TransportClosed within ``step_timeout``."""
        try:
            result = await self.bounded(call(), what)
        except TransportClosed:
            return
        raise AssertionError(f"{what} returned {result!r} instead of raising TransportClosed")

    async def stream(self, sender: Transport, receiver: Transport, frames: list[bytes]) -> None:
        """Send ``frames`` while receiving them at the other end; check each arrives in order."""

        async def produce() -> None:
            for frame in frames:
                await self.send_frame(sender, frame)

        async def consume() -> None:
            for index, expected in enumerate(frames):
                got = await self.receive_frame(receiver)
                assert got == expected, (
                    f"frame {index}: expected {expected[:40]!r}, got {got[:40]!r}"
                )

        async with asyncio.TaskGroup() as group:
            group.create_task(produce())
            group.create_task(consume())

    # -------------------------------------------------------------------------- the suite

    async def test_both_ends_open(self) -> None:
        async with self.connected() as (client, server):
            assert not client.closed
            assert not server.closed

    async def test_round_trip_both_ways(self) -> None:
        async with self.connected() as (client, server):
            await self.send_frame(client, b"ping")
            assert await self.receive_frame(server) == b"ping"
            await self.send_frame(server, b"pong")
            assert await self.receive_frame(client) == b"pong"

    async def test_order_kept_client_to_server(self) -> None:
        frames = [f"frame {i:05d}".encode() for i in range(self.frame_count)]
        async with self.connected() as (client, server):
            await self.stream(client, server, frames)

    async def test_order_kept_server_to_client(self) -> None:
        frames = [f"frame {i:05d}".encode() for i in range(self.frame_count)]
        async with self.connected() as (client, server):
            await self.stream(server, client, frames)

    async def test_order_kept_both_ways_at_once(self) -> None:
        up = [f"up {i}".encode() for i in range(self.frame_count)]
        down = [f"down {i}".encode() for i in range(self.frame_count)]
        async with self.connected() as (client, server), asyncio.TaskGroup() as group:
            group.create_task(self.stream(client, server, up))
            group.create_task(self.stream(server, client, down))

    async def test_one_send_is_one_receive(self) -> None:
        # Sent back to back before any receive, so a transport that merges queued frames, or
        # splits one, shows it here. Each frame repeats its own byte value, so a boundary in
        # the wrong place cannot go unnoticed.
        sizes = [1, 2, 3, 7, 64, 255, 256, 1000, 1500, 4096, 65_535, 65_537]
        frames = [bytes([index + 1]) * size for index, size in enumerate(sizes)]

        async def check(sender: Transport, receiver: Transport) -> None:
            for frame in frames:
                await self.send_frame(sender, frame)
            for frame in frames:
                got = await self.receive_frame(receiver)
                assert len(got) == len(frame), f"sent {len(frame)} bytes, received {len(got)}"
                assert got == frame

        await self.each_direction(check)

    async def test_frames_are_bytes_with_any_content(self) -> None:
        frames = [bytes(range(256)), b"\x00", b"\x00" * 10, b"\xff\xfe\x00\r\n", "é✓".encode()]

        async def check(sender: Transport, receiver: Transport) -> None:
            for frame in frames:
                await self.send_frame(sender, frame)
            for frame in frames:
                assert await self.receive_frame(receiver) == frame

        await self.each_direction(check)

    async def test_large_frames_both_ways(self) -> None:
        rng = random.Random(self.large_frame_size)
        up = rng.randbytes(self.large_frame_size)
        down = rng.randbytes(self.large_frame_size)
        async with self.connected() as (client, server):
            await self.send_frame(client, up)
            got = await self.receive_frame(server)
            assert len(got) == len(up)
            assert got == up
            await self.send_frame(server, down)
            got = await self.receive_frame(client)
            assert len(got) == len(down)
            assert got == down

    async def test_concurrent_senders(self) -> None:
        # Frames from one task stay in that task's order; none is lost, duplicated or mixed
        # with another.
        senders, per_sender = self.concurrent_senders, self.frames_per_sender

        async def check(sending_end: Transport, receiving_end: Transport) -> None:
            async def send_all(sender_id: int) -> None:
                for seq in range(per_sender):
                    frame = f"{sender_id}:{seq}:".encode() + b"x" * seq
                    await self.send_frame(sending_end, frame)

            async def receive_all() -> dict[int, list[int]]:
                seen: dict[int, list[int]] = {sender_id: [] for sender_id in range(senders)}
                for _ in range(senders * per_sender):
                    frame = await self.receive_frame(receiving_end)
                    sender_id, seq, padding = frame.split(b":", 2)
                    assert padding == b"x" * int(seq), f"frame {frame[:40]!r} is corrupted"
                    seen[int(sender_id)].append(int(seq))
                return seen

            async with asyncio.TaskGroup() as group:
                receiving = group.create_task(receive_all())
                for sender_id in range(senders):
                    group.create_task(send_all(sender_id))
            for sender_id, seqs in receiving.result().items():
                assert seqs == list(range(per_sender)), f"sender {sender_id} frames: {seqs}"

        await self.each_direction(check)

    async def test_close_is_idempotent(self) -> None:
        async with self.connected() as (client, server):
            for transport in (client, server):
                await self.bounded(transport.close(), "close()")
                await self.bounded(transport.close(), "a second close()")
                assert transport.closed
            await self.bounded(
                asyncio.gather(client.close(), client.close(), server.close()),
                "concurrent close()",
            )

    async def test_send_after_close_raises(self) -> None:
        async def check(own: Transport, peer: Transport) -> None:
            await self.bounded(own.close(), "close()")
            assert own.closed
            await self.expect_closed(lambda: own.send(b"late"), "send() after close()")

        await self.each_direction(check)

    async def test_receive_after_close_raises(self) -> None:
        async def check(own: Transport, peer: Transport) -> None:
            await self.bounded(own.close(), "close()")
            await self.expect_closed(own.receive, "receive() after close()")

        await self.each_direction(check)

    async def test_close_wakes_own_pending_receive(self) -> None:
        async def check(own: Transport, peer: Transport) -> None:
            pending = asyncio.ensure_future(own.receive())
            await self._let_run(pending)
            await self.bounded(own.close(), "close()")
            await self.expect_closed(lambda: pending, "a receive() pending at close()")

        await self.each_direction(check)

    async def test_peer_close_wakes_pending_receive(self) -> None:
        async def check(closer: Transport, other: Transport) -> None:
            pending = asyncio.ensure_future(other.receive())
            await self._let_run(pending)
            await self.bounded(closer.close(), "close()")
            await self._expect_closed_soon(lambda: pending)

        await self.each_direction(check)

    async def test_receive_after_peer_close_raises(self) -> None:
        async def check(closer: Transport, other: Transport) -> None:
            await self.bounded(closer.close(), "close()")
            await self._expect_closed_soon(other.receive)
            # Once the end is known it stays known: closed is true, receive and send refuse.
            assert other.closed, "closed is false after receive() raised TransportClosed"
            await self.expect_closed(other.receive, "receive() after the link ended")
            await self.expect_closed(lambda: other.send(b"x"), "send() after the link ended")
            await self.bounded(other.close(), "close() after the peer closed")

        await self.each_direction(check)

    async def test_frames_before_peer_close_arrive_in_order_or_not_at_all(self) -> None:
        frames = [f"last words {i}".encode() for i in range(10)]

        async def check(closer: Transport, other: Transport) -> None:
            for frame in frames:
                await self.send_frame(closer, frame)
            await self.bounded(closer.close(), "close()")
            received: list[bytes] = []

            async def drain() -> None:
                while True:
                    received.append(await other.receive())

            await self._expect_closed_soon(drain)
            assert received == frames[: len(received)], f"not an in-order prefix: {received}"

        await self.each_direction(check)

    # -------------------------------------------------------------------------- batches

    async def send_batch_frames(self, transport: Transport, frames: list[bytes]) -> None:
        """``send_batch(frames)``, waiting out QueueFull as :meth:`send_frame` does. Checks the
        contract on the list: what is left after QueueFull is what was not sent."""
        remaining = list(frames)

        async def attempt() -> None:
            while remaining:
                before = len(remaining)
                try:
                    await transport.send_batch(remaining)
                except QueueFull:
                    assert remaining, "send_batch() raised QueueFull with every frame sent"
                    assert len(remaining) <= before
                    await asyncio.sleep(0.001)
                else:
                    assert not remaining, f"send_batch() returned with {len(remaining)} unsent"

        await self.bounded(attempt(), f"sending a batch of {len(frames)} frames")

    async def receive_batches(self, transport: Transport, count: int) -> list[bytes]:
        """``receive_batch()`` until ``count`` frames came; checks every batch is a non-empty
        list of bytes."""
        received: list[bytes] = []
        while len(received) < count:
            batch = await self.bounded(transport.receive_batch(), "receive_batch()")
            assert isinstance(batch, list), f"receive_batch() returned {type(batch).__name__}"
            assert batch, "receive_batch() returned an empty list"
            for frame in batch:
                assert type(frame) is bytes, f"a batch held {type(frame).__name__}, not bytes"
            received.extend(batch)
        return received

    async def test_receive_batch_returns_queued_frames_in_order(self) -> None:
        frames = [f"batched {i:05d}".encode() for i in range(self.frame_count)]

        async def check(sender: Transport, receiver: Transport) -> None:
            # All sent before any receive: a batching transport hands several over at once,
            # the default one at a time; either way each frame once, whole, in order.
            for frame in frames:
                await self.send_frame(sender, frame)
            received = await self.receive_batches(receiver, len(frames))
            assert received == frames, "receive_batch() lost, merged or reordered frames"

        await self.each_direction(check)

    async def test_receive_and_receive_batch_share_one_stream(self) -> None:
        frames = [f"mixed {i}".encode() for i in range(20)]

        async def check(sender: Transport, receiver: Transport) -> None:
            for frame in frames:
                await self.send_frame(sender, frame)
            first = await self.receive_frame(receiver)
            rest = await self.receive_batches(receiver, len(frames) - 1)
            assert [first, *rest] == frames

        await self.each_direction(check)

    async def test_send_batch_is_one_receive_per_frame_in_order(self) -> None:
        sizes = [1, 2, 3, 64, 1000, 65_537] * 5
        frames = [bytes([index % 250 + 1]) * size for index, size in enumerate(sizes)]

        async def check(sender: Transport, receiver: Transport) -> None:
            await self.send_batch_frames(sender, frames)
            for frame in frames:
                got = await self.receive_frame(receiver)
                assert got == frame, f"sent {len(frame)} bytes, received {len(got)}"

        await self.each_direction(check)

    async def test_send_batch_consumes_its_list(self) -> None:
        async def check(sender: Transport, receiver: Transport) -> None:
            batch = [b"one", b"two", b"three"]
            await self.bounded(sender.send_batch(batch), "send_batch()")
            assert batch == [], f"send_batch() left {batch!r} in its list"
            assert await self.receive_batches(receiver, 3) == [b"one", b"two", b"three"]
            empty: list[bytes] = []
            await self.bounded(sender.send_batch(empty), "send_batch([])")

        await self.each_direction(check)

    async def test_send_batch_after_close_raises_and_keeps_its_frames(self) -> None:
        async def check(own: Transport, peer: Transport) -> None:
            await self.bounded(own.close(), "close()")
            batch = [b"late", b"later"]
            await self.expect_closed(lambda: own.send_batch(batch), "send_batch() after close()")
            assert batch == [b"late", b"later"], "frames not sent were removed from the list"

        await self.each_direction(check)

    async def test_receive_batch_after_peer_close_raises(self) -> None:
        frames = [f"before the end {i}".encode() for i in range(10)]

        async def check(closer: Transport, other: Transport) -> None:
            await self.send_batch_frames(closer, frames)
            await self.bounded(closer.close(), "close()")
            received: list[bytes] = []

            async def drain() -> None:
                while True:
                    batch = await other.receive_batch()
                    assert batch, "receive_batch() returned an empty list"
                    received.extend(batch)

            await self._expect_closed_soon(drain)
            assert received == frames[: len(received)], f"not an in-order prefix: {received}"
            await self.expect_closed(other.receive_batch, "receive_batch() after the end")

        await self.each_direction(check)

    async def test_closed_property(self) -> None:
        async def check(closer: Transport, other: Transport) -> None:
            assert (closer.closed, other.closed) == (False, False)
            await self.bounded(closer.close(), "close()")
            assert closer.closed
            await self._expect_closed_soon(other.receive)
            assert other.closed

        await self.each_direction(check)

    # -------------------------------------------------------------------------- internals

    async def _let_run(self, task: asyncio.Future[bytes]) -> None:
        """Give ``task`` a few turns of the loop so it is really waiting, and check it is."""
        for _ in range(10):
            await asyncio.sleep(0)
        assert not task.done(), f"receive() on an idle link did not wait: {task!r}"

    async def _expect_closed_soon(self, call: Callable[[], Awaitable[object]]) -> None:
        try:
            async with asyncio.timeout(self.peer_close_timeout):
                result = await call()
        except TransportClosed:
            return
        except TimeoutError:
            raise AssertionError(
                f"receive() did not notice the peer's close within {self.peer_close_timeout:g} s"
            ) from None
        raise AssertionError(f"receive() after the peer closed returned {result!r}")
