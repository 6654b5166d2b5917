"""Sans-I/O LIME protocol objects: bytes in, envelopes and bytes out.

:class:`ClientProtocol` and :class:`ServerProtocol` hold one side of one session. Feed every
frame from the transport to ``receive_data``; collect application envelopes with
``events_received()`` and frames to send with ``data_to_send()``. They run negotiation and
authentication themselves, so a channel only pumps bytes. No I/O, no asyncio, no zmq: tests
wire a client and a server back to back with plain lists.

Establishment and round trips. Plain LIME spends a round trip on each stage that needs an
answer: ``new`` -> offer, choice -> echo, credentials -> verdict (three before ``established``
with compression to negotiate and one authentication round; four with ``keypair_rounds=2``).
On a 2 s satellite link that is six seconds before the transport's own handshake is counted.
So a :class:`ClientProtocol` opens with a *proposal* on ``new`` (:class:`Proposal`, carried in
the extension field :data:`~rain_envelopes.session.PROPOSAL_KEY`): the compression it prefers,
the scheme it would pick and what that scheme can say without a challenge, its node. A
:class:`ServerProtocol` takes what it can, stage by stage, in LIME's order:

- the options, when the proposed compression (and encryption, if named) is one it offers; its
  next reply then *confirms* them (``compression``/``encryption`` on ``authenticating`` or
  ``established``) and both sides switch from the frame after that reply, exactly as after a
  negotiation echo. Otherwise it sends the plain negotiation offer and goes on from there;
- the credentials, when the proposed scheme is one it offers for this client: ``transport``
  and ``guest`` need nothing more, so the answer to ``new`` is ``established`` (one round trip);
  ``keypair`` gets a fresh random challenge and its signature comes in the next round (two
  round trips): the signature still covers the session id and a challenge the server drew for
  this session, so the shortcut never lets an old signature through. A scheme not offered gets
  the plain authentication offer; refused credentials fail the session (13), as they would
  have one round later.

A value a side does not know (a newer peer's compression or scheme) is never an error, only
nothing to take. Plain LIME peers are untouched: a LIME server ignores the unknown key and
answers ``new`` the plain way, which the client follows (it applies compression only on an
echo or a confirmation, and a plain reply confirms nothing, i.e. no compression); a LIME
client's ``new`` has no proposal, so the server runs the plain sequence for it.

Compression is applied here rather than by each transport: after the negotiation echo (or the
confirmation of a proposal) both sides gzip every frame. Doing it in the one place that knows
exactly which envelope was the echo removes any race between switching compression and frames
already queued, and every transport gets it for free.

What the protocol does by itself once established. LIME asks every node for a few answers
that need no application, so they live here, and every shell (the asyncio channel, a blocking
API, another transport's loop) gets them by feeding bytes:

- ``get /ping`` is answered with an empty success (:data:`PING_MEDIA_TYPE`) and never appears
  in ``events_received()``;
- a message with an id that was meant for us (no ``to``, our node, or our identity without an
  instance) gets a ``received`` receipt at once, addressed to ``pp`` else ``from``. The
  ``consumed`` or ``failed`` receipt depends on the application, so the shell reports how its
  handler ended with :meth:`~_Protocol.message_consumed` or :meth:`~_Protocol.message_failed`,
  and the protocol decides whether a receipt is due and queues it;
- an answer that will never come is an event: a ``failed`` notification with an id, or a
  response that cannot be read, is reported as :class:`RequestFailed` (the notification itself
  is still delivered after it). The shell fails whatever it has waiting under that id.

A reply the session state no longer allows (a ping that arrives after we asked to finish) is
dropped rather than raised: the peer that asked is going away.

Errors: ``send`` raises LocalProtocolError for a step the state machine forbids;
``receive_data`` raises RemoteProtocolError (EnvelopeDecodeError for bad bytes) and never
anything else. After catching one, call :meth:`reply_to_error` to queue the coded answer LIME
expects (a Command failure, a failed Notification, or a failed Session before establishment).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import itertools
import secrets
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeVar

from .auth import GUEST_IDENTITY, ClientCredentials, ServerAuthenticator
from .codec import MAX_ENVELOPE_SIZE, decode, encode
from .envelopes import (
    AuthenticationScheme,
    Command,
    CommandMethod,
    CommandStatus,
    Envelope,
    Message,
    Notification,
    NotificationEvent,
    Reason,
    ReasonCode,
    Session,
    SessionCompression,
    SessionEncryption,
    SessionState,
)
from .errors import (
    CommandFailed,
    EnvelopeDecodeError,
    EnvelopeKind,
    LocalProtocolError,
    RemoteProtocolError,
)
from .node import Node
from .session import PROPOSAL_KEY, Phase, Role, SessionMachine

__all__ = [
    "ANONYMOUS_IDENTITY",
    "DEFAULT_COMPRESSION_OPTIONS",
    "PING_MEDIA_TYPE",
    "PING_URI",
    "ClientProtocol",
    "Event",
    "NodeRegistry",
    "Proposal",
    "RequestFailed",
    "ServerProtocol",
]

#: The identity of a session on a server that authenticates nobody (embedding, tests only).
ANONYMOUS_IDENTITY = "anonymous"

#: The compressions a server offers unless told otherwise. A session setting, not a fact of the
#: link: the protocol compresses, so every transport carries every compression.
DEFAULT_COMPRESSION_OPTIONS: tuple[SessionCompression, ...] = (
    SessionCompression.NONE,
    SessionCompression.GZIP,
)

#: The resource every LIME node answers itself: ``get /ping`` gets an empty success of this type.
PING_URI = "/ping"
PING_MEDIA_TYPE = "application/vnd.lime.ping+json"

_S = SessionState  # the states are named on nearly every line below
_GZIP_WBITS = 31  # zlib with a gzip header and trailer
_E = TypeVar("_E", bound=StrEnum)


def _member(kind: type[_E], value: str | None) -> _E | None:
    """``value`` as a member of ``kind``; None when absent or unknown (a newer peer's value)."""
    if value is None:
        return None
    try:
        return kind(value)
    except ValueError:
        return None


@dataclass(frozen=True)
class Proposal:
    """What a client's ``new`` proposes (the :data:`~rain_envelopes.session.PROPOSAL_KEY` field).

    Values stay strings: one this side does not know (a newer peer's) is not an error, just
    nothing it can accept, and the server falls back to the plain offer for that stage.
    """

    compression: str = SessionCompression.NONE.value
    encryption: str | None = None
    scheme: str | None = None
    authentication: Mapping[str, Any] | None = None
    node: Node | None = None

    def to_json(self) -> dict[str, Any]:
        """The proposal as its wire object. ``authentication`` goes only with a ``scheme``: a
        credential without the scheme it answers would mean nothing to the server."""
        out: dict[str, Any] = {"compression": self.compression}
        if self.encryption is not None:
            out["encryption"] = self.encryption
        if self.scheme is not None:
            out["scheme"] = self.scheme
            out["authentication"] = dict(self.authentication or {})
        if self.node is not None:
            out["from"] = str(self.node)
        return out

    @classmethod
    def from_json(cls, value: Any) -> Proposal:
        """Raises RemoteProtocolError (11) for a proposal of the wrong shape."""

        def bad(what: str) -> RemoteProtocolError:
            return RemoteProtocolError(
                f"{PROPOSAL_KEY}{what}", code=ReasonCode.SESSION_ERROR
            )

        # Only the shape is checked here: values stay strings, and one this side does not know
        # is judged stage by stage (nothing to take, so the plain offer), never refused here.
        if not isinstance(value, Mapping):
            raise bad(" must be an object")
        strings: dict[str, str | None] = {}
        for key in ("compression", "encryption", "scheme", "from"):
            item = value.get(key)
            if item is not None and not isinstance(item, str):
                raise bad(f".{key} must be a string")
            strings[key] = item
        authentication = value.get("authentication")
        if authentication is not None and not isinstance(authentication, Mapping):
            raise bad(".authentication must be an object")
        node: Node | None = None
        if strings["from"] is not None:
            try:
                node = Node.parse(strings["from"])
            except ValueError:
                raise bad(".from is not a node") from None
        return cls(
            compression=strings["compression"] or SessionCompression.NONE.value,
            encryption=strings["encryption"],
            scheme=strings["scheme"],
            authentication=authentication,
            node=node,
        )


@dataclass(frozen=True)
class RequestFailed:
    """Event: the answer to the request sent with ``id`` will not come, and ``error`` says why.

    Reported for a ``failed`` Notification that carries an id (the peer could not read or take
    the envelope with that id: ``error`` is a :class:`~rain_envelopes.errors.CommandFailed`
    with the notification's reason and the notification as ``response``), and for a response
    that arrived but could not be read (``error`` is its
    :class:`~rain_envelopes.errors.EnvelopeDecodeError`). The protocol does not track which
    requests are waiting: a shell fails the request it has under ``id``, if any, and ignores
    an id it has none for, as it ignores a response to a request it no longer waits for.
    """

    id: str
    error: Exception


#: What ``events_received`` returns: the peer's application envelopes, and request failures.
Event = Envelope | RequestFailed


def _gzip(data: bytes) -> bytes:
    """One frame as a complete gzip stream. Each frame stands alone (no shared dictionary
    across frames), so a frame lost or dropped for a full queue never spoils the next."""
    compressor = zlib.compressobj(6, zlib.DEFLATED, _GZIP_WBITS)
    return compressor.compress(data) + compressor.flush()


def _gunzip(data: bytes, limit: int) -> bytes:
    # Bounded: a small bomb must not inflate past the envelope size limit.
    decompressor = zlib.decompressobj(_GZIP_WBITS)
    try:
        out = decompressor.decompress(data, limit + 1)
    except zlib.error as exc:
        raise EnvelopeDecodeError(f"$: not a gzip frame: {exc}") from None
    if len(out) > limit or decompressor.unconsumed_tail:
        raise EnvelopeDecodeError(f"$: envelope inflates beyond the limit of {limit} bytes")
    if not decompressor.eof:
        raise EnvelopeDecodeError("$: truncated gzip frame")
    if decompressor.unused_data:
        raise EnvelopeDecodeError("$: bytes after the gzip stream")
    return out


class NodeRegistry:
    """The nodes with a live session on a server: fills missing instances, refuses duplicates."""

    def __init__(self) -> None:
        self._nodes: set[Node] = set()
        # Instances the registry fills in: a random prefix per registry (per server run) and a
        # counter, so an instance given out before a restart is unlikely to be given again.
        self._counter = itertools.count(1)
        self._prefix = secrets.token_hex(3)

    def register(self, node: Node) -> Node:
        """Register ``node`` (filling a missing instance). Raises RemoteProtocolError (12)."""
        if node.instance is None:
            node = node.with_instance(f"{self._prefix}{next(self._counter)}")
        if node in self._nodes:
            raise RemoteProtocolError(
                f"node {node} already has a session", code=ReasonCode.SESSION_REGISTRATION_ERROR
            )
        self._nodes.add(node)
        return node

    def unregister(self, node: Node | None) -> None:
        """Forget ``node`` (its session has ended), so the address may be used again."""
        if node is not None:
            self._nodes.discard(node)

    def __contains__(self, node: object) -> bool:
        return node in self._nodes

    def __len__(self) -> int:
        return len(self._nodes)


class _Protocol:
    """What both sides share: the state machine, framing, compression and error replies.

    Every envelope in or out passes the :class:`~rain_envelopes.session.SessionMachine` first,
    so no code here needs to ask whether a step is allowed: a step out of place has already
    raised (LocalProtocolError for ours, RemoteProtocolError 15 for the peer's). Two queues are
    the whole I/O boundary: ``_out`` (frames, already compressed when the session compresses)
    and ``_events`` (what the shell must act on), both taken whole by their readers.
    """

    role: Role

    def __init__(self, *, node: Node | str | None, max_envelope_size: int) -> None:
        self.node: Node | None = None if node is None else Node.coerce(node)
        self.machine = SessionMachine(self.role)
        self.max_envelope_size = max_envelope_size
        self.session_id: str | None = None
        self.local_node: Node | None = self.node
        self.remote_node: Node | None = None
        self.compression = SessionCompression.NONE
        self.encryption: SessionEncryption | None = None
        #: The `established` session envelope, once there is one.
        self.established: Session | None = None
        #: Why the session failed (ours or the server's reason), once it has.
        self.failure: Reason | None = None
        self._out: list[bytes] = []
        self._events: list[Event] = []

    # -- state

    @property
    def state(self) -> SessionState:
        """The LIME session state (a phase seen from outside: whose turn it is is hidden)."""
        return self.machine.state

    @property
    def is_established(self) -> bool:
        """True while traffic may flow both ways (not yet finishing, not ended)."""
        return self.machine.phase is Phase.ESTABLISHED

    @property
    def closed(self) -> bool:
        """True once the session is finished or failed: flush ``data_to_send`` then close."""
        return self.machine.terminal

    # -- I/O boundary

    def data_to_send(self) -> list[bytes]:
        """The frames to send, in order; each is one transport ``send``."""
        out, self._out = self._out, []
        return out

    @property
    def has_data_to_send(self) -> bool:
        """Whether a flush would send anything: lets a shell skip the await when it would not."""
        return bool(self._out)

    def requeue(self, frames: list[bytes]) -> None:
        """Put frames that could not be sent back at the front of the queue, in order."""
        self._out[:0] = frames

    def events_received(self) -> list[Event]:
        """What happened since the last call, in order: application envelopes (messages,
        notifications, command requests and responses; never a ``get /ping``, which is answered
        here) and :class:`RequestFailed` events (each just before the envelope that caused it,
        if that envelope is one)."""
        out, self._events = self._events, []
        return out

    def send(self, envelope: Envelope) -> None:
        """Queue an envelope. Raises LocalProtocolError when the session state forbids it."""
        self.machine.send(envelope)
        self._queue(envelope)

    def _queue(self, envelope: Envelope) -> None:
        # Compression is read per frame: the frame that confirms it (the echo) is encoded
        # before the switch, every frame after it with it (see the module docstring).
        data = encode(envelope)
        if self.compression is SessionCompression.GZIP:
            data = _gzip(data)
        self._out.append(data)

    def receive_data(self, data: bytes) -> None:
        """Process one received frame.

        Raises RemoteProtocolError (or its EnvelopeDecodeError) when the peer broke the
        protocol; the session state is unchanged unless the error ended it.
        """
        if self.closed:
            raise RemoteProtocolError("the session has ended", code=ReasonCode.SESSION_ERROR)
        if self.compression is SessionCompression.GZIP:
            # Inflated under the same size limit decode applies, so a small frame cannot
            # become a large envelope.
            data = _gunzip(data, self.max_envelope_size)
        try:
            envelope = decode(data, max_size=self.max_envelope_size)
        except EnvelopeDecodeError as exc:
            if exc.is_response and exc.envelope_id is not None:
                # An unreadable answer still ends the wait: the caller learns what arrived at
                # once instead of a misleading timeout later.
                self._events.append(RequestFailed(exc.envelope_id, exc))
            raise
        # Session envelopes drive the handshake (each side's own rules); everything else is
        # traffic, which the machine lets through only where the transition table says so.
        if isinstance(envelope, Session):
            self._receive_session(envelope)
        else:
            self.machine.receive(envelope)
            self._receive_traffic(envelope)

    def _receive_traffic(self, envelope: Envelope) -> None:
        """The LIME behaviours of an established session: answer pings, send ``received``
        receipts, report requests a failed notification ends; then hand the envelope on."""
        if isinstance(envelope, Command):
            if (
                envelope.status is None
                and envelope.method is CommandMethod.GET
                and envelope.uri == PING_URI
            ):
                self._send_if_allowed(envelope.success({}, PING_MEDIA_TYPE))
                return  # answered: the application never sees a ping
        elif isinstance(envelope, Message):
            if self._wants_receipts(envelope):
                self._send_if_allowed(self._receipt(envelope, NotificationEvent.RECEIVED))
        elif (
            isinstance(envelope, Notification)
            and envelope.event is NotificationEvent.FAILED
            and envelope.id is not None
        ):
            assert envelope.reason is not None  # a failed notification always has one
            self._events.append(
                RequestFailed(envelope.id, CommandFailed(envelope.reason, envelope))
            )
        self._events.append(envelope)

    # -- receipts: ``received`` goes on arrival; the shell reports how the handler ended

    def message_consumed(self, message: Message) -> None:
        """Queue the ``consumed`` receipt for ``message``, whose handler has run to the end.

        Queues nothing for a message that wants no receipts (no id, or not meant for us), or
        once the session no longer lets us send.
        """
        if self._wants_receipts(message):
            self._send_if_allowed(self._receipt(message, NotificationEvent.CONSUMED))

    def message_failed(self, message: Message, reason: Reason | None = None) -> None:
        """Queue the ``failed`` receipt for ``message``, whose handler failed; ``reason``
        defaults to code 101 "the message handler failed". Queues nothing when
        :meth:`message_consumed` would not."""
        if self._wants_receipts(message):
            self._send_if_allowed(self._receipt(
                message, NotificationEvent.FAILED,
                reason or Reason(ReasonCode.APPLICATION_ERROR, "the message handler failed"),
            ))

    def _wants_receipts(self, message: Message) -> bool:
        """LIME: receipts go for a message with an id that was meant for us (no ``to``, our
        node, or our identity without an instance)."""
        if message.id is None:
            return False
        to, local = message.to, self.local_node
        if to is None or local is None:
            return True
        return to == local or (to.instance is None and to.same_identity(local))

    @staticmethod
    def _receipt(
        message: Message, event: NotificationEvent, reason: Reason | None = None
    ) -> Notification:
        # Addressed to the effective sender: `pp` when set, else `from`.
        return Notification(event, reason, id=message.id, to=message.sender)

    def _send_if_allowed(self, envelope: Envelope) -> None:
        # An answer the session state no longer allows (we asked to finish, or it ended) is
        # dropped: the peer that asked is going away.
        with contextlib.suppress(LocalProtocolError):
            self.send(envelope)

    def _receive_session(self, envelope: Session) -> None:
        """Take one session envelope from the peer: the side's part of the handshake."""
        raise NotImplementedError

    def _check_session_id(self, envelope: Session) -> None:
        """The one id rule: once the server has assigned the session id, every session envelope
        carries it. A missing id is a mismatch like any other, never "nothing to check"
        (issue 7): ``None`` is not the id. Raises RemoteProtocolError (11)."""
        assert self.session_id is not None
        if envelope.id != self.session_id:
            raise RemoteProtocolError(
                f"session id {envelope.id!r} does not match {self.session_id!r}",
                code=ReasonCode.SESSION_ERROR,
            )

    def reply_to_error(self, error: RemoteProtocolError) -> None:
        """Queue the coded answer to a peer's protocol error.

        After establishment a bad envelope is answered and the session goes on: a command
        request gets a Command failure (id and method echoed when readable), anything else with
        a readable id a failed Notification, anything unreadable a failed Notification with no
        id. Responses and notifications are never answered (no reply loops). Before
        establishment, or for a session envelope out of place, a server fails the session.
        """
        if self.closed:
            return
        # The description is cut short: it quotes the peer's input (paths, values), and an
        # error reply must stay small whatever the peer sent.
        reason = Reason(error.code, str(error)[:500])
        decode_error = error if isinstance(error, EnvelopeDecodeError) else None
        if (
            not self.is_established
            or decode_error is None  # a step out of place: the session itself is broken
            or decode_error.kind == EnvelopeKind.SESSION
        ):
            self._fail_session(reason)
            return
        if decode_error.kind == EnvelopeKind.NOTIFICATION or decode_error.is_response:
            return
        reply: Envelope
        if (
            decode_error.kind == EnvelopeKind.COMMAND
            and decode_error.method
            and decode_error.method != CommandMethod.OBSERVE  # one-way: never a response
            and decode_error.envelope_id
        ):
            reply = Command(
                CommandMethod(decode_error.method), id=decode_error.envelope_id,
                status=CommandStatus.FAILURE, reason=reason,
            )
        else:
            reply = Notification(NotificationEvent.FAILED, reason, id=decode_error.envelope_id)
        self.send(reply)

    def _fail_session(self, reason: Reason) -> None:
        """End the session on a protocol error of the peer's: the server says ``failed``, the
        client only fails its own view (LIME gives a client no ``failed`` to send)."""
        raise NotImplementedError


# ------------------------------------------------------------------------------------ server


class ServerProtocol(_Protocol):
    """The server side of one session.

    ``authenticator`` decides schemes and checks credentials; ``None`` skips authentication
    altogether and every session gets :data:`ANONYMOUS_IDENTITY` (for embedding and tests:
    never the claimed ``from``). ``peer_identity`` is the key the transport proved, if any.
    """

    role = Role.SERVER

    def __init__(
        self,
        *,
        node: Node | str,
        authenticator: ServerAuthenticator | None,
        peer_identity: str | None = None,
        compression_options: tuple[SessionCompression, ...] = DEFAULT_COMPRESSION_OPTIONS,
        encryption: SessionEncryption = SessionEncryption.NONE,
        registry: NodeRegistry | None = None,
        max_envelope_size: int = MAX_ENVELOPE_SIZE,
        session_id: str | None = None,
    ) -> None:
        super().__init__(node=node, max_envelope_size=max_envelope_size)
        self.authenticator = authenticator
        self.peer_identity = peer_identity
        self.compression_options = tuple(
            SessionCompression(option) for option in compression_options
        ) or (SessionCompression.NONE,)
        # The link's encryption is a fact of the transport, not a choice: it is the only option
        # offered, so a client can neither pick nor be talked into another.
        self.encryption_options = (encryption,)
        self.encryption = encryption
        self.registry = registry
        # 80 random bits, as lower-case base32: unguessable, and safe in logs and file names.
        # Assigned on `new`; only then does the client learn it.
        self._session_id = session_id or base64.b32encode(secrets.token_bytes(10)).decode().lower()
        self._offered_schemes: tuple[AuthenticationScheme, ...] = ()
        self._challenge: bytes | None = None
        #: The client's proposal, until the stage that uses it.
        self._proposal: Proposal | None = None
        #: Options taken from the proposal, to confirm on the next reply.
        self._confirm: tuple[SessionCompression, SessionEncryption] | None = None
        #: The authenticated identity name ("alice@irf"), once established.
        self.remote_identity: str | None = None
        #: The Ed25519 public key the client proved (None for guest or anonymous sessions).
        self.remote_key: bytes | None = None

    def _reply(self, state: SessionState, **fields: Any) -> Session:
        """A session envelope from this server, with the session id."""
        return Session(state, id=self.session_id, from_=self.node, **fields)

    def _answer(self, state: SessionState, **fields: Any) -> Session:
        """Send a stage's reply; the first one after a taken proposal confirms its options,
        and both sides apply them from the next frame on (as after a negotiation echo)."""
        confirm, self._confirm = self._confirm, None
        if confirm is not None:
            fields.update(compression=confirm[0], encryption=confirm[1])
        envelope = self._reply(state, **fields)
        self.send(envelope)
        if confirm is not None:
            self.compression = confirm[0]
        return envelope

    def _receive_session(self, envelope: Session) -> None:
        # The server answers every stage itself; a fault in the client's step fails the session
        # (a server may, and the client must learn why), rather than escaping to the shell.
        self.machine.receive(envelope)  # RemoteProtocolError (15) if out of place
        try:
            if envelope.state is _S.NEW:
                self.session_id = self._session_id
                if self.machine.phase is Phase.PROPOSAL_SENT:
                    assert envelope.extras is not None
                    self._proposal = Proposal.from_json(envelope.extras[PROPOSAL_KEY])
                self._after_new()
                return
            self._check_session_id(envelope)
            if envelope.state is _S.NEGOTIATING:
                self._negotiate(envelope)
            elif envelope.state is _S.AUTHENTICATING:
                self._authenticate(envelope)
            elif envelope.state is _S.FINISHING:
                self.send(self._reply(_S.FINISHED))
        except RemoteProtocolError as exc:
            self._fail_session(Reason(exc.code, str(exc)))

    def _after_new(self) -> None:
        """The answer to ``new``: the proposal's options when they can be taken (then straight
        on to authentication), else the negotiation offer, else (nothing to negotiate) the
        authentication stage at once."""
        if self._proposal is not None:
            self._confirm = self._take_options(self._proposal)
            if self._confirm is not None:
                self._start_authentication()
                return
        # Negotiate when there is a choice, and also when the only option is not `none`: the
        # client must be told before frames change shape.
        if self.compression_options != (SessionCompression.NONE,):
            self.send(self._reply(
                _S.NEGOTIATING,
                compression_options=self.compression_options,
                encryption_options=self.encryption_options,
            ))
        else:
            self._start_authentication()

    def _take_options(
        self, proposal: Proposal
    ) -> tuple[SessionCompression, SessionEncryption] | None:
        """The options a proposal asks for, when we would accept them; None: offer instead."""
        compression = _member(SessionCompression, proposal.compression)
        if compression not in self.compression_options:
            if self.compression_options != (SessionCompression.NONE,):
                return None
            compression = SessionCompression.NONE  # nothing to choose: plain LIME skips it too
        assert compression is not None
        encryption = (
            self.encryption_options[0]
            if proposal.encryption is None
            else _member(SessionEncryption, proposal.encryption)
        )
        if encryption not in self.encryption_options:
            return None
        assert encryption is not None
        return compression, encryption

    def _negotiate(self, envelope: Session) -> None:
        """The client's choice from our offer: echoed when it was offered, else refused (17).
        An absent choice means the default (no compression, the link's encryption)."""
        compression = envelope.compression or SessionCompression.NONE
        encryption = envelope.encryption or self.encryption_options[0]
        if compression not in self.compression_options:
            raise RemoteProtocolError(
                f"compression {compression.value} was not offered",
                code=ReasonCode.SESSION_NEGOTIATION_INVALID_OPTIONS,
            )
        if encryption not in self.encryption_options:
            raise RemoteProtocolError(
                f"encryption {encryption.value} was not offered",
                code=ReasonCode.SESSION_NEGOTIATION_INVALID_OPTIONS,
            )
        self.send(self._reply(
            _S.NEGOTIATING, compression=compression, encryption=encryption
        ))
        # Both sides apply the choice from the frame after the echo on.
        self.compression = compression
        self._start_authentication()

    def _start_authentication(self) -> None:
        """Offer the schemes this client may use (they depend on what the transport proved:
        ``transport`` only when it proved a key), or take the proposal's credentials
        when they answer one of them. With a one-round ``keypair`` offered, the challenge goes
        with the offer, saving the client a round trip."""
        if self.authenticator is None:
            self._establish(ANONYMOUS_IDENTITY, claimed=None)
            return
        self._offered_schemes = self.authenticator.offered(self.peer_identity)
        if not self._offered_schemes:
            raise RemoteProtocolError(
                "no authentication scheme is available for this client",
                code=ReasonCode.SESSION_AUTHENTICATION_FAILED,
            )
        proposal, self._proposal = self._proposal, None
        if proposal is not None:
            scheme = _member(AuthenticationScheme, proposal.scheme)
            if scheme is not None and scheme in self._offered_schemes:
                self._check_credentials(
                    scheme, proposal.authentication or {}, claimed=proposal.node
                )
                return
        authentication: dict[str, Any] | None = None
        if (
            AuthenticationScheme.KEYPAIR in self._offered_schemes
            and self.authenticator.keypair_rounds == 1
        ):
            self._challenge = self.authenticator.new_challenge()
            authentication = {"challenge": base64.b64encode(self._challenge).decode()}
        self._answer(
            _S.AUTHENTICATING, scheme_options=self._offered_schemes, authentication=authentication,
        )

    def _authenticate(self, envelope: Session) -> None:
        """The client's credentials for a scheme we offered (any other is refused: 17)."""
        scheme = envelope.scheme
        if scheme is None or scheme not in self._offered_schemes:
            raise RemoteProtocolError(
                f"scheme {scheme.value if scheme else None} was not offered",
                code=ReasonCode.SESSION_NEGOTIATION_INVALID_OPTIONS,
            )
        self._check_credentials(scheme, envelope.authentication or {}, claimed=envelope.from_)

    def _check_credentials(
        self,
        scheme: AuthenticationScheme,
        authentication: Mapping[str, Any],
        *,
        claimed: Node | None,
    ) -> None:
        """Establish, or send the challenge the scheme still needs. Raises RemoteProtocolError
        (13) for refused credentials. A proposal comes here with no challenge yet, so a
        ``keypair`` proposal always gets a fresh challenge before its signature is accepted."""
        assert self.authenticator is not None
        assert self.session_id is not None
        proof = self.authenticator.authenticate(
            scheme,
            authentication,
            peer_identity=self.peer_identity,
            session_id=self.session_id,
            challenge=self._challenge,
            client_node=str(claimed) if claimed else "",
            server_node=str(self.node) if self.node else "",
        )
        if proof is None:
            # Another round: the client named its key; now it must sign a challenge.
            self._challenge = self.authenticator.new_challenge()
            self._answer(
                _S.AUTHENTICATING,
                authentication={"challenge": base64.b64encode(self._challenge).decode()},
            )
            return
        self.remote_key = proof.key
        self._establish(proof.identity, claimed=claimed)

    def _establish(self, identity: str, *, claimed: Node | None) -> None:
        """Establish the session as ``identity``, the name the credentials proved. The node
        the client is told (``to`` on ``established``) is built from that identity, never from
        the address it claimed; the registry refuses a node that already has a session (12)."""
        if identity == GUEST_IDENTITY:
            # A guest is whoever it says, inside the guest domain, so it can never pass for a
            # real identity in access rules.
            node = Node(
                claimed.name if claimed and claimed.name else GUEST_IDENTITY,
                GUEST_IDENTITY,
                claimed.instance if claimed else None,
            )
        else:
            # Authorised-keys names are checked to be node identities when the file is read.
            # The instance is the only part a client may choose.
            node = Node.parse(identity).with_instance(claimed.instance if claimed else None)
        if self.registry is not None:
            node = self.registry.register(node)  # RemoteProtocolError (12)
        elif node.instance is None:
            node = node.with_instance(self.session_id)
        self.remote_identity = identity
        self.remote_node = node
        self.established = self._answer(_S.ESTABLISHED, to=node)

    def _fail_session(self, reason: Reason) -> None:
        self.failure = reason
        # A session that already ended (a second bad frame in the same batch) sends nothing.
        if not self.closed:
            self.send(self._reply(_S.FAILED, reason=reason))

    # -- server-initiated ends

    def finish(self) -> None:
        """End the session with ``finished``. Raises LocalProtocolError if already ended."""
        self.send(self._reply(_S.FINISHED))

    def fail(self, reason: Reason) -> None:
        """End the session with ``failed`` and ``reason``. Raises LocalProtocolError if ended."""
        self.failure = reason
        self.send(self._reply(_S.FAILED, reason=reason))


# ------------------------------------------------------------------------------------ client


class ClientProtocol(_Protocol):
    """The client side of one session. Call :meth:`start` to queue ``new``.

    With ``shortcut`` (the default) ``new`` carries a proposal, and a RAIN server establishes in
    one round trip (two for ``keypair``); any other server answers the plain way, which this
    class follows as before. ``shortcut=False`` sends the plain ``new`` of LIME.
    """

    role = Role.CLIENT

    def __init__(
        self,
        *,
        node: Node | str | None = None,
        credentials: ClientCredentials | None = None,
        compression: SessionCompression = SessionCompression.NONE,
        max_envelope_size: int = MAX_ENVELOPE_SIZE,
        shortcut: bool = True,
    ) -> None:
        super().__init__(node=node, max_envelope_size=max_envelope_size)
        self.credentials = credentials or ClientCredentials()
        self.preferred_compression = SessionCompression(compression)
        self.shortcut = shortcut
        # The options we chose from the server's offer, to check its echo against.
        self._chosen: tuple[SessionCompression, SessionEncryption | None] | None = None
        # The scheme we answer with: chosen from an offer, or the one our proposal named.
        self._scheme: AuthenticationScheme | None = None
        #: The server's node, as its session envelopes name it (signed into keypair answers).
        self.server_node: Node | None = None

    def start(self) -> None:
        """Queue the ``new`` session envelope (no id: the server assigns it), with a proposal
        unless ``shortcut`` is off."""
        if not self.shortcut:
            self.send(Session(_S.NEW))
            return
        offer = self.credentials.propose()
        if offer is not None:
            # Kept for a challenge that comes without a new offer of schemes.
            self._scheme = offer[0]
        proposal = Proposal(
            compression=self.preferred_compression.value,
            scheme=None if offer is None else offer[0].value,
            authentication=None if offer is None else offer[1],
            node=self.node,
        )
        self.send(Session(_S.NEW, extras={PROPOSAL_KEY: proposal.to_json()}))

    def finish(self) -> None:
        """Ask the server to end the session (``finishing``)."""
        self.send(Session(_S.FINISHING, id=self.session_id))

    def _receive_session(self, envelope: Session) -> None:
        # The first reply assigns the session id (a `failed` may come before there is one);
        # every later one must carry the same id, checked before the machine moves.
        if self.session_id is None and envelope.id is None and envelope.state is not _S.FAILED:
            raise RemoteProtocolError(
                "the server's first session envelope has no id", code=ReasonCode.SESSION_ERROR
            )
        if self.session_id is not None:
            self._check_session_id(envelope)
        opened = self.machine.phase
        self.machine.receive(envelope)  # RemoteProtocolError (15) if out of place
        if self.session_id is None:
            self.session_id = envelope.id
        if envelope.from_ is not None:
            self.server_node = envelope.from_
        phase = self.machine.phase
        # A reply to our proposal that skipped negotiation confirms (or, from a plain LIME
        # server, silently declines) the proposed options.
        if opened is Phase.PROPOSAL_SENT and phase in (
            Phase.AUTHENTICATION_OFFERED, Phase.ESTABLISHED
        ):
            self._apply_confirmation(envelope)
        if phase is Phase.NEGOTIATION_OFFERED:
            self._choose_options(envelope)
        elif phase is Phase.NEGOTIATED:
            self._apply_echo(envelope)
        elif phase is Phase.AUTHENTICATION_OFFERED:
            self._answer_authentication(envelope)
        elif phase is Phase.ESTABLISHED:
            self.established = envelope
            self.local_node = envelope.to or self.node
            self.remote_node = envelope.from_
        elif phase is Phase.FAILED:
            self.failure = envelope.reason

    def _choose_options(self, envelope: Session) -> None:
        """Choose from the server's offer: our preferred compression when offered, else none
        when offered, else the server's first; the first encryption (the link has one)."""
        compressions = envelope.compression_options or (SessionCompression.NONE,)
        compression = (
            self.preferred_compression
            if self.preferred_compression in compressions
            else (SessionCompression.NONE if SessionCompression.NONE in compressions
                  else compressions[0])
        )
        encryptions = envelope.encryption_options
        encryption = encryptions[0] if encryptions else None
        self._chosen = (compression, encryption)
        self.send(Session(
            _S.NEGOTIATING, id=self.session_id, compression=compression, encryption=encryption,
        ))

    def _apply_echo(self, envelope: Session) -> None:
        """The server's echo of our choice: anything but what we chose is refused (17), as
        the frames after it would be read with the wrong compression."""
        assert self._chosen is not None
        compression = envelope.compression or SessionCompression.NONE
        if compression is not self._chosen[0]:
            raise RemoteProtocolError(
                f"server echoed compression {compression.value}, we chose "
                f"{self._chosen[0].value}",
                code=ReasonCode.SESSION_NEGOTIATION_INVALID_OPTIONS,
            )
        self.compression = compression
        self.encryption = envelope.encryption

    def _apply_confirmation(self, envelope: Session) -> None:
        """A server that took our proposal names the options on its reply; one that ignored it
        names none, which means no compression. Either way both sides switch after this frame."""
        compression = envelope.compression or SessionCompression.NONE
        if compression not in (SessionCompression.NONE, self.preferred_compression):
            raise RemoteProtocolError(
                f"server confirmed compression {compression.value}, we proposed "
                f"{self.preferred_compression.value}",
                code=ReasonCode.SESSION_NEGOTIATION_INVALID_OPTIONS,
            )
        self.compression = compression
        self.encryption = envelope.encryption

    def _answer_authentication(self, envelope: Session) -> None:
        """Answer an authentication stage: pick a scheme from the offer (or keep the one we
        proposed, when the server only sends a challenge) and send its credentials, signing
        the challenge for ``keypair``."""
        if envelope.scheme_options:
            self._scheme = self.credentials.choose(envelope.scheme_options)
        if self._scheme is None:
            raise RemoteProtocolError(
                "authentication requested with no scheme offered",
                code=ReasonCode.SESSION_NEGOTIATION_INVALID_OPTIONS,
            )
        challenge: bytes | None = None
        raw = (envelope.authentication or {}).get("challenge")
        if raw is not None:
            try:
                # validate: a challenge with stray characters is refused, not decoded leniently
                # into bytes the server did not draw (the signature would never verify).
                challenge = base64.b64decode(raw, validate=True) if isinstance(raw, str) else None
            except (binascii.Error, ValueError):
                challenge = None
            if challenge is None:
                raise RemoteProtocolError(
                    "authentication.challenge is not base64", code=ReasonCode.SESSION_ERROR
                )
        assert self.session_id is not None
        authentication = self.credentials.answer(
            self._scheme,
            session_id=self.session_id,
            challenge=challenge,
            client_node=str(self.node) if self.node else "",
            server_node=str(self.server_node) if self.server_node else "",
        )
        self.send(Session(
            _S.AUTHENTICATING, id=self.session_id, from_=self.node,
            scheme=self._scheme, authentication=authentication,
        ))

    def _fail_session(self, reason: Reason) -> None:
        # Only the server may send `failed`; a client that gives up fails its own view (the
        # machine's rule for a local failure) and its shell closes the link.
        self.failure = reason
        self.machine.process_error()

