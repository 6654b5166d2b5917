"""The ZeroMQ client transport: a DEALER socket, CURVE with a pinned server key.

Invariants:

- **One transport is one connection.** When the connection drops (server gone or restarted,
  heartbeats timed out, a frame over the server's MAXMSGSIZE) the transport closes; it never
  reconnects behind the session's back, so no stale command reaches a restarted server (trap 7).
  Open a new transport (and session) to reconnect. ``RECONNECT_IVL`` only paces ``open()``
  while the server is not up yet.
- **Handshake failures are reported, not retried.** libzmq would retry a refused or wrong-key
  handshake forever; a socket monitor turns the first failure into :class:`HandshakeFailed`
  from ``open()`` (and then from ``receive()``), so a caller is told within its timeout.
- **Reading ahead is bounded** (``client_receive_buffer``): past it the transport stops reading,
  so libzmq's HWMs and TCP push back on the server instead of memory growing.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
from collections.abc import Mapping
from enum import StrEnum
from typing import Any

import zmq

from rain_envelopes.envelopes import SessionEncryption
from rain_envelopes.errors import (
    ConfigError,
    HandshakeFailed,
    QueueFull,
    SecurityCause,
    TransportClosed,
    TransportError,
)
from rain_envelopes.keys import Identity, format_public_key, parse_public_key
from rain_envelopes.transport import ClientSecurity, Transport

from ._common import (
    BYE,
    CONTROL,
    HELLO,
    ZERO_COPY_FROM,
    apply_common,
    check_endpoint,
    client_context,
    log,
    socket_error,
    to_ms,
)
from ._io import Inbox, SocketPump, copy_error, int_option, monitor_events, open_monitor
from .options import ZmqOptions
from .security import client_curve_keys, server_curve_public

__all__ = ["LinkState", "ZmqTransport"]


class LinkState(StrEnum):
    """Where a :class:`ZmqTransport` is in its one life (:attr:`ZmqTransport.state`).

    It only moves forward: new -> opening -> open -> closed, or to closed from any of them
    (a failed handshake, a dropped link, :meth:`~ZmqTransport.close`). Members compare equal
    to the strings earlier versions kept (``state == "open"`` still holds).
    """

    #: Made, not yet opened: sends and receives wait for ``open()``.
    NEW = "new"
    #: ``open()`` is connecting and waiting for the CURVE handshake (at most ``open_timeout``).
    OPENING = "opening"
    #: Handshake done and the hello sent: frames flow both ways.
    OPEN = "open"
    #: Ended for good: one transport is one connection, so it never opens again.
    CLOSED = "closed"


def _handshake_error(event: int, value: int, endpoint: str, secure: bool) -> HandshakeFailed:
    if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        return HandshakeFailed(
            f"{endpoint} refused us (ZAP status {value}): our public key is not in the server's"
            " authorised keys, or our address is not in its allowlist",
            SecurityCause.REFUSED,
        )
    if event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
        if value == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
            detail = (
                "the two ends use different security mechanisms (one CURVE, the other none):"
                " check that both or neither are configured as insecure"
            )
        elif value == zmq.PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC:
            detail = "a cryptographic check failed: most likely the pinned server key is wrong"
            message = f"handshake with {endpoint} failed: {detail}"
            return HandshakeFailed(message, SecurityCause.SERVER_KEY)
        else:
            detail = f"ZMTP protocol error 0x{value:08x}"
        message = f"handshake with {endpoint} failed: {detail}"
        return HandshakeFailed(message, SecurityCause.PROTOCOL)
    reason = errno.errorcode.get(value, str(value))
    if not secure:
        # Which event a mismatch produces is a race: the server's ERROR or its close.
        return HandshakeFailed(
            f"handshake with {endpoint} failed: the server closed the connection ({reason})."
            " It most likely requires CURVE, a different security mechanism from this insecure"
            " client's; or the endpoint is not a RAIN server",
            SecurityCause.PROTOCOL,
        )
    return HandshakeFailed(
        f"CURVE handshake with {endpoint} failed: the server closed the connection ({reason})."
        " Most likely the pinned server key is not this server's key (check server_key or the"
        " known-hosts entry); or the endpoint is not a RAIN server",
        SecurityCause.SERVER_KEY,
    )


_HANDSHAKE_FAILURES = (
    zmq.EVENT_HANDSHAKE_FAILED_AUTH,
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL,
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL,
)


def _client_security(
    security: ClientSecurity | None,
    identity: Identity | None,
    server_key: bytes | str | None,
    insecure: bool,
) -> ClientSecurity:
    if security is not None and (identity is not None or server_key is not None or insecure):
        raise ConfigError("pass either security= or identity=/server_key=/insecure=, not both")
    if security is None:
        key = server_key
        if isinstance(key, str):
            # Validated (and converted) again below; this only normalises the spelling.
            try:
                key = parse_public_key(key)
            except Exception as exc:
                raise ConfigError(f"server_key: {exc}") from None
        security = ClientSecurity(identity=identity, server_key=key, insecure=insecure)
    if not isinstance(security, ClientSecurity):
        raise ConfigError(f"security must be a ClientSecurity, got {type(security).__name__}")
    if security.insecure:
        return security
    if security.identity is None:
        raise ConfigError(
            "the ZeroMQ transport is CURVE-secured by default and needs this node's identity:"
            " ClientSecurity(identity=Identity.load(KEY_FILE), server_key=SERVER_PUBLIC_KEY)."
            " Pass insecure=True only for tests or a loopback demo"
        )
    if security.server_key is None:
        raise ConfigError(
            "the ZeroMQ transport pins the server's public key: give server_key (32-byte"
            " Ed25519 key), e.g. from the server's .pub file or your known-hosts file"
        )
    return security


class ZmqTransport(Transport):
    """A client link over a DEALER socket: CURVE with a pinned server key unless insecure.

    ``ZmqTransport(endpoint, security, options)`` or, for short,
    ``ZmqTransport(endpoint, identity=me, server_key=server_public)``. ``open()`` connects and
    waits for the handshake; ``send``/``receive`` open on first use.

    ``peer_identity`` is the pinned server key (``ed25519:...``) once the CURVE handshake has
    proved the server holds it. Raises ConfigError at construction for missing keys or bad
    options.
    """

    def __init__(
        self,
        endpoint: str,
        security: ClientSecurity | None = None,
        options: Mapping[str, Any] | ZmqOptions | None = None,
        *,
        identity: Identity | None = None,
        server_key: bytes | str | None = None,
        insecure: bool = False,
        context: zmq.Context[zmq.Socket[bytes]] | None = None,
    ) -> None:
        self.endpoint = check_endpoint(endpoint)
        self.options = ZmqOptions.from_mapping(options)
        self.security = _client_security(security, identity, server_key, insecure)
        self._curve: tuple[bytes, bytes, bytes] | None = None
        if not self.security.insecure:
            assert self.security.identity is not None
            assert self.security.server_key is not None
            public, secret = client_curve_keys(self.security.identity)
            self._curve = (public, secret, server_curve_public(self.security.server_key))
            self.encryption = SessionEncryption.CURVE
        if self.endpoint.lower().startswith("tcp://"):
            host = self.endpoint[6:].rsplit(":", 1)[0].split(";")[-1]
            self.peer_address = host.strip("[]") or None
        self._context = context
        self._state = LinkState.NEW  # only forward: see LinkState
        self._open_lock = asyncio.Lock()
        self._inbox = Inbox(on_take=self._on_take)
        self._sock: zmq.Socket[bytes] | None = None
        self._monitor: zmq.Socket[bytes] | None = None
        self._pumps: list[SocketPump] = []
        self._data_pump: SocketPump | None = None
        self._handshake: asyncio.Future[None] | None = None
        self._end_error: TransportError | None = None
        self._send_waiters: list[asyncio.Future[None]] = []
        self._paused = False

    def __repr__(self) -> str:
        return f"<ZmqTransport {self.endpoint} {self._state}>"

    @property
    def state(self) -> LinkState:
        """Where the transport is in its life (see :class:`LinkState`)."""
        return self._state

    @property
    def closed(self) -> bool:
        return self._state is LinkState.CLOSED

    def _now(self) -> LinkState:
        # The state read afresh after an await (where the type checker would keep what it
        # saw before the await, though the link may have moved meanwhile).
        return self._state

    # -------------------------------------------------------------------------- open

    async def open(self) -> None:
        """Connect and complete the handshake.

        Raises HandshakeFailed (a TransportSecurityError) as soon as a handshake fails: refused
        key or address, wrong pinned server key, mismatched mechanism. Raises TransportError when
        no handshake completes within ``options.open_timeout`` (server down or unreachable), and
        TransportClosed after close. The transport is closed after any failure.
        """
        if self._state is LinkState.OPEN:
            return
        async with self._open_lock:
            if self._now() is LinkState.OPEN:  # opened while we waited for the lock
                return
            if self._state is LinkState.CLOSED:
                raise self._error()
            self._state = LinkState.OPENING
            try:
                await self._connect()
            except BaseException as exc:
                if isinstance(exc, TransportError):
                    self._shutdown(exc)
                else:
                    self._shutdown(TransportClosed(f"opening {self.endpoint} was interrupted"))
                raise
            if self._state is not LinkState.OPENING:  # the link dropped just after the handshake
                raise self._error()
            self._state = LinkState.OPEN
            if self._curve is not None:
                assert self.security.server_key is not None
                self.peer_identity = format_public_key(self.security.server_key)
            try:
                await self._send_parts([CONTROL, HELLO])
            except BaseException as exc:
                error = exc if isinstance(exc, TransportError) else None
                self._shutdown(error or TransportClosed(f"opening {self.endpoint} failed"))
                raise

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        context = self._context if self._context is not None else client_context()
        try:
            self._make_sockets(context)
        except zmq.ZMQError as exc:
            # Most likely a limit (sockets per context, open files): say which, in our terms.
            raise socket_error(f"cannot open a transport to {self.endpoint}", exc) from None
        assert self._sock is not None
        assert self._monitor is not None
        self._handshake = loop.create_future()
        self._data_pump = SocketPump(loop, self._sock, self._drain)
        self._pumps = [self._data_pump, SocketPump(loop, self._monitor, self._drain_monitor)]
        try:
            self._sock.connect(self.endpoint)
        except zmq.ZMQError as exc:
            raise TransportError(f"cannot connect to {self.endpoint}: {exc}") from None
        try:
            async with asyncio.timeout(self.options.open_timeout):
                await self._handshake
        except TimeoutError:
            raise TransportError(
                f"no handshake with {self.endpoint} within {self.options.open_timeout:g} s:"
                " the server is down, unreachable, or not answering ZeroMQ"
            ) from None

    def _make_sockets(self, context: zmq.Context[zmq.Socket[bytes]]) -> None:
        """The DEALER with its options and its monitor; each is kept as soon as it exists, so
        a failure half-way leaves nothing for ``_shutdown`` to miss. Raises zmq.ZMQError."""
        options = self.options
        sock = context.socket(zmq.DEALER)
        self._sock = sock
        apply_common(sock, options, [self.endpoint])
        sock.setsockopt(zmq.MAXMSGSIZE, options.client_max_message_size)
        sock.setsockopt(zmq.RCVHWM, options.client_rcvhwm)
        sock.setsockopt(zmq.SNDHWM, options.client_sndhwm)
        sock.setsockopt(zmq.HANDSHAKE_IVL, to_ms(options.client_handshake_ivl))
        sock.setsockopt(zmq.RECONNECT_IVL, to_ms(options.reconnect_ivl))
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, to_ms(options.reconnect_ivl_max))
        sock.setsockopt(zmq.IMMEDIATE, int(options.immediate))
        if self._curve is not None:
            public, secret, server = self._curve
            sock.setsockopt(zmq.CURVE_PUBLICKEY, public)
            sock.setsockopt(zmq.CURVE_SECRETKEY, secret)
            sock.setsockopt(zmq.CURVE_SERVERKEY, server)
        # The monitor is how we learn why a handshake failed (libzmq would silently retry) and
        # when the connection dropped; created before connect so no event is missed.
        monitor = open_monitor(
            context,
            sock,
            zmq.EVENT_HANDSHAKE_SUCCEEDED
            | zmq.EVENT_HANDSHAKE_FAILED_AUTH
            | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
            | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
            | zmq.EVENT_DISCONNECTED
            | zmq.EVENT_CONNECT_RETRIED,
            "client",
        )
        self._monitor = monitor

    # -------------------------------------------------------------------------- events

    def _drain_monitor(self) -> None:
        if self._monitor is not None:
            # An event may shut the transport down; the iteration then stops.
            for event, value, _ in monitor_events(self._monitor):
                self._on_event(event, value)

    def _on_event(self, event: int, value: int) -> None:
        handshake = self._handshake
        if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            if handshake is not None and not handshake.done():
                handshake.set_result(None)
        elif event in _HANDSHAKE_FAILURES:
            error = _handshake_error(event, value, self.endpoint, self._curve is not None)
            # Raised to the caller (open/receive); logging it too would report it twice.
            log.debug("%s", error)
            if handshake is not None and not handshake.done():
                handshake.set_exception(error)
            # Close at once: libzmq would otherwise retry the same failing handshake forever.
            self._lost(error)
        elif event == zmq.EVENT_DISCONNECTED:
            if handshake is not None and handshake.done() and handshake.exception() is None:
                lost = TransportClosed(
                    f"connection to {self.endpoint} lost (server closed or restarted,"
                    " heartbeats timed out, or a frame exceeded the server's max message size)"
                )
                log.info("%s", lost)
                self._lost(lost)
        elif event == zmq.EVENT_CONNECT_RETRIED:
            log.debug("%s not reachable yet; retrying in %d ms", self.endpoint, value)

    def _lost(self, error: TransportError) -> None:
        if self._state is LinkState.CLOSED:
            return
        # Frames that arrived before the drop are already ours: keep them for receive().
        self._drain(unbounded=True)
        self._shutdown(error)

    # -------------------------------------------------------------------------- receive

    def _drain(self, unbounded: bool = False) -> None:
        sock = self._sock
        if sock is None:
            return
        inbox, limit = self._inbox, self.options.client_receive_buffer
        for _ in range(self.options.receive_batch if not unbounded else 1 << 30):
            if len(inbox) >= limit and not unbounded:
                # Leave frames in libzmq so its HWMs, and then TCP, push back on the server.
                self._paused = True
                break
            try:
                frame = sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            except zmq.ZMQError as exc:
                self._shutdown(TransportError(f"receiving from {self.endpoint} failed: {exc}"))
                return
            if not frame and sock.getsockopt(zmq.RCVMORE):
                # The first part is read; recv_multipart reads the rest of this message.
                self._on_control(sock.recv_multipart(zmq.NOBLOCK))
                if self._sock is None:
                    return
                continue
            inbox.put(frame)
        else:
            if not unbounded and self._data_pump is not None:
                self._data_pump.kick()  # a full batch: more may wait, and no edge will say so
        self._wake_senders()

    def _on_control(self, parts: list[bytes]) -> None:
        if parts == [BYE]:
            self._shutdown(TransportClosed(f"{self.endpoint} closed this link"))
        else:
            log.warning("ignoring an unknown control message from %s", self.endpoint)

    def _on_take(self) -> None:
        if self._paused and len(self._inbox) < self.options.client_receive_buffer:
            self._paused = False
            if self._data_pump is not None:
                self._data_pump.kick()

    async def receive(self) -> bytes:
        """The next frame. Raises TransportClosed once the link has ended, or the
        HandshakeFailed that ended it."""
        if self._state is LinkState.NEW:
            await self.open()
        return await self._inbox.get()

    # -------------------------------------------------------------------------- send

    async def send(self, data: bytes) -> None:
        """Send one frame, waiting up to ``options.send_timeout`` for room.

        Raises QueueFull when there is still no room, TransportClosed after the link ended,
        TypeError for anything but bytes.
        """
        if self._state is not LinkState.OPEN:
            if self._state is LinkState.CLOSED:
                raise self._error()
            await self.open()
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError(f"send() takes bytes, got {type(data).__name__}")
        await self._send_parts([data])

    async def receive_batch(self) -> list[bytes]:
        """The next frame and every frame queued behind it. Raises like :meth:`receive`."""
        if self._state is LinkState.NEW:
            await self.open()
        return await self._inbox.get_batch()

    async def send_batch(self, frames: list[bytes]) -> None:
        """Send every frame in order: non-blocking sends while there is room, one pump kick;
        when the queue is full, wait for room as :meth:`send` does. Raises like :meth:`send`,
        leaving in ``frames`` the frame that failed and those after it."""
        if self._state is not LinkState.OPEN:
            if self._state is LinkState.CLOSED:
                raise self._error()
            await self.open()
        sent = 0
        try:
            sock = self._sock
            for data in frames:
                if not isinstance(data, bytes | bytearray | memoryview):
                    raise TypeError(f"send_batch() takes bytes, got {type(data).__name__}")
                if sock is None or self._now() is LinkState.CLOSED:
                    raise self._error()
                try:
                    sock.send(data, zmq.NOBLOCK, copy=len(data) < ZERO_COPY_FROM)
                except zmq.Again:
                    await self._send_parts([data])  # waits for room, or raises QueueFull
                    sock = self._sock
                except zmq.ZMQError as exc:
                    raise TransportError(f"sending to {self.endpoint} failed: {exc}") from None
                sent += 1
        finally:
            del frames[:sent]
            if self._data_pump is not None:
                self._data_pump.kick()  # the sends may have consumed the FD's edge

    async def _send_parts(self, parts: list[bytes | bytearray | memoryview]) -> None:
        # The common case (room in the queue) costs one non-blocking send and no timer.
        if self._try_send(parts):
            return
        try:
            async with asyncio.timeout(self.options.send_timeout):
                while True:
                    await self._wait_writable()
                    if self._try_send(parts):
                        return
        except TimeoutError:
            raise QueueFull(
                f"no room to send to {self.endpoint} for {self.options.send_timeout:g} s"
                f" ({self.options.client_sndhwm} frames queued)"
            ) from None

    def _try_send(self, parts: list[bytes | bytearray | memoryview]) -> bool:
        """Send now if there is room: True if sent, False if the queue is full."""
        sock = self._sock
        if sock is None or self._state is LinkState.CLOSED:
            raise self._error()
        try:
            if len(parts) == 1:
                # Small frames are copied by pyzmq anyway; large ones go zero-copy.
                sock.send(parts[0], zmq.NOBLOCK, copy=len(parts[0]) < ZERO_COPY_FROM)
            else:
                sock.send_multipart(parts, zmq.NOBLOCK)
        except zmq.Again:
            return False
        except zmq.ZMQError as exc:
            raise TransportError(f"sending to {self.endpoint} failed: {exc}") from None
        finally:
            # The send may have consumed the FD's edge for queued input: look again soon.
            if self._data_pump is not None:
                self._data_pump.kick()
        return True

    async def _wait_writable(self) -> None:
        waiter = asyncio.get_running_loop().create_future()
        self._send_waiters.append(waiter)
        try:
            await waiter
        finally:
            if waiter in self._send_waiters:
                self._send_waiters.remove(waiter)

    def _wake_senders(self) -> None:
        sock = self._sock
        if not self._send_waiters or sock is None:
            return
        if int_option(sock, zmq.EVENTS) & zmq.POLLOUT:
            for waiter in self._send_waiters:
                if not waiter.done():
                    waiter.set_result(None)

    # -------------------------------------------------------------------------- close

    def _error(self) -> TransportError:
        """A fresh copy of what ended the link (one instance re-raised grows its traceback)."""
        error = self._end_error or TransportClosed(f"transport to {self.endpoint} is closed")
        fresh = copy_error(error)
        return fresh if isinstance(fresh, TransportError) else TransportClosed(str(error))

    def _shutdown(self, error: TransportError) -> None:
        """Release everything now (sync: also called from loop callbacks). Idempotent."""
        if self._end_error is None:
            self._end_error = error
        self._state = LinkState.CLOSED
        for pump in self._pumps:
            pump.close()
        self._pumps, self._data_pump = [], None
        sock, monitor = self._sock, self._monitor
        self._sock = self._monitor = None
        if sock is not None:
            with contextlib.suppress(zmq.ZMQError):
                sock.disable_monitor()
            sock.close(linger=to_ms(self.options.linger))
        if monitor is not None:
            monitor.close(linger=0)
        handshake = self._handshake
        if handshake is not None and not handshake.done():
            handshake.set_exception(self._error())
            handshake.exception()  # retrieved here, so an unawaited failure is not logged
        for waiter in self._send_waiters:
            if not waiter.done():
                waiter.set_result(None)  # the sender loops, sees the state and raises
        self._inbox.end(self._end_error)

    async def close(self) -> None:
        """Close the link and release its sockets. Idempotent; never raises."""
        if self._state is not LinkState.CLOSED:
            self._shutdown(TransportClosed(f"transport to {self.endpoint} is closed"))
