"""RAIN links through a NATS broker: one client session per :class:`NatsTransport`, and a
:class:`NatsTransportListener` that hands out one :class:`NatsPeerTransport` per client session.

Theory of operation
-------------------

Endpoints look like ``nats://broker:4222`` or ``nats://broker:4222/label``. The broker address
is where both ends connect; the *server* is named by its key, not by the endpoint: a client
must pin the server's key (``--server-key`` or a known-hosts file) and that key's nkey is the
server's address on the broker (see :mod:`rain_transport_nats.subjects` for the subject scheme).
The optional ``/label`` is only a name for people and known-hosts files, so two instruments
behind one broker can be pinned apart (``nats://hub:4222/magnetometer``,
``nats://hub:4222/camera``). Query parameters ``tls_ca``, ``tls_cert``, ``tls_key`` and
``tls_hostname`` (or the same keys in the transport options) turn on TLS to the broker.

Each end connects to the broker with its RAIN identity as its nkey (:mod:`.nkey`). A client
picks a random session token, subscribes its answer subject, and publishes ``hello`` with a
reply subject; the listener answers ``welcome`` (or ``bye`` when the key is not in its
authorised keys), and the broker answers a 503 status on the reply subject at once when no
server with that key is subscribed, so ``open`` fails fast with "no server" instead of timing
out. After that each ``send`` is one NATS message on the session's ``d`` subject; NATS keeps
the order of one connection's messages to a subscriber, so frames arrive once, in order.

What the link promises beyond the broker's delivery:

- **Identity**: a listener sets ``peer_identity`` from the client nkey in the subject, which
  the broker's permissions (written by ``rain nats-config``) let only that key's holder use.
  Before it serves, the listener publishes a probe as an identity it does not hold and checks
  that the broker refused it; a broker that lets the probe through makes ``start`` raise
  TransportSecurityError (unless the listener was told ``insecure``). ``encryption`` stays
  NONE: TLS protects each hop to the broker, but the broker itself reads every frame, so the
  client proposes the ``keypair`` session scheme and proves its key to the instrument end to
  end.
- **End of link**: ``close`` publishes ``bye``; a peer that goes silent is cut after
  ``heartbeat_timeout`` (each idle end sends ``hb`` every ``heartbeat_interval``); losing the
  broker connection ends every link on it (frames in flight may be lost, so pretending the link
  survived a reconnection would break the ordering promise). The client layer reconnects.
- **Bounds**: NATS has no back-pressure to a publisher, so each end queues at most
  ``max_queue`` received frames; a peer that overruns it has its link ended (counted and
  logged), never silently thinned. Frames larger than the broker's ``max_payload`` raise
  TransportError on send.
- **Revocation**: ``close_peer(key)`` ends every session of a key at once; reloading the broker
  with the key removed also closes that client's connection, which ends its links.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import nats
import nats.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from rain_envelopes.errors import (
    ConfigError,
    HandshakeFailed,
    KeyFileError,
    SecurityCause,
    TransportClosed,
    TransportError,
    TransportSecurityError,
)
from rain_envelopes.keys import Identity, format_public_key
from rain_envelopes.transport import (
    ClientSecurity,
    ServerSecurity,
    Transport,
    TransportFactory,
    TransportListener,
)

from . import subjects
from .connection import (
    SUB_PENDING_BYTES,
    SUB_PENDING_MSGS,
    barrier,
    connect,
    in_background,
    is_permission_error,
    publish_soon,
    quiet_close,
)
from .fanout import JOINED, SERVER_CONTROL, ClientFanin, NatsFanoutMember, ServerFanout
from .nkey import user_nkey, user_public_key

__all__ = [
    "NatsOptions",
    "NatsPeerTransport",
    "NatsTransport",
    "NatsTransportFactory",
    "NatsTransportListener",
    "barrier",
    "parse_endpoint",
]

log = logging.getLogger("rain_transport_nats")

SCHEME = "nats"
_TLS_KEYS = ("tls_ca", "tls_cert", "tls_key", "tls_hostname")


@dataclass(frozen=True, slots=True)
class NatsOptions:
    """Options of the NATS transport (the ``[transport]`` table of a server config).

    ===================  ========  ==========================================================
    field                default   meaning
    ===================  ========  ==========================================================
    open_timeout         10.0      seconds a client waits for the broker and the server's
                                   ``welcome``
    heartbeat_interval   5.0       seconds of silence after which an end sends ``hb``
    heartbeat_timeout    15.0      seconds of silence from the peer after which the link
                                   is ended
    max_queue            10000     received frames one link may hold unread; past it the
                                   link is ended (NATS cannot slow the sender down)
    tls_ca               None      CA file: turns on TLS to the broker, verifying it
    tls_cert / tls_key   None      client certificate and key for brokers that ask for one
    tls_hostname         None      name to verify in the broker's certificate (default:
                                   the endpoint's host)
    ===================  ========  ==========================================================
    """

    open_timeout: float = 10.0
    heartbeat_interval: float = 5.0
    heartbeat_timeout: float = 15.0
    max_queue: int = 10_000
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_hostname: str | None = None

    def __post_init__(self) -> None:
        for name in ("open_timeout", "heartbeat_interval", "heartbeat_timeout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ConfigError(f"transport option {name} must be a positive number of seconds")
        if self.heartbeat_timeout <= self.heartbeat_interval:
            raise ConfigError("transport option heartbeat_timeout must exceed heartbeat_interval")
        if isinstance(self.max_queue, bool) or not isinstance(self.max_queue, int):
            raise ConfigError("transport option max_queue must be an integer")
        if self.max_queue < 1:
            raise ConfigError("transport option max_queue must be at least 1")
        for name in _TLS_KEYS:
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise ConfigError(f"transport option {name} must be a non-empty string")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("transport options tls_cert and tls_key go together")

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any] | None) -> NatsOptions:
        """Options from a mapping (a TOML table). Raises ConfigError naming an unknown key."""
        if not mapping:
            return cls()
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(mapping) - known)
        if unknown:
            raise ConfigError(
                f"unknown NATS transport option(s) {', '.join(unknown)}; known: {sorted(known)}"
            )
        return cls(**dict(mapping))

    @property
    def tls(self) -> bool:
        """True when TLS to the broker is configured."""
        return self.tls_ca is not None or self.tls_cert is not None

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context for the broker connection, or None. Raises ConfigError for bad
        files."""
        if not self.tls:
            return None
        try:
            context = ssl.create_default_context(cafile=self.tls_ca)
            if self.tls_cert is not None:
                context.load_cert_chain(self.tls_cert, self.tls_key)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot load the TLS files for the NATS broker: {exc}") from None
        return context


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A parsed ``nats://host:port[/label][?tls_...]``."""

    text: str
    host: str
    port: int
    label: str
    tls: dict[str, str]

    def broker_url(self, use_tls: bool) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'tls' if use_tls else 'nats'}://{host}:{self.port}"


def parse_endpoint(endpoint: str) -> Endpoint:
    """Parse a ``nats://`` endpoint. Raises ConfigError naming what is wrong."""
    example = "nats://127.0.0.1:4222 or nats://broker:4222/station"
    if not isinstance(endpoint, str) or not endpoint.lower().startswith(f"{SCHEME}://"):
        raise ConfigError(f"{endpoint!r} is not a NATS endpoint such as {example}")
    try:
        parts = urlsplit(endpoint)
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"{endpoint!r}: {exc}; expected {example}") from None
    if not parts.hostname or port is None:
        raise ConfigError(f"{endpoint!r} needs a host and a port, as in {example}")
    if parts.username or parts.password:
        raise ConfigError(
            f"{endpoint!r}: no user or password in NATS endpoints; the RAIN identity is the"
            " NATS credential"
        )
    label = parts.path.strip("/")
    if "/" in label:
        raise ConfigError(f"{endpoint!r}: the label after the port is one path segment")
    tls: dict[str, str] = {}
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key not in _TLS_KEYS:
            raise ConfigError(f"{endpoint!r}: unknown query parameter {key!r}; known: {_TLS_KEYS}")
        tls[key] = value
    return Endpoint(endpoint, parts.hostname, port, label, tls)


def endpoint_options(endpoint: Endpoint, options: Mapping[str, Any] | None) -> NatsOptions:
    """The options for ``endpoint``: its TLS query parameters are defaults that the options
    table overrides. Raises ConfigError."""
    parsed = NatsOptions.from_mapping(options)
    merged: dict[str, Any] = {
        key: value for key, value in endpoint.tls.items() if getattr(parsed, key) is None
    }
    return replace(parsed, **merged) if merged else parsed


# ------------------------------------------------------------------------------ one link


class _Link(Transport):
    """One session's frames, either end: a bounded inbox filled by the subscription callback,
    and a subject prefix to publish on."""

    def __init__(self, client: NatsClient | None, prefix: str, options: NatsOptions) -> None:
        self._nc = client
        self._prefix = prefix  # "rain.S.in.C.N." or "rain.S.out.C.N."
        self._options = options
        self._inbox: deque[bytes] = deque()
        self._wake = asyncio.Event()
        self._ended = False  # the peer ended it, or it was lost
        self._closed = False  # we closed it
        self._why = "the link is closed"
        self.overruns = 0
        self.last_heard = self.last_sent = time.monotonic()

    # -- fed by the subscription

    def _deliver(self, data: bytes) -> None:
        if self._ended or self._closed:
            return
        self.last_heard = time.monotonic()
        if len(self._inbox) >= self._options.max_queue:
            self.overruns += 1
            log.warning(
                "%s: the peer sent more than %d unread frames; ending the link",
                self._prefix.rstrip("."),
                self._options.max_queue,
            )
            self._end("the peer overran the receive queue (max_queue)", tell_peer=True)
            return
        self._inbox.append(data)
        self._wake.set()

    def _heard(self) -> None:
        self.last_heard = time.monotonic()

    def _end(self, why: str, *, tell_peer: bool = False) -> None:
        """The link is over (peer's bye, silence, lost broker); frames queued stay readable."""
        if self._ended or self._closed:
            return
        self._ended = True
        self._why = why
        self._wake.set()
        if tell_peer:
            self._publish_control(subjects.BYE)
        self._released()

    def _released(self) -> None:
        """Called once when the link is over, by either side; subclasses let go of it."""

    def _publish_control(self, kind: str) -> None:
        publish_soon(self._nc, self._prefix + kind)

    async def heartbeat(self, now: float) -> None:
        """Send ``hb`` when idle; end the link when the peer has been silent too long."""
        if self._ended or self._closed:
            return
        if now - self.last_heard > self._options.heartbeat_timeout:
            self._end(
                f"no word from the peer for {self._options.heartbeat_timeout:g} s",
                tell_peer=True,
            )
        elif now - self.last_sent >= self._options.heartbeat_interval:
            self.last_sent = now
            self._publish_control(subjects.HEARTBEAT)

    # -- the Transport contract

    async def send(self, data: bytes) -> None:
        if self._ended or self._closed or self._nc is None:
            raise TransportClosed(self._why)
        try:
            await self._nc.publish(self._prefix + subjects.DATA, bytes(data))
        except nats.errors.MaxPayloadError:
            raise TransportError(
                f"a frame of {len(data)} bytes exceeds the broker's max_payload of"
                f" {self._nc.max_payload} bytes"
            ) from None
        except (nats.errors.Error, OSError) as exc:
            self._end(f"the broker connection failed: {exc or type(exc).__name__}")
            raise TransportClosed(self._why) from None
        self.last_sent = time.monotonic()

    async def send_batch(self, frames: list[bytes]) -> None:
        sent = 0
        try:
            for frame in frames:
                await self.send(frame)
                sent += 1
        finally:
            del frames[:sent]

    async def _wait_for_frames(self) -> None:
        """Return once a frame is queued; TransportClosed once the link is over and drained."""
        while not self._inbox:
            if self._ended or self._closed:
                raise TransportClosed(self._why)
            self._wake.clear()
            await self._wake.wait()

    async def receive(self) -> bytes:
        await self._wait_for_frames()
        return self._inbox.popleft()

    async def receive_batch(self) -> list[bytes]:
        await self._wait_for_frames()
        batch = list(self._inbox)
        self._inbox.clear()
        return batch

    async def close(self) -> None:
        if self._closed:
            return
        was_ended = self._ended
        self._closed = True
        self._why = "the link is closed"
        self._inbox.clear()
        self._wake.set()
        if not was_ended:
            self._publish_control(subjects.BYE)
            self._released()

    @property
    def closed(self) -> bool:
        return self._closed or self._ended



# ------------------------------------------------------------------------------ client


class NatsTransport(_Link):
    """A client's session with one RAIN server through a NATS broker (owns its connection)."""

    def __init__(
        self,
        endpoint: str,
        security: ClientSecurity | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> None:
        """Raises ConfigError for a bad endpoint or options, or missing keys."""
        self.endpoint = parse_endpoint(endpoint)
        opts = endpoint_options(self.endpoint, options)
        security = security or ClientSecurity()
        if security.server_key is None:
            raise ConfigError(
                f"{endpoint}: a NATS client needs the server's key (--server-key or a"
                " known-hosts file): the key is the server's address on the broker"
            )
        if security.identity is None and not security.insecure:
            raise ConfigError(
                f"{endpoint}: a NATS client needs its identity (key file): it is the NATS"
                " credential and the address of the answers"
            )
        try:
            self._server = user_nkey(security.server_key)
        except KeyFileError as exc:
            raise ConfigError(f"bad server key: {exc}") from None
        self._identity = security.identity
        # Without an identity (insecure only) the client still needs a token to be answered
        # on: a throwaway key's nkey, proven to nobody.
        me = security.identity or Identity.generate()
        self._client_nkey = user_nkey(me.public_key)
        self._session = subjects.new_session_token()
        self._opened = False
        self._opening: asyncio.Future[None] | None = None
        self._heartbeats: asyncio.Task[None] | None = None
        self._subscription: Subscription | None = None
        self._shutting: asyncio.Future[None] | None = None
        super().__init__(
            None,
            subjects.to_server(self._server, self._client_nkey, self._session, ""),
            opts,
        )
        self.peer_identity = format_public_key(security.server_key)
        self.peer_address = f"{self.endpoint.host}:{self.endpoint.port}"
        # Topics the server fans out through the broker to this session (fanout.py).
        self._fanin = ClientFanin(self, self._server)

    async def open(self) -> None:
        """Connect to the broker and open the session. Raises TransportError (no broker, no
        server with that key listening) or TransportSecurityError (key refused)."""
        if self._opened:
            return
        if self._closed:
            raise TransportClosed("the transport was closed before it opened")
        self._opened = True
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._options.open_timeout):
                await self._open()
        except TimeoutError:
            await self._abandon()
            raise TransportError(
                f"no answer from a RAIN server with key {self._server} through the NATS broker"
                f" at {self.endpoint.host}:{self.endpoint.port} within"
                f" {self._options.open_timeout:g} s"
            ) from None
        except BaseException:
            await self._abandon()
            raise
        self._heartbeats = loop.create_task(self._beat())

    async def _open(self) -> None:
        self._nc = await connect(
            self.endpoint,
            self._options,
            self._identity,
            name=f"rain client {self._client_nkey[:8]}",
            reconnect=False,
            error_cb=self._on_error,
            disconnected_cb=self._on_disconnected,
            closed_cb=self._on_disconnected,
        )
        self._opening = asyncio.get_running_loop().create_future()
        answers = subjects.client_subscription(self._server, self._client_nkey, self._session)
        self._subscription = await self._nc.subscribe(
            answers,
            cb=self._on_message,
            pending_msgs_limit=SUB_PENDING_MSGS,
            pending_bytes_limit=SUB_PENDING_BYTES,
        )
        await self._nc.publish(
            self._prefix + subjects.HELLO,
            b"",
            reply=subjects.to_client(
                self._server, self._client_nkey, self._session, subjects.WELCOME
            ),
        )
        await self._nc.flush()
        await self._opening

    async def _abandon(self) -> None:
        opening = self._opening
        if opening is not None and opening.done() and not opening.cancelled():
            opening.exception()  # seen: it is what open() raised, or moot after a timeout
        self._closed = True
        self._wake.set()
        if self._nc is not None:
            await quiet_close(self._nc)

    def _settle_opening(self, error: BaseException | None) -> None:
        if self._opening is not None and not self._opening.done():
            if error is None:
                self._opening.set_result(None)
            else:
                self._opening.set_exception(error)

    async def _on_error(self, error: Exception) -> None:
        if self._fanin.on_error(error):
            return  # a refused topic subscription: the server keeps sending directly
        if is_permission_error(error):
            self._settle_opening(
                HandshakeFailed(
                    f"the NATS broker does not let this key talk to server {self._server}"
                    f" ({error}); run `rain nats-config` with that server's authorised keys",
                    SecurityCause.REFUSED,
                )
            )
            self._end(f"the broker refused a publish: {error}")
        elif isinstance(error, nats.errors.SlowConsumerError):
            self._end("frames were dropped by the NATS client (slow consumer)")

    async def _on_disconnected(self) -> None:
        self._settle_opening(TransportError("the NATS broker closed the connection"))
        self._end("the connection to the NATS broker was lost")

    async def _on_message(self, msg: Msg) -> None:
        kind = msg.subject.rpartition(".")[2]
        if kind == subjects.DATA:
            self._deliver(msg.data)
        elif kind == subjects.WELCOME:
            if msg.headers and msg.headers.get("Status") == "503":
                self._settle_opening(
                    TransportError(
                        f"no RAIN server with key {self._server} listens on the NATS broker at"
                        f" {self.endpoint.host}:{self.endpoint.port}"
                    )
                )
            else:
                self._heard()
                self._settle_opening(None)
        elif kind == subjects.BYE:
            self._settle_opening(
                HandshakeFailed(
                    f"the RAIN server {self._server} refused this key",
                    SecurityCause.REFUSED,
                )
            )
            self._end("the server ended the session")
        elif kind == subjects.HEARTBEAT:
            self._heard()
        elif kind in SERVER_CONTROL:
            self._fanin.on_control(kind, msg.data)

    async def _beat(self) -> None:
        interval = self._options.heartbeat_interval / 2
        while not self.closed:
            await asyncio.sleep(interval)
            await self.heartbeat(time.monotonic())

    def _released(self) -> None:
        if self._heartbeats is not None and self._heartbeats is not asyncio.current_task():
            self._heartbeats.cancel()
        self._start_shutting()

    def _start_shutting(self) -> asyncio.Future[None] | None:
        """Close the broker connection once, in the background; the task that does it (None
        when there is no connection). ``close`` awaits the same task."""
        if self._shutting is None and self._nc is not None:
            self._shutting = in_background(self._shut(self._nc))
        return self._shutting

    @staticmethod
    async def _shut(client: NatsClient) -> None:
        # The bye (and any frames before it) leave before the connection closes.
        with contextlib.suppress(Exception):
            if client.is_connected:
                async with asyncio.timeout(1.0):
                    await client.flush()
        await quiet_close(client)

    async def close(self) -> None:
        if not self._opened:
            self._closed = True
            return
        await super().close()
        # Wait for the connection to go (whoever started closing it: our bye, or the peer's),
        # so nothing is left running after close returns.
        shutting = self._start_shutting()
        if shutting is not None:
            await asyncio.shield(shutting)


# ------------------------------------------------------------------------------ server


class NatsPeerTransport(_Link):
    """One client session as the listener sees it."""

    def __init__(
        self,
        listener: NatsTransportListener,
        client_nkey: str,
        session: str,
        peer_identity: str | None,
    ) -> None:
        assert listener._nc is not None
        super().__init__(
            listener._nc,
            subjects.to_client(listener.server_nkey, client_nkey, session, ""),
            listener.options,
        )
        self._listener = listener
        self.key = (client_nkey, session)
        self.client_nkey = client_nkey
        self.peer_identity = peer_identity

    def fanout(self, name: str, variant: str) -> NatsFanoutMember | None:
        """This session's membership of a topic published once through the broker."""
        return self._listener.fanouts.member(self, name, variant)

    def _released(self) -> None:
        self._listener.fanouts.forget(self)
        self._listener._forget(self)


class NatsTransportListener(TransportListener):
    """Serves RAIN sessions on a NATS broker under the server identity's nkey."""

    def __init__(
        self,
        endpoints: Sequence[str],
        security: ServerSecurity | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> None:
        """Raises ConfigError for bad endpoints, options or missing keys."""
        if isinstance(endpoints, str):
            endpoints = [endpoints]
        if len(endpoints) != 1:
            raise ConfigError("a NATS listener serves exactly one broker endpoint")
        self.endpoint = parse_endpoint(endpoints[0])
        self.options = endpoint_options(self.endpoint, options)
        security = security or ServerSecurity()
        if security.identity is None:
            raise ConfigError(
                "a NATS listener needs the server's identity: its key is the server's address"
                " on the broker and its NATS credential"
            )
        if security.allow:
            raise ConfigError(
                "the IP allowlist (allow) does not apply to NATS endpoints: clients reach the"
                " broker, not the server; restrict addresses at the broker"
            )
        if security.authorized_keys is None and not security.insecure:
            raise ConfigError("a NATS listener needs authorised keys (or insecure=True)")
        self.security = security
        self.server_nkey = user_nkey(security.identity.public_key)
        self._nc: NatsClient | None = None
        self._peers: dict[tuple[str, str], NatsPeerTransport] = {}
        self._accepted: asyncio.Queue[NatsPeerTransport | None] = asyncio.Queue()
        self._closed = False
        self._started = False
        self._heartbeats: asyncio.Task[None] | None = None
        self.refused = 0
        #: Topics published once for many sessions (fanout.py).
        self.fanouts = ServerFanout(self)
        #: True once the start-up probe showed the broker enforces subject permissions.
        self.enforced = False
        # The broker's complaints while the start-up probe runs (None outside it).
        self._probe_errors: list[Exception] | None = None

    @property
    def endpoints(self) -> list[str]:
        return [self.endpoint.text]

    @property
    def sessions(self) -> int:
        """Live client sessions."""
        return len(self._peers)

    async def start(self) -> None:
        if self._started:
            return
        if self._closed:
            raise TransportClosed("the listener is closed")
        self._started = True
        self._nc = await connect(
            self.endpoint,
            self.options,
            self.security.identity,
            name=f"rain server {self.server_nkey[:8]}",
            reconnect=True,
            error_cb=self._on_error,
            disconnected_cb=self._on_disconnected,
        )
        try:
            await self._subscribe_and_probe()
        except BaseException:
            await quiet_close(self._nc)
            raise
        self._heartbeats = asyncio.get_running_loop().create_task(self._beat())

    async def _subscribe_and_probe(self) -> None:
        assert self._nc is not None
        self._probe_errors = errors = list[Exception]()
        await self._nc.subscribe(
            subjects.server_subscription(self.server_nkey),
            cb=self._on_message,
            pending_msgs_limit=SUB_PENDING_MSGS,
            pending_bytes_limit=SUB_PENDING_BYTES,
        )
        # The probe: publish as a client key we do not hold. A broker that enforces the
        # permissions of `rain nats-config` refuses it (-ERR before the barrier's PONG); one
        # that delivers it to our own subscription would let anyone claim any identity.
        stranger = user_nkey(Identity.generate().public_key)
        probe = subjects.to_server(self.server_nkey, stranger, "probe", subjects.HEARTBEAT)
        probe_sub = await self._nc.subscribe(probe)
        await self._nc.publish(probe, b"")
        await barrier(self._nc, self.options.open_timeout)
        try:
            await probe_sub.next_msg(timeout=0.05)
            delivered = True
        except nats.errors.TimeoutError:
            delivered = False
        await probe_sub.unsubscribe()
        self._probe_errors = None
        denied_subscribe = [
            e for e in errors if is_permission_error(e) and "subscription" in str(e).lower()
        ]
        if denied_subscribe:
            raise HandshakeFailed(
                f"the NATS broker does not let this server ({self.server_nkey}) subscribe to its"
                f" own subjects: {denied_subscribe[0]}; run `rain nats-config`",
                SecurityCause.REFUSED,
            )
        self.enforced = not delivered
        if delivered and not self.security.insecure:
            raise TransportSecurityError(
                "the NATS broker lets a connection publish as an identity it did not prove (a"
                " probe as a stranger's key was delivered), so subjects prove nothing; configure"
                " its authorization with `rain nats-config`, or pass insecure to serve anyway"
                " without identities"
            )

    async def _on_error(self, error: Exception) -> None:
        if self._probe_errors is not None and len(self._probe_errors) < 100:
            self._probe_errors.append(error)
        if isinstance(error, nats.errors.SlowConsumerError):
            # Frames were dropped before we saw them: no link can promise order any more.
            for peer in list(self._peers.values()):
                peer._end("frames were dropped by the NATS client (slow consumer)", tell_peer=True)
        elif not is_permission_error(error) or "probe" not in str(error):
            log.warning("NATS broker error: %s", error)

    async def _on_disconnected(self) -> None:
        # Frames in flight may be lost while the client reconnects: end every link.
        for peer in list(self._peers.values()):
            peer._end("the connection to the NATS broker was lost")

    async def _on_message(self, msg: Msg) -> None:
        route = subjects.parse_inbound(msg.subject)
        if route is None or route.server != self.server_nkey or self._closed:
            return
        peer = self._peers.get((route.client, route.session))
        if peer is not None:
            if route.kind == subjects.DATA:
                peer._deliver(msg.data)
            elif route.kind == subjects.BYE:
                peer._end("the client ended the session")
            elif route.kind == JOINED:
                peer._heard()
                self.fanouts.on_joined(peer, msg.data)
            else:
                peer._heard()
            return
        if route.kind == subjects.HELLO:
            self._hello(route)
        elif route.kind in (subjects.DATA, subjects.HEARTBEAT):
            # A session we do not know (ended, or from before a restart): tell the client.
            publish_soon(self._nc, subjects.to_client(*route[:3], subjects.BYE))

    def _hello(self, route: subjects.Route) -> None:
        try:
            key = user_public_key(route.client)
        except KeyFileError:
            return  # not a key: nobody the broker could have authenticated
        answer = subjects.to_client(self.server_nkey, route.client, route.session, "")
        keys = self.security.authorized_keys
        if not self.security.insecure and (keys is None or keys.lookup(key) is None):
            self.refused += 1
            log.info("refused a NATS session from unauthorised key %s", format_public_key(key))
            publish_soon(self._nc, answer + subjects.BYE)
            return
        identity = None if self.security.insecure else format_public_key(key)
        peer = NatsPeerTransport(self, route.client, route.session, identity)
        self._peers[peer.key] = peer
        publish_soon(self._nc, answer + subjects.WELCOME)
        self._accepted.put_nowait(peer)

    def _forget(self, peer: NatsPeerTransport) -> None:
        if self._peers.get(peer.key) is peer:
            del self._peers[peer.key]

    async def _beat(self) -> None:
        while not self._closed:
            await asyncio.sleep(self.options.heartbeat_interval / 2)
            now = time.monotonic()
            for peer in list(self._peers.values()):
                await peer.heartbeat(now)

    async def accept(self) -> Transport:
        if self._closed:
            raise TransportClosed("the listener is closed")
        while True:
            peer = await self._accepted.get()
            if peer is None:
                self._accepted.put_nowait(None)  # wake every other accept() too
                raise TransportClosed("the listener is closed")
            if not peer.closed or peer._inbox:
                return peer

    async def close_peer(self, peer_identity: str) -> int:
        matching = [p for p in self._peers.values() if p.peer_identity == peer_identity]
        for peer in matching:
            await peer.close()
        return len(matching)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for peer in list(self._peers.values()):
            await peer.close()
        self._accepted.put_nowait(None)
        if self._heartbeats is not None:
            self._heartbeats.cancel()
        if self._nc is not None:
            with contextlib.suppress(Exception):
                if self._nc.is_connected:
                    async with asyncio.timeout(1.0):
                        await self._nc.flush()
            await quiet_close(self._nc)


# ------------------------------------------------------------------------------ factory


class NatsTransportFactory(TransportFactory):
    """Makes NATS transports for ``nats://`` endpoints (entry point ``NATS``)."""

    secure = True  # the broker proves keys by nkey, and needs them

    def connect(
        self,
        endpoint: str,
        security: ClientSecurity | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> Transport:
        return NatsTransport(endpoint, security, options)

    def listen(
        self,
        endpoints: Sequence[str],
        security: ServerSecurity | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> TransportListener:
        return NatsTransportListener(endpoints, security, options)

    def check_options(self, options: Mapping[str, Any]) -> None:
        """ConfigError for an unknown option or a bad value, as ``listen`` would raise."""
        NatsOptions.from_mapping(options)
