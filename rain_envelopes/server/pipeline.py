"""The request pipeline: from a session's command to the resource handler that answers it.

The server gives each session's channel :meth:`RequestPipeline.on_command` as its
``on_command``. Every request is handled in this order, and the first refusal answers it:
requests in progress (34 when the session already has ``limits.max_requests_in_progress``
answers in the works; counted by the channel, which makes the tasks), command expiry
(``#expires``, 1001), URI (27/67), access rules on the *authenticated* identity (32/35), route
(67 no such resource, 63 method not supported), then the resource (params.py): parameter (67
unknown, 66 read-only, 34 too many subscriptions), value (64, with the schema error, whether or
not the parameter has a setter), plugin code (its ParameterError code, or 101). So a refused
request never reaches plugin code and changes nothing.

One error boundary. Nothing here turns an error into a reply: every step refuses by raising
:class:`~rain_envelopes.errors.CommandRefused` (ParameterError is one), plugin faults are
turned into one at the plugin boundary (live.py: 101 with a one-line description), and the
channel answers it, raised at once or by the awaitable a handler returned. Anything else is a
fault of the server itself: the channel logs it and answers with the ``handler_fault`` the
server gave it (1, "internal server error"). A handler returns a Command (answered at once, in
the channel's reader: lists, stored values), None (no answer: a subscription sends its own), or
a coroutine of either, which the channel runs as a task counted against the request bound.

Exactly-once SET. A ``set`` with an id is first looked up by (proven identity, id): in the
in-memory window (dedup.py), then in the state file. A remembered set is answered with its first
answer (64 if the id now comes with another request), even past its ``#expires``: it *was*
applied, and 1001 would say it was not. Otherwise its expiry is checked, then it is handed to a
task that belongs to the server, not to the session: a set that has started is finished and
recorded even if its session ends, and a retry arriving meanwhile on any session waits for that
first outcome (the session's task only awaits it, shielded). The outcome is a response, or the
refusal (or fault) the set raised, which each waiting session's channel answers for its own
request. Under the parameter's set lock, just before the setter, the expiry is checked again (a
set that expired while queued behind another is never applied) and, with a state file, an *in
progress* record is committed; after the setter, the outcome and the new value are committed in
one transaction, and only then is the set answered (params.py). A server killed in between
leaves the in-progress record: the retry then gets 61 "outcome unknown" rather than a second
application. Each identity has its own window (``limits.dedup_window`` sets,
``limits.dedup_max_age`` seconds), so another identity's sets cannot push yours out.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ..channel import ServerChannel
from ..codec import decode
from ..envelopes import Command, CommandMethod, ReasonCode
from ..errors import CommandRefused, RemoteProtocolError, StateStoreError
from ..node import Node
from .dedup import Entry, SetWindow, fingerprint
from .router import Router, split_uri
from .store import SetRecord
from .subscriptions import Subscription

if TYPE_CHECKING:
    from .server import Server

__all__ = ["Handler", "Request", "RequestPipeline", "Response", "ServedSession", "check_expiry"]

log = logging.getLogger("rain.server")

Response = Command | None
#: A resource handler: a response now, or a coroutine of one; refuses by raising.
Handler = Callable[["Request"], Command | Coroutine[Any, Any, Response]]


@dataclass(eq=False)
class ServedSession:
    """One client session the server is serving."""

    channel: ServerChannel
    #: Subscriptions by parameter name.
    subscriptions: dict[str, Subscription] = field(default_factory=dict)
    #: Set once the session has ended and everything it held is released.
    ended: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def identity(self) -> str | None:
        """The authenticated identity (``alice@irf``; ``guest`` for guests)."""
        return self.channel.remote_identity

    @property
    def node(self) -> Node | None:
        return self.channel.remote_node

    @property
    def closed(self) -> bool:
        return self.channel.closed

    def __repr__(self) -> str:
        return f"<ServedSession {self.node} as {self.identity}>"


@dataclass(frozen=True)
class Request:
    """A routed command, with what the route captured and who sent it."""

    command: Command
    path: str
    params: Mapping[str, str]
    query: Mapping[str, list[str]]
    session: ServedSession

    @property
    def identity(self) -> str:
        return self.session.identity or ""


def check_expiry(command: Command) -> None:
    """Return when ``command`` has not expired; raise CommandRefused (1001) when its
    ``#expires`` has passed, (64) when that is no ISO-8601 time."""
    expires = (command.metadata or {}).get("#expires")
    if expires is None:
        return
    try:
        moment = datetime.fromisoformat(expires)
    except ValueError:
        raise CommandRefused(
            f"#expires {expires!r} is not an ISO-8601 time",
            code=ReasonCode.COMMAND_INVALID_ARGUMENT,
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    if moment <= datetime.now(UTC):
        raise CommandRefused(f"command expired at {expires}", code=ReasonCode.COMMAND_EXPIRED)


class RequestPipeline:
    """Expiry, URI, access, route and the exactly-once set path (see the module docstring).

    Made by the :class:`~rain_envelopes.server.server.Server` it belongs to, which owns the
    state file and the remembered sets' tasks this reads and starts.
    """

    def __init__(self, server: Server, router: Router[Handler]) -> None:
        self._server = server
        self._router = router
        # Remembered sets, a window per identity (dedup.py). A reused id with another request
        # is refused. With a state file this is the fast path in front of the stored window.
        limits = server.limits
        self.recent = SetWindow(limits.dedup_window, max_age=limits.dedup_max_age)
        #: Sets being applied: owned by the server, not by the session that asked, so a set
        #: that started is finished and recorded even when its session ends meanwhile.
        self.sets: set[asyncio.Task[None]] = set()

    def on_command(
        self, session: ServedSession, command: Command
    ) -> Command | Awaitable[Response] | None:
        """The channel's ``on_command``: a response now, or an awaitable for plugin work.

        Raises CommandRefused for a refused request (the channel answers it).
        """
        if command.is_response or command.method is CommandMethod.OBSERVE:
            return None  # clients own no resources here; observes to us mean nothing
        server = self._server
        identity = session.identity
        if identity is None:
            raise CommandRefused(
                "no authenticated identity", code=ReasonCode.AUTHORIZATION_UNAUTHORIZED_SENDER
            )
        recorded = command.method is CommandMethod.SET and command.id is not None
        if not recorded:
            check_expiry(command)  # a recorded set: after its record is looked up
        path, query = split_uri(command.uri or "", server.node)
        server.access.check(identity, command.method, path)
        route = self._router.resolve_path(command.method, path, query)
        request = Request(command, path, route.params, query, session)
        if recorded:
            return self._deduplicated(request, route.handler)
        return route.handler(request)

    # ------------------------------------------------------------------ exactly-once sets

    def _deduplicated(self, request: Request, handler: Handler) -> Awaitable[Response] | Command:
        """A set with an id: answered from its record when it was seen, else applied once by a
        server-owned task (see the module docstring); the session only waits for the answer."""
        command = request.command
        assert command.id is not None
        identity = request.identity
        digest = fingerprint(command)
        entry = self.recent.lookup(identity, command.id)
        if entry is not None:
            if entry.fingerprint != digest:
                return self._reused(command)
            self._server.peer_log.event(
                logging.INFO, "repeated-set", identity,
                "repeated set %.64r from %s answered once", command.id, identity,
            )
            return self._answer(command, entry, digest)
        entry = Entry(digest, asyncio.get_running_loop().create_future())
        self.recent.remember(identity, command.id, entry)
        task = asyncio.create_task(
            self._run_set(request, handler, entry), name=f"rain-set {command.id:.64}"
        )
        self.sets.add(task)
        task.add_done_callback(self._set_done)
        return self._answer(command, entry, digest)

    @staticmethod
    def _reused(command: Command) -> Command:
        return command.failure(
            ReasonCode.COMMAND_INVALID_ARGUMENT,
            f"command id {command.id:.64} was already used for another set",
        )

    async def _answer(self, command: Command, entry: Entry, digest: bytes) -> Response:
        """The first outcome of the set ``entry`` stands for, addressed to this request; a
        refusal (or fault) is raised again here, for this session's channel to answer."""
        try:
            # Shielded: this session ending must not cancel the set (nor its other waiters).
            response = await asyncio.shield(entry.answer)
        except asyncio.CancelledError:
            if not entry.answer.cancelled():
                raise  # our session ended
            return command.failure(
                ReasonCode.COMMAND_PROCESSING_ERROR,
                "the first attempt of this set ended without an answer (server closing)",
            )
        if entry.fingerprint != digest:  # the stored record was for another request
            return self._reused(command)
        return response.replace(to=command.sender)

    def _set_done(self, task: asyncio.Task[None]) -> None:
        self.sets.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("set task %s failed", task.get_name(), exc_info=task.exception())

    async def _run_set(self, request: Request, handler: Handler, entry: Entry) -> None:
        """Find the set's record (state file) or apply it, and resolve ``entry`` with the first
        outcome. Runs to the end whatever happens to the session that asked."""
        command = request.command
        assert command.id is not None
        try:
            response = await self._first_outcome(request, handler, entry)
        except Exception as error:
            # A refusal, or a fault of the server: every waiting session's channel answers it.
            if not entry.answer.done():
                entry.answer.set_exception(error)
                entry.answer.exception()  # retrieved: its waiters may all have gone
            return
        except BaseException:
            self._forget(request.identity, command.id, entry.answer)
            raise
        if not entry.answer.done():
            entry.answer.set_result(response)

    async def _first_outcome(self, request: Request, handler: Handler, entry: Entry) -> Command:
        command = request.command
        assert command.id is not None
        server = self._server
        store = server._store
        if store is not None:
            try:
                record = await server._in_store(store.lookup_set, request.identity, command.id)
            except StateStoreError as exc:
                log.error("%s", exc)
                return command.failure(
                    ReasonCode.COMMAND_PROCESSING_ERROR,
                    "the server's state file failed; the set was not applied",
                )
            if record is not None:
                entry.fingerprint = record.fingerprint
                return self._recorded(command, record)
        # Refused when expired before anything else is checked; the resource checks again
        # just before the setter, after waiting for the parameter's earlier sets.
        check_expiry(command)
        result = handler(request)
        response = result if isinstance(result, Command) else await result
        if response is None:
            return command.failure(
                ReasonCode.COMMAND_PROCESSING_ERROR, "the set ended without an answer"
            )
        return response

    @staticmethod
    def _recorded(command: Command, record: SetRecord) -> Command:
        """The answer a stored record gives to a repeat of its set."""
        if record.in_progress:
            return command.failure(
                ReasonCode.COMMAND_PROCESSING_ERROR,
                "outcome unknown: the server stopped while applying this set; get the "
                "parameter to see its value",
            )
        try:
            stored = decode(record.response)
        except RemoteProtocolError:
            stored = None
        if not isinstance(stored, Command):
            log.error("state file: the record of set %.64r is unreadable", command.id)
            return command.failure(
                ReasonCode.COMMAND_PROCESSING_ERROR,
                "outcome unknown: the record of this set is unreadable",
            )
        return stored

    def _forget(self, identity: str, command_id: str, future: asyncio.Future[Command]) -> None:
        entry = self.recent.lookup(identity, command_id)
        if entry is not None and entry.answer is future:
            self.recent.forget(identity, command_id)
        if not future.done():
            future.cancel()
