"""Fan-out through the broker: a published sample leaves the instrument's server once, and the
broker copies it to every subscriber (``Transport.fanout`` in :mod:`rain_envelopes.transport`).

Theory of operation
-------------------

A *topic* is one parameter in one URI spelling (the observe a subscriber gets echoes the URI it
wrote, so two spellings are two byte strings). Its subject is ::

    rain.S.obs.<parameter token>.<spelling digest>

``S`` is the server's nkey; the parameter token is the name with each ``.`` written ``~`` (a
parameter name has no ``~``, so the mapping is one to one and the broker's ``*`` matches exactly
one parameter); the digest is 16 hex digits of SHA-256 of the URI text. Only the server may
publish there (``rain nats-config`` grants it ``rain.S.obs.>``); a client may subscribe to the
parameters the server's access rules let it subscribe to (all of them when there are no rules;
none for a rule whose URI glob the broker cannot express: those clients are served directly).

A session joins a topic in three steps, over its own control subjects:

1. ``join`` (server -> client, payload: the subject). The client subscribes to the subject,
   flushes (so its broker knows the interest, and has told the rest of the cluster before
   anything later from the client), and answers ``joined`` with ``ok <subject>``, or
   ``no <subject>`` when the broker refused the subscription or it had one already. Until step
   3 it keeps what arrives on the subject in a buffer.
2. The server's subscription keeps sending this session its samples directly meanwhile. When
   the ``joined`` is in and nothing is queued for the session, it *admits* the member: the
   group's next frame number ``n`` is noted, the session joins the group's members, and ``go
   <subject> <n>`` is published on the session's control subject. Every frame the group
   publishes carries its number in the header ``Rain-Seq``.
3. On ``go`` the client hands over the buffered frames numbered ``n`` and up, drops the others
   (their samples came directly), and from then on passes every frame of the subject into the
   session, behind the direct frames that arrived before ``go``.

Why that is exactly once and in order: the direct frames and ``go`` travel on one subject, so
they arrive in order; a frame of the group is delivered only after ``go`` and only when its
number is at least ``n``; the server sends a sample directly if and only if it was offered
before the admission, that is when the group numbered it below ``n``. Nothing depends on the
relative order of two subjects (nats-py runs each subscription's callbacks in its own task).

``leave`` (server -> client) ends it: the client unsubscribes and drops the topic's frames.
A link that ends leaves every group. The group publishes even with no member left only if a
subscription still points at it, which lasts until that session's subscriptions are closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections import deque
from typing import TYPE_CHECKING

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from rain_envelopes.transport import FanoutGroup, FanoutMember

from . import subjects
from .connection import SUB_PENDING_BYTES, SUB_PENDING_MSGS, barrier, publish_soon

if TYPE_CHECKING:
    from .transport import NatsPeerTransport, NatsTransport, NatsTransportListener

__all__ = [
    "ClientFanin",
    "NatsFanoutGroup",
    "NatsFanoutMember",
    "ServerFanout",
    "observe_subject",
    "observe_subscribe_permission",
    "parameter_token",
]

log = logging.getLogger("rain_transport_nats")

JOIN = "join"
JOINED = "joined"
GO = "go"
LEAVE = "leave"
#: Control kinds the server sends and the client answers.
SERVER_CONTROL = frozenset({JOIN, GO, LEAVE})
SEQ_HEADER = "Rain-Seq"


def parameter_token(name: str) -> str:
    """A parameter name as one subject token (``.`` written ``~``)."""
    return name.replace(".", "~")


def observe_subject(server: str, name: str, variant: str) -> str:
    """The subject on which server ``server`` publishes ``name`` spelt ``variant``."""
    digest = hashlib.sha256(variant.encode()).hexdigest()[:16]
    return f"{subjects.ROOT}.{server}.{subjects.OBSERVE}.{parameter_token(name)}.{digest}"


def observe_subscribe_permission(server: str, name: str | None) -> str:
    """What a client may subscribe to hear parameter ``name`` of ``server`` (every parameter
    when None)."""
    if name is None:
        return f"{subjects.ROOT}.{server}.{subjects.OBSERVE}.>"
    return f"{subjects.ROOT}.{server}.{subjects.OBSERVE}.{parameter_token(name)}.*"


# ------------------------------------------------------------------------------ server side


class NatsFanoutGroup(FanoutGroup):
    """One topic of one listener: frames published once, numbered in ``Rain-Seq``."""

    def __init__(self, hub: ServerFanout, subject: str) -> None:
        self._hub = hub
        self.subject = subject
        self.next_seq = 0
        self.published = 0
        self.admitted: set[NatsPeerTransport] = set()

    def __repr__(self) -> str:
        return f"<NatsFanoutGroup {self.subject} members={len(self.admitted)}>"

    @property
    def members(self) -> int:
        return len(self.admitted)

    def publish(self, data: bytes) -> None:
        if not self.admitted:
            return
        seq = self.next_seq
        self.next_seq += 1
        self.published += 1
        self._hub.send(self.subject, data, {SEQ_HEADER: str(seq)})


class NatsFanoutMember(FanoutMember):
    """One client session's place in a group."""

    group: NatsFanoutGroup

    def __init__(self, hub: ServerFanout, group: NatsFanoutGroup, peer: NatsPeerTransport) -> None:
        self._hub = hub
        self.group = group
        self._peer = peer
        self._answer: asyncio.Future[bool] | None = None
        self._joined = False
        self._left = False

    async def join(self) -> bool:
        if self._left or self._peer.closed:
            return False
        loop = asyncio.get_running_loop()
        self._answer = loop.create_future()
        self._hub.waiting[(self._peer.key, self.group.subject)] = self
        self._hub.control(self._peer, JOIN, self.group.subject)
        try:
            async with asyncio.timeout(self._peer._options.open_timeout):
                self._joined = await self._answer
        except TimeoutError:
            log.info("%s: no answer to join %s; sending directly", self._peer, self.group.subject)
            self._joined = False
        finally:
            self._hub.waiting.pop((self._peer.key, self.group.subject), None)
        return self._joined and not self._left and not self._peer.closed

    def answered(self, ok: bool) -> None:
        if self._answer is not None and not self._answer.done():
            self._answer.set_result(ok)

    def admit(self) -> None:
        if self._left or self._peer.closed:
            return
        group = self.group
        self._hub.control(self._peer, GO, f"{group.subject} {group.next_seq}")
        group.admitted.add(self._peer)
        self._hub.joined_by_peer.setdefault(self._peer.key, set()).add(group)

    def leave(self) -> None:
        if self._left:
            return
        self._left = True
        self.answered(False)
        self.group.admitted.discard(self._peer)
        groups = self._hub.joined_by_peer.get(self._peer.key)
        if groups is not None:
            groups.discard(self.group)
        if self._joined and not self._peer.closed:
            self._hub.control(self._peer, LEAVE, self.group.subject)


class ServerFanout:
    """A listener's groups, and the joins it waits for."""

    def __init__(self, listener: NatsTransportListener) -> None:
        self._listener = listener
        self.groups: dict[str, NatsFanoutGroup] = {}
        self.waiting: dict[tuple[tuple[str, str], str], NatsFanoutMember] = {}
        self.joined_by_peer: dict[tuple[str, str], set[NatsFanoutGroup]] = {}
        #: Frames published to groups and control frames sent (for tests and benchmarks).
        self.sent = 0

    def member(self, peer: NatsPeerTransport, name: str, variant: str) -> NatsFanoutMember:
        subject = observe_subject(self._listener.server_nkey, name, variant)
        group = self.groups.get(subject)
        if group is None:
            group = self.groups[subject] = NatsFanoutGroup(self, subject)
        return NatsFanoutMember(self, group, peer)

    def on_joined(self, peer: NatsPeerTransport, payload: bytes) -> None:
        verdict, _, subject = payload.decode(errors="replace").partition(" ")
        member = self.waiting.get((peer.key, subject))
        if member is not None:
            member.answered(verdict == "ok")

    def forget(self, peer: NatsPeerTransport) -> None:
        """``peer``'s link is over: it leaves every group and stops waiting."""
        for group in self.joined_by_peer.pop(peer.key, ()):
            group.admitted.discard(peer)
        for key, member in list(self.waiting.items()):
            if key[0] == peer.key:
                member.answered(False)

    def control(self, peer: NatsPeerTransport, kind: str, payload: str) -> None:
        subject = subjects.to_client(self._listener.server_nkey, *peer.key, kind)
        self.send(subject, payload.encode(), None)

    def send(self, subject: str, data: bytes, headers: dict[str, str] | None) -> None:
        if publish_soon(self._listener._nc, subject, data, headers):
            self.sent += 1


# ------------------------------------------------------------------------------ client side


class _Inflow:
    """One joined topic at the client: frames buffered until ``go``, then passed on."""

    __slots__ = ("buffer", "dead", "start", "subject", "subscription")

    def __init__(self, subject: str) -> None:
        self.subject = subject
        self.start: int | None = None
        self.buffer: deque[tuple[int, bytes]] = deque()
        self.subscription: Subscription | None = None
        self.dead = False


class ClientFanin:
    """A client session's joined topics (see the module docstring)."""

    def __init__(self, link: NatsTransport, server: str) -> None:
        self._link = link
        self._prefix = f"{subjects.ROOT}.{server}.{subjects.OBSERVE}."
        self._topics: dict[str, _Inflow] = {}
        self._refused: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    def on_control(self, kind: str, payload: bytes) -> None:
        text = payload.decode(errors="replace")
        if kind == JOIN:
            task = asyncio.get_running_loop().create_task(self._join(text))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        elif kind == GO:
            subject, _, number = text.partition(" ")
            inflow = self._topics.get(subject)
            if inflow is None or inflow.start is not None or not number.isdigit():
                return
            inflow.start = int(number)
            buffered, inflow.buffer = inflow.buffer, deque()
            for seq, data in buffered:
                if seq >= inflow.start:
                    self._link._deliver(data)
        elif kind == LEAVE:
            inflow = self._topics.pop(text, None)
            if inflow is not None:
                inflow.dead = True
                if inflow.subscription is not None:
                    task = asyncio.get_running_loop().create_task(
                        _unsubscribe(inflow.subscription)
                    )
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)

    def on_error(self, error: Exception) -> bool:
        """True when ``error`` is the broker refusing one of our topic subscriptions (the
        session goes on; the server keeps sending directly)."""
        # nats-py lowercases the server's text, subject included.
        text = str(error).lower()
        if "permissions violation" in text and self._prefix.lower() in text:
            for subject in self._topics:
                if subject.lower() in text:
                    self._refused.add(subject)
            return True
        return False

    async def _join(self, subject: str) -> None:
        link = self._link
        client = link._nc
        ok = False
        if (
            client is not None
            and subject.startswith(self._prefix)
            and subject not in self._topics
            and not link.closed
        ):
            inflow = self._topics[subject] = _Inflow(subject)

            async def frames(msg: Msg) -> None:
                self._frame(inflow, msg)

            try:
                inflow.subscription = await client.subscribe(
                    subject,
                    cb=frames,
                    pending_msgs_limit=SUB_PENDING_MSGS,
                    pending_bytes_limit=SUB_PENDING_BYTES,
                )
                # After the barrier the broker's answer to the SUB (a permissions violation,
                # reported to on_error) has been read.
                await barrier(client, link._options.open_timeout)
                ok = subject not in self._refused
            except Exception as exc:  # the broker connection failed: the link ends anyway
                log.debug("joining %s failed: %s", subject, exc)
            if not ok:
                self._refused.discard(subject)
                self._topics.pop(subject, None)
                inflow.dead = True
                if inflow.subscription is not None:
                    await _unsubscribe(inflow.subscription)
        if client is not None and client.is_connected and not link.closed:
            with contextlib.suppress(Exception):
                await client.publish(
                    link._prefix + JOINED, f"{'ok' if ok else 'no'} {subject}".encode()
                )

    def _frame(self, inflow: _Inflow, msg: Msg) -> None:
        if inflow.dead:
            return
        self._link._heard()
        try:
            seq = int((msg.headers or {})[SEQ_HEADER])
        except (KeyError, ValueError):
            return
        if inflow.start is None:
            if len(inflow.buffer) >= self._link._options.max_queue:
                self._link._end("a fanned-out topic overran the receive queue (max_queue)")
                return
            inflow.buffer.append((seq, msg.data))
        elif seq >= inflow.start:
            self._link._deliver(msg.data)


async def _unsubscribe(subscription: Subscription) -> None:
    with contextlib.suppress(Exception):
        await subscription.unsubscribe()
