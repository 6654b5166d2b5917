"""The client side of RAIN's ZeroMQ wire, by hand, with plain (blocking) pyzmq.

An attacker does not use our client library, so neither does this suite: :class:`RawClient` is
a DEALER socket that speaks the wire as documented and nothing more. It can be told to speak it
wrongly (another mechanism, a wrong server key, no ``hello``, garbage), and it can do it right,
which is what the suite's well-formed peer uses to check the server still serves.

The wire (rain_transport_zmq/transport.py, PROTOCOL.md):

- CURVE with Curve25519 keys derived from the node's Ed25519 identity
  (``Identity.curve_keypair()``), the server's Curve25519 key pinned;
- once the handshake succeeded, the control message ``[b"", b"hello"]`` (two parts, the first
  empty); the server may send ``[b"", b"bye"]`` to say it closed this link;
- then one JSON envelope per single-part message: the session exchange
  ``new -> negotiating (choose, echo) -> authenticating (scheme transport) -> established``,
  then commands.

Every wait is bounded by a deadline: a method that does not get what it waits for in time
raises :class:`NoAnswer` (or returns None where documented). Nothing here sleeps.
"""

from __future__ import annotations

import itertools
import time
from typing import Any

import orjson
import zmq
import zmq.utils.monitor
import zmq.utils.z85

from rain_envelopes.keys import Identity, curve_public_key

__all__ = ["HANDSHAKE_EVENTS", "NoAnswer", "RawClient", "curve_z85", "established_client"]

HELLO = [b"", b"hello"]
BYE = [b"", b"bye"]

#: Monitor events that end a handshake one way or the other.
HANDSHAKE_EVENTS = (
    zmq.EVENT_HANDSHAKE_SUCCEEDED
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_DISCONNECTED
)

_ids = itertools.count(1)


class NoAnswer(AssertionError):
    """The server did not say what we waited for within the deadline."""


def curve_z85(identity: Identity) -> tuple[bytes, bytes]:
    """``(public, secret)`` Curve25519 keys of ``identity``, Z85-encoded for libzmq."""
    public, secret = identity.curve_keypair()
    return zmq.utils.z85.encode(public), zmq.utils.z85.encode(secret)


class RawClient:
    """One DEALER connection to a RAIN server, driven by hand.

    ``mechanism`` is ``"curve"`` (the server's), ``"null"`` or ``"plain"``. For CURVE,
    ``identity`` is the key we present and ``server`` the Ed25519 identity or public key we pin
    (pin a wrong one to play a client with a wrong server key). ``sndhwm``/``rcvhwm`` 0 mean
    unlimited: a flooder wants its sends queued, not refused. The socket is connected at once;
    call :meth:`wait_handshake` to learn how the handshake ended.
    """

    def __init__(
        self,
        context: zmq.Context[zmq.Socket[bytes]],
        endpoint: str,
        *,
        identity: Identity | None = None,
        server: Identity | bytes | None = None,
        mechanism: str = "curve",
        sndhwm: int = 1000,
        rcvhwm: int = 1000,
        rcvbuf: int = -1,
        routing_id: bytes | None = None,
    ) -> None:
        self.endpoint = endpoint
        sock = context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, sndhwm)
        sock.setsockopt(zmq.RCVHWM, rcvhwm)
        sock.setsockopt(zmq.RCVBUF, rcvbuf)
        # One attempt: a refused attacker must not keep reconnecting behind the test's back.
        sock.setsockopt(zmq.RECONNECT_IVL, -1)
        if routing_id is not None:
            sock.setsockopt(zmq.ROUTING_ID, routing_id)
        if mechanism == "curve":
            assert identity is not None
            assert server is not None
            public, secret = curve_z85(identity)
            sock.setsockopt(zmq.CURVE_PUBLICKEY, public)
            sock.setsockopt(zmq.CURVE_SECRETKEY, secret)
            sock.setsockopt(zmq.CURVE_SERVERKEY, _server_z85(server))
        elif mechanism == "plain":
            sock.setsockopt(zmq.PLAIN_USERNAME, b"alice@irf")
            sock.setsockopt(zmq.PLAIN_PASSWORD, b"letmein")
        elif mechanism != "null":
            raise ValueError(f"unknown mechanism {mechanism!r}")
        # The monitor exists before connect, so no handshake event is missed.
        self.monitor = sock.get_monitor_socket(HANDSHAKE_EVENTS)
        self.sock = sock
        self.connected_at = time.perf_counter()
        sock.connect(endpoint)
        self.session_id: str | None = None
        self.handshake: int | None = None
        self.handshake_seconds = float("nan")

    # -------------------------------------------------------------------------- handshake

    def wait_handshake(self, timeout: float = 5.0) -> int | None:
        """The first handshake event (``zmq.EVENT_HANDSHAKE_*`` or DISCONNECTED), or None if
        none came within ``timeout``. ``self.handshake_seconds`` is the time it took."""
        if self.handshake is not None:
            return self.handshake
        deadline = time.perf_counter() + timeout
        while (left := deadline - time.perf_counter()) > 0:
            if not self.monitor.poll(max(1, int(left * 1000))):
                break
            event = zmq.utils.monitor.recv_monitor_message(self.monitor)
            kind = int(event["event"])
            if kind & HANDSHAKE_EVENTS:
                self.handshake = kind
                self.handshake_seconds = time.perf_counter() - self.connected_at
                return kind
        return None

    def open(self, timeout: float = 5.0) -> float:
        """Wait for a successful handshake and send ``hello``; returns the handshake's seconds.

        Raises NoAnswer when the handshake failed or did not finish within ``timeout``.
        """
        event = self.wait_handshake(timeout)
        if event != zmq.EVENT_HANDSHAKE_SUCCEEDED:
            raise NoAnswer(f"handshake with {self.endpoint} did not succeed: event {event}")
        self.send_parts(HELLO)
        return self.handshake_seconds

    # -------------------------------------------------------------------------- frames

    def send(self, frame: bytes) -> bool:
        """Send one frame without blocking; False when the queue is full."""
        try:
            self.sock.send(frame, zmq.NOBLOCK)
        except zmq.Again:
            return False
        return True

    def send_parts(self, parts: list[bytes]) -> bool:
        try:
            self.sock.send_multipart(parts, zmq.NOBLOCK)
        except zmq.Again:
            return False
        return True

    def send_json(self, envelope: dict[str, Any]) -> bool:
        return self.send(orjson.dumps(envelope))

    def receive(self, timeout: float) -> list[bytes] | None:
        """The next message (all its parts), or None if nothing came within ``timeout``."""
        if not self.sock.poll(max(0, int(timeout * 1000))):
            return None
        return self.sock.recv_multipart()

    def drain(self) -> int:
        """Read and discard everything already queued; returns how many messages."""
        count = 0
        while self.sock.poll(0):
            self.sock.recv_multipart()
            count += 1
        return count

    def next_envelope(self, deadline: float) -> dict[str, Any]:
        """The next envelope before ``deadline`` (a perf_counter time), answering pings.

        Raises NoAnswer on timeout, on ``bye``, or on a frame that is not a JSON object.
        """
        while (left := deadline - time.perf_counter()) > 0:
            parts = self.receive(left)
            if parts is None:
                break
            if parts == BYE:
                raise NoAnswer(f"{self.endpoint} closed this link (bye)")
            if len(parts) != 1:
                raise NoAnswer(f"unexpected multipart message {parts!r}")
            envelope = orjson.loads(parts[0])
            if not isinstance(envelope, dict):
                raise NoAnswer(f"not an envelope: {parts[0][:200]!r}")
            if (envelope.get("method"), envelope.get("uri"), envelope.get("status")) == (
                "get", "/ping", None
            ):
                self.send_json({"id": envelope.get("id"), "method": "get", "status": "success",
                                "type": "application/vnd.lime.ping+json", "resource": {}})
                continue
            return envelope
        raise NoAnswer(f"no envelope from {self.endpoint} in time")

    # -------------------------------------------------------------------------- session

    def establish(self, timeout: float = 5.0, node: str | None = None) -> dict[str, Any]:
        """Run the session exchange with scheme ``transport``; returns the server's final
        session envelope (``established`` or ``failed``). Raises NoAnswer on a timeout.

        ``node`` is the node we claim; by default a fresh instance per session, since the
        server allows one session per node.
        """
        node = node or f"raw@irf/{next(_ids)}"
        deadline = time.perf_counter() + timeout
        self.send_json({"state": "new"})
        while True:
            envelope = self.next_envelope(deadline)
            state = envelope.get("state")
            self.session_id = envelope.get("id", self.session_id)
            if state == "negotiating" and "compressionOptions" in envelope:
                self.send_json({
                    "id": self.session_id,
                    "state": "negotiating",
                    "compression": envelope["compressionOptions"][0],
                    "encryption": envelope["encryptionOptions"][0],
                })
            elif state == "authenticating":
                self.send_json({"id": self.session_id, "from": node, "state": "authenticating",
                                "scheme": "transport", "authentication": {}})
            elif state in ("established", "failed"):
                return envelope

    def request(self, envelope: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
        """Send a command and return its response (other envelopes are skipped).

        An ``id`` is added when ``envelope`` has none. Raises NoAnswer on a timeout.
        """
        command = dict(envelope)
        command.setdefault("id", f"raw-{next(_ids)}")
        deadline = time.perf_counter() + timeout
        if not self.send_json(command):
            raise NoAnswer("our send queue is full")
        while True:
            reply = self.next_envelope(deadline)
            if reply.get("id") == command["id"] and "status" in reply:
                return reply

    def get(self, uri: str, timeout: float = 5.0) -> dict[str, Any]:
        return self.request({"method": "get", "uri": uri}, timeout)

    def close(self) -> None:
        self.sock.disable_monitor()
        self.monitor.close(linger=0)
        self.sock.close(linger=0)

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _server_z85(server: Identity | bytes) -> bytes:
    if isinstance(server, Identity):
        return curve_z85(server)[0]
    return zmq.utils.z85.encode(curve_public_key(server))


def established_client(
    context: zmq.Context[zmq.Socket[bytes]],
    endpoint: str,
    identity: Identity,
    server: Identity,
    timeout: float = 5.0,
    **kwargs: Any,
) -> RawClient:
    """A RawClient with its session established; raises NoAnswer otherwise."""
    client = RawClient(context, endpoint, identity=identity, server=server, **kwargs)
    try:
        client.open(timeout)
        reply = client.establish(timeout)
        if reply.get("state") != "established":
            raise NoAnswer(f"session not established: {reply}")
    except BaseException:
        client.close()
        raise
    return client
