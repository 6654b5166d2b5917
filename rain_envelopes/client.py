"""The reconnecting client: the usual way to be a client of a RAIN server.

::

    async with Client("tcp://station:4505", identity=me, server_key=station_key) as client:
        sample = (await client.get("/params/temp")).resource
        await client.set("/params/interval", 5)            # exactly once, even across reconnects
        await client.subscribe("/params/temp", on_update)   # kept across reconnects
        async for change in client.changes():               # connecting, established, lost, ...
            print(change)

Theory of operation. A :class:`~rain_envelopes.channel.ClientChannel` is one session: once it
ends it is never revived. A :class:`Client` owns a sequence of channels over time. Its
*supervisor* task loops: connect and establish a session (``connecting``); serve it
(``established``) until it ends without our asking (``lost``, with the reason); wait a bounded,
jittered, exponentially growing delay (``retrying``, with the attempt number and the delay);
connect again. It stops (``closed``) when the application closes the client, when a refusal is
definitive (our key refused by the transport's authenticator or by the session: retrying cannot
help), or when the :class:`Backoff`'s attempt limit or deadline is reached.

- **Subscriptions are the client's, not a session's.** Each is re-issued on every new session;
  its snapshot and every later sample go through a bounded per-subscription queue (drop the
  oldest and count the drops, or keep only the latest) to a consumer task that calls the
  callback one update at a time, so a slow callback keeps memory flat and sees fresh data. Each
  :class:`Update` says how many samples were dropped on either side and whether the server
  restarted (its ``epoch`` changed).
- **Requests wait for the link** up to their own timeout (``wait_for_link=True``), or fail at
  once with :class:`~rain_envelopes.errors.Disconnected` when there is no session. A request
  whose session is lost under it is sent again on the next session, with the same command id,
  until its time runs out.
- **Sets are exactly-once.** A set keeps one command id across every attempt, and carries an
  ``#expires`` (by default its timeout from now), so the server answers a repeat from its
  de-duplication record and never applies a set its caller has given up on.
- **One exception family for "not done, safe to retry"**:
  :class:`~rain_envelopes.errors.NotDone` (``Disconnected``, ``ResponseTimeout``,
  ``ClientClosed``). A command the server refused raises ``CommandFailed`` as on a channel.

Cancellation (Ctrl-C, ``task.cancel()``) is honoured at every await: the supervisor never
shields its waits, and :meth:`Client.close` cancels it.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import logging
import os
import random
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from .channel import ClientChannel, connect
from .envelopes import Command, CommandMethod, CommandStatus, Reason, ReasonCode
from .errors import (
    AuthenticationFailed,
    ChannelClosed,
    ClientClosed,
    CommandFailed,
    CommandTimeout,
    ConfigError,
    Disconnected,
    ResponseTimeout,
    SecurityCause,
    SessionError,
    TransportError,
    TransportSecurityError,
)
from .keys import Identity
from .node import Node

__all__ = [
    "Backoff",
    "Client",
    "ClientState",
    "StateChange",
    "Update",
    "UpdateCallback",
    "parameter_uri",
]

log = logging.getLogger("rain.client")


def parameter_uri(name_or_uri: str) -> str:
    """``temperature`` -> ``/params/temperature``; a URI (``/...`` or ``lime://...``) is kept.

    The one rule for "a parameter by name" of every client face (the CLI, the blocking API, the
    dashboard). An empty name is refused rather than read as ``/params/``, the whole list.
    Raises ValueError for an empty name, TypeError for anything but a string.
    """
    if not isinstance(name_or_uri, str):
        raise TypeError(f"a parameter name or URI must be a string, got {type(name_or_uri)}")
    text = name_or_uri.strip()
    if not text:
        raise ValueError("empty parameter name: give a name (temperature) or a URI (/params)")
    if text.startswith("/") or text.lower().startswith("lime://"):
        return text
    return f"/params/{text}"


class ClientState(StrEnum):
    """Where a :class:`Client` is in its life."""

    #: Opening a link and establishing a session (the first time, or after ``retrying``).
    CONNECTING = "connecting"
    #: A session is up: requests go straight through.
    ESTABLISHED = "established"
    #: The session or its link ended without our asking; ``StateChange.reason`` says why.
    LOST = "lost"
    #: Waiting ``StateChange.delay`` seconds before attempt ``StateChange.attempt``.
    RETRYING = "retrying"
    #: Closed by the application, or given up (a definitive refusal, the attempts or the
    #: deadline ran out); ``Client.close_reason`` tells which. Final.
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class StateChange:
    """One change of :attr:`Client.state`, as given to ``on_state`` and :meth:`Client.changes`."""

    state: ClientState
    #: Why a session was lost or the client closed (None for a close the application asked).
    reason: Reason | None = None
    #: The error behind a failed attempt (``retrying``) or a give-up (``closed``).
    error: BaseException | None = None
    #: The connection attempt this change belongs to (1 for the first after a success).
    attempt: int = 0
    #: For ``retrying``: the seconds until the next attempt.
    delay: float | None = None

    def __str__(self) -> str:
        text = self.state.value
        if self.attempt:
            text += f" (attempt {self.attempt}"
            text += f", next in {self.delay:.2f} s)" if self.delay is not None else ")"
        if self.reason is not None:
            text += f": {self.reason}"
        elif self.error is not None:
            text += f": {self.error}"
        return text


@dataclass(frozen=True, slots=True)
class Backoff:
    """How a :class:`Client` spaces its reconnection attempts.

    The delay before attempt *n* (n >= 2 of a run of failures) is
    ``min(maximum, initial * factor ** (n - 2))``, multiplied by a random factor in
    ``[1 - jitter, 1]`` so that many clients of one restarted server do not return in step.
    Retries go on for ever unless ``max_attempts`` (attempts in one run of failures) or
    ``deadline`` (seconds since the run of failures began) is given.
    """

    initial: float = 0.25
    maximum: float = 30.0
    factor: float = 2.0
    jitter: float = 0.5
    max_attempts: int | None = None
    deadline: float | None = None

    def __post_init__(self) -> None:
        if not 0 < self.initial <= self.maximum:
            raise ConfigError("backoff: need 0 < initial <= maximum")
        if self.factor < 1:
            raise ConfigError("backoff: factor must be at least 1")
        if not 0 <= self.jitter <= 1:
            raise ConfigError("backoff: jitter must be between 0 and 1")
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ConfigError("backoff: max_attempts must be at least 1")
        if self.deadline is not None and self.deadline <= 0:
            raise ConfigError("backoff: deadline must be positive")

    def delay(self, failures: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after the ``failures``-th failure in a row (1, 2, ...)."""
        base = min(self.maximum, self.initial * self.factor ** max(0, failures - 1))
        return base * (1.0 - self.jitter * (rng or random).random())


@dataclass(frozen=True, slots=True)
class Update:
    """One sample delivered to a subscription callback of a :class:`Client`."""

    uri: str
    #: The command that carried it (the subscribe response for a snapshot, else an observe).
    command: Command
    #: True for the snapshot that answers each (re-)subscription.
    snapshot: bool
    #: Samples lost between the previous update and this one: dropped by this client (its
    #: callback was slower than the updates came) plus those the server reported dropping.
    dropped: int = 0
    #: True when the server's ``epoch`` differs from the previous update's: it restarted.
    restarted: bool = False

    @property
    def sample(self) -> Any:
        """The sample document (``value``, ``timestamp``, ``seq``, ``epoch``, maybe
        ``dropped`` by the server)."""
        return self.command.resource

    @property
    def value(self) -> Any:
        resource = self.command.resource
        return resource.get("value") if isinstance(resource, Mapping) else resource

    @property
    def epoch(self) -> str | None:
        resource = self.command.resource
        epoch = resource.get("epoch") if isinstance(resource, Mapping) else None
        return str(epoch) if epoch is not None else None


UpdateCallback = Callable[[Update], object]
StateCallback = Callable[[StateChange], object]


class _Subscription:
    """A subscription of the client: its callback, bounded queue and consumer task."""

    def __init__(self, uri: str, callback: UpdateCallback, maxlen: int) -> None:
        self.uri = uri
        self.callback = callback
        self.queue: deque[tuple[Command, bool]] = deque()
        self.maxlen = maxlen
        self.dropped = 0
        self.epoch: str | None = None
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        #: The channel this subscription is made (or being made) on.
        self.channel: ClientChannel | None = None
        #: The first snapshot's response, or the server's refusal of the first attempt.
        self.first: asyncio.Future[Command] = asyncio.get_running_loop().create_future()

    def put(self, command: Command, snapshot: bool) -> None:
        if len(self.queue) >= self.maxlen:
            oldest, _ = self.queue.popleft()
            self.dropped += 1 + _server_dropped(oldest)
        self.queue.append((command, snapshot))
        self.wake.set()

    def on_observe(self, command: Command) -> None:
        self.put(command, False)

    def start(self) -> None:
        if self.task is None:
            self.task = asyncio.create_task(self._deliver(), name=f"rain-client-sub {self.uri}")

    async def _deliver(self) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            while self.queue:
                command, snapshot = self.queue.popleft()
                dropped, self.dropped = self.dropped + _server_dropped(command), 0
                resource = command.resource
                epoch = resource.get("epoch") if isinstance(resource, Mapping) else None
                restarted = epoch is not None and self.epoch is not None and epoch != self.epoch
                if epoch is not None:
                    self.epoch = str(epoch)
                update = Update(self.uri, command, snapshot, dropped, restarted)
                try:
                    result = self.callback(update)
                    if inspect.isawaitable(result):
                        await result
                except Exception:
                    log.exception("subscription callback for %s failed", self.uri)

    async def stop(self) -> None:
        task, self.task = self.task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def _server_dropped(command: Command) -> int:
    resource = command.resource
    dropped = resource.get("dropped") if isinstance(resource, Mapping) else None
    return dropped if isinstance(dropped, int) and dropped > 0 else 0


def _definitive(error: BaseException) -> bool:
    """Whether a failed attempt will fail again the same way (so retrying is pointless)."""
    if isinstance(error, AuthenticationFailed | ConfigError):
        return True
    return isinstance(error, TransportSecurityError) and error.cause == SecurityCause.REFUSED


def _reason_for(error: BaseException) -> Reason:
    reason = getattr(error, "reason", None)
    if isinstance(reason, Reason):
        return reason
    return Reason(ReasonCode.SESSION_ERROR, str(error) or type(error).__name__)


_LINK_ERRORS = (ChannelClosed, SessionError, TransportError)


class Client:
    """A client that keeps a session to one server for as long as it runs.

    ``endpoint``, ``identity``, ``server_key``, ``node``, ``insecure`` and
    ``transport_options`` are as for :func:`~rain_envelopes.channel.connect`. Channel options
    (``command_timeout``, ``ping_interval``, ``ping_timeout``, ...) go to every session's
    channel; by default the client pings a link idle for ``ping_interval`` (2 s) and gives it
    up when no answer comes within ``ping_timeout`` (3 s), so a dead link is noticed within
    about 5 s. ``wait_for_link`` is the default for requests made while disconnected.
    ``queue_length`` bounds each subscription's client-side queue (1 keeps the latest only).
    """

    def __init__(
        self,
        endpoint: str,
        *,
        identity: Identity | None = None,
        server_key: bytes | None = None,
        node: Node | str | None = None,
        insecure: bool = False,
        backoff: Backoff | None = None,
        command_timeout: float = 10.0,
        establish_timeout: float = 30.0,
        ping_interval: float | None = 2.0,
        ping_timeout: float = 3.0,
        wait_for_link: bool = True,
        queue_length: int = 64,
        on_state: StateCallback | None = None,
        transport_options: dict[str, Any] | None = None,
        **channel_options: Any,
    ) -> None:
        if command_timeout <= 0:
            raise ConfigError("command_timeout must be positive")
        if queue_length < 1:
            raise ConfigError("queue_length must be at least 1")
        self.endpoint = endpoint
        self.backoff = backoff or Backoff()
        self.command_timeout = command_timeout
        self.wait_for_link = wait_for_link
        self.queue_length = queue_length
        #: Called with every :class:`StateChange` (sync or async; exceptions are logged).
        self.on_state = on_state
        self._connect_args: dict[str, Any] = dict(
            identity=identity,
            server_key=server_key,
            node=node,
            insecure=insecure,
            establish_timeout=establish_timeout,
            transport_options=transport_options,
            command_timeout=command_timeout,
            ping_interval=ping_interval,
            ping_timeout=ping_timeout,
            **channel_options,
        )
        self._state = ClientState.CLOSED
        self._started = False
        self._closing = False
        #: Why the client closed: None for a close the application asked; the reason when it
        #: gave up (a refusal, or the backoff's limits).
        self.close_reason: Reason | None = None
        self._channel: ClientChannel | None = None
        self._changed = asyncio.Event()  # set (and replaced) at every state change
        self._tasks: set[asyncio.Future[Any]] = set()
        self._closed = asyncio.Event()
        self._stop = asyncio.Event()
        self._supervisor: asyncio.Task[None] | None = None
        self._subscriptions: dict[str, _Subscription] = {}
        self._listeners: list[_ChangeQueue] = []
        self._ids = itertools.count(1)
        self._id_prefix = "c" + os.urandom(4).hex() + "-"
        self._rng = random.Random()
        self._give_up_error: BaseException | None = None

    # ------------------------------------------------------------------ state

    @property
    def state(self) -> ClientState:
        """Where the client is now; never ``established`` without a live session."""
        if self._state is ClientState.ESTABLISHED and (
            self._channel is None or self._channel.closed
        ):
            return ClientState.LOST
        return self._state

    @property
    def channel(self) -> ClientChannel | None:
        """The current session's channel while established, else None."""
        channel = self._channel
        return channel if channel is not None and not channel.closed else None

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def changes(self, *, maxlen: int = 256) -> AsyncIterator[StateChange]:
        """An async iterator of every state change from now on; ends when the client closes.

        Each iterator holds at most ``maxlen`` changes not yet read (the oldest are dropped).
        """
        queue = _ChangeQueue(maxlen)
        self._listeners.append(queue)
        if self.closed:
            queue.end()
        return queue

    def _change(self, change: StateChange) -> None:
        self._state = change.state
        log.info("%s: %s", self.endpoint, change)
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
        for queue in self._listeners:
            queue.put(change)
        if change.state is ClientState.CLOSED:
            for queue in self._listeners:
                queue.end()
            self._listeners.clear()
        if self.on_state is not None:
            try:
                result = self.on_state(change)
                if inspect.isawaitable(result):
                    task = asyncio.ensure_future(result)
                    self._tasks.add(task)
                    task.add_done_callback(self._state_callback_done)
            except Exception:
                log.exception("on_state callback failed")

    def _state_callback_done(self, task: asyncio.Future[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("on_state callback failed", exc_info=task.exception())

    # ------------------------------------------------------------------ life cycle

    async def start(self, *, wait: bool = True, timeout: float | None = None) -> Client:
        """Start connecting in the background; returns the client.

        With ``wait`` (the default), return once the first session is established: raises
        ClientClosed when the client gives up first (a refused key: ``.cause`` says why) and
        Disconnected when ``timeout`` passes first (the client keeps trying).
        """
        if self._closing:
            raise ClientClosed("this client has been closed")
        if not self._started:
            self._started = True
            self._supervisor = asyncio.create_task(self._run(), name=f"rain-client {self.endpoint}")
        if wait:
            await self._wait_link(timeout)
        return self

    async def __aenter__(self) -> Client:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def wait_established(self, timeout: float | None = None) -> ClientChannel:
        """Wait for an established session; raises Disconnected or ClientClosed."""
        return await self._wait_link(timeout)

    async def close(self) -> None:
        """Stop: finish the session politely, stop reconnecting and delivering. Idempotent."""
        if self._closing:
            await self._closed.wait()
            return
        self._closing = True
        self._stop.set()
        supervisor = self._supervisor
        if supervisor is not None and supervisor is not asyncio.current_task():
            supervisor.cancel()
            await asyncio.gather(supervisor, return_exceptions=True)
        channel, self._channel = self._channel, None
        if channel is not None:
            try:
                await channel.finish()
            except Exception:  # closing must never raise
                await channel.close()
        for subscription in self._subscriptions.values():
            await subscription.stop()
        self._finish_close(None, None)

    def _finish_close(self, reason: Reason | None, error: BaseException | None) -> None:
        if self._closed.is_set():
            return
        self.close_reason = reason
        self._give_up_error = error
        self._closed.set()
        self._change(StateChange(ClientState.CLOSED, reason=reason, error=error))

    # ------------------------------------------------------------------ supervisor

    async def _run(self) -> None:
        failures = 0
        began: float | None = None
        loop = asyncio.get_running_loop()
        while not self._closing:
            self._change(StateChange(ClientState.CONNECTING, attempt=failures + 1))
            try:
                channel = await connect(self.endpoint, **self._connect_args)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # anything a transport raises is one failed attempt
                failures += 1
                began = loop.time() if began is None else began
                if _definitive(exc):
                    await self._give_up(_reason_for(exc), exc)
                    return
                limits = self.backoff
                delay = limits.delay(failures, self._rng)
                over_deadline = (
                    limits.deadline is not None and loop.time() + delay - began > limits.deadline
                )
                if (
                    limits.max_attempts is not None and failures >= limits.max_attempts
                ) or over_deadline:
                    await self._give_up(
                        Reason(ReasonCode.SESSION_ERROR, f"gave up after {failures} attempts"),
                        exc,
                    )
                    return
                self._change(StateChange(
                    ClientState.RETRYING, error=exc, attempt=failures + 1, delay=delay
                ))
                await self._pause(delay)
                continue
            failures, began = 0, None
            self._channel = channel
            self._change(StateChange(ClientState.ESTABLISHED))
            await self._resubscribe(channel)
            await channel.wait_closed()
            self._channel = None
            if self._closing:
                return
            reason = channel.close_reason or Reason(
                ReasonCode.SESSION_ERROR, "the server ended the session"
            )
            self._change(StateChange(ClientState.LOST, reason=reason))
            if reason.code == ReasonCode.SESSION_AUTHENTICATION_FAILED:  # e.g. key revoked
                await self._give_up(reason, AuthenticationFailed(reason))
                return
            # Back off before the first retry too: a server that ends sessions at once (a
            # restart in progress, a full server) must not be hammered in a tight loop.
            failures = 1
            began = loop.time()
            delay = self.backoff.delay(1, self._rng)
            self._change(StateChange(ClientState.RETRYING, reason=reason, attempt=2, delay=delay))
            await self._pause(delay)

    async def _pause(self, delay: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), delay)

    async def _give_up(self, reason: Reason, error: BaseException) -> None:
        log.warning("%s: giving up: %s", self.endpoint, reason)
        self._closing = True
        self._stop.set()
        for subscription in self._subscriptions.values():
            await subscription.stop()
        self._finish_close(reason, error)

    async def _resubscribe(self, channel: ClientChannel) -> None:
        for subscription in list(self._subscriptions.values()):
            if channel.closed:
                return  # the session is going; the next one subscribes again
            await self._subscribe_on(channel, subscription)

    async def _subscribe_on(self, channel: ClientChannel, subscription: _Subscription) -> None:
        """Make ``subscription`` on ``channel`` unless it is made or being made there already.

        The first outcome (snapshot or refusal) resolves ``subscription.first``; a link error
        leaves it for the next session.
        """
        if subscription.channel is channel:
            return
        subscription.channel = channel
        try:
            response = await channel.subscribe(subscription.uri, subscription.on_observe)
        except CommandFailed as exc:
            if not subscription.first.done():
                subscription.first.set_exception(exc)
            else:
                log.warning("%s: subscribing again to %s refused: %s",
                            self.endpoint, subscription.uri, exc.reason)
            return
        except (*_LINK_ERRORS, CommandTimeout) as exc:
            log.debug("%s: subscribe %s: %s", self.endpoint, subscription.uri, exc)
            subscription.channel = None
            return
        subscription.put(response, True)
        subscription.start()
        if not subscription.first.done():
            subscription.first.set_result(response)

    # ------------------------------------------------------------------ requests

    async def _wait_link(self, timeout: float | None, *, wait: bool = True) -> ClientChannel:
        """The established channel, waiting for one up to ``timeout`` (None: for ever)."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            if self.closed:
                raise ClientClosed(
                    "the client is closed"
                    + (f": {self.close_reason}" if self.close_reason else ""),
                    self._give_up_error,
                )
            channel = self.channel
            if channel is not None:
                return channel
            if not self._started:
                raise Disconnected("the client is not started: use `async with` or start()")
            if not wait:
                raise Disconnected(f"no session to {self.endpoint} (state {self.state.value})")
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                raise Disconnected(
                    f"no session to {self.endpoint} within {timeout:g} s"
                    f" (state {self.state.value})"
                )
            # Whatever the supervisor does next (established, lost, closed) is a change.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    def new_id(self) -> str:
        """A command id unique for this client's whole life (kept by every retry)."""
        return f"{self._id_prefix}{next(self._ids)}"

    async def send_command(
        self,
        command: Command,
        *,
        timeout: float | None = None,
        wait_for_link: bool | None = None,
    ) -> Command:
        """Send a request and return its response, whatever its status; see the module doc.

        The command keeps one id across every attempt (assigned when it has none). Raises
        Disconnected, ResponseTimeout or ClientClosed (all NotDone).
        """
        if command.is_response or command.method is CommandMethod.OBSERVE:
            raise ValueError("send_command is for requests")
        if command.id is None:
            command = command.replace(id=self.new_id())
        wait = self.wait_for_link if wait_for_link is None else wait_for_link
        loop = asyncio.get_running_loop()
        limit = self.command_timeout if timeout is None else timeout
        deadline = loop.time() + limit
        last_error: BaseException | None = None
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise Disconnected(
                    f"{command.method.value} {command.uri} not done within {limit:g} s: "
                    "the session was lost", last_error,
                )
            channel = await self._wait_link(remaining, wait=wait)
            remaining = deadline - loop.time()
            try:
                return await channel.send_command(command, timeout=max(remaining, 0.001))
            except CommandTimeout as exc:
                if channel.closed and deadline - loop.time() > 0:
                    last_error = exc  # the link died under the request: try the next session
                    continue
                raise ResponseTimeout(
                    f"no response to {command.method.value} {command.uri} within {limit:g} s",
                    exc,
                ) from None
            except AuthenticationFailed:
                raise
            except _LINK_ERRORS as exc:
                last_error = exc
                if not wait:
                    raise Disconnected(
                        f"{command.method.value} {command.uri}: the session was lost", exc
                    ) from None
                # Let the supervisor notice the loss before we look for the next session.
                await channel.wait_closed()

    async def _request(self, command: Command, timeout: float | None) -> Command:
        response = await self.send_command(command, timeout=timeout)
        if response.status is CommandStatus.FAILURE:
            assert response.reason is not None
            raise CommandFailed(response.reason, response)
        return response

    async def get(self, uri: str, *, timeout: float | None = None) -> Command:
        """GET ``uri``; returns the success response. Raises CommandFailed or NotDone."""
        return await self._request(Command(CommandMethod.GET, uri), timeout)

    async def set(
        self,
        uri: str,
        value: Any,
        *,
        type: str = "application/json",
        timeout: float | None = None,
        expires: datetime | float | None = None,
    ) -> Command:
        """SET ``uri`` to ``value``, exactly once; returns the success response.

        The set carries ``#expires``: ``expires`` as a datetime, or seconds from now, by
        default its timeout from now, so a server that gets it late never applies it. Raises
        CommandFailed (code 1001 when it arrived too late) or NotDone.
        """
        limit = self.command_timeout if timeout is None else timeout
        if expires is None:
            expires = limit
        if isinstance(expires, int | float):
            moment = datetime.now(UTC) + timedelta(seconds=float(expires))
        else:
            moment = expires if expires.tzinfo else expires.replace(tzinfo=UTC)
        command = Command(
            CommandMethod.SET,
            uri,
            id=self.new_id(),
            resource=value,
            type=type,
            metadata={"#expires": moment.astimezone(UTC).isoformat(timespec="milliseconds")},
        )
        return await self._request(command, limit)

    async def delete(self, uri: str, *, timeout: float | None = None) -> Command:
        """DELETE ``uri``; raises like :meth:`get`."""
        return await self._request(Command(CommandMethod.DELETE, uri), timeout)

    async def ping(self, *, timeout: float | None = None) -> float:
        """Round-trip a ``get /ping`` on the current session; seconds. Raises NotDone."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        await self._request(Command(CommandMethod.GET, "/ping"), timeout)
        return loop.time() - started

    async def subscribe(
        self,
        uri: str,
        callback: UpdateCallback,
        *,
        timeout: float | None = None,
        queue_length: int | None = None,
    ) -> Command:
        """Subscribe to ``uri`` for the client's whole life: ``callback(update)`` runs for the
        snapshot and every later sample, on every session, one update at a time.

        Returns the first snapshot's response. Raises CommandFailed when the server refuses
        (the subscription is then dropped) or NotDone (it stays, and is made on the next
        session; without ``wait_for_link`` and no session, it is dropped). ``queue_length``
        overrides the client's bound for this one (1: latest only).
        """
        if uri in self._subscriptions:
            raise ValueError(f"already subscribed to {uri}")
        maxlen = self.queue_length if queue_length is None else queue_length
        if maxlen < 1:
            raise ValueError("queue_length must be at least 1")
        limit = self.command_timeout if timeout is None else timeout
        channel = await self._wait_link(limit, wait=self.wait_for_link)
        subscription = _Subscription(uri, callback, maxlen)
        self._subscriptions[uri] = subscription
        try:
            async with asyncio.timeout(limit):
                await self._subscribe_on(channel, subscription)
                return await asyncio.shield(subscription.first)
        except CommandFailed:
            self._subscriptions.pop(uri, None)
            await subscription.stop()
            raise
        except TimeoutError:
            raise ResponseTimeout(
                f"subscribe {uri}: no snapshot within {limit:g} s; it stays, and is made"
                " again on every new session"
            ) from None

    async def unsubscribe(self, uri: str, *, timeout: float | None = None) -> None:
        """Stop the subscription to ``uri`` (on the server too, when a session is up)."""
        subscription = self._subscriptions.pop(uri, None)
        if subscription is None:
            return
        await subscription.stop()
        channel = self.channel
        if channel is not None:
            try:
                await channel.unsubscribe(uri, timeout=timeout)
            except (CommandFailed, CommandTimeout, *_LINK_ERRORS) as exc:
                log.debug("unsubscribe %s: %s", uri, exc)

    def __repr__(self) -> str:
        return f"<Client {self.endpoint} {self.state.value}>"


@dataclass(eq=False)
class _ChangeQueue:
    """One :meth:`Client.changes` iterator: a bounded queue of changes not yet read."""

    maxlen: int
    items: deque[StateChange] = field(default_factory=deque)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    ended: bool = False

    def put(self, change: StateChange) -> None:
        if len(self.items) >= self.maxlen:
            self.items.popleft()
        self.items.append(change)
        self.ready.set()

    def end(self) -> None:
        self.ended = True
        self.ready.set()

    def __aiter__(self) -> _ChangeQueue:
        return self

    async def __anext__(self) -> StateChange:
        while not self.items:
            if self.ended:
                raise StopAsyncIteration
            self.ready.clear()
            await self.ready.wait()
        return self.items.popleft()
