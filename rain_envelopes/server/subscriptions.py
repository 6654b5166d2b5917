"""One subscription: a bounded queue of samples and the task that pushes them as ``observe``.

Invariants:
- the queue never holds more than ``maxlen`` samples: when a new sample arrives at a full queue
  the oldest is dropped and counted, so a subscriber that never reads costs bounded memory;
- the next ``observe`` that does go out carries ``"dropped": n``, the samples lost since the
  previous one (seq gaps say the same thing; ``dropped`` says it without arithmetic);
- a push that the transport refuses because the peer's queue is full (QueueFull) counts as a
  drop and the task backs off (10 ms doubling to 1 s) instead of spinning;
- ``close()`` cancels the task; nothing of the subscription outlives it.

Samples are offered from the event loop thread only (the server marshals plugin threads).

Fan-out: a sample is encoded once, not once per subscriber. The ``observe`` for a sample differs
between subscriptions only by its ``uri`` (the subscriber's URI as written) and by ``dropped``
(present only after a loss). The subscriptions of one parameter share an :class:`ObserveCache`,
which builds the observe Command and its bytes once per distinct URI text for the newest
sample; a subscription with something to report in ``dropped``, or behind on an older sample,
builds its own. With a ``send_encoded`` function (the server passes the channel's) the shared
bytes are queued as they are; without one (tests, other shells) the Command goes to ``send``.
A subscription's task drains its whole queue on each wake-up.

Fan-out through a broker: when the session's transport offers a fan-out member for the
parameter and URI text (``Transport.fanout``; NATS does, ZeroMQ does not), the subscription
asks it to ``join`` once the snapshot has gone. While it joins, samples still go to this
session as above. Once joined, the task *admits* the member at a moment its queue is empty and
no drop is waiting to be reported: from then on a sample is not queued here at all; the
:class:`ObserveCache` publishes its shared bytes once per fan-out group (whatever the number of
subscribers in it) and the transport guarantees that the session sees every sample exactly
once, in order, the ones sent directly before those of the group. An admitted subscription
leaves the parameter's set of subscriptions (``members``) for the cache's ``fanned`` set, so a
sample costs the server one step per group, however many subscribers it has. A subscriber in
a group is not thinned by this server: a link that cannot keep up is ended by its transport,
and the client sees any loss as a gap in ``seq`` (a sample's per-parameter sequence number).
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from ..codec import encode
from ..envelopes import Command, CommandMethod
from ..errors import (
    ChannelClosed,
    LocalProtocolError,
    QueueFull,
    TransportClosed,
    TransportError,
)
from .samples import SAMPLE_TYPE, Sample

if TYPE_CHECKING:
    from ..transport import FanoutGroup, FanoutMember

__all__ = ["ObserveCache", "Subscription"]

log = logging.getLogger("rain.server")

SendFunction = Callable[[Command], Awaitable[None]]
#: Sends a Command as bytes already encoded (Channel.send_encoded).
SendEncodedFunction = Callable[[Command, bytes], Awaitable[None]]

_BACKOFF_START = 0.01
_BACKOFF_MAX = 1.0


def _observe(uri: str, sample: Sample, dropped: int) -> Command:
    return Command(
        CommandMethod.OBSERVE, uri, type=SAMPLE_TYPE, resource=sample.document(dropped=dropped)
    )


class ObserveCache:
    """The observe of the newest sample of one parameter, per URI text: built and encoded once
    for all its subscribers (see the module docstring)."""

    __slots__ = ("_by_uri", "_groups", "_published", "_sample", "fanned")

    def __init__(self) -> None:
        self._sample: Sample | None = None
        self._by_uri: dict[str, tuple[Command, bytes]] = {}
        self._published: set[FanoutGroup] = set()
        # Fan-out groups with admitted subscriptions: group -> [URI text, subscriptions].
        self._groups: dict[FanoutGroup, list[Any]] = {}
        #: Subscriptions reached through a group: the parameter no longer offers them each
        #: sample one by one, so publishing costs one step per group, not per subscriber.
        self.fanned: set[Subscription] = set()

    def get(self, uri: str, sample: Sample) -> tuple[Command, bytes]:
        """The observe of ``sample`` to ``uri`` (no ``dropped``), and its bytes."""
        if sample is not self._sample:
            self._sample = sample
            self._by_uri = {}
            self._published = set()
        found = self._by_uri.get(uri)
        if found is None:
            observe = _observe(uri, sample, 0)
            found = self._by_uri[uri] = (observe, encode(observe))
        return found

    def broadcast(self, uri: str, sample: Sample, group: FanoutGroup) -> None:
        """Publish the observe of ``sample`` to ``uri`` through ``group``, once per sample
        however many of the group's subscribers offer it."""
        data = self.get(uri, sample)[1]
        if group not in self._published:
            self._published.add(group)
            group.publish(data)

    def admit(self, subscription: Subscription, group: FanoutGroup) -> None:
        """From now on ``subscription`` is reached through ``group`` (see :meth:`publish`)."""
        self.fanned.add(subscription)
        entry = self._groups.setdefault(group, [subscription.uri, 0])
        entry[1] += 1

    def release(self, subscription: Subscription, group: FanoutGroup) -> None:
        """``subscription`` (admitted to ``group``) has ended."""
        if subscription in self.fanned:
            self.fanned.discard(subscription)
            entry = self._groups.get(group)
            if entry is not None:
                entry[1] -= 1
                if entry[1] <= 0:
                    del self._groups[group]

    def publish(self, sample: Sample) -> None:
        """Publish ``sample`` once through each group that has admitted subscriptions."""
        for group, (uri, _) in list(self._groups.items()):
            self.broadcast(uri, sample, group)


class Subscription:
    """The subscription of one session to one parameter."""

    def __init__(
        self,
        name: str,
        uri: str,
        send: SendFunction,
        *,
        maxlen: int,
        cache: ObserveCache | None = None,
        send_encoded: SendEncodedFunction | None = None,
        fanout: FanoutMember | None = None,
        members: set[Subscription] | None = None,
    ) -> None:
        if maxlen < 1:
            raise ValueError("maxlen must be at least 1")
        self.name = name
        #: The URI as the client wrote it: observes echo it so the client finds its callback.
        self.uri = uri
        self.maxlen = maxlen
        self._send = send
        self._send_encoded = send_encoded
        self._cache = cache
        # Fan-out (see the module docstring): the member, whether it has joined, and whether
        # it was admitted (then samples go to its group, not to this queue).
        self._fanout = fanout if cache is not None else None
        self._joined = False
        self.fanned_out = False
        self._joining: asyncio.Task[None] | None = None
        # The parameter's set of subscriptions it offers each sample to (left on admission).
        self._members = members
        self._queue: collections.deque[Sample] = collections.deque()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        #: Drops not yet reported to the client.
        self.pending_drops = 0
        #: Drops over the subscription's life.
        self.total_drops = 0
        #: Observes sent.
        self.delivered = 0

    def __repr__(self) -> str:
        return f"<Subscription {self.uri} queued={len(self._queue)} dropped={self.total_drops}>"

    def __len__(self) -> int:
        return len(self._queue)

    def offer(self, sample: Sample) -> None:
        """Queue ``sample`` for pushing, dropping the oldest when full. Never blocks."""
        if self._closed:
            return
        if self.fanned_out:
            return  # the parameter's ObserveCache publishes it through the group
        if len(self._queue) >= self.maxlen:
            self._queue.popleft()
            self._count_drops(1)
        self._queue.append(sample)
        self._wakeup.set()

    def _count_drops(self, count: int) -> None:
        self.pending_drops += count
        self.total_drops += count

    def start(self) -> None:
        """Start pushing (after the subscribe response has been sent)."""
        if self._task is None and not self._closed:
            self._task = asyncio.create_task(self._run(), name=f"rain-subscription {self.uri}")
            if self._fanout is not None:
                self._joining = asyncio.create_task(
                    self._join(self._fanout), name=f"rain-fanout-join {self.uri}"
                )

    async def _join(self, member: FanoutMember) -> None:
        if await member.join() and not self._closed:
            self._joined = True
            self._wakeup.set()

    async def _run(self) -> None:
        backoff = _BACKOFF_START
        while not self._closed:
            if not self._queue:
                if self._joined and not self.pending_drops:
                    # Nothing queued, nothing to report: the group takes over from here.
                    assert self._fanout is not None
                    assert self._cache is not None
                    self._fanout.admit()
                    self.fanned_out = True
                    self._cache.admit(self, self._fanout.group)
                    if self._members is not None:
                        self._members.discard(self)
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            sample = self._queue.popleft()
            dropped, self.pending_drops = self.pending_drops, 0
            try:
                if self._send_encoded is not None and self._cache is not None and not dropped:
                    await self._send_encoded(*self._cache.get(self.uri, sample))
                else:
                    await self._send(_observe(self.uri, sample, dropped))
            except (ChannelClosed, LocalProtocolError, TransportClosed) as exc:
                # Before QueueFull: a peer that is gone may raise a QueueFull that is also
                # TransportClosed, and retrying it would never end.
                log.debug("subscription %s ends: %s", self.uri, exc)
                self._closed = True
                return
            except QueueFull:
                # The peer is not reading: this sample is lost too. Wait before trying again,
                # while the bounded queue keeps only the newest samples.
                self.pending_drops += dropped + 1
                self.total_drops += 1
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX)
                continue
            except TransportError as exc:
                log.debug("subscription %s ends: %s", self.uri, exc)
                self._closed = True
                return
            backoff = _BACKOFF_START
            self.delivered += 1

    def close(self) -> None:
        """Stop pushing and release the queue. Idempotent."""
        self._closed = True
        self._queue.clear()
        if self._task is not None and not self._task.done():
            self._task.cancel()
        if self._joining is not None and not self._joining.done():
            self._joining.cancel()
        if self._fanout is not None:
            self._fanout.leave()
            if self._cache is not None:
                self._cache.release(self, self._fanout.group)
        self._wakeup.set()

    @property
    def closed(self) -> bool:
        return self._closed
