"""Routing by address: a message or notification for another node, passed on to its session.

LIME's ``to`` names the envelope's destination. A message whose ``to`` is the server itself (or
absent) is the server's to handle; one whose ``to`` names a node that has a session on this
server is passed on to that session, as LIME's reference server does. The switchboard is the
whole of that rule, so the server only asks it first.

Theory of operation:

- **Who sent it is what was proven.** The forwarded envelope's ``from`` is the sender session's
  node (its identity as authenticated, with the instance the server gave it); a ``from`` or
  ``pp`` the sender wrote is dropped, never passed on. So the destination can trust ``from``
  as far as it trusts this server, and receipts cannot be aimed at a third node through ``pp``.
- **Where it goes.** ``to`` with an instance names one session; ``to`` without one names the
  identity, and the message goes to that identity's earliest session still open (the one that
  has been there longest; a node's second session does not steal its traffic).
- **May it?** Sending a message to a node is the method ``message`` on the path
  ``/nodes/<name@domain>`` in the access rules (access.py): with no rules every authenticated
  identity may message every other one and guests may not.
- **What the sender hears**, for a message with an ``id``: ``dispatched`` once the message is
  queued towards its destination; or ``failed`` with 42 (no session for that node), 32/35 (the
  access rules say no) or 51 (the destination has too many routed envelopes waiting to leave,
  or its link failed). A message without an ``id`` asks for nothing and gets nothing.
- **Receipts come back the same way.** The destination's channel answers the message with
  ``received`` and ``consumed`` (or ``failed``) addressed to the message's ``from``, which is the
  sender's node: the switchboard passes on a notification only when it answers a message it
  routed there (same id, from that destination, to that sender), and forgets the route on the
  final receipt (``consumed`` or ``failed``). Any other notification aimed at another node is
  dropped and logged: a session cannot send notifications to nodes it never heard from.
- **Bounded.** Routes waiting for their final receipt are kept up to :data:`MAX_ROUTES`
  (oldest forgotten first); envelopes being sent to one destination are bounded by
  :data:`MAX_IN_FLIGHT` per destination, past which the sender is told 51.

Nothing here does I/O of its own: delivery is the destination channel's ``send``.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from ..envelopes import Envelope, Message, Notification, NotificationEvent, Reason, ReasonCode
from ..errors import ChannelClosed, LocalProtocolError, TransportError
from ..node import Node
from ..peerlog import PeerLog
from .access import AccessPolicy
from .errors import ParameterError

if TYPE_CHECKING:
    from .pipeline import ServedSession

__all__ = ["MAX_IN_FLIGHT", "MAX_ROUTES", "NODES_PATH", "Switchboard"]

log = logging.getLogger("rain.server.routing")

#: The path prefix access rules use for messaging a node: ``/nodes/<name@domain>``.
NODES_PATH = "/nodes/"
#: Routed messages whose final receipt has not come back yet, kept for receipts to find.
MAX_ROUTES = 16384
#: Envelopes being handed to one destination's link at once; past this the sender hears 51.
MAX_IN_FLIGHT = 256

#: The receipts after which a message's route is forgotten.
_FINAL = frozenset({NotificationEvent.CONSUMED, NotificationEvent.FAILED})

_NOT_FOUND = Reason(ReasonCode.ROUTING_DESTINATION_NOT_FOUND, "no session for that node")


class Switchboard:
    """Passes messages and their receipts between the sessions of one server."""

    def __init__(
        self, node: Node, access: Callable[[], AccessPolicy], peer_log: PeerLog
    ) -> None:
        self.node = node
        # A getter, not the policy: the server's rules may be replaced while it runs.
        self.access = access
        self.peer_log = peer_log
        # Sessions in the order they were established, so "the earliest" is the first found.
        self._sessions: dict[Node, ServedSession] = {}
        # (destination node, message id) -> the sender's node, for receipts to find their way.
        self._routes: OrderedDict[tuple[Node, str], Node] = OrderedDict()
        self._in_flight: dict[Node, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ sessions

    def attach(self, session: ServedSession) -> None:
        """A session is established: envelopes for its node may now reach it."""
        if session.node is not None:
            self._sessions[session.node] = session

    def detach(self, session: ServedSession) -> None:
        """A session has ended. Routes that end at it are forgotten as receipts come (or not)."""
        if session.node is not None and self._sessions.get(session.node) is session:
            del self._sessions[session.node]

    def find(self, to: Node) -> ServedSession | None:
        """The open session ``to`` names (see the module docstring), or None."""
        if to.instance is not None:
            found = self._sessions.get(to)
            return found if found is not None and not found.closed else None
        for node, session in self._sessions.items():
            if node.same_identity(to) and not session.closed:
                return session
        return None

    def is_local(self, to: Node | None) -> bool:
        """True when ``to`` is absent or names this server (its node or its identity)."""
        if to is None:
            return True
        return to == self.node or (to.instance is None and to.same_identity(self.node))

    # ------------------------------------------------------------------ messages

    def route_message(self, source: ServedSession, message: Message) -> bool:
        """Pass ``message`` on when it is for another node; False when it is the server's."""
        if self.is_local(message.to):
            return False
        to = message.to
        assert to is not None
        sender = source.node
        identity = source.identity or ""
        try:
            self.access().check(identity, "message", NODES_PATH + to.identity)
        except ParameterError as exc:
            self._refuse(source, message, Reason(exc.code, exc.description))
            return True
        destination = self.find(to)
        if destination is None or sender is None:
            self._refuse(source, message, _NOT_FOUND)
            return True
        dest_node = destination.node
        assert dest_node is not None
        if self._in_flight.get(dest_node, 0) >= MAX_IN_FLIGHT:
            self._refuse(source, message, Reason(
                ReasonCode.DISPATCH_ERROR, "the destination is not keeping up; try later"))
            return True
        forwarded = message.replace(from_=sender, to=dest_node, pp=None)
        dispatched = None
        if message.id is not None:
            self._remember((dest_node, message.id), sender)
            dispatched = Notification(
                NotificationEvent.DISPATCHED, id=message.id, from_=self.node, to=sender)
        self._deliver(destination, forwarded, source, message, then=dispatched)
        return True

    def route_notification(self, source: ServedSession, notification: Notification) -> bool:
        """Pass a receipt back to the sender of a routed message; False when the notification
        is the server's own. A notification for another node that answers nothing routed is
        dropped (and logged)."""
        if self.is_local(notification.to):
            return False
        to = notification.to
        assert to is not None
        origin = source.node
        key = (origin, notification.id) if origin is not None and notification.id else None
        sender = self._routes.get(key) if key is not None else None
        if sender is None or not (to == sender or (to.instance is None
                                                   and to.same_identity(sender))):
            self.peer_log.event(
                logging.INFO, "notification-unrouted", source.identity,
                "dropped a %s notification from %s for %s: it answers no message routed there",
                notification.event, origin, to,
            )
            return True
        assert key is not None
        assert origin is not None
        if notification.event in _FINAL:
            self._routes.pop(key, None)
        destination = self.find(sender)
        if destination is not None:
            self._deliver(destination, notification.replace(from_=origin, to=sender, pp=None))
        return True

    # ------------------------------------------------------------------ internals

    def _remember(self, key: tuple[Node, str], sender: Node) -> None:
        self._routes[key] = sender
        self._routes.move_to_end(key)
        while len(self._routes) > MAX_ROUTES:
            self._routes.popitem(last=False)

    def _refuse(self, source: ServedSession, message: Message, reason: Reason) -> None:
        self.peer_log.event(
            logging.INFO, "message-refused", source.identity,
            "message from %s to %s not routed: %s", source.node, message.to, reason.description,
        )
        if message.id is not None and source.node is not None:
            failed = Notification(NotificationEvent.FAILED, reason, id=message.id,
                                  from_=self.node, to=source.node)
            self._spawn(self._send(source, failed))

    def _deliver(
        self,
        destination: ServedSession,
        envelope: Envelope,
        source: ServedSession | None = None,
        message: Message | None = None,
        *,
        then: Notification | None = None,
    ) -> None:
        node = destination.node
        assert node is not None
        self._in_flight[node] = self._in_flight.get(node, 0) + 1
        self._spawn(self._forward(destination, node, envelope, source, message, then))

    async def _forward(
        self,
        destination: ServedSession,
        node: Node,
        envelope: Envelope,
        source: ServedSession | None,
        message: Message | None,
        then: Notification | None,
    ) -> None:
        try:
            # The envelope is queued on the destination's session before the first await, so
            # envelopes from one sender leave in the order they arrived.
            await destination.channel.send(envelope)
        except (ChannelClosed, LocalProtocolError, TransportError) as exc:
            if source is not None and message is not None:
                if message.id is not None:
                    self._routes.pop((node, message.id), None)
                self._refuse(source, message, Reason(
                    ReasonCode.DISPATCH_ERROR, f"could not pass it on: {exc}"))
            return
        finally:
            left = self._in_flight.get(node, 1) - 1
            if left:
                self._in_flight[node] = left
            else:
                self._in_flight.pop(node, None)
        if then is not None and source is not None:
            await self._send(source, then)

    @staticmethod
    async def _send(session: ServedSession, envelope: Envelope) -> None:
        try:
            await session.channel.send(envelope)
        except (ChannelClosed, LocalProtocolError, TransportError) as exc:
            log.debug("could not send %s to %s: %s", type(envelope).__name__, session, exc)

    def _spawn(self, coroutine: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """Cancel deliveries still under way (the server is shutting down)."""
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
