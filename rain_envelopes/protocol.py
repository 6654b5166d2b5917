"""Sans-I/O LIME protocol objects: bytes in, envelopes and bytes out.

:class:`ClientProtocol` and :class:`ServerProtocol` hold one side of one session. Feed every
frame from the transport to ``receive_data``; collect application envelopes with
``events_received()`` and frames to send with ``data_to_send()``. They run negotiation and
authentication themselves, so a channel only pumps bytes. No I/O, no asyncio, no zmq: tests
wire a client and a server back to back with plain lists.

Compression is applied here rather than by each transport: after the negotiation echo both
sides gzip every frame. Doing it in the one place that knows exactly which envelope was the
echo removes any race between switching compression and frames already queued, and every
transport gets it for free.

Errors: ``send`` raises LocalProtocolError for a step the state machine forbids;
``receive_data`` raises RemoteProtocolError (EnvelopeDecodeError for bad bytes) and never
anything else. After catching one, call :meth:`reply_to_error` to queue the coded answer LIME
expects (a Command failure, a failed Notification, or a failed Session before establishment).
"""

from __future__ import annotations

import base64
import binascii
import itertools
import os
import zlib
from typing import Any

from .auth import GUEST_IDENTITY, ClientCredentials, ServerAuthenticator
from .codec import MAX_ENVELOPE_SIZE, decode, encode
from .envelopes import (
    AuthenticationScheme,
    Command,
    CommandMethod,
    CommandStatus,
    Envelope,
    Notification,
    NotificationEvent,
    Reason,
    ReasonCode,
    Session,
    SessionCompression,
    SessionEncryption,
    SessionState,
)
from .errors import EnvelopeDecodeError, RemoteProtocolError
from .node import Node
from .session import Phase, Role, SessionMachine

__all__ = ["ANONYMOUS_IDENTITY", "ClientProtocol", "NodeRegistry", "ServerProtocol"]

#: The identity of a session on a server that authenticates nobody (embedding, tests only).
ANONYMOUS_IDENTITY = "anonymous"

_S = SessionState
_GZIP_WBITS = 31  # zlib with a gzip header and trailer


def _gzip(data: bytes) -> bytes:
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
        self._counter = itertools.count(1)
        self._prefix = os.urandom(3).hex()

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
        if node is not None:
            self._nodes.discard(node)

    def __contains__(self, node: object) -> bool:
        return node in self._nodes

    def __len__(self) -> int:
        return len(self._nodes)


class _Protocol:
    """What both sides share: the state machine, framing, compression and error replies."""

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
        self._events: list[Envelope] = []

    # -- state

    @property
    def state(self) -> SessionState:
        return self.machine.state

    @property
    def is_established(self) -> bool:
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
        return bool(self._out)

    def requeue(self, frames: list[bytes]) -> None:
        """Put frames that could not be sent back at the front of the queue, in order."""
        self._out[:0] = frames

    def events_received(self) -> list[Envelope]:
        """Application envelopes (messages, notifications, commands) received since last call."""
        out, self._events = self._events, []
        return out

    def send(self, envelope: Envelope) -> None:
        """Queue an envelope. Raises LocalProtocolError when the session state forbids it."""
        self.machine.send(envelope)
        self._queue(envelope)

    def _queue(self, envelope: Envelope) -> None:
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
            data = _gunzip(data, self.max_envelope_size)
        envelope = decode(data, max_size=self.max_envelope_size)
        if isinstance(envelope, Session):
            self._receive_session(envelope)
        else:
            self.machine.receive(envelope)
            self._events.append(envelope)

    def _receive_session(self, envelope: Session) -> None:
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
        reason = Reason(error.code, str(error)[:500])
        decode_error = error if isinstance(error, EnvelopeDecodeError) else None
        if (
            not self.is_established
            or decode_error is None  # a step out of place: the session itself is broken
            or decode_error.kind == "session"
        ):
            self._fail_session(reason)
            return
        if decode_error.kind == "notification" or decode_error.is_response:
            return
        reply: Envelope
        if (
            decode_error.kind == "command"
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
        compression_options: tuple[SessionCompression, ...] = (
            SessionCompression.NONE, SessionCompression.GZIP,
        ),
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
        self.encryption_options = (encryption,)
        self.encryption = encryption
        self.registry = registry
        self._session_id = session_id or base64.b32encode(os.urandom(10)).decode().lower()
        self._offered_schemes: tuple[AuthenticationScheme, ...] = ()
        self._challenge: bytes | None = None
        #: The authenticated identity name ("alice@irf"), once established.
        self.remote_identity: str | None = None
        #: The Ed25519 public key the client proved (None for guest or anonymous sessions).
        self.remote_key: bytes | None = None

    def _reply(self, state: SessionState, **fields: Any) -> Session:
        return Session(state, id=self.session_id, from_=self.node, **fields)

    def _receive_session(self, envelope: Session) -> None:
        self.machine.receive(envelope)  # RemoteProtocolError (15) if out of place
        try:
            if envelope.state is _S.NEW:
                self.session_id = self._session_id
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

    def _negotiate(self, envelope: Session) -> None:
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
        if self.authenticator is None:
            self._establish(ANONYMOUS_IDENTITY, claimed=None)
            return
        self._offered_schemes = self.authenticator.offered(self.peer_identity)
        if not self._offered_schemes:
            raise RemoteProtocolError(
                "no authentication scheme is available for this client",
                code=ReasonCode.SESSION_AUTHENTICATION_FAILED,
            )
        authentication: dict[str, Any] | None = None
        if (
            AuthenticationScheme.KEYPAIR in self._offered_schemes
            and self.authenticator.keypair_rounds == 1
        ):
            self._challenge = self.authenticator.new_challenge()
            authentication = {"challenge": base64.b64encode(self._challenge).decode()}
        self.send(self._reply(
            _S.AUTHENTICATING, scheme_options=self._offered_schemes, authentication=authentication,
        ))

    def _authenticate(self, envelope: Session) -> None:
        assert self.authenticator is not None
        assert self.session_id is not None
        scheme = envelope.scheme
        if scheme is None or scheme not in self._offered_schemes:
            raise RemoteProtocolError(
                f"scheme {scheme.value if scheme else None} was not offered",
                code=ReasonCode.SESSION_NEGOTIATION_INVALID_OPTIONS,
            )
        claimed = envelope.from_
        proof = self.authenticator.authenticate(
            scheme,
            envelope.authentication or {},
            peer_identity=self.peer_identity,
            session_id=self.session_id,
            challenge=self._challenge,
            client_node=str(claimed) if claimed else "",
            server_node=str(self.node) if self.node else "",
        )
        if proof is None:
            # Another round: the client named its key; now it must sign a challenge.
            self._challenge = self.authenticator.new_challenge()
            self.send(self._reply(
                _S.AUTHENTICATING,
                authentication={"challenge": base64.b64encode(self._challenge).decode()},
            ))
            return
        self.remote_key = proof.key
        self._establish(proof.identity, claimed=claimed)

    def _establish(self, identity: str, *, claimed: Node | None) -> None:
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
        established = self._reply(_S.ESTABLISHED, to=node)
        self.send(established)
        self.established = established

    def _fail_session(self, reason: Reason) -> None:
        self.failure = reason
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
    """The client side of one session. Call :meth:`start` to queue ``new``."""

    role = Role.CLIENT

    def __init__(
        self,
        *,
        node: Node | str | None = None,
        credentials: ClientCredentials | None = None,
        compression: SessionCompression = SessionCompression.NONE,
        max_envelope_size: int = MAX_ENVELOPE_SIZE,
    ) -> None:
        super().__init__(node=node, max_envelope_size=max_envelope_size)
        self.credentials = credentials or ClientCredentials()
        self.preferred_compression = SessionCompression(compression)
        self._chosen: tuple[SessionCompression, SessionEncryption | None] | None = None
        self._scheme: AuthenticationScheme | None = None
        self.server_node: Node | None = None

    def start(self) -> None:
        """Queue the ``new`` session envelope (no id: the server assigns it)."""
        self.send(Session(_S.NEW))

    def finish(self) -> None:
        """Ask the server to end the session (``finishing``)."""
        self.send(Session(_S.FINISHING, id=self.session_id))

    def _receive_session(self, envelope: Session) -> None:
        if self.session_id is None and envelope.id is None and envelope.state is not _S.FAILED:
            raise RemoteProtocolError(
                "the server's first session envelope has no id", code=ReasonCode.SESSION_ERROR
            )
        if self.session_id is not None:
            self._check_session_id(envelope)
        self.machine.receive(envelope)  # RemoteProtocolError (15) if out of place
        if self.session_id is None:
            self.session_id = envelope.id
        if envelope.from_ is not None:
            self.server_node = envelope.from_
        phase = self.machine.phase
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

    def _answer_authentication(self, envelope: Session) -> None:
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
        # Only the server changes session state; a client that gives up closes the link.
        self.failure = reason
        self.machine.phase = Phase.FAILED

