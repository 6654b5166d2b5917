"""CURVE keys from Ed25519 identities, the IP/CIDR allowlist, and a fail-closed ZAP authenticator.

Invariants (each one closes a trap listed in RELIABILITY.md):

- **No answer is never a yes.** libzmq completes CURVE handshakes for *any* key when no ZAP
  handler answers in the socket's context (trap 1). The authenticator therefore lives in the
  listener's own context, is bound before the listener binds, is strongly referenced by the
  listener, and the listener proves it at start-up with a throwaway key that must be refused
  (see ``ZmqTransportListener.start``).
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

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import zmq
import zmq.utils.z85

# The allowlist is pure ipaddress code, shared with the server's config check.
from rain_envelopes.allowlist import Network, address_allowed, normalize_address, parse_allowlist
from rain_envelopes.errors import ConfigError, KeyFileError
from rain_envelopes.keys import curve_public_key, parse_public_key

from ._io import SocketPump

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
    """The ZAP handler of one listener's zmq context; runs on the asyncio event loop.

    ``authorized_keys`` None means the listener is insecure (NULL mechanism): only the address
    is checked then. With keys, only CURVE is accepted. Counts of ``accepted`` and ``refused``
    requests are kept for tests and metrics.
    """

    def __init__(
        self,
        context: zmq.Context[zmq.Socket[bytes]],
        *,
        authorized_keys: AuthorizedKeys | None,
        networks: Sequence[Network] = (),
        domain: str = ZAP_DOMAIN,
    ) -> None:
        self.context = context
        self.authorized_keys = authorized_keys
        self.networks = tuple(networks)
        self.domain = domain
        self.accepted = 0
        self.refused = 0
        self._socket: zmq.Socket[bytes] | None = None
        self._pump: SocketPump | None = None
        self._watched: dict[bytes, ZapDecision | None] = {}

    @property
    def running(self) -> bool:
        return self._socket is not None

    def start(self) -> None:
        """Bind the ZAP endpoint of the context and answer requests on the running loop.

        Must be called from a coroutine, before the listener binds. Raises TransportSecurityError
        via the caller when another handler already holds the endpoint (zmq.ZMQError EADDRINUSE).
        """
        if self._socket is not None:
            return
        loop = asyncio.get_running_loop()
        sock = self.context.socket(zmq.REP)
        sock.setsockopt(zmq.LINGER, 0)
        try:
            sock.bind(ZAP_ENDPOINT)
        except zmq.ZMQError:
            sock.close(linger=0)
            raise
        self._socket = sock
        self._pump = SocketPump(loop, sock, self._drain)

    def stop(self) -> None:
        """Stop answering and close the socket. Idempotent."""
        sock, self._socket = self._socket, None
        if sock is None:
            return
        if self._pump is not None:
            self._pump.close()
            self._pump = None
        sock.close(linger=0)

    def watch(self, curve_public: bytes) -> None:
        """Record the decision made for ``curve_public`` (the listener's self-test probe)."""
        self._watched[bytes(curve_public)] = None

    def decision_for(self, curve_public: bytes) -> ZapDecision | None:
        """The decision recorded for a watched key, or None if no request for it arrived."""
        return self._watched.get(bytes(curve_public))

    def _drain(self) -> None:
        sock = self._socket
        if sock is None:
            return
        # Answer everything queued. A REP socket alternates recv/send, and we answer at once.
        for _ in range(1000):
            try:
                request = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            except zmq.ZMQError as exc:
                log.error("ZAP socket failed: %s; handshakes will wait and then fail", exc)
                return
            if len(request) < 2:
                # REP cannot stay in step without an answer; an answer without a request id is
                # ignored by libzmq, and the handshake then times out: still a refusal.
                decision, request_id = _REFUSE_MALFORMED, b""
            else:
                request_id = request[1]
                try:
                    decision = self.decide(request)
                except Exception:  # fail closed on our own bugs
                    log.exception("ZAP handler fault; refusing the handshake")
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
        # More than a batch was waiting: let the loop run, then continue.
        if self._pump is not None:
            self._pump.kick()

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
        if key is not None and key in self._watched:
            self._watched[key] = decision
        if decision.accepted:
            log.debug("accepted %s peer %s", mechanism.decode("ascii", "replace"), peer)
        elif key is not None and key in self._watched:
            log.debug("refused the start-up self-test probe, as it must be")
        else:
            log.warning(
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
