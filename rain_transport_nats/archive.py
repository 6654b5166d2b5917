"""Store-and-forward of archived parameters: samples kept at the site through a WAN outage and
delivered to the hub's archive, complete, in order and once, when the link returns.

Theory of operation
-------------------

A remote site runs a NATS *leaf node* with JetStream (its own JetStream domain, for example
``site1``) connected to the hub cluster (domain ``hub``) over the WAN. The instrument's RAIN
server runs an :class:`Archiver` connected to the leaf node. Parameters declared with
``archive=True`` are the archived ones: the archiver taps each of their samples
(``LiveParameter.sinks``) and publishes it to JetStream on ::

    rain.S.arc.<parameter token>          (S: the server's nkey, as in rain.S.obs...)

with the header ``Nats-Msg-Id: <epoch>:<seq>`` -- a sample's identity, the same on every retry.
The leaf's *site stream* (:func:`site_stream_config`, created by the operator, or by the
archiver when it is allowed to) holds those subjects on the site's disk, so a publication is
acknowledged by the leaf whether the WAN is up or not. The hub keeps an *archive stream* that
**sources** the site stream through the leaf connection (:func:`hub_stream_config`:
``external.api = $JS.<site domain>.API``); the hub's JetStream pulls what it has not got yet
whenever the link is up and resumes after the last message it stored when the link returns, so
nothing is lost and nothing arrives twice, in the order the site stored it. How soon after the
link returns is nats-server's: it retries a source that lost its origin on a growing back-off
(seen in tests: 0.1 to 41 s). An archive reader on the hub is a durable consumer of the archive
stream (:func:`read_archive` is a small one).

What each part guarantees:

- the archiver publishes samples one at a time, awaiting the leaf's acknowledgement, so the site
  stream has them in ``seq`` order; a publication that fails (leaf restarting, timeout) is
  retried with the same ``Nats-Msg-Id``, which the stream's duplicate window turns into exactly
  one stored message;
- the archiver's queue is bounded (``max_pending`` samples): a leaf node that is down for longer
  than that loses the oldest samples, counted in ``dropped`` and logged, never silently; the
  WAN link being down costs nothing here, it is the leaf's disk that holds the backlog (bounded
  by the site stream's ``max_age``/``max_bytes``, chosen by the operator);
- both streams have duplicate windows keyed by ``Nats-Msg-Id``, so a sample that reaches the
  hub twice (an archiver restarted with samples it had already delivered) is stored once.

What the broker sees: archived samples are stored in the clear on the leaf's and the hub's disks,
readable by whoever the NATS accounts let read those streams. Archive what you would keep in a
database anyway; nothing about sessions or keys is in it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import nats.errors
import nats.js.errors
import orjson
from nats.aio.client import Client as NatsClient
from nats.js.api import (
    ConsumerConfig,
    ExternalStream,
    StorageType,
    StreamConfig,
    StreamSource,
)

from rain_envelopes.errors import ConfigError
from rain_envelopes.keys import Identity

from . import subjects
from .connection import connect, quiet_close
from .fanout import parameter_token
from .nkey import user_nkey
from .transport import endpoint_options, parse_endpoint

if TYPE_CHECKING:
    from rain_envelopes.server import Server
    from rain_envelopes.server.samples import Sample

__all__ = [
    "ArchivedSample",
    "Archiver",
    "archive_subject",
    "hub_stream_config",
    "read_archive",
    "site_stream_config",
]

log = logging.getLogger("rain_transport_nats")

MSG_ID = "Nats-Msg-Id"
_BACKOFF_START = 0.05
_BACKOFF_MAX = 2.0


def archive_subject(server: str, name: str) -> str:
    """The subject of parameter ``name``'s archived samples from server nkey ``server``."""
    return f"{subjects.ROOT}.{server}.{subjects.ARCHIVE}.{parameter_token(name)}"


def site_stream_config(
    name: str, *, max_age: float | None = None, duplicate_window: float = 600.0
) -> StreamConfig:
    """The site stream on the leaf: every archived subject of every server at the site, on
    disk, de-duplicated by ``Nats-Msg-Id`` over ``duplicate_window`` seconds."""
    return StreamConfig(
        name=name,
        subjects=[f"{subjects.ROOT}.*.{subjects.ARCHIVE}.>"],
        storage=StorageType.FILE,
        duplicate_window=duplicate_window,
        max_age=max_age,
    )


def hub_stream_config(
    name: str, sites: Iterable[tuple[str, str]], *, duplicate_window: float = 600.0
) -> StreamConfig:
    """The hub's archive stream, sourcing each ``(site stream, site JetStream domain)``
    through the leaf connections."""
    return StreamConfig(
        name=name,
        subjects=[],
        storage=StorageType.FILE,
        duplicate_window=duplicate_window,
        sources=[
            StreamSource(name=stream, external=ExternalStream(api=f"$JS.{domain}.API"))
            for stream, domain in sites
        ],
    )


@dataclass(frozen=True, slots=True)
class ArchivedSample:
    """One sample as the archive holds it."""

    parameter: str
    value: Any
    timestamp: str
    seq: int
    epoch: str
    #: The hub stream's own sequence number (its order of arrival).
    stream_seq: int


class Archiver:
    """Publishes the samples of a server's archived parameters to the site stream.

    ``endpoint`` is the leaf node (``nats://site-leaf:4222``), ``identity`` the server's: its
    nkey is the NATS user, which ``rain nats-config`` lets publish ``rain.S.arc.>`` and read
    its acknowledgements on ``rain.S.inbox.>``, nothing more. The site stream ``stream`` is the
    operator's to create (:func:`site_stream_config`) with an administrative user; with
    ``create_stream=True`` the archiver creates it when missing, which needs a user allowed to
    use the JetStream API of ``domain``.
    """

    def __init__(
        self,
        endpoint: str,
        identity: Identity,
        *,
        stream: str = "RAIN_SITE",
        domain: str | None = None,
        max_pending: int = 100_000,
        ack_timeout: float = 5.0,
        options: dict[str, Any] | None = None,
        create_stream: bool = False,
    ) -> None:
        if max_pending < 1:
            raise ConfigError("max_pending must be at least 1")
        self.endpoint = parse_endpoint(endpoint)
        # TLS to the leaf as for any NATS endpoint: `?tls_ca=...` (all `rain serve` passes)
        # or the options table.
        self.options = endpoint_options(self.endpoint, options)
        self.identity = identity
        self.server_nkey = user_nkey(identity.public_key)
        self.stream = stream
        self.domain = domain
        self.max_pending = max_pending
        self.ack_timeout = ack_timeout
        self.create_stream = create_stream
        self._queue: deque[tuple[str, str, bytes]] = deque()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._nc: NatsClient | None = None
        self._pump: asyncio.Task[None] | None = None
        self._closed = False
        #: Samples stored by the site stream; publications retried; samples dropped (queue
        #: full while the leaf node was unreachable).
        self.stored = 0
        self.retried = 0
        self.dropped = 0

    async def start(self) -> Archiver:
        """Connect to the leaf node and make sure the site stream exists. Raises
        TransportError when the leaf cannot be reached."""
        self._nc = await connect(
            self.endpoint, self.options, self.identity,
            name=f"rain archiver {self.server_nkey[:8]}", reconnect=True,
            # Acknowledgements come to inboxes only this key may read (nats-config grants it).
            inbox_prefix=f"{subjects.ROOT}.{self.server_nkey}.{subjects.INBOX}",
        )
        self._js = self._nc.jetstream(domain=self.domain, timeout=self.ack_timeout)
        if self.create_stream:
            try:
                await self._js.stream_info(self.stream)
            except nats.js.errors.NotFoundError:
                await self._js.add_stream(site_stream_config(self.stream))
        self._pump = asyncio.get_running_loop().create_task(self._run(), name="rain-archiver")
        return self

    def attach(self, server: Server, names: Iterable[str] | None = None) -> list[str]:
        """Tap the parameters of ``server`` declared ``archive=True`` (or those ``names``);
        returns the names tapped. Call after the server started. Raises ConfigError for a name
        the server does not serve."""
        live = server._live  # the server's runtime parameters (same family of packages)
        wanted = (
            [name for name, item in live.items() if item.declaration.archive]
            if names is None
            else list(names)
        )
        for name in wanted:
            if name not in live:
                raise ConfigError(f"no parameter {name!r} to archive")
            live[name].sinks.append(self.offer)
        return wanted

    def offer(self, name: str, sample: Sample) -> None:
        """Queue one sample for the site stream (never blocks; loop thread)."""
        if self._closed:
            return
        document = {"parameter": name, **sample.document()}
        item = (archive_subject(self.server_nkey, name), f"{sample.epoch}:{sample.seq}",
                orjson.dumps(document))
        if len(self._queue) >= self.max_pending:
            self._queue.popleft()
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning("archiver: the leaf node is not taking samples; %d dropped so far",
                            self.dropped)
        self._queue.append(item)
        self._idle.clear()
        self._wake.set()

    @property
    def pending(self) -> int:
        """Samples not yet acknowledged by the site stream."""
        return len(self._queue)

    async def _run(self) -> None:
        backoff = _BACKOFF_START
        while True:
            if not self._queue:
                self._idle.set()
                if self._closed:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            subject, msg_id, data = self._queue[0]
            try:
                await self._js.publish(subject, data, headers={MSG_ID: msg_id})
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # no ack (leaf restarting, timeout): same id again
                self.retried += 1
                log.debug("archiver: publication of %s not acknowledged (%s); retrying",
                          msg_id, exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX)
                continue
            backoff = _BACKOFF_START
            if self._queue and self._queue[0][1] == msg_id:
                self._queue.popleft()
            self.stored += 1

    async def drain(self, timeout: float) -> bool:
        """Wait until every queued sample is stored; False when ``timeout`` passed first."""
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    async def close(self, timeout: float = 5.0) -> None:
        """Store what is queued (for at most ``timeout`` s), then disconnect. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._wake.set()
        if self._pump is not None:
            await self.drain(timeout)
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump
        if self._nc is not None:
            await quiet_close(self._nc)

    async def __aenter__(self) -> Archiver:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


async def read_archive(
    client: NatsClient, stream: str, durable: str, *, batch: int = 256, wait: float = 1.0,
    domain: str | None = None,
) -> AsyncIterator[ArchivedSample]:
    """The hub archive's samples through durable pull consumer ``durable`` (acknowledged as
    they are yielded, so a reader that stops and comes back resumes after the last one)."""
    js = client.jetstream(domain=domain)
    subscription = await js.pull_subscribe(
        "", durable=durable, stream=stream, config=ConsumerConfig(durable_name=durable)
    )
    while True:
        try:
            messages = await subscription.fetch(batch, timeout=wait)
        except (TimeoutError, nats.errors.TimeoutError):
            # Nothing new within ``wait`` (nats-py raises either kind, depending on the step
            # of the fetch it was in): ask again.
            continue
        for message in messages:
            document = orjson.loads(message.data)
            assert message.metadata.sequence is not None
            yield ArchivedSample(
                str(document["parameter"]), document["value"], str(document["timestamp"]),
                int(document["seq"]), str(document["epoch"]), message.metadata.sequence.stream,
            )
            await message.ack()
