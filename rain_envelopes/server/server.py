"""The RAIN server: sessions from any TransportListener, parameters behind a resource router.

::

    server = Server(load_plugins("plugins"), node="station@irf",
                    authenticator=ServerAuthenticator(AuthorizedKeys.load("authorized_keys")))
    async with server:                                  # start(); close() on exit
        await server.listen(["tcp://0.0.0.0:4505"], security=ServerSecurity(...))
        await server.wait_closed()

Theory of operation. The server is three parts, as caproto's is: this module holds the life
cycle (start, listen, accept, serve a session, reload keys, close) and everything the parts
share (the parameters bound at start, the state file and its worker, the peer logs); the request
pipeline (pipeline.py) takes each command of a session through expiry, URI, access, route and
the exactly-once path for sets, in an order its docstring lists; the ``/params`` resource
(params.py) lists, reads, sets and subscribes parameters. Each request is answered by the
session's channel, the one place where a refusal (CommandRefused, ParameterError) or a fault
becomes a reply: a fault of the server itself is answered with 1 "internal server error" (the
``handler_fault`` this module gives every channel) and logged with its traceback.

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
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import fastjsonschema

from ..auth import ServerAuthenticator
from ..channel import ServerChannel
from ..envelopes import Message, Reason, ReasonCode, SessionState
from ..errors import ChannelClosed, CommandRefused, SessionError, TransportError
from ..keys import AuthorizedKeys, Identity, format_public_key
from ..node import Node
from ..peerlog import PeerLog
from ..protocol import NodeRegistry
from ..transport import ServerSecurity, Transport, TransportListener, transport_factory
from .access import AccessPolicy
from .config import Limits, ServerConfig
from .errors import PluginError
from .live import LiveParameter, PluginRuntime
from .parameters import Parameter
from .params import ParamsResource
from .pipeline import Handler, Request, RequestPipeline, ServedSession
from .plugins import check_unique, load_plugins
from .router import Router
from .routing import Switchboard
from .samples import new_epoch
from .store import Durability, StateStore, StateStoreError, StoredValue

if TYPE_CHECKING:
    from ..metrics import ServerMetrics

__all__ = ["Request", "ServedSession", "Server"]

log = logging.getLogger("rain.server")

_SERVER_FAULT = Reason(ReasonCode.GENERAL_ERROR, "internal server error")

MessageHandler = Callable[["ServedSession", Message], object]
_R = TypeVar("_R")


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
        #: Prometheus metrics (rain_envelopes.metrics.ServerMetrics attaches itself), or None:
        #: then every hook below is one ``is None`` test.
        self.metrics: ServerMetrics | None = None
        self.epoch = new_epoch()
        self._live: dict[str, LiveParameter] = {}
        router: Router[Handler] = Router()
        ParamsResource(self).register(router)
        self._pipeline = RequestPipeline(self, router)
        self._registry = NodeRegistry()
        self._sessions: set[ServedSession] = set()
        self._establishing: set[ServerChannel] = set()
        self._listeners: list[TransportListener] = []
        self._owned_listeners: list[TransportListener] = []
        self._tasks: set[asyncio.Task[Any]] = set()
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
        #: Messages and receipts for other nodes with a session here (routing.py).
        self.switchboard = Switchboard(self.node, lambda: self.access, self.peer_log)
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
        if self.metrics is not None:
            self._runtime.on_call = self.metrics.plugin_call
        bound: list[Parameter] = []
        try:
            for name, param in self.parameters.items():
                try:
                    live = LiveParameter(param, self._runtime)
                except CommandRefused as exc:
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
            except CommandRefused as exc:
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
            if self.metrics is not None:
                self.metrics.session_refused(reason.code)
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
        pipeline = self._pipeline
        channel.on_command = lambda command: pipeline.on_command(session, command)
        if self.metrics is not None:
            channel.on_command = self.metrics.wrap(channel.on_command)
        # A fault of the server itself (plugin faults are refusals with 101 by then).
        channel.handler_fault = _SERVER_FAULT
        channel.on_message = lambda message: self._on_message(session, message)
        channel.on_notification = lambda note: self.switchboard.route_notification(session, note)
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
            if self.metrics is not None:
                why = getattr(exc, "reason", None)
                self.metrics.session_refused(why.code if isinstance(why, Reason) else None)
            await channel.close()
            return
        finally:
            self._establishing.discard(channel)
        self._sessions.add(session)
        self.switchboard.attach(session)
        if self.metrics is not None:
            self.metrics.session_established()
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
        if self.metrics is not None:
            self.metrics.session_ended(session)  # before its subscriptions are let go
        for name, subscription in list(session.subscriptions.items()):
            subscription.close()
            live = self._live.get(name)
            if live is not None:
                live.subscriptions.discard(subscription)
        session.subscriptions.clear()
        self.switchboard.detach(session)
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
        sets = self._pipeline.sets
        if sets:
            # Sets being applied are finished, recorded and answered before the sessions end.
            _, late = await asyncio.wait(list(sets), timeout=timeout)
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
        await self.switchboard.close()
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
        self._pipeline.recent.clear()
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

    def _on_message(self, session: ServedSession, message: Message) -> object:
        # Addressed to another node with a session here: the switchboard passes it on (and the
        # application never sees it); otherwise it is the server's own.
        if self.switchboard.route_message(session, message):
            return None
        return self.on_message(session, message)

    def _log_message(self, session: ServedSession, message: Message) -> None:
        self.peer_log.event(
            logging.INFO, "message", session.identity,
            "message from %s (%.64r): %.200r", session.identity, message.type, message.content,
        )
