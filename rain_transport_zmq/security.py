"""CURVE keys from Ed25519 identities, the IP/CIDR allowlist, and a fail-closed ZAP authenticator.

Invariants (each one closes a trap listed in RELIABILITY.md):

- **No answer is never a yes.** libzmq completes CURVE handshakes for *any* key when no ZAP
  handler answers in the socket's context (trap 1). The authenticator therefore lives in the
  listener's own context, is bound before the listener binds, is strongly referenced by the
  listener, and the listener proves it at start-up with a throwaway key that must be refused
  (see ``ZmqTransportListener.start``).
- **Authorisation never waits behind application work** (trap 15). The handler runs on a
  daemon thread of its own, which makes, uses and closes the REP socket bound to
  ``inproc://zeromq.zap.01`` (zmq sockets are not thread-safe, so no other thread touches it).
  It blocks in ``poll`` on that socket and on a pipe; :meth:`ZapAuthenticator.stop` writes to
  the pipe and joins the thread, so stopping is prompt. A server whose event loop is busy
  with plugins or thousands of sessions still answers handshakes in microseconds; before,
  the answer waited for the loop and handshakes timed out, and clients were told their
  pinned server key was probably wrong.
- **The thread shares little, and only safely.** It reads the live :class:`AuthorizedKeys`
  table, which ``reload()`` replaces whole (one attribute swap, atomic under the GIL), so a
  lookup sees the old table or the new one, never a mix. The self-test's watched keys are
  guarded by a lock; the ``accepted``/``refused`` counters are written by this thread only.
  Log lines go through a thread-safe :class:`~rain_envelopes.peerlog.PeerLog`.
- **Every handshake looks keys up live** in the server's :class:`AuthorizedKeys`, so a reload
  applies to the next handshake; a key that is not listed is refused. Live connections are not
  re-checked by libzmq (trap 3): the listener closes them itself.
- **Any fault refuses.** A malformed request, an unknown domain or mechanism, an exception in our
  own code: each is answered 400/500, never 200.
- **The allowlist is ours, not pyzmq's.** pyzmq's ``allow()`` compares exact strings, so
  ``10.0.0.0/8`` matches nothing and an IPv6-enabled socket reports IPv4 peers as
  ``::ffff:a.b.c.d`` (trap 2). We parse both sides with :mod:`ipaddress` and fold IPv4-mapped
  addresses to IPv4. A peer whose address is not an IP (an ``ipc://`` peer: libzmq reports
  ``localhost:uid:gid:pid``) is refused whenever an allowlist is set.
- The ``User-Id`` we hand libzmq for an accepted peer is the Z85 text of its Curve25519 key. It
  travels with every frame, and the listener maps it back to the Ed25519 key through the same
  table (``lookup_curve``), so identity is never taken from shared state or the routing id.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import zmq
import zmq.utils.z85

# The allowlist is pure ipaddress code, shared with the server's config check.
from rain_envelopes.allowlist import Network, address_allowed, normalize_address, parse_allowlist
from rain_envelopes.errors import ConfigError, KeyFileError
from rain_envelopes.keys import curve_public_key, parse_public_key
from rain_envelopes.peerlog import PeerLog

if TYPE_CHECKING:
    from rain_envelopes.keys import AuthorizedKeys, Identity

__all__ = [
    "ZAP_DOMAIN",
    "ZAP_ENDPOINT",
    "Network",
    "ZapAuthenticator",
    "ZapDecision",
    "address_allowed",
    "client_curve_keys",
    "normalize_address",
    "parse_allowlist",
    "server_curve_public",
]

log = logging.getLogger("rain_transport_zmq.security")

#: Where libzmq sends ZAP requests; one handler per context may bind it.
ZAP_ENDPOINT = "inproc://zeromq.zap.01"
#: The ZAP domain our listeners set. Requests for any other domain are refused.
ZAP_DOMAIN = "rain"
_ZAP_VERSION = b"1.0"
# Bounds for start() and stop(): binding inproc and leaving a poll take microseconds.
_START_TIMEOUT = 5.0
_STOP_TIMEOUT = 5.0
_thread_ids = itertools.count()

# ------------------------------------------------------------------------------ keys


def client_curve_keys(identity: Identity) -> tuple[bytes, bytes]:
    """``(public, secret)`` Curve25519 keys of ``identity``, Z85-encoded for libzmq."""
    public, secret = identity.curve_keypair()
    return zmq.utils.z85.encode(public), zmq.utils.z85.encode(secret)


def server_curve_public(server_key: bytes | str) -> bytes:
    """The Z85 Curve25519 public key a client pins, from the server's Ed25519 key.

    ``server_key`` is the raw 32-byte Ed25519 key or its ``ed25519:<base64>`` text.
    Raises ConfigError when it is not a valid Ed25519 public key.
    """
    try:
        raw = parse_public_key(server_key) if isinstance(server_key, str) else server_key
        return zmq.utils.z85.encode(curve_public_key(raw))
    except KeyFileError as exc:
        raise ConfigError(f"server_key: {exc}") from None


# ------------------------------------------------------------------------------ ZAP


@dataclass(frozen=True, slots=True)
class ZapDecision:
    """The answer to one ZAP request: ``status`` 200 (accept) / 400 (refuse) / 500 (fault)."""

    status: int
    text: str
    user_id: bytes = b""

    @property
    def accepted(self) -> bool:
        return self.status == 200


_REFUSE_MALFORMED = ZapDecision(400, "malformed ZAP request")


class ZapAuthenticator:
    """The ZAP handler of one listener's zmq context; answers on a thread of its own.

    ``authorized_keys`` None means the listener is insecure (NULL mechanism): only the address
    is checked then. With keys, only CURVE is accepted. Counts of ``accepted`` and ``refused``
    requests are kept for tests and metrics. Refusals are logged through ``peer_log`` (one line
    per peer address and interval, with counts), so an attacker cannot decide how much we write;
    the listener passes its own, which it flushes on a timer. Without one the authenticator
    makes its own, whose summaries then wait for the next refusal after the interval.
    """

    def __init__(
        self,
        context: zmq.Context[zmq.Socket[bytes]],
        *,
        authorized_keys: AuthorizedKeys | None,
        networks: Sequence[Network] = (),
        domain: str = ZAP_DOMAIN,
        peer_log: PeerLog | None = None,
    ) -> None:
        self.context = context
        self.authorized_keys = authorized_keys
        self.networks = tuple(networks)
        self.domain = domain
        self.peer_log = peer_log if peer_log is not None else PeerLog(log)
        self.accepted = 0
        self.refused = 0
        self._thread: threading.Thread | None = None
        # The thread's wake-up pipe: stop() writes a byte, the thread's poll returns at once.
        self._stop_pipe: tuple[int, int] | None = None
        self._watched: dict[bytes, ZapDecision | None] = {}
        self._watched_lock = threading.Lock()

    @property
    def running(self) -> bool:
        thread = self._thread
        return thread is not None and thread.is_alive()

    def start(self) -> None:
        """Bind the ZAP endpoint of the context and answer requests on a new daemon thread.

        Returns once the endpoint is bound (so call it before the listener binds). Raises
        zmq.ZMQError when the endpoint cannot be bound, e.g. EADDRINUSE when another handler
        already holds it in this context (the caller turns that into TransportSecurityError).
        """
        if self._thread is not None:
            return
        stop_read, stop_write = os.pipe()
        bound = threading.Event()
        failure: list[zmq.ZMQError] = []
        thread = threading.Thread(
            target=self._serve,
            args=(stop_read, bound, failure),
            name=f"rain-zap-{next(_thread_ids)}",
            daemon=True,  # never keeps a process alive; stop() is what ends it
        )
        thread.start()
        # Binding an inproc endpoint is immediate; the bound timeout only guards a dead thread.
        if not bound.wait(_START_TIMEOUT) or failure:
            thread.join(_START_TIMEOUT)
            os.close(stop_read)
            os.close(stop_write)
            if failure:
                raise failure[0]
            raise zmq.ZMQError(errno.ETIMEDOUT, "the ZAP thread did not start")
        self._thread = thread
        self._stop_pipe = (stop_read, stop_write)

    def stop(self) -> None:
        """Stop answering: wake the thread, let it close its socket, and join it. Idempotent.

        After this libzmq has no handler in the context and would let any key in (trap 1), so
        the listener closes its ROUTER before it stops the authenticator.
        """
        thread, self._thread = self._thread, None
        pipe, self._stop_pipe = self._stop_pipe, None
        if thread is None or pipe is None:
            return
        stop_read, stop_write = pipe
        with contextlib.suppress(OSError):
            os.write(stop_write, b"x")
        thread.join(_STOP_TIMEOUT)
        if thread.is_alive():  # only if a decision hangs in our own code
            log.error("the ZAP thread did not stop within %.0f s", _STOP_TIMEOUT)
        os.close(stop_write)
        os.close(stop_read)

    def watch(self, curve_public: bytes) -> None:
        """Record the decision made for ``curve_public`` (the listener's self-test probe)."""
        with self._watched_lock:
            self._watched[bytes(curve_public)] = None

    def decision_for(self, curve_public: bytes) -> ZapDecision | None:
        """The decision recorded for a watched key, or None if no request for it arrived."""
        with self._watched_lock:
            return self._watched.get(bytes(curve_public))

    # -------------------------------------------------------------------------- the thread

    def _serve(self, stop_read: int, bound: threading.Event, failure: list[zmq.ZMQError]) -> None:
        """The thread: the REP socket is made, used and closed here only (zmq sockets are not
        thread-safe). Blocks in poll on the socket and the stop pipe; no timeout is needed."""
        try:
            sock = self.context.socket(zmq.REP)
        except zmq.ZMQError as exc:
            failure.append(exc)
            bound.set()
            return
        try:
            sock.setsockopt(zmq.LINGER, 0)
            try:
                sock.bind(ZAP_ENDPOINT)
            except zmq.ZMQError as exc:
                failure.append(exc)
                return
            finally:
                bound.set()
            poller = zmq.Poller()
            poller.register(sock, zmq.POLLIN)
            poller.register(stop_read, zmq.POLLIN)
            while True:
                try:
                    ready = dict(poller.poll())
                except zmq.ZMQError as exc:  # ETERM: the context is being destroyed
                    log.debug("ZAP thread ends: %s", exc)
                    return
                if stop_read in ready:
                    return
                if sock in ready and not self._answer_all(sock):
                    return
        finally:
            sock.close(linger=0)

    def _answer_all(self, sock: zmq.Socket[bytes]) -> bool:
        """Answer every queued request; False when the socket failed (the thread ends, and
        handshakes then time out: still a refusal)."""
        while True:
            try:
                request = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return True
            except zmq.ZMQError as exc:
                log.error("ZAP socket failed: %s; handshakes will wait and then fail", exc)
                return False
            if len(request) < 2:
                # REP cannot stay in step without an answer; an answer without a request id is
                # ignored by libzmq, and the handshake then times out: still a refusal.
                decision, request_id = _REFUSE_MALFORMED, b""
            else:
                request_id = request[1]
                try:
                    decision = self.decide(request)
                except Exception as exc:  # fail closed on our own bugs
                    self.peer_log.event(
                        logging.ERROR,
                        "zap-fault",
                        _address_of(request),
                        "ZAP handler fault; refusing the handshake: %r",
                        exc,
                    )
                    decision = ZapDecision(500, "internal error")
            if decision.accepted:
                self.accepted += 1
            else:
                self.refused += 1
            reply = [
                _ZAP_VERSION,
                request_id,
                str(decision.status).encode(),
                decision.text.encode(),
                decision.user_id if decision.accepted else b"",
                b"",
            ]
            try:
                sock.send_multipart(reply, zmq.NOBLOCK)
            except zmq.ZMQError as exc:
                log.error("cannot answer a ZAP request: %s", exc)
                return False

    def decide(self, request: Sequence[bytes]) -> ZapDecision:
        """The decision for one ZAP request ``[version, id, domain, address, identity,
        mechanism, *credentials]``. Pure apart from logging and watched-key bookkeeping."""
        if len(request) < 6 or request[0] != _ZAP_VERSION:
            return _REFUSE_MALFORMED
        domain, address, mechanism = (request[2], request[3], request[5])
        credentials = request[6:]
        peer = address.decode("utf-8", "replace")
        key = credentials[0] if mechanism == b"CURVE" and len(credentials) == 1 else None
        decision = self._decide(domain, peer, mechanism, key)
        probe = False
        if key is not None:
            with self._watched_lock:
                if key in self._watched:
                    self._watched[key] = decision
                    probe = True
        if decision.accepted:
            log.debug("accepted %s peer %s", mechanism.decode("ascii", "replace"), peer)
        elif probe:
            log.debug("refused the start-up self-test probe, as it must be")
        else:
            # Keyed by address: one attacker's thousands of handshakes make one line and a count.
            self.peer_log.event(
                logging.WARNING,
                "handshake-refused",
                peer or None,
                "refused %s handshake from %s: %s",
                mechanism.decode("ascii", "replace"),
                peer or "?",
                decision.text,
            )
        return decision

    def _decide(self, domain: bytes, peer: str, mechanism: bytes, key: bytes | None) -> ZapDecision:
        if domain.decode("utf-8", "replace") != self.domain:
            return ZapDecision(400, "unknown ZAP domain")
        if not address_allowed(peer, self.networks):
            return ZapDecision(400, "address not allowed")
        if self.authorized_keys is None:
            if mechanism == b"NULL":
                return ZapDecision(200, "OK")
            return ZapDecision(400, "unexpected mechanism")
        if mechanism != b"CURVE" or key is None or len(key) != 32:
            return ZapDecision(400, "CURVE key required")
        if self.authorized_keys.lookup_curve(key) is None:
            return ZapDecision(400, "key not authorised")
        return ZapDecision(200, "OK", zmq.utils.z85.encode(key))


def _address_of(request: Sequence[bytes]) -> str | None:
    """The peer address of a ZAP request, for logging; None when the request has none."""
    if len(request) < 4:
        return None
    return request[3].decode("utf-8", "replace") or None
