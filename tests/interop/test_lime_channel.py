"""lime-python 2.0.13's ``ClientChannel``, unchanged, against our ``ServerChannel``.

The two meet through :class:`~tests.interop.lime_adapter.LimeAdapterTransport` over
``memory_transport_pair()``: every byte that crosses is lime-python's own serialisation one way
and our codec's the other, so these tests show what a real lime-python peer gets from a RAIN
server, including where lime-python breaks LIME (PROTOCOL.md, "lime-python bugs not to copy").

Server settings that work with lime-python, and why (each test says which bug it steers around):

- **one compression** (``compression_options=(NONE,)``): negotiation is skipped, because
  lime-python breaks on the negotiation echo and never applies what was negotiated;
- **guest authentication** (``ServerAuthenticator(None, allow_guest=True)``): the server answers
  ``new`` with ``authenticating``, because lime-python hangs when ``new`` is answered with
  ``established`` (what ``authenticator=None`` does) or ``failed``.

Every test is bounded by ``asyncio.timeout``. Waiting is on events and conditions (a queue, the
adapter's ``wait_received``); where a test shows that lime-python *never* completes, it checks a
future that nothing can resolve any more, rather than waiting for a timer.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from lime_python import ClientChannel as LimeClientChannel
from lime_python import Command as LimeCommand
from lime_python import GuestAuthentication
from lime_python import Message as LimeMessage
from lime_python import Notification as LimeNotification
from lime_python import Reason as LimeReason

from rain_envelopes import (
    Command,
    CommandMethod,
    EstablishTimeout,
    Message,
    Node,
    Notification,
    NotificationEvent,
    ReasonCode,
    RemoteProtocolError,
    ServerAuthenticator,
    ServerChannel,
    SessionCompression,
    SessionFailed,
)
from rain_envelopes.protocol import NodeRegistry
from rain_envelopes.transport import memory_transport_pair

from .lime_adapter import LimeAdapterTransport, UnreadableFrame

LIMIT = 5.0  # seconds; every test body runs under this asyncio.timeout
SERVER_NODE = "srv@lab/main"
LIME_IDENTITY = "alice@lab"
LIME_INSTANCE = "bench"
#: A guest keeps its claimed name and instance but is put in the `guest` domain.
LIME_AS_GUEST = "alice@guest/bench"
GZIP_MAGIC = b"\x1f\x8b"


@dataclass
class Link:
    server: ServerChannel
    adapter: LimeAdapterTransport
    lime: LimeClientChannel

    async def establish(self) -> Any:
        """Run both sides to ``established``; returns lime's ``established`` Session."""
        server_side = asyncio.create_task(self.server.establish_session())
        try:
            session = await self.lime.establish_session_async(
                None, None, LIME_IDENTITY, GuestAuthentication(), LIME_INSTANCE
            )
            await server_side
        finally:
            server_side.cancel()
        return session


MakeLink = Callable[..., Awaitable[Link]]


def guest_only() -> ServerAuthenticator:
    return ServerAuthenticator(None, allow_guest=True)


@pytest.fixture
async def make_link() -> AsyncIterator[MakeLink]:
    """``await make_link(**server_options)``: a ServerChannel and a lime client, linked.

    Defaults are the settings lime-python can establish with: one compression (no
    negotiation) and guest-only authentication (``authenticating`` in reply to ``new``).
    """
    links: list[Link] = []

    async def make(**options: Any) -> Link:
        client_end, server_end = memory_transport_pair()
        options.setdefault("authenticator", guest_only())
        options.setdefault("compression_options", (SessionCompression.NONE,))
        server = ServerChannel(server_end, node=SERVER_NODE, **options)
        adapter = LimeAdapterTransport(client_end)
        lime = LimeClientChannel(adapter)
        await adapter.open_async()
        link = Link(server, adapter, lime)
        links.append(link)
        return link

    yield make
    async with asyncio.timeout(LIMIT):
        for link in links:
            await link.server.close()
            await link.adapter.close_async()


def is_state(state: str) -> Callable[[dict[str, Any]], bool]:
    return lambda envelope: envelope.get("state") == state


# ------------------------------------------------------------------------ what works


async def test_lime_client_establishes_a_session(make_link: MakeLink) -> None:
    """lime-python's ClientChannel establishes a session with our ServerChannel.

    Server settings: one compression, so negotiation is skipped (lime-python answers the
    negotiation echo by calling an already-resolved future and never applies the options);
    guest authentication, so ``new`` is answered with ``authenticating`` (lime-python only
    listens for ``negotiating``/``authenticating`` in reply to ``new`` and hangs on
    ``established``).

    lime-python also gives ``new`` an id, which LIME says it must not: our server copes by
    ignoring it and assigning its own, which lime-python then uses for the rest of the session.
    """
    async with asyncio.timeout(LIMIT):
        link = await make_link()
        session = await link.establish()

    lime, server, adapter = link.lime, link.server, link.adapter
    assert session.state == "established"
    assert lime.state == "established"
    # lime takes `to` as its own node and `from` as the server's, as LIME says.
    assert lime.local_node == LIME_AS_GUEST
    assert lime.remote_node == SERVER_NODE
    assert server.remote_node == Node.parse(LIME_AS_GUEST)
    assert server.remote_identity == "guest"

    new, answer = adapter.sent[0], adapter.sent[1]
    assert new["state"] == "new"
    # No proposal from a LIME client, so the plain sequence, which confirms no options.
    assert "rainProposal" not in new
    assert "compression" not in adapter.received[1]
    assert "id" in new, "lime-python 2.0.13 gives `new` an id (a LIME violation)"
    assert new["id"] != server.session_id  # ignored: the server assigns the session id
    assert lime.session_id == server.session_id
    assert answer == {
        "id": server.session_id,
        "from": f"{LIME_IDENTITY}/{LIME_INSTANCE}",
        "state": "authenticating",
        "scheme": "guest",
        "authentication": {"scheme": "guest"},
    }
    # What lime-python was sent, exactly: no negotiation, one scheme, then established.
    assert [e["state"] for e in adapter.received] == ["authenticating", "established"]
    assert adapter.received[0]["schemeOptions"] == ["guest"]
    assert adapter.errors == []


async def test_lime_command_is_answered(make_link: MakeLink) -> None:
    """A ``get`` from lime-python reaches ``server.on_command``; lime receives the answer.

    Same server settings as the establishment test (one compression, guest only).
    """
    seen: list[Command] = []

    def on_command(command: Command) -> Command:
        seen.append(command)
        if command.uri == "/params/temp":
            return command.success({"value": 21.5, "unit": "C"})
        return command.failure(ReasonCode.COMMAND_RESOURCE_NOT_FOUND, f"no {command.uri}")

    async with asyncio.timeout(LIMIT):
        link = await make_link()
        link.server.on_command = on_command
        await link.establish()
        answer = await link.lime.process_command_async(
            LimeCommand("get", "/params/temp"), LIMIT
        )
        refused = await link.lime.process_command_async(LimeCommand("get", "/nothing"), LIMIT)

    assert answer.status == "success"
    assert answer.method == "get"
    assert answer.type_n == "application/json"
    assert answer.resource == {"value": 21.5, "unit": "C"}
    # Correlated by lime's own id, which the server echoed.
    assert answer.id == seen[0].id == link.adapter.sent[2]["id"]
    assert seen[0].uri == "/params/temp"
    assert seen[0].status is None

    assert refused.status == "failure"
    # Our reason is an object on the wire; lime-python keeps it as the plain dict.
    assert refused.reason == {
        "code": int(ReasonCode.COMMAND_RESOURCE_NOT_FOUND), "description": "no /nothing"
    }
    assert link.adapter.errors == []


async def test_lime_message_reaches_on_message(make_link: MakeLink) -> None:
    """A message from lime-python reaches ``server.on_message``.

    lime-python gives every envelope an id, so a fire-and-forget message is impossible from
    it: our server, seeing the id, answers with ``received`` then ``consumed`` (addressed to
    nobody, since lime sent no ``from``), which lime hands to its ``on_notification``.
    """
    messages: asyncio.Queue[Message] = asyncio.Queue()
    lime_notifications: list[Any] = []

    async with asyncio.timeout(LIMIT):
        link = await make_link()
        link.server.on_message = messages.put_nowait
        await link.establish()
        link.lime.on_notification = lime_notifications.append
        link.lime.send_message(LimeMessage("text/plain", "hello from lime"))
        message = await messages.get()
        await link.adapter.wait_received(lambda e: e.get("event") == "consumed")

    assert message.type == "text/plain"
    assert message.content == "hello from lime"
    assert message.id is not None, "lime-python 2.0.13 gives every message an id"
    assert message.sender is None
    receipts = [e for e in link.adapter.received if "event" in e]
    assert receipts == [
        {"id": message.id, "event": "received"},
        {"id": message.id, "event": "consumed"},
    ]
    assert [(n.event, n.id) for n in lime_notifications] == [
        ("received", message.id), ("consumed", message.id)
    ]


async def test_server_commands_and_messages_reach_lime(make_link: MakeLink) -> None:
    """The other direction: our server pings lime-python and sends it a message.

    lime-python answers ``get /ping`` itself (and, unlike LIME, also hands the ping to its
    application's ``on_command``). For a message with an id and a ``from`` it sends only a
    ``received`` receipt, never ``consumed``, and addresses it to *itself* (``to`` = the
    message's ``to``) rather than to the sender: our ServerChannel does not route, so it passes
    that receipt to ``on_notification`` as it came.
    """
    notifications: asyncio.Queue[Notification] = asyncio.Queue()
    lime_commands: list[Any] = []
    lime_messages: list[Any] = []

    async with asyncio.timeout(LIMIT):
        link = await make_link()
        link.server.on_notification = notifications.put_nowait
        await link.establish()
        link.lime.on_command = lime_commands.append
        link.lime.on_message = lime_messages.append

        rtt = await link.server.ping()

        remote = link.server.remote_node
        assert remote is not None
        await link.server.send_message(
            Message("text/plain", "hello lime", id="m1", from_=link.server.local_node, to=remote)
        )
        receipt = await notifications.get()

    assert rtt >= 0
    assert [c.uri for c in lime_commands] == ["/ping"]
    ping_reply = next(e for e in link.adapter.sent if e.get("status") == "success")
    assert ping_reply["type"] == "application/vnd.lime.ping+json"
    assert ping_reply["resource"] == {}

    assert [(m.id, m.content, m.from_n) for m in lime_messages] == [
        ("m1", "hello lime", SERVER_NODE)
    ]
    assert receipt.event is NotificationEvent.RECEIVED
    assert receipt.id == "m1"
    assert receipt.to == remote, "lime-python addresses its receipt to itself"
    assert notifications.empty()
    assert link.adapter.errors == []


async def test_lime_finishes_the_session(make_link: MakeLink) -> None:
    """lime-python's ``finishing`` is answered with ``finished`` and both ends close cleanly."""
    async with asyncio.timeout(LIMIT):
        link = await make_link()
        await link.establish()
        finished = await link.lime.send_finishing_session_async()
        await link.server.wait_closed()
        await link.adapter.link_closed.wait()

    assert finished.state == "finished"
    assert finished.id == link.server.session_id
    assert link.adapter.sent[-1] == {"id": link.server.session_id, "state": "finishing"}
    assert link.server.close_reason is None
    assert link.adapter.errors == []


# --------------------------------------------------- lime-python's LIME violations, our answer


async def test_string_reason_in_a_notification_is_refused_and_the_session_goes_on(
    make_link: MakeLink, caplog: pytest.LogCaptureFixture
) -> None:
    """lime-python sends ``reason`` as a string (``str(Reason)``: ``"boom (Code 101)"``).

    Our server refuses the envelope with a decode error naming the JSON path, does not pass
    it to ``on_notification``, sends nothing back (notifications are never answered: no reply
    loops), and keeps serving: the next command is answered.
    """
    notifications: list[Notification] = []

    async with asyncio.timeout(LIMIT):
        link = await make_link()
        link.server.on_notification = notifications.append
        link.server.on_command = lambda command: command.success("still here")
        await link.establish()
        received_before = len(link.adapter.received)
        with caplog.at_level(logging.WARNING, logger="rain.channel"):
            link.lime.send_notification(
                LimeNotification("failed", LimeReason(101, "boom"), id="m1")
            )
            answer = await link.lime.process_command_async(LimeCommand("get", "/x"), LIMIT)

    bad = link.adapter.sent[-2]
    assert bad == {"id": "m1", "event": "failed", "reason": "boom (Code 101)"}
    assert notifications == []
    assert "$.reason: expected object, got string" in caplog.text
    # Nothing came back for the notification: the only envelope since is the command answer.
    assert link.adapter.received[received_before:] == [
        {"id": answer.id, "method": "get", "uri": "/x", "type": "application/json",
         "resource": "still here", "status": "success"}
    ]
    assert link.server.state.value == "established"


async def test_string_reason_in_a_command_response_fails_the_request_at_once(
    make_link: MakeLink,
) -> None:
    """lime-python's application answers our server's command with a failure; lime-python
    puts the reason on the wire as a string, so our codec cannot read the response.

    PROTOCOL.md wants bad input refused clearly. The response's id and ``status`` are
    readable, so the request it answers should fail at once with the decode error (naming
    ``$.reason``) instead of the application being told, a timeout later, that no response came.
    """

    def lime_on_command(command: Any) -> None:
        if command.uri == "/status":
            reply = LimeCommand(
                command.method, status="failure", reason=LimeReason(67, "no status here")
            )
            reply.id = command.id
            link.lime.send_command(reply)

    async with asyncio.timeout(LIMIT):
        link = await make_link()
        await link.establish()
        link.lime.on_command = lime_on_command
        with pytest.raises(RemoteProtocolError, match=r"\$\.reason"):
            # 1 s: far longer than the answer needs to cross; a timeout would mean it was lost.
            await link.server.send_command(Command(CommandMethod.GET, "/status"), timeout=1.0)

    assert link.adapter.sent[-1]["reason"] == "no status here (Code 67)"


async def test_duplicate_node_is_refused_with_code_12_and_lime_never_notices(
    make_link: MakeLink,
) -> None:
    """A second lime client claiming the same node is refused with ``failed``, code 12.

    Our side is right: the refusal is a ``failed`` session with the reason as an object, and
    the server's ``establish_session`` raises SessionFailed. lime-python, though, handles
    ``failed`` by calling ``future.set_exception(session)`` with the Session envelope, which
    is no exception: that TypeError ("invalid exception object") is raised inside a loop
    callback and the establishment future is never resolved, so ``establish_session_async``
    hangs for ever. We catch that TypeError with the loop's exception handler (an event, not a
    timer), after which nothing can resolve lime's establishment any more.
    """
    registry = NodeRegistry()
    loop = asyncio.get_running_loop()
    lime_callback_errors: list[BaseException] = []
    lime_callback_failed = asyncio.Event()

    def exception_handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exception = context.get("exception")
        if isinstance(exception, TypeError):
            lime_callback_errors.append(exception)
            lime_callback_failed.set()
        else:
            loop.default_exception_handler(context)

    previous = loop.get_exception_handler()
    loop.set_exception_handler(exception_handler)
    try:
        async with asyncio.timeout(LIMIT):
            first = await make_link(registry=registry)
            await first.establish()
            second = await make_link(registry=registry)
            server_side = asyncio.create_task(second.server.establish_session())
            lime_side = asyncio.create_task(second.lime.establish_session_async(
                None, None, LIME_IDENTITY, GuestAuthentication(), LIME_INSTANCE
            ))
            with pytest.raises(SessionFailed) as refused:
                await server_side
            failed = await second.adapter.wait_received(is_state("failed"))
            await lime_callback_failed.wait()
    finally:
        loop.set_exception_handler(previous)

    assert refused.value.reason.code == ReasonCode.SESSION_REGISTRATION_ERROR
    assert failed["reason"]["code"] == int(ReasonCode.SESSION_REGISTRATION_ERROR)
    assert LIME_AS_GUEST in failed["reason"]["description"]
    assert str(lime_callback_errors[0]) == "invalid exception object"
    assert not lime_side.done(), "lime-python never resolves its establishment on `failed`"
    lime_side.cancel()
    assert first.lime.state == "established"  # the first session is untouched
    assert Node.parse(LIME_AS_GUEST) in registry


# ----------------------------------------------- why the server settings above are needed


async def test_why_guest_auth_lime_hangs_when_new_is_answered_with_established(
    make_link: MakeLink,
) -> None:
    """With ``authenticator=None`` our server answers ``new`` directly with ``established``
    (legal LIME: authentication may be skipped). lime-python's ``start_new_session_async``
    future listens only for ``negotiating`` and ``authenticating``, so it never resolves.

    lime handles an envelope synchronously inside ``on_envelope``: once the adapter has
    delivered ``established``, a future lime was going to resolve would already be done.
    """
    async with asyncio.timeout(LIMIT):
        link = await make_link(authenticator=None)
        server_side = asyncio.create_task(link.server.establish_session())
        started = link.lime.start_new_session_async()  # what establish_session_async awaits
        await link.adapter.wait_received(is_state("established"))
        await server_side

    assert link.lime.state == "established"  # lime saw it...
    assert not started.done()  # ...and never resolved the establishment
    started.cancel()
    assert link.server.remote_identity == "anonymous"
    assert link.adapter.errors == []


async def test_why_one_compression_lime_breaks_on_the_negotiation_echo(
    make_link: MakeLink,
) -> None:
    """Offering two compressions makes lime-python negotiate, and it breaks on the echo.

    The echo is a second ``negotiating`` envelope; lime-python passes it to the future of
    ``new``, already resolved, so ``on_envelope`` raises InvalidStateError. A transport whose
    read loop dies on that exception would hang the session here; our adapter records it and
    reads on, and with ``none`` chosen the session then establishes.
    """
    async with asyncio.timeout(LIMIT):
        link = await make_link(
            compression_options=(SessionCompression.NONE, SessionCompression.GZIP)
        )
        server_side = asyncio.create_task(link.server.establish_session())
        session = await link.lime.establish_session_async(
            "none", "none", LIME_IDENTITY, GuestAuthentication(), LIME_INSTANCE
        )
        await server_side

    assert session.state == "established"
    assert [e["state"] for e in link.adapter.received] == [
        "negotiating", "negotiating", "authenticating", "established"
    ]
    assert [type(e) for e in link.adapter.errors] == [asyncio.InvalidStateError]


async def test_why_one_compression_lime_never_applies_gzip(make_link: MakeLink) -> None:
    """When lime-python chooses ``gzip`` it never applies it: after the echo our server
    sends gzip, which lime cannot read, and lime sends nothing more. The server refuses
    clearly all the same: its establishment timeout fails the session with code 16 (in a
    gzip frame, which lime cannot read either).
    """
    async with asyncio.timeout(LIMIT):
        link = await make_link(
            compression_options=(SessionCompression.NONE, SessionCompression.GZIP)
        )
        server_side = asyncio.create_task(link.server.establish_session(timeout=0.5))
        lime_side = asyncio.create_task(link.lime.establish_session_async(
            "gzip", "none", LIME_IDENTITY, GuestAuthentication(), LIME_INSTANCE
        ))
        with pytest.raises(EstablishTimeout):
            await server_side  # the server's own establishment timer, not a test sleep
        await link.adapter.wait_until(
            lambda: sum(isinstance(e, UnreadableFrame) for e in link.adapter.errors) == 2
        )

    sent_states = [e["state"] for e in link.adapter.sent]
    assert sent_states == ["new", "negotiating"]  # no answer to the gzip `authenticating`
    assert link.adapter.sent[1]["compression"] == "gzip"
    unreadable = [e for e in link.adapter.errors if isinstance(e, UnreadableFrame)]
    assert all(e.data.startswith(GZIP_MAGIC) for e in unreadable)
    assert link.server.close_reason is not None
    assert link.server.close_reason.code == ReasonCode.SESSION_NEGOTIATION_TIMEOUT
    assert link.lime.state == "negotiating"
    assert not lime_side.done()
    lime_side.cancel()

