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
nothing. A repeated ``set`` (same identity, same command id, within the last
``limits.dedup_window`` sets *of that identity*: dedup.py) is answered with the first answer and
applied once; another identity's sets cannot push it out of the window.

Logging: everything a peer can trigger (connections refused, sessions not established,
sessions established and ended, messages, repeated sets, and in the channels bad frames,
dropped replies and refused requests) goes through a PeerLog keyed by the proven identity (or
key, or address), so one peer costs at most two lines per kind per interval; a timer task
writes the summaries with their counts.

Fast paths (lists, stored values, refusals) answer synchronously in the channel's reader; only
requests that run plugin code become tasks, so a slow getter delays nobody else.

Clean shutdown (``close()``): stop accepting, stop periodic publication, send ``finished`` to
every session, cancel what is still running, close the listeners this server opened, unbind the
parameters and wait (bounded) for plugin threads to return.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import fastjsonschema

from ..auth import ServerAuthenticator
from ..channel import ServerChannel
from ..envelopes import Command, CommandMethod, Message, Reason, ReasonCode
from ..errors import ChannelClosed, LocalProtocolError, SessionError, TransportError
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
    collection,
    new_epoch,
)
from .subscriptions import Subscription

__all__ = ["Request", "ServedSession", "Server"]

log = logging.getLogger("rain.server")

Response = Command | None
Handler = Callable[["Request"], Command | Coroutine[Any, Any, Response]]
MessageHandler = Callable[["ServedSession", Message], object]


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
    ) -> None:
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
        # is refused.
        self._recent = SetWindow(self.limits.dedup_window)
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
        )

    # ------------------------------------------------------------------ life cycle

    async def start(self) -> None:
        """Bind the parameters and start periodic publication. Idempotent.

        Raises PluginError when a parameter is already served by another running server.
        """
        if self._started:
            return
        if self._closing:
            raise RuntimeError("this server has been closed")
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
        except BaseException:
            for param in bound:
                param._bind(None)
            self._executor.shutdown(wait=False)
            raise
        for live in self._live.values():
            live.start_periodic()
        self._spawn(self._flush_logs(), "rain-peer-log")
        self._started = True
        log.info(
            "server %s started: %d parameters, epoch %s", self.node, len(self._live), self.epoch
        )

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
            self.peer_log.event(
                logging.WARNING, "connection-refused", peer, "refusing a connection from %s: %s",
                transport.peer_address, "shutting down" if self._closing else "too many sessions",
            )
            await transport.close()
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
            self.peer_log.event(
                logging.INFO, "session-ended", who, "session ended: %s (%s)", session.node,
                channel.close_reason or "finished",
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
            _expired(command)
            path, query = split_uri(command.uri or "", self.node)
            self.access.check(identity, command.method, path)
            route = self._router.resolve_path(command.method, path, query)
            request = Request(command, path, route.params, query, session)
            if command.method is CommandMethod.SET and command.id is not None:
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
        command = request.command
        assert command.id is not None
        identity = request.identity
        digest = fingerprint(command)
        remembered = self._recent.lookup(identity, command.id)
        if remembered is not None:
            if remembered.fingerprint != digest:
                return command.failure(
                    ReasonCode.COMMAND_INVALID_ARGUMENT,
                    f"command id {command.id} was already used for another set",
                )
            self.peer_log.event(
                logging.INFO, "repeated-set", identity,
                "repeated set %.64r from %s answered once", command.id, identity,
            )
            return self._replay(command, remembered.answer)
        future: asyncio.Future[Command] = asyncio.get_running_loop().create_future()
        self._recent.remember(identity, command.id, Entry(digest, future))
        return self._remember(request, handler, future)

    async def _remember(
        self,
        request: Request,
        handler: Handler,
        future: asyncio.Future[Command],
    ) -> Response:
        command = request.command
        assert command.id is not None
        try:
            # Through _complete, so a set's refusals and errors are answered as any other's.
            response = await self._complete(command, _handle(handler, request))
        except BaseException:
            self._forget(request.identity, command.id, future)
            raise
        if response is None:
            self._forget(request.identity, command.id, future)
        elif not future.done():
            future.set_result(response)
        return response

    def _forget(self, identity: str, command_id: str, future: asyncio.Future[Command]) -> None:
        entry = self._recent.lookup(identity, command_id)
        if entry is not None and entry.answer is future:
            self._recent.forget(identity, command_id)
        if not future.done():
            future.cancel()

    @staticmethod
    async def _replay(command: Command, first: asyncio.Future[Command]) -> Response:
        try:
            response = await asyncio.shield(first)
        except asyncio.CancelledError:
            return command.failure(ReasonCode.COMMAND_PROCESSING_ERROR, "the first attempt ended")
        return response.replace(to=command.sender)

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
        return self._write(request.command, live, value)

    @staticmethod
    async def _write(command: Command, live: LiveParameter, value: Any) -> Response:
        sample = await live.write(value)
        return command.success(sample.document(), SAMPLE_TYPE)

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
