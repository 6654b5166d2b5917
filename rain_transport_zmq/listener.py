"""The ZeroMQ listener: a ROUTER socket demultiplexed into one Transport per peer.

Invariants:

- **Fails closed.** The ZAP authenticator is started in the listener's own context before
  ``bind``, is referenced by the listener, and ``start()`` proves it with a throwaway key that
  must be refused; otherwise TransportSecurityError and nothing is served (trap 1). On close the
  ROUTER goes before the authenticator. The authenticator answers on its own thread, so a busy
  event loop never delays a handshake (trap 15).
- **Identity comes from each frame's ``User-Id``**, which our ZAP handler set to the client's
  proven Curve25519 key; it is mapped to the Ed25519 key through the live authorised-keys
  table. Never from the routing id (the client chooses it) or shared state. A frame without a
  ``User-Id``, or whose ``User-Id`` differs from its transport's, or whose key is no longer
  authorised, is dropped and logged.
- **Peers appear on ``hello``** (see :mod:`rain_transport_zmq.transport`) and **disappear on
  disconnect**: each per-peer transport remembers the descriptor of its connection
  (``ZMQ_SRCFD``); the ROUTER's monitor reports ``DISCONNECTED`` with that descriptor, and the
  transport closes once the frames that connection had queued are delivered. Descriptor numbers
  are reused, so pending monitor events are applied before a new peer is bound to one.
- **Nothing is dropped silently on send.** ROUTER_MANDATORY and non-blocking sends: a full peer
  raises QueueFull, a gone one :class:`PeerGone` (QueueFull and TransportClosed).
- **Batches cost one wake-up.** One pump callback drains every queued message of every peer
  into their inboxes (up to ``receive_batch`` a turn); a peer's ``receive_batch`` hands its
  whole inbox over at once, and ``send_batch`` sends a channel's replies with non-blocking
  sends and kicks the pump once, after the last.
- **A peer told ``bye`` leaves, or is made to.** A ROUTER cannot drop one connection, so the
  listener asks the client to (``bye``: session over, key revoked, receive buffer overrun) and
  starts a ``bye_timeout`` timer. If the connection is still open then, the listener shuts its
  socket down under libzmq through a duplicate of its descriptor; libzmq reads end-of-file and
  ends the connection. Each ACCEPTED event gives the descriptor a new serial, and the deadline
  only acts on the serial it was set for, so a reused descriptor number is never hit (the
  remaining risk is spelled out in ``_bye_deadline_passed``). A ``hello`` on a connection told
  ``bye`` is dropped.
- **A peer never decides how much we log.** Every line a peer can trigger (dropped frames,
  overruns, failed or refused handshakes, connects and closes) goes through the listener's
  :class:`~rain_envelopes.peerlog.PeerLog`, shared with its authenticator's thread: one line per
  (kind, peer) per ``log_interval``, then a count. A timer flushes the summaries.
- **Revocation is ours to do** (libzmq checks keys once per connection, trap 3):
  :meth:`ZmqTransportListener.reload_keys` closes the links of removed keys before it returns,
  and every frame re-checks its key whenever the table's version changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import logging
import os
import socket
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import zmq
import zmq.utils.z85

from rain_envelopes.envelopes import SessionEncryption
from rain_envelopes.errors import (
    ConfigError,
    HandshakeFailed,
    PeerGone,
    QueueFull,
    SecurityCause,
    TransportClosed,
    TransportError,
    TransportSecurityError,
)
from rain_envelopes.keys import Identity, format_public_key
from rain_envelopes.peerlog import PeerLog
from rain_envelopes.transport import ClientSecurity, ServerSecurity, Transport, TransportListener

from ._common import (
    BYE,
    CONTROL,
    HELLO,
    ZERO_COPY_FROM,
    apply_common,
    check_endpoint,
    log,
    raise_open_files_limit,
    socket_error,
    to_ms,
)
from ._io import Inbox, SocketPump, monitor_events, open_monitor
from .client import ZmqTransport
from .options import ZmqOptions
from .security import (
    ZAP_DOMAIN,
    Network,
    ZapAuthenticator,
    client_curve_keys,
    normalize_address,
    parse_allowlist,
)

if TYPE_CHECKING:
    from rain_envelopes.keys import AuthorizedKeys

__all__ = ["ZmqPeerTransport", "ZmqTransportListener"]

# The send flags as plain ints, computed once: `zmq.NOBLOCK | zmq.SNDMORE` is enum arithmetic in
# Python, which the after-profiles found being redone for every frame of every reply.
_MORE = int(zmq.NOBLOCK | zmq.SNDMORE)
_LAST = int(zmq.NOBLOCK)


class ZmqPeerTransport(Transport):
    """The listener's link to one peer (made by the listener, handed out by ``accept()``).

    ``peer_identity`` is the Ed25519 key (``ed25519:...``) the peer proved with CURVE, mapped
    from the ``User-Id`` of its frames; ``peer_address`` its IP (IPv4-mapped folded to IPv4).
    ``dropped_frames`` counts frames refused for this peer.
    """

    def __init__(
        self,
        listener: ZmqTransportListener,
        routing_id: bytes,
        *,
        user_id: str | None,
        ed25519_key: bytes | None,
        address: str | None,
        keys_version: int,
    ) -> None:
        self._listener = listener
        self.routing_id = routing_id
        self.user_id = user_id
        self.ed25519_key = ed25519_key
        self.keys_version = keys_version
        self.peer_identity = format_public_key(ed25519_key) if ed25519_key is not None else None
        self.peer_address = address
        if user_id is not None:
            self.encryption = SessionEncryption.CURVE
        self.dropped_frames = 0
        self.inbox = Inbox()
        self._closed = False
        #: The descriptor of this peer's connection (ZMQ_SRCFD), set by the listener.
        self._fd: int | None = None

    def __repr__(self) -> str:
        return f"<ZmqPeerTransport {self._who} {'closed' if self._closed else 'open'}>"

    @property
    def _who(self) -> str:
        """How logs name this peer: its proven key, else its address, else its routing id."""
        return self.peer_identity or self.peer_address or self.routing_id.hex()

    @property
    def closed(self) -> bool:
        return self._closed

    async def send(self, data: bytes) -> None:
        """Send one frame without waiting. Raises QueueFull when the peer's queue is full,
        PeerGone when its connection is gone, TransportClosed after close."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError(f"send() takes bytes, got {type(data).__name__}")
        self._listener._send_to(self, data)

    async def receive(self) -> bytes:
        """The next frame from this peer. Raises TransportClosed once the link has ended."""
        return await self.inbox.get()

    async def receive_batch(self) -> list[bytes]:
        """Every frame the last drain queued for this peer (at least one)."""
        return await self.inbox.get_batch()

    async def send_batch(self, frames: list[bytes]) -> None:
        """Send every frame without waiting, then kick the pump once. Raises like ``send``,
        leaving in ``frames`` the one that failed and those after it."""
        sent = 0
        send_to = self._listener._send_to
        try:
            for data in frames:
                if not isinstance(data, bytes | bytearray | memoryview):
                    raise TypeError(f"send_batch() takes bytes, got {type(data).__name__}")
                send_to(self, data, kick=False)
                sent += 1
        finally:
            del frames[:sent]
            self._listener._kick_router()

    async def close(self) -> None:
        """Close this peer's link (the client is asked to disconnect). Idempotent."""
        self._listener._end_peer(self, TransportClosed("link closed by this server"), bye=True)


class ZmqTransportListener(TransportListener):
    """A ROUTER socket that hands out one :class:`ZmqPeerTransport` per connected peer.

    Secure by default: CURVE with this node's identity, a ZAP authenticator checking
    ``authorized_keys`` (live, on every handshake) and the IP allowlist, and a start-up
    self-test. Give either ``security=ServerSecurity(...)`` or the same fields as keywords.
    Raises ConfigError at construction for missing keys or a bad allowlist or options.
    """

    def __init__(
        self,
        endpoints: str | Sequence[str],
        security: ServerSecurity | None = None,
        options: Mapping[str, Any] | ZmqOptions | None = None,
        *,
        identity: Identity | None = None,
        authorized_keys: AuthorizedKeys | None = None,
        allow: Sequence[str] = (),
        insecure: bool = False,
    ) -> None:
        if isinstance(endpoints, str):
            endpoints = [endpoints]
        self._requested = [check_endpoint(endpoint) for endpoint in endpoints]
        if not self._requested:
            raise ConfigError("a listener needs at least one endpoint, e.g. tcp://*:4505")
        if security is not None and (
            identity is not None or authorized_keys is not None or allow or insecure
        ):
            raise ConfigError(
                "pass either security= or identity=/authorized_keys=/allow=/insecure=, not both"
            )
        if security is None:
            security = ServerSecurity(identity, authorized_keys, tuple(allow), insecure)
        if not isinstance(security, ServerSecurity):
            raise ConfigError(f"security must be a ServerSecurity, got {type(security).__name__}")
        self.security = security
        self.options = ZmqOptions.from_mapping(options)
        self.networks: tuple[Network, ...] = parse_allowlist(security.allow)
        self.secure = not security.insecure
        if self.secure:
            if security.identity is None:
                raise ConfigError(
                    "a CURVE listener needs the server's identity key:"
                    " ServerSecurity(identity=Identity.load(KEY_FILE), authorized_keys=...)."
                    " Pass insecure=True only for tests or a loopback demo"
                )
            if security.authorized_keys is None:
                raise ConfigError(
                    "a CURVE listener needs authorized_keys (AuthorizedKeys.load(FILE)): without"
                    " it no client could be told apart from an attacker"
                )
        self.authorized_keys = security.authorized_keys if self.secure else None
        #: The ZAP handler; referenced here so it lives exactly as long as the listener.
        self.authenticator: ZapAuthenticator | None = None
        self._context: zmq.Context[zmq.Socket[bytes]] | None = None
        self._router: zmq.Socket[bytes] | None = None
        self._monitor: zmq.Socket[bytes] | None = None
        self._router_pump: SocketPump | None = None
        self._pumps: list[SocketPump] = []
        self._bound: list[str] = []
        self._accepted: asyncio.Queue[ZmqPeerTransport | None] = asyncio.Queue()
        self._peers: dict[bytes, ZmqPeerTransport] = {}
        self._fd_peers: dict[int, set[bytes]] = {}
        self._live_fds: set[int] = set()
        self._doomed: set[bytes] = set()
        # Connection serials: a number per ACCEPTED event, by descriptor. Descriptor numbers are
        # reused; a serial tells one connection on a descriptor from the next.
        self._fd_serial: dict[int, int] = {}
        self._serials = itertools.count(1)
        #: Connections told ``bye``: descriptor -> (serial, the deadline's timer, who).
        self._bye_deadlines: dict[int, tuple[int, asyncio.TimerHandle, str]] = {}
        #: Connections this listener shut down because their peer ignored ``bye``.
        self.forced_closes = 0
        # Set whenever a connection told ``bye`` goes away (close() waits on it).
        self._bye_left = asyncio.Event()
        #: Everything a peer can make us log goes through here (one line per peer, kind and
        #: interval, then a count): an attacker must not decide how much we write.
        self.peer_log = PeerLog(log, interval=self.options.log_interval)
        self._flush_timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = False
        self._start_lock = asyncio.Lock()
        self._closed = False
        #: Frames dropped before reaching any peer transport (no User-Id, unknown peer, ...).
        self.dropped_frames = 0

    def __repr__(self) -> str:
        state = "closed" if self._closed else "serving" if self._started else "new"
        return f"<ZmqTransportListener {self._bound or self._requested} {state}>"

    @property
    def endpoints(self) -> list[str]:
        return list(self._bound)

    @property
    def peers(self) -> list[ZmqPeerTransport]:
        """The live per-peer transports."""
        return list(self._peers.values())

    # -------------------------------------------------------------------------- start

    async def start(self) -> None:
        """Start the authenticator, bind, and prove an unknown key is refused.

        Raises TransportSecurityError (and serves nothing) when the self-test fails or the ZAP
        endpoint is taken, TransportError when an endpoint cannot be bound, TransportClosed
        after close.
        """
        if self._closed:
            raise TransportClosed("listener is closed")
        async with self._start_lock:  # a second caller waits for the first to finish
            await self._start()

    async def _start(self) -> None:
        if self._closed:
            raise TransportClosed("listener is closed")
        if self._started:
            return
        self._loop = loop = asyncio.get_running_loop()
        options = self.options
        # Our own context: the ZAP handler must live in the context of the socket it guards,
        # and only one handler can bind per context.
        raise_open_files_limit()  # a connection is a file descriptor (see _common)
        try:
            self._context = context = zmq.Context(options.io_threads)
        except zmq.ZMQError as exc:
            self._closed = True
            raise socket_error("cannot make the listener's ZeroMQ context", exc) from None
        try:
            if self.secure or self.networks:
                self.authenticator = ZapAuthenticator(
                    context,
                    authorized_keys=self.authorized_keys,
                    networks=self.networks,
                    peer_log=self.peer_log,
                )
                try:
                    self.authenticator.start()  # before bind: trap 1
                except zmq.ZMQError as exc:
                    raise TransportSecurityError(
                        f"cannot start the ZAP authenticator: {exc}"
                    ) from None
            try:
                router = context.socket(zmq.ROUTER)
                self._router = router
                self._configure_router(router)
                self._monitor = open_monitor(
                    context,
                    router,
                    zmq.EVENT_ACCEPTED
                    | zmq.EVENT_DISCONNECTED
                    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL,
                    "listener",
                )
            except zmq.ZMQError as exc:
                raise socket_error("cannot open the listener's sockets", exc) from None
            for endpoint in self._requested:
                try:
                    router.bind(endpoint)
                except zmq.ZMQError as exc:
                    raise TransportError(f"cannot listen on {endpoint}: {exc}") from None
                self._bound.append(router.getsockopt_string(zmq.LAST_ENDPOINT))
            self._router_pump = SocketPump(loop, router, self._drain_router)
            self._pumps = [self._router_pump, SocketPump(loop, self._monitor, self._drain_monitor)]
            if self.secure:
                await self._self_test()
            else:
                log.warning(
                    "listening on %s WITHOUT transport security: anyone who can reach it can"
                    " connect",
                    ", ".join(self._bound),
                )
        except BaseException:
            self._release()
            self._closed = True
            raise
        self._started = True
        self._schedule_log_flush()
        log.info("listening on %s", ", ".join(self._bound))

    def _schedule_log_flush(self) -> None:
        # Twice per interval, so a summary is written at most half an interval late.
        assert self._loop is not None
        self._flush_timer = self._loop.call_later(self.options.log_interval / 2, self._flush_log)

    def _flush_log(self) -> None:
        self._flush_timer = None
        self.peer_log.flush()
        if not self._closed:
            self._schedule_log_flush()

    def _configure_router(self, router: zmq.Socket[bytes]) -> None:
        options = self.options
        apply_common(router, options, self._requested)
        router.setsockopt(zmq.MAXMSGSIZE, options.server_max_message_size)
        router.setsockopt(zmq.RCVHWM, options.server_rcvhwm)
        router.setsockopt(zmq.SNDHWM, options.server_sndhwm)
        router.setsockopt(zmq.HANDSHAKE_IVL, to_ms(options.server_handshake_ivl))
        router.setsockopt(zmq.ROUTER_MANDATORY, int(options.router_mandatory))
        router.setsockopt(zmq.ROUTER_HANDOVER, int(options.router_handover))
        if self.authenticator is not None:
            # With a domain set, libzmq asks ZAP for NULL connections too (the allowlist of
            # an insecure listener); CURVE always asks.
            router.setsockopt_string(zmq.ZAP_DOMAIN, ZAP_DOMAIN)
        if self.secure:
            assert self.security.identity is not None
            public, secret = client_curve_keys(self.security.identity)
            router.setsockopt(zmq.CURVE_SERVER, 1)
            router.setsockopt(zmq.CURVE_PUBLICKEY, public)
            router.setsockopt(zmq.CURVE_SECRETKEY, secret)

    async def _self_test(self) -> None:
        """Connect with a fresh unknown key; unless our handler refuses it, refuse to serve.

        Trap 1: with no ZAP handler answering (not started, stopped, collected, or bound in
        another context) libzmq accepts every CURVE key.
        """
        assert self.authenticator is not None
        assert self.security.identity is not None
        probe_identity = Identity.generate()
        probe_key = probe_identity.curve_keypair()[0]
        self.authenticator.watch(probe_key)
        target = _self_test_endpoint(self._bound[0])
        probe = ZmqTransport(
            target,
            ClientSecurity(identity=probe_identity, server_key=self.security.identity.public_key),
            self.options.replace(open_timeout=self.options.self_test_timeout),
            context=self._context,
        )
        try:
            await probe.open()
        except HandshakeFailed as exc:
            decision = self.authenticator.decision_for(probe_key)
            refused = exc.cause is SecurityCause.REFUSED
            if refused and decision is not None and not decision.accepted:
                log.info("self-test passed: an unknown key was refused (%s)", decision.text)
                return
            raise TransportSecurityError(
                f"start-up self-test on {target} was inconclusive ({exc}); refusing to serve"
            ) from None
        except TransportError as exc:
            raise TransportSecurityError(
                f"start-up self-test on {target} could not complete ({exc}); refusing to serve"
            ) from None
        finally:
            await probe.close()
        raise TransportSecurityError(
            f"start-up self-test: {target} accepted a CURVE key that is not authorised. The ZAP"
            " authenticator is not answering (libzmq then lets every key in); refusing to serve"
        )

    # -------------------------------------------------------------------------- receive path

    def _drain_router(self) -> None:
        router = self._router
        if router is None:
            return
        secure = self.secure
        for _ in range(self.options.receive_batch):
            try:
                routing_id = router.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            except zmq.ZMQError as exc:
                log.error("listener receive failed: %s", exc)
                return
            # A ROUTER delivers messages whole: the parts after the routing id are all there.
            frame = router.recv(zmq.NOBLOCK, copy=False)
            # recv_multipart reads from where we are: the parts after this one.
            rest = router.recv_multipart(zmq.NOBLOCK) if frame.more else None
            user_id: str | None = None
            if secure:
                try:
                    user_id = str(frame.get("User-Id"))
                except zmq.ZMQError:
                    # Trap 1 again: without a User-Id the handshake was not checked by us.
                    self._drop(routing_id, "a frame without a CURVE User-Id", _frame_address(frame))
                    continue
            if rest is None:
                self._on_data(routing_id, user_id, frame.bytes)
            elif frame.bytes == CONTROL and rest == [HELLO]:
                self._on_hello(routing_id, user_id, _frame_address(frame), _frame_fd(frame))
            else:
                self._drop(routing_id, "an unknown multipart message", self._name(user_id))
        else:
            assert self._router_pump is not None
            self._router_pump.kick()  # a full batch: come back after the loop had a turn
            return
        # Everything queued has been read: the frames of closed connections are delivered.
        self._bury_doomed()

    def _drop(self, routing_id: bytes, what: str, who: str | None) -> None:
        """Count and log (rate-limited, per sender) one frame we refuse.

        ``who`` names the sender as well as we know it: a proven key or an address. Never the
        routing id alone, which the sender chooses and could vary to spread over log keys.
        """
        self.dropped_frames += 1
        self.peer_log.event(
            logging.WARNING,
            "dropped-frame",
            who,
            "dropped %s (routing id %s)",
            what,
            routing_id.hex(),
        )

    def _lookup(self, user_id: str | None) -> bytes | None:
        """The authorised Ed25519 key behind a User-Id (Z85 Curve25519 key), or None."""
        if user_id is None or self.authorized_keys is None:
            return None
        try:
            curve = zmq.utils.z85.decode(user_id.encode("ascii"))
        except (ValueError, UnicodeEncodeError):
            return None
        return self.authorized_keys.lookup_curve(curve)

    def _name(self, user_id: str | None) -> str | None:
        """How logs name the sender of a frame: its Ed25519 key when authorised, else its
        User-Id (a key our ZAP handler accepted), else None (an insecure listener's unknown)."""
        key = self._lookup(user_id)
        return format_public_key(key) if key is not None else user_id

    def _keys_version(self) -> int:
        return self.authorized_keys.version if self.authorized_keys is not None else 0

    def _on_hello(
        self, routing_id: bytes, user_id: str | None, address: str | None, fd: int | None
    ) -> None:
        ed25519_key: bytes | None = None
        if self.secure:
            ed25519_key = self._lookup(user_id)
            if ed25519_key is None:
                self._drop(
                    routing_id, "a hello from a key that is not authorised (any more)", user_id
                )
                return
        # Apply pending monitor events first: a disconnect of an earlier connection on this
        # descriptor (numbers are reused) or under this routing id must not hit the new peer.
        self._drain_monitor()
        if fd is not None and self._told_bye(fd):
            # A well-behaved client closes its connection on bye and says hello on a new one.
            self._drop(
                routing_id, "a hello on a connection told to leave", self._name(user_id) or address
            )
            return
        existing = self._peers.get(routing_id)
        if existing is not None:
            if routing_id not in self._doomed:
                if existing.user_id != user_id:
                    self._drop(
                        routing_id,
                        "a hello claiming another peer's routing id",
                        self._name(user_id) or address,
                    )
                return
            # The routing id was reused (clients may choose theirs) after its connection ended.
            self._end_peer(existing, TransportClosed("peer disconnected"), bye=False)
        peer = ZmqPeerTransport(
            self,
            routing_id,
            user_id=user_id,
            ed25519_key=ed25519_key,
            address=address,
            keys_version=self._keys_version(),
        )
        self._peers[routing_id] = peer
        if fd is not None:
            peer._fd = fd
            if fd in self._live_fds:
                self._fd_peers.setdefault(fd, set()).add(routing_id)
            else:  # its connection already ended: deliver what it sent, then close
                self._doomed.add(routing_id)
        # Per connection, and only authorised keys get this far; still rate-limited, so a
        # valid key reconnecting in a loop cannot flood the log either.
        self.peer_log.event(
            logging.INFO, "connected", peer._who, "peer %s connected from %s", peer._who, address
        )
        self._accepted.put_nowait(peer)

    def _on_data(self, routing_id: bytes, user_id: str | None, payload: bytes) -> None:
        peer = self._peers.get(routing_id)
        if peer is None:
            # In a secure listener user_id is a key our ZAP handler accepted; an insecure one
            # counts every unknown sender under one name.
            self._drop(
                routing_id, "a frame from a peer without a live transport", self._name(user_id)
            )
            return
        if peer.user_id != user_id:
            peer.dropped_frames += 1
            self._drop(
                routing_id,
                "a frame whose User-Id differs from its transport's",
                self._name(user_id),
            )
            return
        if self.secure and peer.keys_version != self._keys_version():
            if self._lookup(user_id) != peer.ed25519_key:
                peer.dropped_frames += 1
                self._drop(routing_id, f"a frame from revoked key {peer.peer_identity}", peer._who)
                self._end_peer(peer, TransportClosed("peer key no longer authorised"), bye=True)
                return
            peer.keys_version = self._keys_version()
        if len(peer.inbox) >= self.options.peer_receive_buffer:
            # A ROUTER cannot push back on one peer, and a hole in the stream would break the
            # transport's promise: end this peer's link instead (the client is told).
            peer.dropped_frames += 1
            self.peer_log.event(
                logging.WARNING,
                "overrun",
                peer._who,
                "peer %s sent more than %d frames ahead of its session; closing its link",
                peer._who,
                self.options.peer_receive_buffer,
            )
            self._end_peer(peer, TransportClosed("peer overran its receive buffer"), bye=True)
            return
        peer.inbox.put(payload)

    def _drain_monitor(self) -> None:
        if self._monitor is None:
            return
        for kind, value, endpoint in monitor_events(self._monitor):
            if kind == zmq.EVENT_ACCEPTED:
                self._live_fds.add(value)
                self._fd_serial[value] = next(self._serials)
            elif kind == zmq.EVENT_DISCONNECTED:
                self._live_fds.discard(value)
                self._fd_serial.pop(value, None)
                told = self._bye_deadlines.pop(value, None)
                if told is not None:
                    told[1].cancel()  # it left as asked
                    self._bye_left.set()
                gone = self._fd_peers.pop(value, set())
                if gone:
                    self._doomed |= gone
                    if self._router_pump is not None:
                        self._router_pump.kick()
            else:
                # The endpoint is the listener's, not the peer's: every failed handshake is
                # counted under it, so garbage from many sources still makes one line a turn.
                self.peer_log.event(
                    logging.INFO,
                    "handshake-failed",
                    endpoint,
                    "handshake failed on %s (event %d, detail %d)",
                    endpoint,
                    kind,
                    value,
                )

    def _bury_doomed(self) -> None:
        doomed, self._doomed = self._doomed, set()
        for routing_id in doomed:
            peer = self._peers.get(routing_id)
            if peer is not None:
                self._end_peer(peer, TransportClosed("peer disconnected"), bye=False)

    # -------------------------------------------------------------------------- send path

    def _kick_router(self) -> None:
        if self._router_pump is not None:
            self._router_pump.kick()  # a send may have consumed the FD's edge

    def _send_to(
        self, peer: ZmqPeerTransport, data: bytes | bytearray | memoryview, *, kick: bool = True
    ) -> None:
        """Send one frame to ``peer`` now. With ``kick`` False the caller kicks the router pump
        itself once it is done sending (a batch costs one kick, not one per frame)."""
        router = self._router
        if peer.closed or router is None:
            raise TransportClosed("link to this peer is closed")
        try:
            router.send(peer.routing_id, _MORE)
            router.send(data, _LAST, copy=len(data) < ZERO_COPY_FROM)
        except zmq.Again:
            raise QueueFull(
                f"peer {peer.peer_identity or peer.routing_id.hex()} has"
                f" {self.options.server_sndhwm} frames queued; this frame was not sent"
            ) from None
        except zmq.ZMQError as exc:
            if exc.errno == errno.EHOSTUNREACH:
                self._end_peer(peer, TransportClosed("peer disconnected"), bye=False)
                raise PeerGone(
                    f"peer {peer.peer_identity or peer.routing_id.hex()} is gone; frame not sent"
                ) from None
            raise TransportError(f"sending to a peer failed: {exc}") from None
        finally:
            if kick and self._router_pump is not None:
                self._router_pump.kick()  # the send may have consumed the FD's edge

    def _end_peer(self, peer: ZmqPeerTransport, error: TransportError, *, bye: bool) -> None:
        if peer._closed:
            return
        peer._closed = True
        routing_id = peer.routing_id
        if self._peers.get(routing_id) is peer:
            del self._peers[routing_id]
            if peer._fd is not None:
                members = self._fd_peers.get(peer._fd)
                if members is not None:
                    members.discard(routing_id)
                    if not members:
                        del self._fd_peers[peer._fd]
            self._doomed.discard(routing_id)
        router = self._router
        if bye and router is not None:
            # Full or gone: then it notices the dead link some other way.
            with contextlib.suppress(zmq.ZMQError):
                router.send_multipart([routing_id, CONTROL, BYE], zmq.NOBLOCK)
            if self._router_pump is not None:
                self._router_pump.kick()
            if peer._fd is not None:
                self._set_bye_deadline(peer._fd, peer._who)
        peer.inbox.end(error)
        self.peer_log.event(
            logging.INFO, "closed", peer._who, "link to peer %s closed: %s", peer._who, error
        )

    # -------------------------------------------------------------------------- bye deadline

    def _told_bye(self, fd: int) -> bool:
        """Whether the connection now on ``fd`` was told ``bye`` (monitor events applied)."""
        told = self._bye_deadlines.get(fd)
        return told is not None and told[0] == self._fd_serial.get(fd)

    def _set_bye_deadline(self, fd: int, who: str) -> None:
        """Shut the connection on ``fd`` down unless it is gone within ``bye_timeout``."""
        loop = self._loop
        serial = self._fd_serial.get(fd)
        if loop is None or serial is None or self._told_bye(fd):
            return  # not started, already gone, or already told
        timer = loop.call_later(self.options.bye_timeout, self._bye_deadline_passed, fd, serial)
        self._bye_deadlines[fd] = (serial, timer, who)

    def _bye_deadline_passed(self, fd: int, serial: int) -> None:
        told = self._bye_deadlines.get(fd)
        if told is None or told[0] != serial:
            return
        del self._bye_deadlines[fd]
        self._bye_left.set()
        # libzmq has no way to drop one peer of a ROUTER, so we shut the TCP (or ipc) socket
        # down under it through a duplicate of its descriptor; libzmq then reads end-of-file
        # and ends the connection as if the peer had hung up (DISCONNECTED follows).
        #
        # Descriptor numbers are reused, so we must not hit whatever holds the number now.
        # The duplicate is taken *first*: it pins the open file, whatever libzmq does next.
        # Then the monitor is drained: libzmq emits DISCONNECTED before it closes a
        # connection's descriptor, so if the number had been closed (and maybe reused) before
        # our dup, that event is already queued and the serial check below fails; a new
        # connection on the same number has a new serial. What remains: monitor events lost
        # because the monitor's queue overflowed (it holds 1000 events), after which our view
        # of live descriptors could be stale; the serial check still refuses numbers whose
        # ACCEPTED we did see.
        try:
            dup = os.dup(fd)
        except OSError:
            return  # closed already
        try:
            self._drain_monitor()
            if self._fd_serial.get(fd) != serial:
                return  # it left (just now) after all
            try:
                conn = socket.socket(fileno=dup)
            except OSError:
                return  # not a socket: not a connection of ours
            dup = -1  # owned by conn now
            with conn, contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        finally:
            if dup >= 0:
                os.close(dup)
        self.forced_closes += 1
        self.peer_log.event(
            logging.WARNING,
            "bye-ignored",
            told[2],
            "peer %s kept its connection %.1f s after bye; shut it down",
            told[2],
            self.options.bye_timeout,
        )

    # -------------------------------------------------------------------------- public API

    async def accept(self) -> Transport:
        """The next new peer's transport. Raises TransportClosed once the listener is closed,
        TransportError before ``start()``."""
        if self._closed:
            raise TransportClosed("listener is closed")
        if not self._started:
            raise TransportError("call start() before accept()")
        peer = await self._accepted.get()
        if peer is None:
            self._accepted.put_nowait(None)  # wake the next waiter too
            raise TransportClosed("listener is closed")
        return peer

    async def close_peer(self, peer_identity: str) -> int:
        """Close every live transport whose peer proved ``peer_identity``; return how many.

        Each client is sent a ``bye`` and closes its end; frames still coming from it are
        dropped. Never raises.
        """
        matching = [peer for peer in self._peers.values() if peer.peer_identity == peer_identity]
        for peer in matching:
            self._end_peer(peer, TransportClosed("link closed by this server"), bye=True)
        return len(matching)

    async def reload_keys(self) -> set[bytes]:
        """Re-read the authorised-keys file; close live links of keys it no longer grants.

        New handshakes use the new table at once (the authenticator looks keys up live); live
        links of removed keys are closed before this returns. Returns the removed Ed25519 keys.
        Raises KeyFileError when the file is bad (the old table stays), ConfigError when the
        listener has no authorised-keys file.
        """
        if self.authorized_keys is None:
            raise ConfigError("this listener has no authorised keys to reload")
        removed = self.authorized_keys.reload()
        closed = 0
        for key in removed:
            closed += await self.close_peer(format_public_key(key))
        if removed:
            log.warning("revoked %d key(s); closed %d live link(s)", len(removed), closed)
        return removed

    async def close(self) -> None:
        """Stop accepting, close every peer transport and release sockets. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for peer in list(self._peers.values()):
            self._end_peer(peer, TransportClosed("listener closed"), bye=False)
        # Peers told `bye` (a server's sessions, just sent `finished`) hang up themselves once
        # they have read everything; closing their connections from here first would race
        # that: a client DEALER (IMMEDIATE) discards frames it had not read yet when its
        # connection drops, so the `finished` it was sent would be lost and the client would
        # see a lost link instead of a clean end. So wait for them, up to bye_timeout.
        await self._await_byes(self.options.bye_timeout)
        # Frames already sent (a server's `finished` to each session) must still leave: the
        # ROUTER lingers up to bye_timeout for them, and the context is ended off the loop
        # while it does. With LINGER 0 they were discarded and every client saw a lost link.
        context = self._release(router_linger=self.options.bye_timeout, terminate=False)
        self._accepted.put_nowait(None)
        if context is not None:
            await asyncio.to_thread(context.destroy, linger=0)

    async def _await_byes(self, timeout: float) -> None:
        """Wait until every connection told ``bye`` has gone, at most ``timeout`` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._bye_deadlines:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            self._bye_left.clear()
            try:
                await asyncio.wait_for(self._bye_left.wait(), remaining)
            except TimeoutError:
                return

    def _release(
        self, *, router_linger: float = 0.0, terminate: bool = True
    ) -> zmq.Context[zmq.Socket[bytes]] | None:
        """Close every socket; end the context, or hand it back when ``terminate`` is false
        (ending it waits up to ``router_linger`` for the ROUTER's queued frames)."""
        for pump in self._pumps:
            pump.close()
        self._pumps, self._router_pump = [], None
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        for _serial, timer, _who in self._bye_deadlines.values():
            timer.cancel()
        self._bye_deadlines.clear()
        router, monitor = self._router, self._monitor
        self._router = self._monitor = None
        if router is not None:
            with contextlib.suppress(zmq.ZMQError):
                router.disable_monitor()
            router.close(linger=to_ms(router_linger))
        if monitor is not None:
            monitor.close(linger=0)
        # Only now: with no handler in the context libzmq would accept any key (trap 1), so
        # the ROUTER it guards goes first.
        if self.authenticator is not None:
            self.authenticator.stop()
        context, self._context = self._context, None
        if context is not None and terminate:
            # Every socket of this context is closed with a bounded LINGER, so this cannot hang.
            context.destroy(linger=0)
            return None
        return context


def _frame_address(frame: zmq.Frame) -> str | None:
    try:
        raw = frame.get("Peer-Address")
    except zmq.ZMQError:
        return None
    if not isinstance(raw, str) or not raw:
        return None
    ip = normalize_address(raw)
    return str(ip) if ip is not None else raw


def _frame_fd(frame: zmq.Frame) -> int | None:
    try:
        fd = frame.get(zmq.SRCFD)
    except zmq.ZMQError:
        return None
    return fd if isinstance(fd, int) and fd >= 0 else None


def _self_test_endpoint(bound: str) -> str:
    """Where a local probe reaches a bound endpoint (wildcard binds -> loopback)."""
    if bound.startswith("tcp://0.0.0.0:"):
        return "tcp://127.0.0.1:" + bound.rsplit(":", 1)[1]
    if bound.startswith("tcp://[::]:"):
        return "tcp://[::1]:" + bound.rsplit(":", 1)[1]
    return bound
