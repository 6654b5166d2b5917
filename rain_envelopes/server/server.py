"""The RAIN server: sessions from any TransportListener, parameters behind a resource router.

::

    server = Server(load_plugins("plugins"), node="station@irf",
                    authenticator=ServerAuthenticator(AuthorizedKeys.load("authorized_keys")))
    async with server:                                  # start(); close() on exit
        await server.listen(["tcp://0.0.0.0:4505"], security=ServerSecurity(...))
        await server.wait_closed()

Resources (PROTOCOL.md, RAIN extensions):

- ``get /params``: a collection of parameter descriptors, showing only what the caller may use;
- ``get | set | subscribe | unsubscribe /params/{name}``: sample documents.

Every request is handled in this order, and the first refusal answers it: requests in progress
(34 when the session already has ``limits.max_requests_in_progress`` answers in the works;
counted by the channel, which makes the tasks), command expiry (``#expires``, 1001), URI
(27/67), access rules on the *authenticated* identity (32/35), route (67 no such resource, 63
method not supported), parameter (67 unknown, 66 read-only, 34 too many subscriptions), value
(64, with the schema error, whether or not the parameter has a setter), plugin code (its
ParameterError code, or 101). So a refused request never reaches plugin code and changes
nothing.

Exactly-once SET. A ``set`` with an id is first looked up by (proven identity, id): in the
in-memory window (dedup.py), then in the state file. A remembered set is answered with its first
answer (64 if the id now comes with another request), even past its ``#expires``: it *was*
applied, and 1001 would say it was not. Otherwise its expiry is checked, then it is handed to a
task that belongs to the server, not to the session: a set that has started is finished and
recorded even if its session ends, and a retry arriving meanwhile on any session waits for that
first outcome (the session's task only awaits it, shielded). Under the parameter's set lock,
just before the setter, the expiry is checked again (a set that expired while queued behind
another is never applied) and, with a state file, an *in progress* record is committed; after
the setter, the outcome and the new value are committed in one transaction, and only then is
the set answered. A server killed in between leaves the in-progress record: the retry then gets
61 "outcome unknown" rather than a second application. Each identity has its own window
(``limits.dedup_window`` sets, ``limits.dedup_max_age`` seconds), so another identity's sets
cannot push yours out.

State file (``state=``, store.py). ``start()`` opens it (a file that cannot be trusted raises
StateStoreError and nothing is left running), binds the parameters, applies each stored value
of a persisted parameter through its setter (logged and skipped when it fails the schema or
the setter), and only then starts periodic publication; sessions are served after ``start()``.
Every store call runs in one dedicated worker thread (``rain-store``): commits in ``"sync"``
durability wait for an fsync there, never on the event loop, and one worker keeps them in
submission order, which is the order sets of a parameter were applied because each is
submitted with no await after its setter returned.

Sessions. Past ``limits.max_sessions`` a new client is answered with a session ``failed`` (34,
"server full: N sessions"; a server may send ``failed`` before ``new``) and closed. When a
session ends, the log line says how, read from the session protocol's own state: ``finished``,
``failed`` (sent or received), or ``lost`` (the link ended, or pings went unanswered, with
neither), whatever ``close_reason`` the channel chose.

Logging: everything a peer can trigger (connections refused, sessions not established,
sessions established and ended, messages, repeated sets, and in the channels bad frames,
dropped replies and refused requests) goes through a PeerLog keyed by the proven identity (or
key, or address), so one peer costs at most two lines per kind per interval; a timer task
writes the summaries with their counts.

Fast paths (lists, stored values, refusals) answer synchronously in the channel's reader; only
requests that run plugin code become tasks, so a slow getter delays nobody else.

Clean shutdown (``close()``): stop accepting, stop periodic publication, let sets being applied
finish and be recorded (bounded), send ``finished`` to every session, cancel what is still
running, close the listeners this server opened, unbind the parameters, wait (bounded) for
plugin threads to return, and close the state file.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import fastjsonschema

from ..auth import ServerAuthenticator
from ..channel import ServerChannel
from ..codec import decode, encode
from ..envelopes import Command, CommandMethod, Message, Reason, ReasonCode, SessionState
from ..errors import (
    ChannelClosed,
    LocalProtocolError,
    RemoteProtocolError,
    SessionError,
    TransportError,
)
from ..keys import AuthorizedKeys, Identity, format_public_key
from ..node import Node
from ..peerlog import PeerLog
from ..protocol import NodeRegistry
from ..transport import ServerSecurity, Transport, TransportListener, transport_factory
from .access import AccessPolicy
from .config import Limits, ServerConfig
from .dedup import Entry, SetWindow, fingerprint
from .errors import InvalidValue, NotAllowed, ParameterError, PluginError
from .live import LiveParameter, PluginRuntime
from .parameters import Parameter
from .plugins import check_unique, load_plugins
from .router import Router, split_uri
from .samples import (
    COLLECTION_TYPE,
    PARAMETER_TYPE,
    SAMPLE_TYPE,
    Sample,
    collection,
    new_epoch,
)
from .store import Durability, SetRecord, StateStore, StateStoreError, StoredValue
from .subscriptions import Subscription

__all__ = ["Request", "ServedSession", "Server"]

log = logging.getLogger("rain.server")

Response = Command | None
Handler = Callable[["Request"], Command | Coroutine[Any, Any, Response]]
MessageHandler = Callable[["ServedSession", Message], object]
_R = TypeVar("_R")


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


def _expired(command: Command) -> None:
    expires = (command.metadata or {}).get("#expires")
    if expires is None:
        return
    try:
        moment = datetime.fromisoformat(expires)
    except ValueError:
        raise InvalidValue(f"#expires {expires!r} is not an ISO-8601 time") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    if moment <= datetime.now(UTC):
        raise ParameterError(f"command expired at {expires}", code=ReasonCode.COMMAND_EXPIRED)


def _session_outcome(channel: ServerChannel) -> tuple[str, str]:
    """How a served session ended: ("finished" | "failed" | "lost", detail for the log).

    Read from the session protocol's own state, which only ``finished`` or ``failed`` (sent or
    received) make terminal: a link that ended without either (a client that vanished, a dead
    link noticed by pings or heartbeats) is lost, whatever ``close_reason`` the channel gave it
    and however its ``state`` reads once closed.
    """
    reason = channel.close_reason
    state = channel._protocol.state  # not channel.state: that reads "ended" once closed
    if state is SessionState.FINISHED:
        return "finished", "finished"
    if state is SessionState.FAILED:
        return "failed", str(reason) if reason is not None else "failed"
    return "lost", str(reason) if reason is not None else "the link ended without finished"


async def _handle(handler: Handler, request: Request) -> Response:
    result = handler(request)
    return result if isinstance(result, Command) else await result


def _value_of(command: Command) -> Any:
    if command.resource is None:
        raise InvalidValue("set needs a value: the command has no resource")
    media = (command.type or "").split(";", 1)[0].strip().lower()
    if media == SAMPLE_TYPE:
        if not isinstance(command.resource, Mapping) or "value" not in command.resource:
            raise InvalidValue("a sample document needs a 'value'")
        return command.resource["value"]
    return command.resource


class Server:
    """Serves parameters to authenticated sessions. See the module docstring.

    ``authenticator`` None serves every session as the anonymous identity (embedding, tests).
    ``access`` None allows every authenticated identity everything (guests: get, subscribe).
    ``identity`` and ``authorized_keys`` are what :meth:`listen` hands the transport by default.
    Raises PluginError when two parameters share a name.
    """

    def __init__(
        self,
        parameters: Iterable[Parameter] = (),
        *,
        node: Node | str,
        authenticator: ServerAuthenticator | None = None,
        access: AccessPolicy | None = None,
        limits: Limits | None = None,
        identity: Identity | None = None,
        authorized_keys: AuthorizedKeys | None = None,
        config: ServerConfig | None = None,
        state: str | os.PathLike[str] | None = None,
        durability: Durability = "sync",
    ) -> None:
        if durability not in ("sync", "batch"):
            raise ValueError(f"durability must be 'sync' or 'batch', not {durability!r}")
        declared = list(parameters)
        check_unique(declared)
        for param in declared:
            param.check()
        self.node = Node.coerce(node)
        self.authenticator = authenticator
        self.access = access or AccessPolicy(None)
        self.limits = limits or Limits()
        self.identity = identity
        self.authorized_keys = authorized_keys
        self.config = config
        #: The state file (parameter values and the SET window), or None: memory only.
        self.state = Path(state) if state is not None else None
        self.durability: Durability = durability
        #: Seconds the last start spent restoring stored values (None: nothing to restore).
        self.restore_seconds: float | None = None
        self.parameters: dict[str, Parameter] = {p.name: p for p in declared}
        #: Called for every message a client sends (after the automatic `received` receipt);
        #: raising makes the channel send a `failed` receipt instead of `consumed`.
        self.on_message: MessageHandler = self._log_message
        self.epoch = new_epoch()
        self._live: dict[str, LiveParameter] = {}
        self._router: Router[Handler] = Router()
        self._router.add("/params", CommandMethod.GET, self._list)
        self._router.add("/params/{name}", CommandMethod.GET, self._get)
        self._router.add("/params/{name}", CommandMethod.SET, self._set)
        self._router.add("/params/{name}", CommandMethod.SUBSCRIBE, self._subscribe)
        self._router.add("/params/{name}", CommandMethod.UNSUBSCRIBE, self._unsubscribe)
        self._registry = NodeRegistry()
        self._sessions: set[ServedSession] = set()
        self._establishing: set[ServerChannel] = set()
        self._listeners: list[TransportListener] = []
        self._owned_listeners: list[TransportListener] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        # Remembered sets, a window per identity (dedup.py). A reused id with another request
        # is refused. With a state file this is the fast path in front of the stored window.
        self._recent = SetWindow(self.limits.dedup_window, max_age=self.limits.dedup_max_age)
        # Sets being applied: owned by the server, not by the session that asked, so a set
        # that started is finished and recorded even when its session ends meanwhile.
        self._sets: set[asyncio.Task[None]] = set()
        self._store: StateStore | None = None
        # The one thread that talks to the state file: commits wait for the disk there, not
        # on the event loop, and one worker keeps them in submission order.
        self._store_worker: ThreadPoolExecutor | None = None
        self._start_lock = asyncio.Lock()
        #: What a peer can make the server log (refused connections, sessions set up or not,
        #: messages, repeated sets): one line per kind and peer per interval, then a count.
        self.peer_log = PeerLog(log)
        #: The same for the channels of this server's sessions (bad frames, replies dropped
        #: for a full peer queue, requests over the bound). Both are flushed by a timer.
        self.channel_log = PeerLog(logging.getLogger("rain.channel"))
        self._executor: ThreadPoolExecutor | None = None
        self._runtime: PluginRuntime | None = None
        self._started = False
        self._closing = False
        self._closed = asyncio.Event()

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_config(
        cls, config: ServerConfig, *, parameters: Iterable[Parameter] = ()
    ) -> Server:
        """A server built from a checked config: loads its key, authorised keys and plugins.

        Raises KeyFileError for a bad key file, PluginError for a bad plugin (file and line).
        """
        identity = Identity.load(config.key_file) if config.key_file is not None else None
        authorized = (
            AuthorizedKeys.load(config.authorized_keys)
            if config.authorized_keys is not None
            else None
        )
        declared = list(parameters)
        if config.plugins is not None:
            declared = load_plugins(config.plugins) + declared
        return cls(
            declared,
            node=config.identity,
            authenticator=ServerAuthenticator(authorized, allow_guest=config.allow_guest),
            access=AccessPolicy(config.access),
            limits=config.limits,
            identity=identity,
            authorized_keys=authorized,
            config=config,
            state=config.state,
            durability="batch" if config.state_durability == "batch" else "sync",
        )

    # ------------------------------------------------------------------ life cycle

    async def start(self) -> None:
        """Open the state file, bind the parameters, restore their stored values and start
        periodic publication: everything before the first session is served. Idempotent.

        Raises StateStoreError when the state file cannot be used (unreadable, corrupt, from a
        newer format, in use), PluginError when a parameter is already served by another
        running server. Either way nothing is left running.
        """
        async with self._start_lock:
            if self._started:
                return
            if self._closing:
                raise RuntimeError("this server has been closed")
            stored = await self._open_store() if self.state is not None else {}
            try:
                await self._bind_and_restore(stored)
            except BaseException:
                await self._close_store()
                raise
            self._spawn(self._flush_logs(), "rain-peer-log")
            self._started = True
        log.info(
            "server %s started: %d parameters, epoch %s%s", self.node, len(self._live), self.epoch,
            f", state {self.state} ({self.durability})" if self.state is not None else "",
        )

    async def _bind_and_restore(self, stored: Mapping[str, StoredValue]) -> None:
        self._executor = ThreadPoolExecutor(
            max_workers=self.limits.plugin_threads, thread_name_prefix="rain-plugin"
        )
        self._runtime = PluginRuntime(
            self._executor, timeout=self.limits.plugin_timeout, epoch=self.epoch
        )
        bound: list[Parameter] = []
        try:
            for name, param in self.parameters.items():
                try:
                    live = LiveParameter(param, self._runtime)
                except ParameterError as exc:
                    raise PluginError(exc.description, path=param.path, line=param.line) from None
                param._bind(live)
                bound.append(param)
                self._live[name] = live
            # Before periodic publication and before any session: nobody ever sees the
            # initial value of a parameter whose stored value is restored.
            await self._restore(stored)
        except BaseException:
            for param in bound:
                param._bind(None)
            self._live.clear()
            self._executor.shutdown(wait=False)
            raise
        for live in self._live.values():
            live.start_periodic()

    async def _open_store(self) -> dict[str, StoredValue]:
        """Open the state file in the store worker and read its values; StateStoreError."""
        assert self.state is not None
        worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rain-store")
        self._store_worker = worker
        opened = functools.partial(
            StateStore.open, self.state, durability=self.durability,
            max_records=self.limits.dedup_window, max_age=self.limits.dedup_max_age,
        )
        try:
            self._store = await self._in_store(opened)
            values = await self._in_store(self._store.load_values)
            await self._in_store(self._store.prune, time.time())
        except BaseException:
            await self._close_store()
            raise
        return values

    async def _restore(self, stored: Mapping[str, StoredValue]) -> None:
        """Apply each stored value of a declared, persisted parameter as a set would (its
        setter runs); a value that fails the schema or the setter is logged and skipped."""
        if self.state is None:
            return
        loop = asyncio.get_running_loop()
        started = loop.time()
        restored = 0
        for name, item in stored.items():
            live = self._live.get(name)
            if live is None or not live.declaration.persists:
                log.info(
                    "state file: stored value of %s kept but not restored (%s)", name,
                    "no such parameter" if live is None else "the parameter does not persist",
                )
                continue
            try:
                live.declaration.validate(item.value)
            except fastjsonschema.JsonSchemaException as exc:
                log.warning(
                    "state file: stored value of %s skipped: it fails the parameter's schema "
                    "(%s)", name, getattr(exc, "message", exc),
                )
                continue
            try:
                await live.write(item.value)
            except ParameterError as exc:
                log.error("state file: restoring %s failed: %s", name, exc.description)
                continue
            restored += 1
        self.restore_seconds = loop.time() - started
        log.info(
            "restored %d of %d stored values from %s in %.1f ms", restored, len(stored),
            self.state, self.restore_seconds * 1000,
        )

    async def _in_store(self, function: Callable[..., _R], *args: Any) -> _R:
        """Run a StateStore call in the store worker (in submission order)."""
        assert self._store_worker is not None
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._store_worker, functools.partial(function, *args))

    async def _close_store(self) -> None:
        store, worker = self._store, self._store_worker
        self._store = self._store_worker = None
        if worker is None:
            return
        if store is not None:
            loop = asyncio.get_running_loop()
            try:
                await asyncio.wait_for(
                    loop.run_in_executor(worker, store.close), self.limits.shutdown_timeout
                )
            except TimeoutError:
                log.error("state file %s: not closed within %g s", store.path,
                          self.limits.shutdown_timeout)
            except StateStoreError as exc:
                log.error("%s", exc)
        worker.shutdown(wait=False)

    async def __aenter__(self) -> Server:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def endpoints(self) -> list[str]:
        """Endpoints bound by the listeners this server serves (real ports, when 0 was asked)."""
        return [endpoint for listener in self._listeners for endpoint in listener.endpoints]

    @property
    def sessions(self) -> list[ServedSession]:
        return list(self._sessions)

    def default_security(self) -> ServerSecurity:
        """What :meth:`listen` gives the transport when no security is passed."""
        config = self.config
        return ServerSecurity(
            identity=self.identity,
            authorized_keys=self.authorized_keys,
            allow=tuple(config.allow) if config else (),
            insecure=config.insecure if config else False,
        )

    async def listen(
        self,
        endpoints: Sequence[str] | None = None,
        *,
        security: ServerSecurity | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> list[TransportListener]:
        """Bind ``endpoints`` (default: the config's ``listen``) and serve them in the
        background; returns the started listeners (``.endpoints`` has the real ports).

        Raises ConfigError for an endpoint no transport handles, TransportError (or
        TransportSecurityError) when binding fails.
        """
        await self.start()
        if endpoints is None:
            endpoints = self.config.listen if self.config else ()
        if not endpoints:
            raise ValueError("no endpoints to listen on")
        if options is None and self.config is not None:
            options = self.config.transport
        groups: dict[int, tuple[Any, list[str]]] = {}
        for endpoint in endpoints:
            factory = transport_factory(endpoint)
            groups.setdefault(id(factory), (factory, []))[1].append(endpoint)
        started: list[TransportListener] = []
        try:
            for factory, group in groups.values():
                listener = factory.listen(group, security or self.default_security(), options)
                await listener.start()
                started.append(listener)
        except BaseException:
            for listener in started:
                await listener.close()
            raise
        for listener in started:
            self._owned_listeners.append(listener)
            self._listeners.append(listener)
            self._spawn(self.serve(listener), f"rain-accept {listener.endpoints}")
        return started

    async def serve(self, listener: TransportListener) -> None:
        """Serve every transport ``listener`` accepts until it (or the server) closes.

        The listener must be started. The server does not close a listener it did not open.
        """
        await self.start()
        if listener not in self._listeners:
            self._listeners.append(listener)
        log.info("serving %s", ", ".join(listener.endpoints))
        try:
            async for transport in listener:
                if self._closing:
                    await transport.close()
                    break
                self._spawn(self.handle(transport), "rain-session")
        finally:
            if listener in self._listeners:
                self._listeners.remove(listener)

    async def handle(self, transport: Transport) -> None:
        """Serve one session over ``transport`` until it ends (the transport is closed then)."""
        await self.start()
        peer = transport.peer_identity or transport.peer_address
        if self._closing or len(self._sessions) + len(self._establishing) >= (
            self.limits.max_sessions
        ):
            reason = (
                Reason(ReasonCode.SESSION_ERROR, "server shutting down")
                if self._closing
                else Reason(
                    ReasonCode.AUTHORIZATION_QUOTA_EXCEEDED,
                    f"server full: {self.limits.max_sessions} sessions",
                )
            )
            self.peer_log.event(
                logging.WARNING, "connection-refused", peer, "refusing a connection from %s: %s",
                transport.peer_address, reason.description,
            )
            # A coded `failed` (allowed before `new`), so the client learns why, then close.
            refused = ServerChannel(transport, node=self.node, authenticator=None)
            await refused.fail(reason)
            return
        channel = ServerChannel(
            transport,
            node=self.node,
            authenticator=self.authenticator,
            registry=self._registry,
            establish_timeout=self.limits.establish_timeout,
            max_requests_in_progress=self.limits.max_requests_in_progress,
            peer_log=self.channel_log,
        )
        session = ServedSession(channel)
        # Handlers go in before the session is established: a client may send its first
        # command right behind its credentials, before this coroutine runs again.
        channel.on_command = lambda command: self._on_command(session, command)
        channel.on_message = lambda message: self.on_message(session, message)
        self._establishing.add(channel)
        try:
            await channel.establish_session()
        except (SessionError, TransportError, ChannelClosed) as exc:
            # ChannelClosed: the client hung up (or the link ended) before establishing; as
            # ordinary as a refusal, so no traceback.
            self.peer_log.event(
                logging.INFO, "session-not-established", peer,
                "session from %s not established: %.200s", transport.peer_address, exc,
            )
            await channel.close()
            return
        finally:
            self._establishing.discard(channel)
        self._sessions.add(session)
        who = session.identity or peer
        self.peer_log.event(
            logging.INFO, "session-established", who, "session established: %s as %s (from %s)",
            session.node, session.identity, transport.peer_address or "local",
        )
        try:
            await channel.wait_closed()
        finally:
            self._release(session)
            outcome, detail = _session_outcome(channel)
            self.peer_log.event(
                logging.INFO, f"session-{outcome}", who, "session %s: %s (%.200s)",
                "ended" if outcome == "finished" else outcome, session.node, detail,
            )

    def _release(self, session: ServedSession) -> None:
        for name, subscription in list(session.subscriptions.items()):
            subscription.close()
            live = self._live.get(name)
            if live is not None:
                live.subscriptions.discard(subscription)
        session.subscriptions.clear()
        self._sessions.discard(session)
        session.ended.set()

    async def reload_keys(self) -> set[str]:
        """Re-read the authorised-keys file; end exactly the sessions that proved a key which
        is gone (or now maps to another name).

        Each such session gets ``failed`` with code 13 "key revoked" before its link is dropped
        (listeners that can, ``close_peer``, then forget the peer). Returns the identity names
        whose keys were revoked. Raises KeyFileError when the file is bad (the old keys stay
        in force).
        """
        keys = self.authorized_keys
        if keys is None:
            return set()
        before = dict(keys.items())
        removed = keys.reload()
        revoked = {before[key] for key in removed if key in before}
        if revoked:
            log.warning("authorised keys reloaded; revoked: %s", ", ".join(sorted(revoked)))
        else:
            log.info("authorised keys reloaded; nothing revoked")
        doomed = [s for s in self._sessions if s.channel.remote_key in removed]
        await asyncio.gather(
            *(
                s.channel.fail(Reason(ReasonCode.SESSION_AUTHENTICATION_FAILED, "key revoked"))
                for s in doomed
            ),
            return_exceptions=True,
        )
        for listener in list(self._listeners):
            for key in removed:
                await listener.close_peer(format_public_key(key))
        return revoked

    async def close(self) -> None:
        """Shut down cleanly (see the module docstring). Idempotent; never raises."""
        if self._closing:
            await self._closed.wait()
            return
        self._closing = True
        log.info("server %s shutting down", self.node)
        timeout = self.limits.shutdown_timeout
        current = asyncio.current_task()
        for live in self._live.values():
            live.stop()
        if self._sets:
            # Sets being applied are finished, recorded and answered before the sessions end.
            _, late = await asyncio.wait(list(self._sets), timeout=timeout)
            if late:
                log.warning("%d sets still being applied after %g s; cancelled", len(late),
                            timeout)
                for task in late:
                    task.cancel()
                await asyncio.wait(late, timeout=timeout)
        channels = [s.channel for s in self._sessions]
        try:
            async with asyncio.timeout(timeout):
                await asyncio.gather(
                    *(ch.finish() for ch in channels), return_exceptions=True
                )
                await asyncio.gather(
                    *(ch.close() for ch in list(self._establishing)), return_exceptions=True
                )
        except TimeoutError:
            log.warning("sessions did not finish within %g s", timeout)
        for listener in self._owned_listeners:
            try:
                await listener.close()
            except Exception:
                log.exception("closing listener %s failed", listener)
        for task in list(self._tasks):
            if task is not current and not task.done():
                task.cancel()
        pending = [t for t in self._tasks if t is not current]
        if pending:
            await asyncio.wait(pending, timeout=timeout)
        for name, param in self.parameters.items():
            if name in self._live:
                param._bind(None)
        self._live.clear()
        self._recent.clear()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            try:
                await asyncio.wait_for(asyncio.to_thread(self._executor.shutdown, True), timeout)
            except TimeoutError:
                log.warning("plugin threads still running after %g s", timeout)
        await self._close_store()
        self._closed.set()
        log.info("server %s closed", self.node)

    async def wait_closed(self) -> None:
        await self._closed.wait()

    async def _flush_logs(self) -> None:
        # A timer, not synchronisation: summaries of suppressed peer events go out within an
        # interval even when the peer has gone quiet.
        interval = min(self.peer_log.interval, self.channel_log.interval)
        try:
            while True:
                await asyncio.sleep(interval)
                self.peer_log.flush()
                self.channel_log.flush()
        finally:
            self.peer_log.flush()
            self.channel_log.flush()

    def _spawn(self, coroutine: Coroutine[Any, Any, Any], name: str) -> None:
        task = asyncio.create_task(coroutine, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("server task %s failed", task.get_name(), exc_info=task.exception())

    # ------------------------------------------------------------------ messages

    def _log_message(self, session: ServedSession, message: Message) -> None:
        self.peer_log.event(
            logging.INFO, "message", session.identity,
            "message from %s (%.64r): %.200r", session.identity, message.type, message.content,
        )

    # ------------------------------------------------------------------ dispatch

    def _on_command(
        self, session: ServedSession, command: Command
    ) -> Command | Awaitable[Response] | None:
        """The channel's ``on_command``: a response now, or an awaitable for plugin work."""
        if command.is_response or command.method is CommandMethod.OBSERVE:
            return None  # clients own no resources here; observes to us mean nothing
        try:
            identity = session.identity
            if identity is None:
                raise ParameterError(
                    "no authenticated identity", code=ReasonCode.AUTHORIZATION_UNAUTHORIZED_SENDER
                )
            recorded = command.method is CommandMethod.SET and command.id is not None
            if not recorded:
                _expired(command)  # a recorded set: after its record is looked up
            path, query = split_uri(command.uri or "", self.node)
            self.access.check(identity, command.method, path)
            route = self._router.resolve_path(command.method, path, query)
            request = Request(command, path, route.params, query, session)
            if recorded:
                return self._deduplicated(request, route.handler)
            result = route.handler(request)
        except ParameterError as exc:
            return command.failure(exc.code, exc.description)
        except Exception:
            log.exception("handling %s %s failed", command.method, command.uri)
            return command.failure(ReasonCode.GENERAL_ERROR, "internal server error")
        if isinstance(result, Command):
            return result
        return self._complete(command, result)

    async def _complete(self, command: Command, pending: Awaitable[Response]) -> Response:
        try:
            return await pending
        except ParameterError as exc:
            return command.failure(exc.code, exc.description)
        except (ChannelClosed, LocalProtocolError, TransportError):
            return None  # the session ended while we worked
        except Exception:
            log.exception("handling %s %s failed", command.method, command.uri)
            return command.failure(ReasonCode.GENERAL_ERROR, "internal server error")

    def _deduplicated(self, request: Request, handler: Handler) -> Awaitable[Response] | Command:
        """A set with an id: answered from its record when it was seen, else applied once by a
        server-owned task (see the module docstring); the session only waits for the answer."""
        command = request.command
        assert command.id is not None
        identity = request.identity
        digest = fingerprint(command)
        entry = self._recent.lookup(identity, command.id)
        if entry is not None:
            if entry.fingerprint != digest:
                return self._reused(command)
            self.peer_log.event(
                logging.INFO, "repeated-set", identity,
                "repeated set %.64r from %s answered once", command.id, identity,
            )
            return self._answer(command, entry, digest)
        entry = Entry(digest, asyncio.get_running_loop().create_future())
        self._recent.remember(identity, command.id, entry)
        task = asyncio.create_task(
            self._run_set(request, handler, entry), name=f"rain-set {command.id:.64}"
        )
        self._sets.add(task)
        task.add_done_callback(self._set_done)
        return self._answer(command, entry, digest)

    @staticmethod
    def _reused(command: Command) -> Command:
        return command.failure(
            ReasonCode.COMMAND_INVALID_ARGUMENT,
            f"command id {command.id:.64} was already used for another set",
        )

    async def _answer(self, command: Command, entry: Entry, digest: bytes) -> Response:
        """The first outcome of the set ``entry`` stands for, addressed to this request."""
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
        self._sets.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("set task %s failed", task.get_name(), exc_info=task.exception())

    async def _run_set(self, request: Request, handler: Handler, entry: Entry) -> None:
        """Find the set's record (state file) or apply it, and resolve ``entry`` with the first
        outcome. Runs to the end whatever happens to the session that asked."""
        command = request.command
        assert command.id is not None
        response: Command | None = None
        try:
            if self._store is not None:
                try:
                    record = await self._in_store(
                        self._store.lookup_set, request.identity, command.id
                    )
                except StateStoreError as exc:
                    log.error("%s", exc)
                    response = command.failure(
                        ReasonCode.COMMAND_PROCESSING_ERROR,
                        "the server's state file failed; the set was not applied",
                    )
                else:
                    if record is not None:
                        entry.fingerprint = record.fingerprint
                        response = self._recorded(command, record)
            if response is None:
                response = await self._complete(command, self._apply(request, handler))
            if response is None:
                response = command.failure(
                    ReasonCode.COMMAND_PROCESSING_ERROR, "the set ended without an answer"
                )
        except BaseException:
            self._forget(request.identity, command.id, entry.answer)
            raise
        if not entry.answer.done():
            entry.answer.set_result(response)

    def _recorded(self, command: Command, record: SetRecord) -> Command:
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

    @staticmethod
    async def _apply(request: Request, handler: Handler) -> Response:
        # Refused when expired before anything else is checked; _write checks again just
        # before the setter, after waiting for the parameter's earlier sets.
        _expired(request.command)
        return await _handle(handler, request)

    def _forget(self, identity: str, command_id: str, future: asyncio.Future[Command]) -> None:
        entry = self._recent.lookup(identity, command_id)
        if entry is not None and entry.answer is future:
            self._recent.forget(identity, command_id)
        if not future.done():
            future.cancel()

    # ------------------------------------------------------------------ resources

    def _lookup(self, request: Request) -> LiveParameter:
        name = request.params["name"]
        live = self._live.get(name)
        if live is None:
            raise ParameterError(
                f"no parameter {name!r}", code=ReasonCode.COMMAND_RESOURCE_NOT_FOUND
            )
        return live

    def _list(self, request: Request) -> Command:
        items = []
        for name in sorted(self._live):
            declaration = self._live[name].declaration
            path = f"/params/{name}"
            allowed = [
                m for m in declaration.methods if self.access.allows(request.identity, m, path)
            ]
            if not allowed:
                continue  # what you may not touch, you are not shown
            descriptor = declaration.descriptor()
            descriptor["methods"] = allowed
            items.append(descriptor)
        return request.command.success(collection(PARAMETER_TYPE, items), COLLECTION_TYPE)

    def _get(self, request: Request) -> Command | Coroutine[Any, Any, Response]:
        live = self._lookup(request)
        if live.declaration.get_function is None and live.last is not None:
            return request.command.success(live.last.document(), SAMPLE_TYPE)
        return self._read(request.command, live)

    @staticmethod
    async def _read(command: Command, live: LiveParameter) -> Response:
        sample = await live.read()
        return command.success(sample.document(), SAMPLE_TYPE)

    def _set(self, request: Request) -> Coroutine[Any, Any, Response]:
        live = self._lookup(request)
        declaration = live.declaration
        if not declaration.settable:
            raise NotAllowed(f"parameter {live.name!r} is read-only")
        value = _value_of(request.command)
        try:
            declaration.validate(value)
        except fastjsonschema.JsonSchemaValueException as exc:
            message = exc.message
            if message.startswith("data"):
                message = live.name + message[len("data"):]
            raise InvalidValue(f"invalid value: {message}") from None
        except fastjsonschema.JsonSchemaException as exc:
            raise InvalidValue(f"invalid value: {exc}") from None
        return self._write(request, live, value)

    async def _write(self, request: Request, live: LiveParameter, value: Any) -> Response:
        """Apply a checked value; with a state file, record it (see the module docstring)."""
        command = request.command
        store = self._store
        recorded = store is not None and command.id is not None
        # An intent is recorded only where applying acts outside the transaction (a setter);
        # a stored value is published and recorded with nothing in between to lose.
        intent = recorded and live.declaration.set_function is not None
        digest = fingerprint(command) if recorded else b""
        reached = False

        async def before() -> None:
            nonlocal reached
            _expired(command)
            if intent:
                assert store is not None
                assert command.id is not None
                try:
                    await self._in_store(
                        store.begin_set, request.identity, command.id, digest, time.time()
                    )
                except StateStoreError as exc:
                    log.error("%s", exc)
                    raise ParameterError(
                        "the server's state file failed; the set was not applied",
                        code=ReasonCode.COMMAND_PROCESSING_ERROR,
                    ) from None
            reached = True

        try:
            sample = await live.write(value, before=before)
        except ParameterError as exc:
            response = command.failure(exc.code, exc.description)
            if recorded and reached:  # the setter ran (or is still running): its outcome
                await self._record(request, None, None, digest, response)
            return response
        response = command.success(sample.document(), SAMPLE_TYPE)
        if store is not None:
            # Submitted with no await since the setter returned: the single store worker
            # commits the sets of one parameter in the order they were applied.
            name = live.name if live.declaration.persists else None
            if recorded:
                await self._record(request, name, sample, digest, response)
            elif name is not None:
                await self._store_quietly(
                    store.store_value, name, sample.value, sample.timestamp, sample.seq
                )
        return response

    async def _record(
        self,
        request: Request,
        name: str | None,
        sample: Sample | None,
        digest: bytes,
        response: Command,
    ) -> None:
        store = self._store
        assert store is not None
        assert request.command.id is not None
        call = functools.partial(
            store.apply_set, request.identity, request.command.id, name,
            None if sample is None else sample.value, digest, encode(response), time.time(),
            timestamp=None if sample is None else sample.timestamp,
            seq=None if sample is None else sample.seq,
        )
        await self._store_quietly(call)

    async def _store_quietly(self, function: Callable[..., object], *args: Any) -> None:
        # The set has been applied: it is answered as it went even when the file fails now;
        # the failure is the operator's to see (a retry after a restart then gets 61).
        try:
            await self._in_store(function, *args)
        except StateStoreError as exc:
            log.error("a set was applied but not recorded: %s", exc)

    def _subscribe(self, request: Request) -> Coroutine[Any, Any, Response]:
        live = self._lookup(request)
        session = request.session
        if live.name not in session.subscriptions and len(session.subscriptions) >= (
            self.limits.max_subscriptions
        ):
            raise ParameterError(
                f"at most {self.limits.max_subscriptions} subscriptions per session",
                code=ReasonCode.AUTHORIZATION_QUOTA_EXCEEDED,
            )
        return self._start_subscription(request, live)

    async def _start_subscription(self, request: Request, live: LiveParameter) -> Response:
        session = request.session
        command = request.command
        await live.snapshot()
        if session.closed or self._closing:
            return None
        previous = session.subscriptions.pop(live.name, None)
        if previous is not None:
            previous.close()
            live.subscriptions.discard(previous)
        subscription = Subscription(
            live.name, command.uri or "", session.channel.send, maxlen=self.limits.queue_length
        )
        # Registered and snapshotted with no await in between: every later sample is queued,
        # every earlier one is in the snapshot.
        session.subscriptions[live.name] = subscription
        live.subscriptions.add(subscription)
        assert live.last is not None
        response = command.success(live.last.document(), SAMPLE_TYPE)
        try:
            # Sent here, not returned: the snapshot must leave before the first observe.
            await session.channel.send(response)
        except (ChannelClosed, LocalProtocolError, TransportError):
            subscription.close()
            live.subscriptions.discard(subscription)
            session.subscriptions.pop(live.name, None)
            return None
        subscription.start()
        return None

    def _unsubscribe(self, request: Request) -> Command:
        live = self._lookup(request)
        subscription = request.session.subscriptions.pop(live.name, None)
        if subscription is not None:
            subscription.close()
            live.subscriptions.discard(subscription)
        return request.command.success()
