"""ClientChannel and ServerChannel over the memory transport (DESIGN.md §6, PROTOCOL.md).

Every wait is on an Event, a Queue or a Future under ``asyncio.timeout``; nothing sleeps to
synchronise. Where a test must show that something did *not* happen, it sends a sentinel after it
on the same ordered link and waits for the sentinel: whatever was going to happen has happened
by then.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from typing import Any, TypeVar

import pytest

from rain_envelopes.auth import ClientCredentials, ServerAuthenticator
from rain_envelopes.channel import PING_MEDIA_TYPE, ClientChannel, ServerChannel, connect
from rain_envelopes.codec import decode, encode
from rain_envelopes.envelopes import (
    Command,
    CommandMethod,
    CommandStatus,
    Envelope,
    Message,
    Notification,
    NotificationEvent,
    Reason,
    Session,
    SessionCompression,
    SessionState,
)
from rain_envelopes.errors import (
    AuthenticationFailed,
    ChannelClosed,
    CommandFailed,
    CommandRefused,
    CommandTimeout,
    EnvelopeDecodeError,
    EstablishTimeout,
    QueueFull,
    SessionFailed,
    TransportClosed,
)
from rain_envelopes.keys import AuthorizedKeys, Identity
from rain_envelopes.node import Node
from rain_envelopes.protocol import ClientProtocol, NodeRegistry
from rain_envelopes.transport import Transport, memory_transport_pair, transport_factory
from tests.codec.corpus import CORPUS
from tests.passthrough import PassThroughTransport

SERVER_NODE = "srv@irf/main"
ALICE_NODE = "alice@irf/lab"
ALICE = Identity.generate()
BOB = Identity.generate()  # never authorised
KEYS = AuthorizedKeys({ALICE.public_key: "alice@irf"})
STEP = 5.0  # seconds any single wait may take before the test fails

_names = itertools.count()


def authenticator() -> ServerAuthenticator:
    return ServerAuthenticator(KEYS)


def echo_handler(command: Command) -> Command:
    """Answers every request with its own uri, so a caller can tell its response apart."""
    return command.success({"uri": command.uri})


@asynccontextmanager
async def channels(
    *,
    client_node: str | None = ALICE_NODE,
    identity: Identity = ALICE,
    registry: NodeRegistry | None = None,
    wrap_server: Callable[[Transport], Transport] | None = None,
    client_options: dict[str, Any] | None = None,
) -> AsyncIterator[tuple[ClientChannel, ServerChannel]]:
    """An established (client, server) channel pair over a memory link; both closed on exit."""
    client_end, server_end = memory_transport_pair()
    server_transport = wrap_server(server_end) if wrap_server else server_end
    server = ServerChannel(
        server_transport, node=SERVER_NODE, authenticator=authenticator(), registry=registry
    )
    server.on_command = echo_handler
    client = ClientChannel(
        client_end, node=client_node, identity=identity, **(client_options or {})
    )
    try:
        async with asyncio.timeout(STEP):
            await asyncio.gather(server.establish_session(), client.establish_session())
        yield client, server
    finally:
        await client.close()
        await server.close()


async def next_item(queue: asyncio.Queue[Any]) -> Any:
    async with asyncio.timeout(STEP):
        return await queue.get()


async def settle(sender: ServerChannel | ClientChannel, receiver_queue: asyncio.Queue[Any]) -> None:
    """Send a sentinel message to the peer and wait for it to arrive on ``receiver_queue``
    (the peer's on_message must put messages there): everything sent before has been handled."""
    await sender.send_message(Message("text/plain", "sentinel"))
    while True:
        item = await next_item(receiver_queue)
        if isinstance(item, Message) and item.content == "sentinel":
            return


# ------------------------------------------------------------------------------ establishment


async def test_establish_session_returns_the_channel_and_exposes_the_session() -> None:
    client_end, server_end = memory_transport_pair()
    server = ServerChannel(server_end, node=SERVER_NODE, authenticator=authenticator())
    client = ClientChannel(client_end, node="mallory@evil/lab", identity=ALICE)
    try:
        async with asyncio.timeout(STEP):
            served, established = await asyncio.gather(
                server.establish_session(), client.establish_session()
            )
        assert established is client
        assert served is server
        assert isinstance(client.session, Session)
        assert client.session.state is SessionState.ESTABLISHED
        assert client.session_id == server.session_id == client.session.id
        # The identity is what the key proved, never the claimed `from`.
        assert client.local_node == Node("alice", "irf", "lab")
        assert client.remote_node == Node.parse(SERVER_NODE)
        assert server.remote_identity == "alice@irf"
        assert server.remote_node == client.local_node
        assert server.local_node == Node.parse(SERVER_NODE)
        assert client.state is SessionState.ESTABLISHED
    finally:
        await client.close()
        await server.close()


async def test_connect_to_a_memory_endpoint_through_the_transport_factory() -> None:
    endpoint = f"memory://channel-test-{next(_names)}"
    listener = transport_factory(endpoint).listen([endpoint])
    served: asyncio.Queue[ServerChannel] = asyncio.Queue()

    async def serve() -> None:
        async for transport in listener:
            channel = ServerChannel(transport, node=SERVER_NODE, authenticator=authenticator())
            channel.on_command = echo_handler
            await channel.establish_session()
            served.put_nowait(channel)

    await listener.start()
    server_task = asyncio.create_task(serve())
    try:
        async with asyncio.timeout(STEP):
            client = await connect(endpoint, identity=ALICE, node=ALICE_NODE)
        assert isinstance(client, ClientChannel)
        assert client.local_node == Node.parse(ALICE_NODE)
        server = await next_item(served)
        assert server.remote_identity == "alice@irf"
        async with asyncio.timeout(STEP):
            response = await client.get("/params/temp")
        assert response.resource == {"uri": "/params/temp"}
        async with asyncio.timeout(STEP):
            await client.finish()
            await server.wait_closed()
        assert client.close_reason is None
    finally:
        await listener.close()
        server_task.cancel()
        await asyncio.gather(server_task, return_exceptions=True)


async def test_establish_times_out_when_the_server_never_answers() -> None:
    client_end, server_end = memory_transport_pair()
    heard: list[bytes] = []

    async def deaf_server() -> None:  # reads everything, answers nothing
        try:
            while True:
                heard.append(await server_end.receive())
        except TransportClosed:
            return

    reader = asyncio.create_task(deaf_server())
    client = ClientChannel(client_end, node=ALICE_NODE, identity=ALICE, establish_timeout=0.3)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(EstablishTimeout) as caught:
        await client.establish_session()
    elapsed = loop.time() - started
    assert isinstance(caught.value, TimeoutError)
    assert 0.25 <= elapsed < 2.0
    assert client.closed
    async with asyncio.timeout(STEP):
        await reader  # the client closed its end, so the deaf server's reads end
    assert [decode(frame) for frame in heard] == [Session(SessionState.NEW)]


async def test_a_server_fails_a_client_that_never_establishes_with_code_16() -> None:
    client_end, server_end = memory_transport_pair()
    server = ServerChannel(server_end, node=SERVER_NODE, authenticator=authenticator())
    with pytest.raises(EstablishTimeout):
        await server.establish_session(timeout=0.2)
    async with asyncio.timeout(STEP):
        answer = decode(await client_end.receive())
    assert isinstance(answer, Session)
    assert answer.state is SessionState.FAILED
    assert answer.reason is not None
    assert answer.reason.code == 16
    assert server.closed


async def test_an_unauthorised_identity_raises_authentication_failed() -> None:
    client_end, server_end = memory_transport_pair()
    server = ServerChannel(server_end, node=SERVER_NODE, authenticator=authenticator())
    client = ClientChannel(client_end, node="bob@irf/lab", identity=BOB)
    async with asyncio.timeout(STEP):
        server_result, client_result = await asyncio.gather(
            server.establish_session(), client.establish_session(), return_exceptions=True
        )
    assert isinstance(client_result, AuthenticationFailed)
    assert client_result.reason.code == 13
    assert isinstance(server_result, SessionFailed)
    assert client.closed
    assert server.closed
    assert server.remote_identity is None


# ------------------------------------------------------------------------------ commands


async def test_concurrent_commands_each_get_their_own_response() -> None:
    count = 100
    shuffle = random.Random(20260101)
    async with channels() as (client, server):
        loop = asyncio.get_running_loop()
        gates: list[asyncio.Future[None]] = []
        all_arrived = asyncio.Event()
        answered: list[str] = []

        async def handler(command: Command) -> Command:
            gate: asyncio.Future[None] = loop.create_future()
            gates.append(gate)
            if len(gates) == count:
                all_arrived.set()
            await gate
            for _ in range(shuffle.randrange(4)):  # random extra awaits shuffle the order more
                await asyncio.sleep(0)
            assert command.uri is not None
            answered.append(command.uri)
            return command.success({"uri": command.uri})

        server.on_command = handler
        calls = [asyncio.create_task(client.get(f"/item/{index}")) for index in range(count)]
        async with asyncio.timeout(STEP):
            await all_arrived.wait()
        order = list(gates)
        shuffle.shuffle(order)
        for gate in order:
            gate.set_result(None)
        async with asyncio.timeout(STEP):
            responses = await asyncio.gather(*calls)
    requested = [f"/item/{index}" for index in range(count)]
    assert answered != requested  # the server really answered out of order
    assert sorted(answered) == sorted(requested)
    assert [response.resource for response in responses] == [{"uri": uri} for uri in requested]
    assert len({response.id for response in responses}) == count


async def test_responses_are_never_delivered_to_on_command() -> None:
    async with channels() as (client, server):
        seen_by_client: list[Command] = []
        seen_by_server: list[Command] = []
        messages: asyncio.Queue[Message] = asyncio.Queue()
        client.on_command = lambda command: seen_by_client.append(command)
        client.on_message = messages.put_nowait

        def server_handler(command: Command) -> Command:
            seen_by_server.append(command)
            return command.success(1)

        server.on_command = server_handler
        async with asyncio.timeout(STEP):
            await client.get("/a")
            await client.set("/b", 2)
            # Stray responses from the server: not requests, so never the application's.
            for status in (CommandStatus.SUCCESS, CommandStatus.PENDING):
                await server.send(Command("get", "/x", id="stray", status=status))
            await server.send(Command("get", "/x", id="stray2", status="failure",
                                      reason=Reason(67, "gone")))
            await settle(server, messages)
        assert seen_by_client == []
        assert [command.status for command in seen_by_server] == [None, None]
        assert [command.method for command in seen_by_server] == [
            CommandMethod.GET, CommandMethod.SET,
        ]


async def test_pending_is_never_a_final_response() -> None:
    async with channels() as (client, server):
        release = asyncio.Event()
        messages: asyncio.Queue[Message] = asyncio.Queue()
        client.on_message = messages.put_nowait

        async def slow(command: Command) -> Command:
            await server.send(Command(
                command.method, command.uri, id=command.id, status=CommandStatus.PENDING
            ))
            await server.send(Message("text/plain", "pending sent"))
            await release.wait()
            return command.success(42)

        server.on_command = slow
        call = asyncio.create_task(client.get("/slow"))
        assert (await next_item(messages)).content == "pending sent"
        assert not call.done()  # `pending` arrived before the message and settled nothing
        release.set()
        async with asyncio.timeout(STEP):
            response = await call
        assert response.status is CommandStatus.SUCCESS
        assert response.resource == 42


async def test_a_command_timeout_is_raised_in_the_caller_and_the_channel_goes_on() -> None:
    async with channels() as (client, server):
        release = asyncio.Event()
        arrived = asyncio.Event()

        async def stalled(command: Command) -> Command:
            if command.uri == "/stalled":
                arrived.set()
                await release.wait()
            return command.success({"uri": command.uri})

        server.on_command = stalled
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(CommandTimeout) as caught:
            await client.get("/stalled", timeout=0.2)
        assert isinstance(caught.value, TimeoutError)
        assert 0.15 <= loop.time() - started < 2.0
        assert arrived.is_set()
        # The late answer to the timed-out request must not be taken for the next one's.
        release.set()
        async with asyncio.timeout(STEP):
            response = await client.get("/fresh")
        assert response.resource == {"uri": "/fresh"}
        assert not client.closed


async def test_a_failed_notification_about_a_request_fails_it_at_once() -> None:
    async with channels() as (client, server):

        async def unreadable(command: Command) -> None:
            await server.send(Notification(
                NotificationEvent.FAILED, Reason(21, "could not read it"), id=command.id
            ))

        server.on_command = unreadable
        with pytest.raises(CommandFailed) as caught:
            await client.get("/x", timeout=STEP)
        assert caught.value.reason == Reason(21, "could not read it")


async def test_an_unreadable_response_fails_its_request_at_once() -> None:
    # The protocol reports the response it could not read as RequestFailed; the channel
    # raises its EnvelopeDecodeError in the caller, well before the timeout.
    async with channels() as (client, server):

        async def garbled(command: Command) -> None:
            assert command.id is not None
            await server.transport.send(
                b'{"id":"%s","method":"get","status":"bogus"}' % command.id.encode()
            )

        server.on_command = garbled
        with pytest.raises(EnvelopeDecodeError) as caught:
            await client.get("/x", timeout=STEP)
        assert caught.value.is_response
        assert not client.closed


@pytest.mark.parametrize("end", ["finish", "fail"])
async def test_pending_requests_fail_when_the_session_ends(end: str) -> None:
    async with channels() as (client, server):
        arrived: asyncio.Queue[Command] = asyncio.Queue()

        async def never(command: Command) -> None:
            arrived.put_nowait(command)
            await asyncio.Event().wait()

        server.on_command = never
        calls = [asyncio.create_task(client.get(f"/wait/{index}")) for index in range(3)]
        for _ in calls:
            await next_item(arrived)
        reason = Reason(11, "server shutting down")
        if end == "finish":
            await server.finish()
        else:
            await server.fail(reason)
        async with asyncio.timeout(STEP):
            results = await asyncio.gather(*calls, return_exceptions=True)
            await client.wait_closed()
        for result in results:
            if end == "finish":
                assert isinstance(result, ChannelClosed)
            else:
                assert isinstance(result, SessionFailed)
                assert result.reason == reason
        assert client.close_reason == (None if end == "finish" else reason)
        with pytest.raises(ChannelClosed):
            await client.get("/after")


async def test_finish_from_the_client_ends_both_sides_cleanly() -> None:
    async with channels() as (client, server):
        async with asyncio.timeout(STEP):
            async with client:
                await client.get("/x")
            await server.wait_closed()
        assert client.closed
        assert client.close_reason is None
        assert server.close_reason is None
        assert server.state is SessionState.FINISHED


@pytest.mark.parametrize("helper", ["get", "set", "delete", "subscribe", "unsubscribe"])
async def test_helpers_raise_command_failed_with_the_reason(helper: str) -> None:
    async with channels() as (client, server):
        server.on_command = lambda command: command.failure(67, f"no {command.uri}")
        call: Awaitable[Command]
        if helper == "set":
            call = client.set("/missing", 1)
        elif helper == "subscribe":
            call = client.subscribe("/missing", lambda command: None)
        else:
            call = getattr(client, helper)("/missing")
        with pytest.raises(CommandFailed) as caught:
            async with asyncio.timeout(STEP):
                await call
        assert caught.value.reason == Reason(67, "no /missing")
        response = caught.value.response
        assert isinstance(response, Command)
        assert response.method == CommandMethod(helper)


async def test_helpers_return_the_success_response() -> None:
    async with channels() as (client, server):
        received: list[Command] = []

        def handler(command: Command) -> Command:
            received.append(command)
            return command.success({"ok": command.method.value})

        server.on_command = handler
        async with asyncio.timeout(STEP):
            assert (await client.get("/p")).resource == {"ok": "get"}
            assert (await client.set("/p", {"v": 1})).resource == {"ok": "set"}
            assert (await client.delete("/p")).resource == {"ok": "delete"}
            assert (await client.subscribe("/p", lambda c: None)).resource == {"ok": "subscribe"}
            assert (await client.unsubscribe("/p")).resource == {"ok": "unsubscribe"}
        sent_set = received[1]
        assert sent_set.resource == {"v": 1}
        assert sent_set.type == "application/json"
        assert all(command.is_request for command in received)


# ------------------------------------------------------------------------------ observe


async def test_observe_goes_to_the_callbacks_of_its_exact_uri_only() -> None:
    async with channels() as (client, server):
        on_a: asyncio.Queue[Command] = asyncio.Queue()
        on_a_b: asyncio.Queue[Command] = asyncio.Queue()
        messages: asyncio.Queue[Message] = asyncio.Queue()
        client.on_message = messages.put_nowait
        async with asyncio.timeout(STEP):
            await client.subscribe("/a", on_a.put_nowait)
            await client.subscribe("/a_b", on_a_b.put_nowait)

        async def observe(uri: str, value: int) -> None:
            await server.send(Command("observe", uri, type="application/json", resource=value))

        await observe("/a", 1)
        await observe("/a_b", 2)
        await observe("/a/", 3)  # a trailing '/' is ignored
        await observe("/a/b", 4)  # a sub-path is another resource
        await settle(server, messages)
        assert [on_a.get_nowait().resource for _ in range(on_a.qsize())] == [1, 3]
        assert [on_a_b.get_nowait().resource for _ in range(on_a_b.qsize())] == [2]

        async with asyncio.timeout(STEP):
            await client.unsubscribe("/a")
        await observe("/a", 5)
        await observe("/a_b", 6)
        await settle(server, messages)
        assert on_a.empty()
        assert on_a_b.get_nowait().resource == 6


async def test_a_refused_subscription_leaves_no_callback_behind() -> None:
    async with channels() as (client, server):
        server.on_command = lambda command: command.failure(35, "not yours")
        updates: list[Command] = []
        messages: asyncio.Queue[Message] = asyncio.Queue()
        client.on_message = messages.put_nowait
        with pytest.raises(CommandFailed):
            async with asyncio.timeout(STEP):
                await client.subscribe("/secret", updates.append)
        await server.send(Command("observe", "/secret", type="application/json", resource=1))
        await settle(server, messages)
        assert updates == []


# ------------------------------------------------------------------------------ callbacks


def _recorder(mode: str, sink: asyncio.Queue[Any], result: Any = None) -> Callable[[Any], Any]:
    if mode == "sync":

        def sync_callback(item: Any) -> Any:
            sink.put_nowait(item)
            return result(item) if callable(result) else result

        return sync_callback

    async def async_callback(item: Any) -> Any:
        await asyncio.sleep(0)
        sink.put_nowait(item)
        return result(item) if callable(result) else result

    return async_callback


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_callbacks_may_be_plain_or_coroutine_functions(mode: str) -> None:
    async with channels() as (client, server):
        commands: asyncio.Queue[Command] = asyncio.Queue()
        messages: asyncio.Queue[Message] = asyncio.Queue()
        notifications: asyncio.Queue[Notification] = asyncio.Queue()
        observed: asyncio.Queue[Command] = asyncio.Queue()
        server.on_command = _recorder(mode, commands, lambda c: c.success({"mode": mode}))
        server.on_message = _recorder(mode, messages)
        client.on_notification = _recorder(mode, notifications)
        async with asyncio.timeout(STEP):
            response = await client.get("/m")
            await client.subscribe("/obs", _recorder(mode, observed))
        assert response.resource == {"mode": mode}
        assert (await next_item(commands)).uri == "/m"
        await client.send_message(Message("text/plain", "hello", id="m1"))
        assert (await next_item(messages)).content == "hello"
        events = [(await next_item(notifications)).event for _ in range(2)]
        assert events == [NotificationEvent.RECEIVED, NotificationEvent.CONSUMED]
        await server.send(Command("observe", "/obs", type="application/json", resource=7))
        assert (await next_item(observed)).resource == 7


def _raiser(mode: str, reached: asyncio.Event) -> Callable[[Any], Any]:
    if mode == "sync":

        def sync_boom(item: Any) -> Any:
            reached.set()
            raise RuntimeError("boom")

        return sync_boom

    async def async_boom(item: Any) -> Any:
        await asyncio.sleep(0)
        reached.set()
        raise RuntimeError("boom")

    return async_boom


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("which", ["on_message", "on_notification", "on_command", "observe"])
async def test_a_raising_callback_is_logged_and_the_channel_keeps_working(
    which: str, mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="rain.channel")
    async with channels() as (client, server):
        reached = asyncio.Event()
        boom = _raiser(mode, reached)
        receipts: asyncio.Queue[Notification] = asyncio.Queue()
        async with asyncio.timeout(STEP):
            if which == "on_message":
                server.on_message = boom
                client.on_notification = receipts.put_nowait
                await client.send_message(Message("text/plain", "x", id="m1"))
                events = [await next_item(receipts) for _ in range(2)]
                assert [n.event for n in events] == [
                    NotificationEvent.RECEIVED, NotificationEvent.FAILED,
                ]
                assert events[1].reason is not None
                assert events[1].reason.code == 101
            elif which == "on_notification":
                client.on_notification = boom
                await client.send_message(Message("text/plain", "x", id="m1"))
            elif which == "on_command":
                server.on_command = boom
                with pytest.raises(CommandFailed) as caught:
                    await client.get("/x")
                assert caught.value.reason.code == 101
            else:
                server.on_command = echo_handler
                await client.subscribe("/obs", boom)
                await server.send(Command("observe", "/obs", type="application/json", resource=1))
            await reached.wait()
            server.on_command = echo_handler
            # Still serving, both ways.
            assert (await client.get("/after")).resource == {"uri": "/after"}
            assert (await server.ping()) >= 0
        assert not client.closed
        assert not server.closed
    errors = [r for r in caplog.records if r.name == "rain.channel" and r.levelno >= logging.ERROR]
    assert errors, "the failure was not logged"
    assert any(r.exc_info and isinstance(r.exc_info[1], RuntimeError) for r in errors)


async def test_get_ping_is_answered_by_the_channel_not_the_application() -> None:
    async with channels() as (client, server):
        seen: list[Command] = []
        server.on_command = lambda command: seen.append(command)  # would answer nothing
        async with asyncio.timeout(STEP):
            elapsed = await client.ping()
            response = await client.get("/ping")
            assert await server.ping() >= 0  # and the other way round
        assert elapsed >= 0
        assert response.status is CommandStatus.SUCCESS
        assert response.type == PING_MEDIA_TYPE
        assert response.resource == {}
        assert seen == []


W = TypeVar("W", bound=PassThroughTransport)


def wrapping(kind: type[W]) -> tuple[list[W], Callable[[Transport], Transport]]:
    """``(wrapped, wrap)``: ``wrap`` for ``channels(wrap_server=...)``, which puts the server's
    transport inside a ``kind`` and keeps it in ``wrapped`` for the test to reach."""
    wrapped: list[W] = []

    def wrap(transport: Transport) -> Transport:
        wrapped.append(kind(transport))
        return wrapped[-1]

    return wrapped, wrap


class MutableTransport(PassThroughTransport):
    """Once ``muted``, drops every frame it is asked to send. Counts the ``get /ping`` requests
    it receives."""

    def __init__(self, inner: Transport) -> None:
        super().__init__(inner)
        self.muted = False
        self.pings = 0
        self.pinged = asyncio.Event()

    async def send(self, data: bytes) -> None:
        if not self.muted:
            await self.inner.send(data)

    async def receive(self) -> bytes:
        data = await self.inner.receive()
        if b'"/ping"' in data:
            self.pings += 1
            self.pinged.set()
        return data


async def test_idle_ping_keeps_an_answering_peer() -> None:
    wrapped, wrap = wrapping(MutableTransport)
    options = {"ping_interval": 0.05, "ping_timeout": 1.0}
    async with channels(wrap_server=wrap, client_options=options) as (client, _server):
        server_end = wrapped[0]
        async with asyncio.timeout(STEP):
            while server_end.pings < 3:
                server_end.pinged.clear()
                await server_end.pinged.wait()
        assert not client.closed


async def test_idle_ping_ends_a_session_whose_peer_went_silent() -> None:
    wrapped, wrap = wrapping(MutableTransport)
    options = {"ping_interval": 0.2, "ping_timeout": 0.2}
    async with channels(wrap_server=wrap, client_options=options) as (client, _server):
        wrapped[0].muted = True  # the server still reads, but nothing it says arrives
        async with asyncio.timeout(3.0):  # 0.2 s idle + 0.2 s unanswered ping, generously
            await client.wait_closed()
        assert wrapped[0].pings >= 1
        assert client.close_reason is not None
        assert client.close_reason.code == 11
        with pytest.raises(ChannelClosed):
            await client.get("/x")


async def test_idle_ping_stops_quietly_while_finishing() -> None:
    options = {"ping_interval": 0.05, "ping_timeout": 5.0}
    async with channels(client_options=options) as (client, _server):
        client._protocol.finish()  # the session is finishing: no request may leave any more
        keepalive = client._keepalive
        assert keepalive is not None
        # The next idle ping falls due now; the keepalive must end, not die of the refusal.
        async with asyncio.timeout(STEP):
            await asyncio.shield(keepalive)


# ------------------------------------------------------------------------------ receipts


async def _message_and_receipts(
    client: ClientChannel, server: ServerChannel, message: Message
) -> list[Notification]:
    """Send ``message`` client -> server, then a sentinel with an id; return every receipt that
    came back before the sentinel's own ``received``."""
    receipts: asyncio.Queue[Notification] = asyncio.Queue()
    client.on_notification = receipts.put_nowait
    await client.send_message(message)
    await client.send_message(Message("text/plain", "sentinel", id="sentinel"))
    out: list[Notification] = []
    while True:
        receipt = await next_item(receipts)
        if receipt.id == "sentinel":
            return out
        out.append(receipt)


async def test_a_message_with_an_id_is_received_then_consumed() -> None:
    async with channels() as (client, server):
        handled: list[Message] = []
        server.on_message = handled.append
        message = Message("text/plain", "hi", id="m1", from_=client.local_node)
        receipts = await _message_and_receipts(client, server, message)
        assert [(r.event, r.id, r.to) for r in receipts] == [
            (NotificationEvent.RECEIVED, "m1", client.local_node),
            (NotificationEvent.CONSUMED, "m1", client.local_node),
        ]
        assert handled[0] == message


async def test_a_raising_message_handler_gives_received_then_failed_101() -> None:
    async with channels() as (client, server):

        def boom(message: Message) -> None:
            raise ValueError("cannot handle")

        server.on_message = boom
        receipts = await _message_and_receipts(
            client, server, Message("text/plain", "hi", id="m1", from_=client.local_node)
        )
        assert [r.event for r in receipts] == [NotificationEvent.RECEIVED, NotificationEvent.FAILED]
        assert receipts[1].reason is not None
        assert receipts[1].reason.code == 101
        assert receipts[1].id == "m1"


async def test_a_message_without_an_id_gets_no_receipts() -> None:
    async with channels() as (client, server):
        handled: list[Message] = []
        server.on_message = handled.append
        receipts = await _message_and_receipts(client, server, Message("text/plain", "fire"))
        assert receipts == []
        assert [m.content for m in handled] == ["fire", "sentinel"]


async def test_receipts_go_to_pp_when_set() -> None:
    async with channels() as (client, server):
        server.on_message = lambda message: None
        relay = Node.parse("relay@irf/r1")
        message = Message("text/plain", "hi", id="m1", from_=client.local_node, pp=relay)
        receipts = await _message_and_receipts(client, server, message)
        assert [r.to for r in receipts] == [relay, relay]


@pytest.mark.parametrize(
    ("to", "for_us"),
    [
        ("other@irf/x", False),
        ("srv@irf/other", False),
        ("srv@irf/main", True),
        ("SRV@IRF/MAIN", True),
        ("srv@irf", True),
    ],
)
async def test_receipts_only_for_messages_meant_for_us(to: str, for_us: bool) -> None:
    async with channels() as (client, server):
        handled: list[Message] = []
        server.on_message = handled.append
        message = Message("text/plain", "hi", id="m1", from_=client.local_node, to=to)
        receipts = await _message_and_receipts(client, server, message)
        expected = [NotificationEvent.RECEIVED, NotificationEvent.CONSUMED] if for_us else []
        assert [r.event for r in receipts] == expected


async def test_a_client_sends_receipts_for_server_messages_too() -> None:
    async with channels() as (client, server):
        receipts: asyncio.Queue[Notification] = asyncio.Queue()
        server.on_notification = receipts.put_nowait
        client.on_message = lambda message: None
        await server.send_message(Message("text/plain", "hi", id="s1", from_=SERVER_NODE))
        got = [await next_item(receipts) for _ in range(2)]
        assert [(r.event, r.id, r.to) for r in got] == [
            (NotificationEvent.RECEIVED, "s1", Node.parse(SERVER_NODE)),
            (NotificationEvent.CONSUMED, "s1", Node.parse(SERVER_NODE)),
        ]


# ------------------------------------------------------------------------------ node registry


async def test_the_registry_refuses_a_duplicate_node_and_frees_it_at_the_end() -> None:
    registry = NodeRegistry()
    async with channels(registry=registry) as (first, first_server):
        assert Node.parse(ALICE_NODE) in registry
        client_end, server_end = memory_transport_pair()
        server = ServerChannel(
            server_end, node=SERVER_NODE, authenticator=authenticator(), registry=registry
        )
        client = ClientChannel(client_end, node=ALICE_NODE, identity=ALICE)
        async with asyncio.timeout(STEP):
            results = await asyncio.gather(
                server.establish_session(), client.establish_session(), return_exceptions=True
            )
        server_result, client_result = results
        assert isinstance(client_result, SessionFailed)
        assert not isinstance(client_result, AuthenticationFailed)
        assert client_result.reason.code == 12
        assert isinstance(server_result, SessionFailed)
        assert len(registry) == 1
        async with asyncio.timeout(STEP):
            await first.finish()
            await first_server.wait_closed()
    assert len(registry) == 0
    async with channels(registry=registry) as (again, _server):
        assert again.local_node == Node.parse(ALICE_NODE)


async def test_the_registry_fills_a_missing_instance() -> None:
    registry = NodeRegistry()
    async with (
        channels(client_node="alice@irf", registry=registry) as (one, one_server),
        channels(client_node="alice@irf", registry=registry) as (two, _two_server),
    ):
        assert one.local_node is not None
        assert two.local_node is not None
        assert one.local_node.instance
        assert two.local_node.instance
        assert one.local_node != two.local_node
        assert one.local_node == one_server.remote_node
        assert one.local_node in registry
        assert len(registry) == 2


# ------------------------------------------------------------------------------ bad input


class RawClient:
    """A client that establishes a session by hand, then writes raw bytes on the link."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self._probe = itertools.count()

    async def establish(self) -> None:
        protocol = ClientProtocol(
            node=ALICE_NODE, credentials=ClientCredentials(identity=ALICE)
        )
        protocol.start()
        async with asyncio.timeout(STEP):
            while True:
                for data in protocol.data_to_send():
                    await self.transport.send(data)
                if protocol.is_established:
                    return
                assert not protocol.closed, protocol.failure
                protocol.receive_data(await self.transport.receive())

    async def answers_to(self, data: bytes) -> tuple[list[Envelope], bool]:
        """Send ``data`` then a ``get /ping`` probe; return what came back before the probe's
        answer, and whether the probe was answered (False once the session has ended)."""
        probe_id = f"probe-{next(self._probe)}"
        await self.transport.send(data)
        with suppress(TransportClosed):  # a session-ending input may have closed the link
            await self.transport.send(encode(Command("get", "/ping", id=probe_id)))
        answers: list[Envelope] = []
        while True:
            try:
                envelope = decode(await self.transport.receive())
            except TransportClosed:
                return answers, False
            if isinstance(envelope, Command) and envelope.id == probe_id:
                assert envelope.status is CommandStatus.SUCCESS
                return answers, True
            answers.append(envelope)
            if isinstance(envelope, Session) and envelope.state is SessionState.FAILED:
                return answers, False


@asynccontextmanager
async def raw_session() -> AsyncIterator[tuple[RawClient, ServerChannel]]:
    client_end, server_end = memory_transport_pair()
    server = ServerChannel(
        server_end, node=SERVER_NODE, authenticator=authenticator(),
        compression_options=(SessionCompression.NONE,),
    )
    server.on_command = echo_handler
    raw = RawClient(client_end)
    try:
        async with asyncio.timeout(STEP):
            await asyncio.gather(server.establish_session(), raw.establish())
        yield raw, server
    finally:
        await client_end.close()
        await server.close()


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        # A readable command request: a Command failure echoing its id and method.
        (b'{"id":"c1","method":"get"}', (Command, "c1", "get", 27)),
        (b'{"id":"c2","method":"SET","uri":"/x","resource":1}', (Command, "c2", "set", 23)),
        # Anything else: a failed Notification, with the id when it could be read.
        (b'{"id":"c3","method":"fly","uri":"/x"}', (Notification, "c3", None, 27)),
        (b'{"id":"m1","content":"x"}', (Notification, "m1", None, 21)),
        (b"not json at all", (Notification, None, None, 21)),
        (b"\x00\xff", (Notification, None, None, 21)),
        (b"[1,2]", (Notification, None, None, 21)),
        # Responses and notifications are never answered.
        (b'{"id":"r1","method":"get","status":"bogus"}', None),
        (b'{"id":"n1","event":"bogus"}', None),
    ],
)
async def test_a_server_channel_answers_bad_input_with_a_coded_failure_and_keeps_serving(
    data: bytes, expected: tuple[type[Envelope], str | None, str | None, int] | None
) -> None:
    async with raw_session() as (raw, server):
        async with asyncio.timeout(STEP):
            answers, serving = await raw.answers_to(data)
            assert serving
            if expected is None:
                assert answers == []
            else:
                kind, envelope_id, method, code = expected
                (answer,) = answers
                assert isinstance(answer, kind)
                assert answer.id == envelope_id
                if isinstance(answer, Command):
                    assert answer.status is CommandStatus.FAILURE
                    assert answer.method == method
                else:
                    assert isinstance(answer, Notification)
                    assert answer.event is NotificationEvent.FAILED
                assert answer.reason is not None
                assert answer.reason.code == code
            # A good command afterwards is served as usual.
            await raw.transport.send(encode(Command("get", "/good", id="g1")))
            reply = decode(await raw.transport.receive())
        assert isinstance(reply, Command)
        assert reply.id == "g1"
        assert reply.resource == {"uri": "/good"}
        assert not server.closed


def _expected_answer(data: bytes) -> tuple[str, EnvelopeDecodeError]:
    """What a server owes this bad input, from what the codec could read of it."""
    with pytest.raises(EnvelopeDecodeError) as caught:
        decode(data)
    error = caught.value
    if error.kind == "session":
        return "failed session", error
    if error.kind == "notification" or (error.kind == "command" and error.is_response):
        return "nothing", error
    if error.kind == "command" and error.method and error.envelope_id:
        return "command failure", error
    return "failed notification", error


async def test_the_server_answers_the_whole_bad_input_corpus_and_keeps_serving() -> None:
    endpoint = f"memory://corpus-{next(_names)}"
    factory = transport_factory(endpoint)
    listener = factory.listen([endpoint])
    sessions: list[ServerChannel] = []
    establishing: set[asyncio.Task[ServerChannel]] = set()

    async def serve() -> None:
        async for transport in listener:
            channel = ServerChannel(
                transport, node=SERVER_NODE, authenticator=authenticator(),
                compression_options=(SessionCompression.NONE,),
            )
            channel.on_command = echo_handler
            sessions.append(channel)
            establishing.add(asyncio.create_task(channel.establish_session()))

    async def fresh_client() -> RawClient:
        transport = factory.connect(endpoint)
        await transport.open()
        raw = RawClient(transport)
        await raw.establish()
        return raw

    await listener.start()
    server_task = asyncio.create_task(serve())
    loop = asyncio.get_running_loop()
    slow: list[tuple[str, float]] = []
    wrong: list[str] = []
    raw: RawClient | None = None
    try:
        for name, data in CORPUS:
            if raw is None:
                raw = await fresh_client()
            owed, error = _expected_answer(data)
            started = loop.time()
            async with asyncio.timeout(STEP):
                answers, serving = await raw.answers_to(data)
            elapsed = loop.time() - started
            problem = _check_answer(owed, error, answers, serving)
            if problem:
                wrong.append(f"{name}: {problem}")
            if not serving:
                await raw.transport.close()
                raw = None
            if elapsed > 0.1:
                # One stall of a loaded 2-core machine is not a slow server (typical answers
                # take well under a millisecond): a slow path is slow again when re-measured.
                if raw is None:
                    raw = await fresh_client()
                started = loop.time()
                async with asyncio.timeout(STEP):
                    _, serving = await raw.answers_to(data)
                again = loop.time() - started
                if again > 0.1:
                    slow.append((name, min(elapsed, again)))
                if not serving:
                    await raw.transport.close()
                    raw = None
        assert wrong == []
        assert slow == []
        # Still serving: the current session (if the last entry left one) and a new one.
        if raw is not None:
            answers, serving = await raw.answers_to(encode(Command("get", "/x", id="last")))
            assert serving
            assert [a.id for a in answers] == ["last"]
        async with asyncio.timeout(STEP):
            client = await connect(endpoint, identity=ALICE, node=ALICE_NODE)
            assert (await client.get("/after")).resource == {"uri": "/after"}
            await client.finish()
    finally:
        if raw is not None:
            await raw.transport.close()
        await listener.close()
        server_task.cancel()
        await asyncio.gather(server_task, return_exceptions=True)
        for channel in sessions:
            await channel.close()
        await asyncio.gather(*establishing, return_exceptions=True)


def _check_answer(
    owed: str, error: EnvelopeDecodeError, answers: list[Envelope], serving: bool
) -> str | None:
    if owed == "failed session":
        ok = (
            not serving
            and len(answers) == 1
            and isinstance(answers[0], Session)
            and answers[0].state is SessionState.FAILED
            and answers[0].reason is not None
            and answers[0].reason.code == error.code
        )
        return None if ok else f"expected a failed session, got {answers} (serving={serving})"
    if not serving:
        return f"the session ended: {answers}"
    if owed == "nothing":
        return None if answers == [] else f"expected no answer, got {answers}"
    if len(answers) != 1:
        return f"expected one answer, got {answers}"
    answer = answers[0]
    if owed == "command failure":
        ok = (
            isinstance(answer, Command)
            and answer.status is CommandStatus.FAILURE
            and answer.id == error.envelope_id
            and answer.method == error.method
        )
    else:
        ok = (
            isinstance(answer, Notification)
            and answer.event is NotificationEvent.FAILED
            and answer.id == error.envelope_id
        )
    code = getattr(answer, "reason", None)
    if not ok or code is None or code.code != error.code:
        return f"expected a {owed} with code {error.code}, got {answer}"
    return None


# ----------------------------------------------------------------- proven key, full peer queue


async def test_server_channel_exposes_the_key_the_client_proved() -> None:
    async with channels() as (_client, server):
        assert server.remote_key == ALICE.public_key
    guest_client_end, guest_server_end = memory_transport_pair()
    guests_only = ServerAuthenticator(None, allow_guest=True)
    guest_server = ServerChannel(guest_server_end, node=SERVER_NODE, authenticator=guests_only)
    guest = ClientChannel(guest_client_end, node="visitor@x/y")
    try:
        async with asyncio.timeout(STEP):
            await asyncio.gather(guest_server.establish_session(), guest.establish_session())
        assert guest_server.remote_identity == "guest"
        assert guest_server.remote_key is None
    finally:
        await guest.close()
        await guest_server.close()


class _FullOnce(PassThroughTransport):
    """The first send after ``arm()`` raises QueueFull (a peer not reading)."""

    def __init__(self, inner: Transport) -> None:
        super().__init__(inner)
        self.armed = False

    def arm(self) -> None:
        self.armed = True

    async def send(self, data: bytes) -> None:
        if self.armed:
            self.armed = False
            raise QueueFull("peer queue full")
        await self.inner.send(data)


async def test_a_full_peer_queue_drops_one_frame_keeps_the_rest_and_the_session() -> None:
    wrapped, wrap = wrapping(_FullOnce)
    receipts: asyncio.Queue[Notification] = asyncio.Queue()
    async with channels(wrap_server=wrap) as (client, server):
        server.on_message = lambda message: None
        client.on_notification = receipts.put_nowait
        wrapped[0].arm()
        # The server queues `received` and `consumed` in one batch; `received` does not fit.
        await client.send_message(Message("text/plain", "hi", id="m1"))
        # The next flush (the ping reply) carries the requeued `consumed` first.
        async with asyncio.timeout(STEP):
            await client.ping()
        receipt = await next_item(receipts)
        assert (receipt.id, receipt.event) == ("m1", NotificationEvent.CONSUMED)
        assert not server.closed
        assert not client.closed


# ------------------------------------------------------------------ the error boundary


@pytest.mark.parametrize("mode", ["plain", "coroutine"])
async def test_a_refusing_handler_is_answered_with_its_reason(mode: str) -> None:
    async with channels() as (client, server):

        def refuse(command: Command) -> Command:
            if command.uri == "/by-reason":
                raise CommandRefused(Reason(35, "not for you"))
            raise CommandRefused("not now", code=66)

        async def refuse_later(command: Command) -> Command:
            await asyncio.sleep(0)
            return refuse(command)

        server.on_command = refuse if mode == "plain" else refuse_later
        async with asyncio.timeout(STEP):
            coded = await client.send_command(Command("get", "/by-code"))
            reasoned = await client.send_command(Command("get", "/by-reason"))
            # The channel goes on answering after a refusal.
            server.on_command = echo_handler
            echoed = await client.send_command(Command("get", "/after"))
    assert coded.status is reasoned.status is CommandStatus.FAILURE
    assert (coded.reason, reasoned.reason) == (Reason(66, "not now"), Reason(35, "not for you"))
    assert echoed.status is CommandStatus.SUCCESS


@pytest.mark.parametrize("mode", ["plain", "coroutine"])
async def test_a_handler_fault_is_logged_and_answered_with_handler_fault(
    mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with channels() as (client, server):

        def broken(command: Command) -> Command:
            raise RuntimeError("a bug in the handler")

        async def broken_later(command: Command) -> Command:
            await asyncio.sleep(0)
            return broken(command)

        server.on_command = broken if mode == "plain" else broken_later
        async with asyncio.timeout(STEP):
            default = await client.send_command(Command("get", "/x"))
            server.handler_fault = Reason(1, "internal server error")
            chosen = await client.send_command(Command("get", "/x"))
    assert default.reason == Reason(101, "the handler failed")
    assert chosen.reason == Reason(1, "internal server error")
    logged = [r for r in caplog.records if "command handler failed" in r.getMessage()]
    assert len(logged) == 2
    assert all(r.exc_info is not None for r in logged)  # the traceback, for the log only
    assert "a bug in the handler" not in str(default.reason)


def test_command_refused_carries_a_reason_built_from_either_form() -> None:
    by_text = CommandRefused("busy", code=34)
    assert (by_text.code, by_text.description, by_text.reason) == (34, "busy", Reason(34, "busy"))
    assert CommandRefused("no code given").reason == Reason(61, "no code given")
    by_reason = CommandRefused(Reason(64, "bad"))
    assert (by_reason.code, by_reason.description, str(by_reason)) == (64, "bad", "bad")
