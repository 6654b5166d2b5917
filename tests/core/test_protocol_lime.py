"""The LIME behaviours the sans-I/O protocol performs by itself (issue 9, item 1).

Pongs, receipts and the failure of a request whose answer cannot come are the protocol's
rules, not a shell's: these tests drive a ClientProtocol and a ServerProtocol back to back with
plain lists (tests/core/helpers.py), with no asyncio, no transport and no channel. What a shell
adds (resolving a future, calling a handler) is tested in tests/core/test_channel.py.
"""

from __future__ import annotations

import zlib

import pytest

from rain_envelopes.codec import encode
from rain_envelopes.envelopes import (
    Command,
    CommandMethod,
    CommandStatus,
    Envelope,
    Message,
    Notification,
    NotificationEvent,
    Reason,
    ReasonCode,
    SessionCompression,
)
from rain_envelopes.errors import CommandFailed, EnvelopeDecodeError, RemoteProtocolError
from rain_envelopes.node import Node
from rain_envelopes.protocol import (
    PING_MEDIA_TYPE,
    PING_URI,
    ClientProtocol,
    RequestFailed,
    ServerProtocol,
)
from rain_envelopes.session import Phase

from .helpers import CLIENT, SERVER, Link, decode_frame, deliver

SERVER_NODE = Node.parse("srv@irf/main")
NONE, GZIP = SessionCompression.NONE, SessionCompression.GZIP


def established(compression: SessionCompression = NONE) -> Link:
    """A client and a server with an established session on a quiet link."""
    server = ServerProtocol(
        node=SERVER_NODE, authenticator=None, compression_options=(NONE, GZIP)
    )
    client = ClientProtocol(node="alice@irf/lab", compression=compression)
    client.start()
    link = Link(client, server)
    link.run()
    assert client.is_established
    assert server.is_established
    assert client.compression is compression
    return link


def sent(protocol: ClientProtocol | ServerProtocol) -> list[Envelope]:
    """What ``protocol`` has queued to send, decoded, and taken off its queue."""
    return [decode_frame(frame) for frame in protocol.data_to_send()]


def receive(target: ClientProtocol | ServerProtocol, envelope: Envelope) -> None:
    """Feed ``envelope`` to ``target`` as one plain frame from the peer."""
    target.receive_data(encode(envelope))


# ------------------------------------------------------------------------------ pings


@pytest.mark.parametrize("compression", [NONE, GZIP])
def test_the_server_protocol_answers_a_ping_itself(compression: SessionCompression) -> None:
    link = established(compression)
    link.client.send(Command("get", PING_URI, id="p1"))
    link.run()
    # The application on the server never sees it; the client gets the pong as a response.
    assert link.server.events_received() == []
    (pong,) = link.client.events_received()
    assert isinstance(pong, Command)
    assert (pong.id, pong.method, pong.status) == ("p1", CommandMethod.GET, CommandStatus.SUCCESS)
    assert pong.type == PING_MEDIA_TYPE
    assert pong.resource == {}


def test_the_client_protocol_answers_a_ping_itself() -> None:
    link = established()
    link.server.send(Command("get", PING_URI, id="sp1"))
    link.run()
    assert link.client.events_received() == []
    (pong,) = link.server.events_received()
    assert isinstance(pong, Command)
    assert (pong.id, pong.status, pong.type) == ("sp1", CommandStatus.SUCCESS, PING_MEDIA_TYPE)


@pytest.mark.parametrize(
    "command",
    [
        Command("set", PING_URI, id="x1", resource=1, type="application/json"),
        Command("get", "/ping/x", id="x2"),
        Command("get", "/pings", id="x3"),
    ],
    ids=["set-ping", "below-ping", "other-uri"],
)
def test_only_get_ping_is_answered_by_the_protocol(command: Command) -> None:
    link = established()
    link.client.send(command)
    link.run()
    assert link.server.events_received() == [command]
    assert link.server.data_to_send() == []


def test_a_ping_response_is_not_answered_again() -> None:
    link = established()
    receive(link.server, Command("get", PING_URI, id="p1").success({}, PING_MEDIA_TYPE))
    assert link.server.data_to_send() == []
    assert len(link.server.events_received()) == 1


def test_a_ping_after_the_client_asked_to_finish_is_dropped_not_raised() -> None:
    link = established()
    link.client.finish()
    link.client.data_to_send()  # `finishing` is on its way; the server has not seen it yet
    receive(link.client, Command("get", PING_URI, id="late"))
    # The client may send nothing more, so no pong, and no error for a shell to handle.
    assert link.client.data_to_send() == []
    assert link.client.events_received() == []


# ------------------------------------------------------------------------------ receipts


def test_received_is_queued_on_arrival_and_consumed_when_the_shell_says_so() -> None:
    link = established()
    client_node = link.client.local_node
    message = Message("text/plain", "hi", id="m1", from_=client_node)
    receive(link.server, message)
    assert link.server.events_received() == [message]
    assert sent(link.server) == [
        Notification(NotificationEvent.RECEIVED, id="m1", to=client_node)
    ]
    link.server.message_consumed(message)
    assert sent(link.server) == [
        Notification(NotificationEvent.CONSUMED, id="m1", to=client_node)
    ]


def test_message_failed_queues_a_failed_receipt_with_101_by_default() -> None:
    link = established()
    message = Message("text/plain", "hi", id="m1", from_=link.client.local_node)
    receive(link.server, message)
    link.server.data_to_send()
    link.server.message_failed(message)
    (receipt,) = sent(link.server)
    assert isinstance(receipt, Notification)
    assert (receipt.event, receipt.id, receipt.to) == (
        NotificationEvent.FAILED, "m1", link.client.local_node
    )
    assert receipt.reason == Reason(ReasonCode.APPLICATION_ERROR, "the message handler failed")


def test_message_failed_carries_the_reason_it_is_given() -> None:
    link = established()
    message = Message("text/plain", "hi", id="m1")
    receive(link.server, message)
    link.server.data_to_send()
    reason = Reason(ReasonCode.GENERAL_ERROR, "disk full")
    link.server.message_failed(message, reason)
    (receipt,) = sent(link.server)
    assert isinstance(receipt, Notification)
    assert receipt.reason == reason


def test_the_receipts_cross_the_link_in_order() -> None:
    link = established()
    link.client.send(Message("text/plain", "hi", id="m1"))
    link.run()
    (message,) = link.server.events_received()
    assert isinstance(message, Message)
    link.server.message_consumed(message)
    link.run()
    assert [
        (event.event, event.id)
        for event in link.client.events_received()
        if isinstance(event, Notification)
    ] == [(NotificationEvent.RECEIVED, "m1"), (NotificationEvent.CONSUMED, "m1")]


def test_a_message_without_an_id_gets_no_receipt_at_all() -> None:
    link = established()
    message = Message("text/plain", "fire and forget")
    receive(link.server, message)
    assert link.server.events_received() == [message]
    link.server.message_consumed(message)
    link.server.message_failed(message)
    assert link.server.data_to_send() == []


def test_receipts_go_to_pp_when_set_else_from() -> None:
    link = established()
    relay = Node.parse("relay@irf/r1")
    message = Message("text/plain", "hi", id="m1", from_=link.client.local_node, pp=relay)
    receive(link.server, message)
    link.server.message_consumed(message)
    assert [receipt.to for receipt in sent(link.server)] == [relay, relay]  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("to", "for_us"),
    [
        (None, True),
        ("srv@irf/main", True),
        ("SRV@IRF/MAIN", True),
        ("srv@irf", True),  # our identity, any instance
        ("srv@irf/other", False),
        ("other@irf/x", False),
    ],
)
def test_receipts_only_for_messages_meant_for_us(to: str | None, for_us: bool) -> None:
    link = established()
    message = Message("text/plain", "hi", id="m1", to=to)
    receive(link.server, message)
    link.server.message_consumed(message)
    events = [receipt.event for receipt in sent(link.server)]  # type: ignore[union-attr]
    assert events == ([NotificationEvent.RECEIVED, NotificationEvent.CONSUMED] if for_us else [])
    # Either way the message reaches the application.
    assert link.server.events_received() == [message]


def test_the_client_protocol_sends_receipts_for_server_messages() -> None:
    link = established()
    message = Message("text/plain", "hi", id="s1", from_=SERVER_NODE)
    receive(link.client, message)
    link.client.message_consumed(message)
    assert sent(link.client) == [
        Notification(NotificationEvent.RECEIVED, id="s1", to=SERVER_NODE),
        Notification(NotificationEvent.CONSUMED, id="s1", to=SERVER_NODE),
    ]


def test_a_receipt_the_session_no_longer_allows_is_dropped() -> None:
    link = established()
    link.client.finish()
    link.client.data_to_send()
    message = Message("text/plain", "in flight", id="s1")
    receive(link.client, message)  # the server may still deliver what it had in flight
    link.client.message_consumed(message)
    assert link.client.data_to_send() == []
    assert link.client.events_received() == [message]


# ------------------------------------------------------------------------------ request failures


def test_a_request_the_peer_cannot_read_fails_as_an_event() -> None:
    link = established()
    # A request the server cannot read (an unknown method) but whose id it can: the server
    # answers with a failed notification about that id, and the client reports the request
    # failed just before handing on the notification itself.
    link.inject(CLIENT, b'{"id":"c1","method":"fly","uri":"/x"}')
    link.run()
    failure, notification = link.client.events_received()
    assert isinstance(notification, Notification)
    assert notification.event is NotificationEvent.FAILED
    assert isinstance(failure, RequestFailed)
    assert failure.id == "c1"
    assert isinstance(failure.error, CommandFailed)
    assert failure.error.reason == notification.reason
    assert failure.error.reason.code == ReasonCode.VALIDATION_INVALID_METHOD
    assert failure.error.response == notification


def test_a_failed_notification_reports_a_request_failure_for_its_id() -> None:
    link = established()
    reason = Reason(ReasonCode.GENERAL_ERROR, "cannot")
    notification = Notification(NotificationEvent.FAILED, reason, id="r9")
    receive(link.client, notification)
    failure, delivered = link.client.events_received()
    assert delivered == notification
    assert isinstance(failure, RequestFailed)
    assert failure.id == "r9"
    assert isinstance(failure.error, CommandFailed)
    assert failure.error.reason == reason


@pytest.mark.parametrize(
    "notification",
    [
        Notification(NotificationEvent.RECEIVED, id="m1"),
        Notification(NotificationEvent.CONSUMED, id="m1"),
        Notification(NotificationEvent.FAILED, Reason(ReasonCode.GENERAL_ERROR, "x")),
    ],
    ids=["received", "consumed", "failed-without-id"],
)
def test_other_notifications_report_no_request_failure(notification: Notification) -> None:
    link = established()
    receive(link.client, notification)
    assert link.client.events_received() == [notification]


def test_an_unreadable_response_fails_its_request_as_an_event() -> None:
    link = established()
    data = b'{"id":"c1","method":"get","status":"bogus"}'
    with pytest.raises(EnvelopeDecodeError) as caught:
        link.client.receive_data(data)
    (failure,) = link.client.events_received()
    assert failure == RequestFailed("c1", caught.value)
    # Responses are never answered, and the session goes on.
    link.client.reply_to_error(caught.value)
    assert link.client.data_to_send() == []
    assert link.client.is_established


def test_an_unreadable_response_through_the_link_helper_is_reported_too() -> None:
    # What a shell sees when it feeds frames the ordinary way (deliver = receive_data, then
    # reply_to_error on a protocol error).
    link = established(GZIP)
    link.server.send(Command("get", "/x", id="c1").success(1))
    link.replace_next(_gzip(b'{"id":"c1","method":"get","status":"bogus"}'))
    frame = link.step()
    assert frame.sender == SERVER
    assert isinstance(frame.error, EnvelopeDecodeError)
    assert link.client.events_received() == [RequestFailed("c1", frame.error)]


@pytest.mark.parametrize(
    "data",
    [
        b'{"method":"get","status":"bogus"}',  # a response with no id: nothing to fail
        b'{"id":"c1","method":"get"}',  # a request, not a response
        b"not json",
    ],
)
def test_unreadable_frames_that_are_no_response_with_an_id_fail_no_request(data: bytes) -> None:
    link = established()
    frame = deliver(SERVER, data, link.client)
    assert isinstance(frame.error, RemoteProtocolError)
    assert link.client.events_received() == []


def test_a_readable_response_is_an_envelope_event_not_a_failure() -> None:
    link = established()
    response = Command("get", "/x", id="c1").failure(ReasonCode.GENERAL_ERROR, "no")
    receive(link.client, response)
    assert link.client.events_received() == [response]


def _gzip(data: bytes) -> bytes:
    compressor = zlib.compressobj(6, zlib.DEFLATED, 31)
    return compressor.compress(data) + compressor.flush()


# ------------------------------------------------------------------------------ client failure


def test_a_client_that_gives_up_fails_through_the_machine() -> None:
    # Only the server may send `failed`: a client refusing the server's bytes before
    # establishment fails its own view through SessionMachine.process_error, sends nothing,
    # and keeps the reason.
    server = ServerProtocol(node=SERVER_NODE, authenticator=None, compression_options=(NONE,))
    client = ClientProtocol(node="alice@irf/lab")
    client.start()
    server.receive_data(client.data_to_send()[0])
    server.data_to_send()
    frame = deliver(SERVER, b"not json", client)
    assert isinstance(frame.error, EnvelopeDecodeError)
    assert client.machine.phase is Phase.FAILED
    assert client.closed
    assert client.failure is not None
    assert client.failure.code == frame.error.code
    assert client.data_to_send() == []
