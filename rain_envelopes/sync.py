"""The blocking API: RAIN from plain scripts, the interactive interpreter and notebooks.

::

    from rain_envelopes import sync

    with sync.connect("tcp://station:4505", key="alice.key", server_key="station.pub") as st:
        print(st.get("temperature"))              # the value; a name means /params/NAME
        st.set("sampling_interval", 0.5)          # exactly once, even across reconnects
        for update in st.monitor("temperature"):
            print(update.value, update.dropped, update.restarted)

Theory of operation. A :class:`BlockingClient` owns one daemon thread that runs one asyncio
event loop, and in it one reconnecting :class:`~rain_envelopes.client.Client`: the protocol,
the reconnection, the exactly-once sets and the re-subscriptions are that client's, not a
second implementation. Every blocking method hands a coroutine *factory* to the loop (so no
coroutine object is ever made, or left unawaited, in the caller's thread), which runs it as a
task, then waits on a :class:`threading.Event` for the task's outcome:

- **Timeouts.** Each call has a limit: ``timeout=`` on the call, else the client's
  ``timeout``. The limit is given to the async client, which raises its own
  :class:`~rain_envelopes.errors.ResponseTimeout` or
  :class:`~rain_envelopes.errors.Disconnected`; the caller's wait is that limit plus a margin,
  a backstop that only fires when the loop thread itself is stuck.
- **Exceptions** are the async API's own objects (``CommandFailed``, ``Disconnected``,
  ``ResponseTimeout``, ``ClientClosed``, ``KeyFileError``, ...), raised again in the caller's
  thread. A call cut short by the client closing raises ``ClientClosed``.
- **Threads.** Any number of threads may call one client at once: the loop serialises their
  work, and nothing of the async client is touched outside its thread. Calling the blocking
  API from the loop thread itself (an ``on_state`` callback) would wait on itself for ever, so
  it raises RuntimeError instead.
- **Callers with their own loop** (a Jupyter kernel, an asyncio program): nothing here looks
  up or runs a loop in the caller's thread, so a running loop there does not matter; the
  call simply blocks that thread, as any blocking function does.
- **Interrupts.** Ctrl-C (any exception) while waiting cancels the task in the loop, or keeps
  it from starting, and propagates. A set already sent keeps its expiry, so the server never
  applies it later than its caller would have accepted.
- **Monitors** (:class:`Monitor`) are iterators over :class:`~rain_envelopes.client.Update`.
  One async subscription per URI is shared by every monitor of that URI in this client; its
  callback (in the loop thread) puts each update into every monitor's bounded queue, which
  drops the oldest when full and adds what it dropped to the next update's ``dropped`` (and
  carries a dropped ``restarted`` forward), as the async side does. A monitor that joins a
  subscription already running starts with the latest update, marked as a snapshot. Closing a
  monitor (``close()``, the end of its ``with`` block, or garbage collection) detaches it;
  the last one to leave unsubscribes. When the client closes, iteration stops; when it gave
  up (a refused key), iteration raises ``ClientClosed`` saying why.
- **Closing** (``close()``, the end of the ``with`` block, garbage collection, or interpreter
  exit through a :func:`weakref.finalize`) ends the session politely within a bounded time,
  cancels and awaits every task the loop still holds, closes the loop and joins the thread,
  so nothing is left running and no task is destroyed pending. Calls still waiting then
  raise ``ClientClosed``.

Keys are given as in the ``rain`` command: ``key`` is an :class:`~rain_envelopes.keys.Identity`
or the path of a secret key file; ``server_key`` is the server's public key as raw bytes, an
``ed25519:...`` string, an Identity, or the path of its ``.pub`` file; ``known_hosts`` is a
known-hosts file. When none is given, ``RAIN_KEY``, ``RAIN_SERVER_KEY`` and
``RAIN_KNOWN_HOSTS`` are read from the environment, and what the arguments say beats what the
environment says.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import os
import threading
import weakref
from collections.abc import Callable, Coroutine, Iterator, Mapping
from types import TracebackType
from typing import Any, Generic, TypeVar

from .client import Backoff, Client, ClientState, StateChange, Update, parameter_uri
from .envelopes import Command, Reason
from .errors import ClientClosed, ConfigError, Disconnected, KeyFileError, ResponseTimeout
from .keyfiles import load_identity, load_known_hosts, public_key_argument
from .keys import Identity, parse_public_key
from .node import Node
from .transport import transport_factory

__all__ = ["BlockingClient", "Monitor", "connect", "parameter_uri"]

log = logging.getLogger("rain.sync")

T = TypeVar("T")

#: Seconds the caller waits beyond a call's own limit before it stops waiting on the loop.
_MARGIN = 2.0

KeyArg = Identity | str | os.PathLike[str]
ServerKeyArg = bytes | Identity | str | os.PathLike[str]


# ------------------------------------------------------------------------------ keys


def _identity(key: KeyArg | None) -> Identity | None:
    if key is None:
        path = os.environ.get("RAIN_KEY")
        return load_identity(path) if path else None
    if isinstance(key, Identity):
        return key
    if isinstance(key, str | os.PathLike):
        return load_identity(key)
    raise TypeError(
        f"key must be an Identity or the path of a secret key file, got {type(key).__name__}"
    )


def _public_key(value: ServerKeyArg) -> bytes:
    if isinstance(value, Identity):
        return value.public_key
    if isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
        if len(raw) != 32:
            raise KeyFileError(
                f"a server key given as bytes must be the 32 raw bytes of an Ed25519 public key,"
                f" got {len(raw)}"
            )
        import base64

        return parse_public_key(base64.b64encode(raw).decode("ascii"))  # checks the point
    if isinstance(value, str | os.PathLike):
        return public_key_argument(value, "server_key")
    raise TypeError(
        "server_key must be bytes, an 'ed25519:' string, an Identity or the path of a .pub"
        f" file, got {type(value).__name__}"
    )


def _server_key(
    endpoint: str, server_key: ServerKeyArg | None, known_hosts: str | os.PathLike[str] | None
) -> bytes | None:
    # As the CLI: what the arguments say beats the environment, whichever kind it is.
    for key, hosts in (
        (server_key, known_hosts),
        (os.environ.get("RAIN_SERVER_KEY") or None, os.environ.get("RAIN_KNOWN_HOSTS") or None),
    ):
        if key is not None:
            return _public_key(key)
        if hosts is not None:
            pinned = load_known_hosts(hosts).lookup(endpoint)
            if pinned is None:
                raise KeyFileError(f"known hosts file {hosts} has no key for {endpoint}")
            return pinned
    return None


# ------------------------------------------------------------------------------ monitors


class _Sink:
    """One monitor's bounded queue: filled in the loop thread, read in the caller's."""

    def __init__(self, maxlen: int) -> None:
        self.maxlen = maxlen
        self.items: collections.deque[Update] = collections.deque()
        self.ready = threading.Condition()
        self.dropped = 0  # dropped here since the last update taken
        self.restarted = False  # a dropped update said the server restarted
        self.ended = False
        self.error: BaseException | None = None

    def put(self, update: Update) -> None:
        with self.ready:
            if self.ended:
                return
            if len(self.items) >= self.maxlen:
                oldest = self.items.popleft()
                self.dropped += 1 + oldest.dropped
                self.restarted = self.restarted or oldest.restarted
            self.items.append(update)
            self.ready.notify_all()

    def end(self, error: BaseException | None = None) -> None:
        with self.ready:
            if not self.ended:
                self.ended = True
                self.error = error
            self.ready.notify_all()

    def take(self, timeout: float | None) -> Update:
        """The next update; StopIteration at the end, TimeoutError when none came in time."""
        with self.ready:
            if not self.ready.wait_for(lambda: bool(self.items) or self.ended, timeout):
                raise TimeoutError(f"no update within {timeout:g} s")
            if not self.items:
                if self.error is not None:
                    raise self.error.with_traceback(None)  # not one traceback per raise
                raise StopIteration
            update = self.items.popleft()
            if self.dropped or self.restarted:
                update = dataclasses.replace(
                    update,
                    dropped=update.dropped + self.dropped,
                    restarted=update.restarted or self.restarted,
                )
                self.dropped, self.restarted = 0, False
            return update


class _Topic:
    """The one async subscription to a URI and the monitors that share it (loop thread only)."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.sinks: set[_Sink] = set()
        self.last: Update | None = None
        self.made: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def deliver(self, update: Update) -> None:
        self.last = update
        for sink in self.sinks:
            sink.put(update)

    def join(self, sink: _Sink) -> None:
        self.sinks.add(sink)
        if self.last is not None:  # a latecomer starts from the latest value
            sink.put(dataclasses.replace(self.last, snapshot=True, dropped=0, restarted=False))


class Monitor(Iterator[Update]):
    """An iterator over the updates of one subscription; made by :meth:`BlockingClient.monitor`.

    Iteration blocks until the next update. It stops when the client is closed, and raises
    ClientClosed when the client gave up (``.cause`` says why); with ``idle_timeout`` it raises
    TimeoutError when no update came within that many seconds. A monitor is a context manager;
    closing it unsubscribes (when it is the last monitor of its URI in this client).
    """

    def __init__(
        self, client: BlockingClient, uri: str, sink: _Sink, idle_timeout: float | None
    ) -> None:
        self.client = client
        self.uri = uri
        self.idle_timeout = idle_timeout
        self._sink = sink
        self._closer = weakref.finalize(self, client._runner.detach_soon, uri, sink)
        self._closer.atexit = False  # at exit the client's own close ends every monitor

    def __iter__(self) -> Monitor:
        return self

    def __next__(self) -> Update:
        return self._sink.take(self.idle_timeout)

    def get(self, timeout: float | None = None) -> Update:
        """The next update, waiting at most ``timeout`` seconds (None: for ever).

        Raises TimeoutError when none came in time, StopIteration once the monitor or client
        is closed, ClientClosed when the client gave up.
        """
        return self._sink.take(timeout)

    def close(self, *, timeout: float | None = None) -> None:
        """Stop this monitor and, if it is the last of its URI, unsubscribe. Idempotent.

        Waits up to ``timeout`` (default: the client's) for the unsubscribe; never raises.
        """
        if not self._closer.alive:
            return
        self._closer.detach()
        self._sink.end()
        runner = self.client._runner
        with contextlib.suppress(Exception):
            runner.call(lambda: runner.detach(self.uri, self._sink), self.client._limit(timeout))

    @property
    def closed(self) -> bool:
        return not self._closer.alive or self._sink.ended

    def __enter__(self) -> Monitor:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Monitor {self.uri}{' closed' if self.closed else ''}>"


# ------------------------------------------------------------------------------ the loop thread


class _Call(Generic[T]):
    """One blocking call: handed from the caller's thread to a task in the loop and back."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.task: asyncio.Task[T] | None = None  # set in the loop thread
        self.abandoned = False  # set in the caller's thread
        self._lock = threading.Lock()
        self._value: T | None = None
        self._error: BaseException | None = None

    def settle(self, *, value: T | None = None, error: BaseException | None = None) -> None:
        """The first outcome wins (the task's, or the close that came first)."""
        with self._lock:
            if self.done.is_set():
                return
            self._value, self._error = value, error
            self.done.set()

    def outcome(self) -> T:
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]  # None only when T admits it


class _Runner:
    """The loop thread and everything in it. Holds no reference to the BlockingClient, so a
    finalizer of the client may call :meth:`shutdown`."""

    def __init__(self, endpoint: str, options: dict[str, Any], close_timeout: float) -> None:
        self.endpoint = endpoint
        self.close_timeout = close_timeout
        self.client: Client | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.last_error: BaseException | None = None  # of the latest failed attempt
        self.topics: dict[str, _Topic] = {}
        self._leaving: dict[str, asyncio.Task[None]] = {}
        self._on_state: Callable[[StateChange], object] | None = options.pop("on_state", None)
        self._options = options
        self._lock = threading.Lock()
        self._pending: set[_Call[Any]] = set()
        self._closing = False
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self.thread = threading.Thread(
            target=self._thread_main, name=f"rain-sync {endpoint}", daemon=True
        )
        self.thread.start()
        self._ready.wait()
        if self._failure is not None:
            self.thread.join()
            raise self._failure

    # ---------------------------------------------------------------- in the loop thread

    def _thread_main(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # never lose why the thread ended
            if not self._ready.is_set():
                self._failure = exc
            else:
                log.exception("the blocking client's loop ended with an error")
        finally:
            self._ready.set()

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        try:
            self.client = Client(self.endpoint, on_state=self._state, **self._options)
            await self.client.start(wait=False)
        except BaseException as exc:
            self._failure = exc
            return
        finally:
            self._ready.set()
        try:
            await self._stop.wait()
        finally:
            try:
                async with asyncio.timeout(self.close_timeout):
                    await self.client.close()
            except TimeoutError:
                log.warning("%s: closing took over %g s; dropped", self.endpoint,
                            self.close_timeout)
            self._end_monitors(None)

    def _state(self, change: StateChange) -> object:
        if change.error is not None:
            self.last_error = change.error
        if change.state is ClientState.CLOSED and self.client is not None:
            if self.client.close_reason is None:
                self._end_monitors(None)
            else:
                self._end_monitors(ClientClosed(
                    f"the client gave up: {self.client.close_reason}", change.error
                ))
        if self._on_state is not None:
            return self._on_state(change)
        return None

    def _end_monitors(self, error: BaseException | None) -> None:
        for topic in self.topics.values():
            for sink in topic.sinks:
                sink.end(error)

    async def attach(self, uri: str, sink: _Sink, timeout: float, queue_length: int) -> None:
        """Join ``sink`` to the subscription of ``uri``, making it if there is none."""
        assert self.client is not None
        while True:
            leaving = self._leaving.get(uri)
            if leaving is not None:  # the previous subscription's unsubscribe goes first
                await asyncio.shield(leaving)
                continue
            topic = self.topics.get(uri)
            if topic is None:
                break
            await asyncio.wait([topic.made])  # its outcome, without taking it as ours
            if topic.made.cancelled():
                continue  # its maker was interrupted: make it again
            topic.made.result()  # the maker's error, when it failed
            if self.topics.get(uri) is topic:
                topic.join(sink)
                return
        topic = self.topics[uri] = _Topic(uri)
        topic.sinks.add(sink)
        try:
            await self.client.subscribe(
                uri, topic.deliver, timeout=timeout, queue_length=queue_length
            )
        except BaseException as exc:
            # No monitor gets it: the caller has an exception, not a Monitor to close.
            del self.topics[uri]
            if isinstance(exc, asyncio.CancelledError):
                topic.made.cancel()
            else:
                topic.made.set_exception(exc)
                topic.made.exception()  # retrieved: other waiters re-raise it, or none do
            self._leave(uri)  # a subscription that timed out would otherwise stay
            raise
        topic.made.set_result(None)

    async def detach(self, uri: str, sink: _Sink) -> None:
        """Take ``sink`` off ``uri``; the last one out unsubscribes."""
        sink.end()
        topic = self.topics.get(uri)
        if topic is None or sink not in topic.sinks:
            return
        topic.sinks.discard(sink)
        if topic.sinks:
            return
        del self.topics[uri]
        await asyncio.shield(self._leave(uri))

    def _leave(self, uri: str) -> asyncio.Task[None]:
        """Unsubscribe ``uri`` in a task that a new subscription to it waits for."""
        assert self.client is not None
        task = asyncio.ensure_future(self.client.unsubscribe(uri))
        self._leaving[uri] = task

        def done(_: asyncio.Task[None]) -> None:
            if self._leaving.get(uri) is task:
                del self._leaving[uri]

        task.add_done_callback(done)
        return task

    def detach_soon(self, uri: str, sink: _Sink) -> None:
        """Detach from any thread (a finalizer's): scheduled, not waited for."""
        sink.end()
        loop = self.loop
        if loop is None or self._closing:
            return
        with contextlib.suppress(RuntimeError):  # the loop has already closed
            loop.call_soon_threadsafe(lambda: loop.create_task(self.detach(uri, sink)))

    # ---------------------------------------------------------------- from any thread

    def submit(self, factory: Callable[[], Coroutine[Any, Any, T]]) -> _Call[T]:
        """Run ``factory()`` in the loop as a task; its outcome lands in the returned call."""
        call: _Call[T] = _Call()
        with self._lock:
            if self._closing:
                raise ClientClosed(f"the blocking client of {self.endpoint} is closed")
            self._pending.add(call)
        loop = self.loop
        assert loop is not None

        def start() -> None:
            if call.abandoned:  # the caller stopped waiting before we began
                with self._lock:
                    self._pending.discard(call)
                return
            call.task = loop.create_task(factory())
            call.task.add_done_callback(finish)

        def finish(task: asyncio.Task[T]) -> None:
            with self._lock:
                self._pending.discard(call)
            if task.cancelled():
                call.settle(error=self._closed_first())
            elif (error := task.exception()) is not None:
                call.settle(error=error)
            else:
                call.settle(value=task.result())

        try:
            loop.call_soon_threadsafe(start)
        except RuntimeError:  # the loop closed under us
            call.settle(error=self._closed_first())
        return call

    def call(self, factory: Callable[[], Coroutine[Any, Any, T]], limit: float) -> T:
        """Run ``factory()`` in the loop and wait for its outcome: raised again here."""
        if threading.current_thread() is self.thread:
            raise RuntimeError(
                "the blocking API cannot be called from its own loop thread (an on_state"
                " callback): it would wait on itself; use the async Client there"
            )
        call = self.submit(factory)
        try:
            finished = call.done.wait(limit + _MARGIN)
        except BaseException:  # Ctrl-C: stop the request in the loop too
            self._abandon(call)
            raise
        if not finished:
            self._abandon(call)
            raise ResponseTimeout(
                f"no outcome from the client's loop within {limit + _MARGIN:g} s"
            )
        return call.outcome()

    def _abandon(self, call: _Call[Any]) -> None:
        """The caller stopped waiting: cancel the task (or keep it from starting)."""
        call.abandoned = True
        loop = self.loop
        if loop is None:
            return

        def cancel() -> None:  # runs after ``start`` (callbacks run in order)
            if call.task is not None:
                call.task.cancel()

        with contextlib.suppress(RuntimeError):  # the loop has already closed
            loop.call_soon_threadsafe(cancel)

    def _closed_first(self) -> ClientClosed:
        return ClientClosed(f"the blocking client of {self.endpoint} was closed first")

    def shutdown(self) -> None:
        """Close the client and the loop, join the thread; from any thread, idempotent."""
        with self._lock:
            first = not self._closing
            self._closing = True
        loop, stop = self.loop, self._stop
        if first and loop is not None and stop is not None:
            with contextlib.suppress(RuntimeError):  # the loop has already closed
                loop.call_soon_threadsafe(stop.set)
        if threading.current_thread() is self.thread:
            return  # the loop finishes closing once this callback returns
        self.thread.join(self.close_timeout + _MARGIN)
        if self.thread.is_alive():
            log.warning("%s: the blocking client's thread did not end in time", self.endpoint)
        with self._lock:
            left, self._pending = list(self._pending), set()
        for call in left:
            call.settle(error=self._closed_first())


# ------------------------------------------------------------------------------ the client


class BlockingClient:
    """A reconnecting RAIN client with blocking methods, for scripts, the interactive
    interpreter and notebooks; how it works is in the docstring of ``rain_envelopes.sync``.

    Usually made by ``rain_envelopes.sync.connect()``, which waits for the first session.
    The constructor starts the background thread and starts connecting, without waiting (see
    :meth:`wait_established`). ``timeout`` is the default limit of every call, in seconds;
    ``close_timeout`` bounds :meth:`close`. ``key``, ``server_key`` and ``known_hosts`` are
    taken as ``rain`` takes them (paths or objects; ``RAIN_KEY``, ``RAIN_SERVER_KEY`` and
    ``RAIN_KNOWN_HOSTS`` from the environment when none is given). ``node``, ``insecure``,
    ``backoff``, ``queue_length``, ``on_state`` (called in the client's thread: keep it short,
    and do not call this client from it) and any other keyword (``ping_interval``,
    ``transport_options``, ...) are those of :class:`~rain_envelopes.client.Client`.

    Raises KeyFileError for a missing or bad key, ConfigError for a bad option or an endpoint
    no installed transport handles, TypeError for a key of the wrong kind.
    """

    def __init__(
        self,
        endpoint: str,
        *,
        key: Identity | str | os.PathLike[str] | None = None,
        server_key: bytes | Identity | str | os.PathLike[str] | None = None,
        known_hosts: str | os.PathLike[str] | None = None,
        timeout: float = 10.0,
        close_timeout: float = 5.0,
        node: Node | str | None = None,
        insecure: bool = False,
        backoff: Backoff | None = None,
        queue_length: int = 64,
        on_state: Callable[[StateChange], object] | None = None,
        **client_options: Any,
    ) -> None:
        if not timeout > 0:
            raise ConfigError("timeout must be positive")
        if not close_timeout > 0:
            raise ConfigError("close_timeout must be positive")
        if queue_length < 1:
            raise ConfigError("queue_length must be at least 1")
        identity = _identity(key)
        pinned = _server_key(endpoint, server_key, known_hosts)
        if transport_factory(endpoint).secure and not insecure:
            if pinned is None:
                raise KeyFileError(
                    f"no server key for {endpoint}: pass server_key= (the server's .pub file or"
                    " key) or known_hosts=, or set RAIN_SERVER_KEY"
                )
            if identity is None:
                raise KeyFileError(
                    "no key: pass key= (your secret key file, made by `rain keygen`) or set"
                    " RAIN_KEY"
                )
        self.endpoint = endpoint
        self.timeout = float(timeout)
        self.queue_length = queue_length
        options = dict(
            identity=identity,
            server_key=pinned,
            node=node,
            insecure=insecure,
            backoff=backoff,
            command_timeout=self.timeout,
            queue_length=queue_length,
            on_state=on_state,
            **client_options,
        )
        self._runner = _Runner(endpoint, options, close_timeout)
        self._finalizer = weakref.finalize(self, self._runner.shutdown)

    # ---------------------------------------------------------------- life cycle

    def _limit(self, timeout: float | None) -> float:
        limit = self.timeout if timeout is None else float(timeout)
        if not limit > 0:
            raise ValueError("timeout must be positive")
        return limit

    def _call(self, factory: Callable[[Client], Coroutine[Any, Any, T]], limit: float) -> T:
        client = self._runner.client
        assert client is not None
        return self._runner.call(lambda: factory(client), limit)

    def wait_established(self, timeout: float | None = None) -> None:
        """Wait until a session is up. Raises Disconnected (none within ``timeout``; the
        client keeps trying) or ClientClosed (it gave up, e.g. a refused key: ``.cause``)."""
        limit = self._limit(timeout)
        try:
            self._call(lambda c: c.wait_established(limit), limit)
        except Disconnected as exc:
            error = self._runner.last_error
            if error is None or exc.cause is not None:
                raise
            raise Disconnected(f"{exc}; the last attempt failed with: {error}", error) from None

    def close(self) -> None:
        """End the session politely and stop the background thread. Idempotent; never raises.

        Monitors stop; calls still waiting in other threads raise ClientClosed.
        """
        self._finalizer()

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called or the client gave up reconnecting."""
        client = self._runner.client
        return not self._finalizer.alive or client is None or client.closed

    @property
    def state(self) -> ClientState:
        """Where the client is: connecting, established, lost, retrying or closed."""
        client = self._runner.client
        if not self._finalizer.alive or client is None:
            return ClientState.CLOSED
        return client.state

    @property
    def close_reason(self) -> Reason | None:
        """Why the client gave up (a Reason), or None."""
        client = self._runner.client
        return None if client is None else client.close_reason

    def __enter__(self) -> BlockingClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<BlockingClient {self.endpoint} {self.state.value}>"

    # ---------------------------------------------------------------- requests

    def request(self, command: Command, *, timeout: float | None = None) -> Command:
        """Send any request command; returns the response whatever its status.

        Raises Disconnected, ResponseTimeout or ClientClosed (NotDone: safe to repeat).
        """
        limit = self._limit(timeout)
        return self._call(lambda c: c.send_command(command, timeout=limit), limit)

    def get_sample(self, name_or_uri: str, *, timeout: float | None = None) -> Any:
        """GET a parameter; returns its sample document (``value``, ``timestamp``, ``seq``,
        ``epoch``), or whatever resource another URI holds.

        Raises CommandFailed (the server refused: unknown parameter, access denied, ...) or
        NotDone (Disconnected, ResponseTimeout, ClientClosed).
        """
        uri = parameter_uri(name_or_uri)
        limit = self._limit(timeout)
        return self._call(lambda c: c.get(uri, timeout=limit), limit).resource

    def get(self, name_or_uri: str, *, timeout: float | None = None) -> Any:
        """GET a parameter's value: ``get("temperature")`` is ``get("/params/temperature")``.

        For a resource that is not a sample (``/params``), the resource itself. Raises as
        :meth:`get_sample`.
        """
        return _value(self.get_sample(name_or_uri, timeout=timeout))

    def set(self, name_or_uri: str, value: Any, *, timeout: float | None = None) -> Any:
        """SET a parameter, exactly once (one command id across reconnects, and an expiry of
        its timeout, so a late server never applies it); returns the value the server now
        holds (a setter may normalise it).

        Raises CommandFailed (refused: a bad value has code 64, a read-only parameter 66, a
        set that arrived after its expiry 1001) or NotDone (Disconnected, ResponseTimeout,
        ClientClosed: the set was not applied, or it was and the answer was lost, and
        repeating it is safe).
        """
        uri = parameter_uri(name_or_uri)
        limit = self._limit(timeout)
        return _value(self._call(lambda c: c.set(uri, value, timeout=limit), limit).resource)

    def list(self, *, timeout: float | None = None) -> list[dict[str, Any]]:
        """The parameters this client may use: one descriptor per parameter (``name``,
        ``description``, ``unit``, ``schema``, ``methods``, ...). Raises as :meth:`get`."""
        limit = self._limit(timeout)
        resource = self._call(lambda c: c.get("/params", timeout=limit), limit).resource
        items = resource.get("items", []) if isinstance(resource, Mapping) else []
        return [dict(item) for item in items if isinstance(item, Mapping)]

    def ping(self, *, timeout: float | None = None) -> float:
        """Round-trip a ``get /ping``; returns the seconds it took. Raises NotDone."""
        limit = self._limit(timeout)
        return self._call(lambda c: c.ping(timeout=limit), limit)

    def monitor(
        self,
        name_or_uri: str,
        *,
        timeout: float | None = None,
        queue_length: int | None = None,
        idle_timeout: float | None = None,
    ) -> Monitor:
        """Subscribe, and return a :class:`Monitor`: iterate it for the current value, then
        every later one, across reconnects and server restarts (``update.restarted``).

        ``timeout`` bounds the subscribe; ``queue_length`` (default: the client's) bounds the
        updates waiting to be read (the oldest are dropped and counted in the next update's
        ``dropped``); ``idle_timeout`` makes iteration raise TimeoutError when no update comes
        for that long. Raises CommandFailed (refused) or NotDone (Disconnected,
        ResponseTimeout, ClientClosed): then nothing stays subscribed.
        """
        uri = parameter_uri(name_or_uri)
        limit = self._limit(timeout)
        length = self.queue_length if queue_length is None else queue_length
        if length < 1:
            raise ValueError("queue_length must be at least 1")
        if idle_timeout is not None and not idle_timeout > 0:
            raise ValueError("idle_timeout must be positive")
        sink = _Sink(length)
        runner = self._runner
        self._call(lambda _: runner.attach(uri, sink, limit, length), limit)
        return Monitor(self, uri, sink, idle_timeout)


def _value(resource: Any) -> Any:
    if isinstance(resource, Mapping) and "value" in resource:
        return resource["value"]
    return resource


def connect(
    endpoint: str,
    *,
    key: Identity | str | os.PathLike[str] | None = None,
    server_key: bytes | Identity | str | os.PathLike[str] | None = None,
    known_hosts: str | os.PathLike[str] | None = None,
    timeout: float = 10.0,
    connect_timeout: float | None = None,
    wait: bool = True,
    **options: Any,
) -> BlockingClient:
    """Connect to a RAIN server and return a :class:`BlockingClient` (a context manager).

    With ``wait`` (the default), return once a session is established, within
    ``connect_timeout`` seconds (default: ``timeout``); otherwise close what was started and
    raise: Disconnected (no session in time; names the last attempt's error) or ClientClosed
    (the server refused our key, or the pinned server key is wrong: ``.cause`` says which).
    Other keywords are those of :class:`BlockingClient`; it raises KeyFileError,
    ConfigError and TypeError for bad arguments before anything is started.
    """
    client = BlockingClient(
        endpoint, key=key, server_key=server_key, known_hosts=known_hosts, timeout=timeout,
        **options,
    )
    if wait:
        try:
            client.wait_established(timeout if connect_timeout is None else connect_timeout)
        except BaseException:
            client.close()
            raise
    return client
