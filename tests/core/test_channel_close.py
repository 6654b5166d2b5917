"""How a channel ends and what it says afterwards: ``close_reason``, ``state``, ``link_lost``.

A clean finish (``finished``, or ``close()`` on our side) leaves ``close_reason`` None; a link
that ends under a live session (the transport closes, no ``finished`` or ``failed`` came) gives
code 11 "link lost: ...", and ``state`` never says ``established`` on a closed channel. The links
here are in-memory transports; cutting one end's transport is what a dead link looks like to
the channel above (the ZeroMQ case, through a fault proxy, is in tests/zmq/test_dead_link.py).
"""

from __future__ import annotations

import asyncio

import pytest

from rain_envelopes.envelopes import Command, Reason, ReasonCode, SessionState
from rain_envelopes.errors import ChannelClosed, SessionFailed

from .test_channel import STEP, channels


async def test_a_lost_link_gives_a_reason_and_a_state_that_is_not_established() -> None:
    async with channels() as (client, server):
        await client.get("/x")
        assert client.state is SessionState.ESTABLISHED
        await client.transport.close()  # the link dies under both ends, nobody said finished
        async with asyncio.timeout(STEP):
            await client.wait_closed()
            await server.wait_closed()
        for channel in (client, server):
            assert channel.close_reason is not None
            assert channel.close_reason.code == ReasonCode.SESSION_ERROR
            assert (channel.close_reason.description or "").startswith("link lost: ")
            assert channel.state is SessionState.FAILED
            assert channel.link_lost
            assert "established" not in repr(channel)


async def test_requests_waiting_on_a_lost_link_get_channel_closed() -> None:
    arrived: asyncio.Queue[Command] = asyncio.Queue()

    def never(command: Command) -> asyncio.Future[None]:
        arrived.put_nowait(command)
        return asyncio.get_running_loop().create_future()

    async with channels() as (client, server):
        server.on_command = never
        call = asyncio.create_task(client.get("/wait"))
        async with asyncio.timeout(STEP):
            await arrived.get()
        await server.transport.close()
        async with asyncio.timeout(STEP):
            with pytest.raises(ChannelClosed, match="link lost") as caught:
                await call
        # The peer never said `failed`: this is not a SessionFailed.
        assert not isinstance(caught.value, SessionFailed)
        assert client.link_lost


async def test_a_clean_finish_keeps_no_reason() -> None:
    async with channels() as (client, server):
        async with asyncio.timeout(STEP):
            await client.finish()
            await server.wait_closed()
        for channel in (client, server):
            assert channel.close_reason is None
            assert channel.state is SessionState.FINISHED
            assert not channel.link_lost


async def test_close_on_our_side_reads_finished_without_a_reason() -> None:
    async with channels() as (client, server):
        await client.close()
        assert client.close_reason is None
        assert client.state is SessionState.FINISHED
        assert not client.link_lost
        # The server saw its link end under a live session: lost, with a reason.
        async with asyncio.timeout(STEP):
            await server.wait_closed()
        assert server.link_lost
        assert server.state is SessionState.FAILED


async def test_a_link_lost_after_we_asked_to_finish_is_a_clean_end() -> None:
    async with channels() as (client, server):
        client._protocol.finish()  # `finishing` queued; the link dies before any answer
        await server.transport.close()
        async with asyncio.timeout(STEP):
            await client.wait_closed()
        assert client.close_reason is None
        assert client.state is SessionState.FINISHED
        assert not client.link_lost


async def test_a_failed_session_keeps_the_servers_reason() -> None:
    reason = Reason(ReasonCode.SESSION_ERROR, "maintenance")
    async with channels() as (client, server):
        await server.fail(reason)
        async with asyncio.timeout(STEP):
            await client.wait_closed()
        assert client.close_reason == reason
        assert client.state is SessionState.FAILED
        assert not client.link_lost
