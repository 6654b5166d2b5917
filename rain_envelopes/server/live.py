"""A served parameter: the runtime state a server keeps for each declared Parameter.

Runs on the server's event loop. Invariants:

- ``seq`` grows by one for every new sample (a read, a set, a periodic or triggered
  publication), and every new sample is offered to every subscription, so a subscriber sees a
  gap in ``seq`` only when samples were dropped for it;
- reads are single-flight: while a getter call is running, other ``get`` requests wait for the
  same result instead of starting more calls (a slow instrument costs one worker thread, not one
  per client); sets of one parameter run one at a time, in arrival order;
- plain plugin functions run in the server's worker threads, coroutine functions on the loop;
  a call that outlives ``plugin_timeout`` answers the client with 101 (the thread cannot be
  killed; its result still becomes a sample when it arrives);
- a plugin exception is logged here once, with its traceback, and reaches the client as a
  ParameterError with a one-line description and no traceback;
- publications from plugin threads coalesce: a thread's publication is handed to the loop in a
  one-value slot, and at most one loop callback per parameter is pending. A publication that
  finds the slot still full replaces the value in it (the newer value wins) and the replaced
  one is counted in ``coalesced``. So a thread publishing as fast as it can costs the loop one
  callback per loop turn, not one per publication, and other requests wait a loop turn at
  most, never behind a backlog; subscribers see the newest values with no ``seq`` gap, as
  the replaced values never became samples.

Every sample is offered to every subscription; the subscriptions share :attr:`observes`, so
each sample is encoded once per distinct subscriber URI (see
:mod:`rain_envelopes.server.subscriptions`).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from datetime import datetime
from typing import Any

from ..codec import check_value
from ..envelopes import ReasonCode
from ..errors import EnvelopeValidationError
from .errors import ParameterError
from .parameters import Func, Parameter
from .samples import Sample, format_timestamp, utc_now
from .subscriptions import ObserveCache, Subscription

__all__ = ["LiveParameter", "PluginRuntime"]

log = logging.getLogger("rain.server")

_MAX_DETAIL = 160


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if len(text) > _MAX_DETAIL:
        text = text[: _MAX_DETAIL - 3] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class PluginRuntime:
    """Where plugin code runs: the event loop for coroutines, an executor for plain functions."""

    def __init__(self, executor: Executor, *, timeout: float, epoch: str) -> None:
        self.executor = executor
        self.timeout = timeout
        self.epoch = epoch
        self.loop = asyncio.get_running_loop()
        self.loop_thread = threading.get_ident()
        #: Called with (role, seconds) after each call of plugin code when metrics are on.
        self.on_call: Callable[[str, float], None] | None = None

    async def call(self, function: Func, *args: Any) -> Any:
        """Run a plugin function (sync in a worker thread, async on the loop) and return its
        result. Raises whatever the function raised."""
        if inspect.iscoroutinefunction(function):
            return await function(*args)
        result = await self.loop.run_in_executor(self.executor, functools.partial(function, *args))
        if inspect.isawaitable(result):
            result = await result
        return result

    def on_loop(self) -> bool:
        return threading.get_ident() == self.loop_thread


class LiveParameter:
    """The server-side life of one Parameter: samples, subscriptions, reads, sets, periods."""

    def __init__(self, declaration: Parameter, runtime: PluginRuntime) -> None:
        self.declaration = declaration
        self.name = declaration.name
        self.runtime = runtime
        self.seq = 0
        self.last: Sample | None = None
        self.subscriptions: set[Subscription] = set()
        #: The observe of the newest sample per subscriber URI, shared by the subscriptions.
        self.observes = ObserveCache()
        #: Called with every new sample after the subscriptions have it (an archiver's tap).
        #: Must not block or raise.
        self.sinks: list[Callable[[str, Sample], None]] = []
        #: Thread publications replaced by a newer one before the loop took them.
        self.coalesced = 0
        # The newest thread publication the loop has not taken yet, and its guard.
        self._handoff: tuple[Any, datetime] | None = None
        self._handoff_lock = threading.Lock()
        self._read_task: asyncio.Task[Sample] | None = None
        self._set_lock = asyncio.Lock()
        self._interval_changed = asyncio.Event()
        self._periodic: asyncio.Task[None] | None = None
        self._failing = False
        if declaration.get_function is None:
            # A stored value: it has a sample from the start.
            self.publish(declaration.value)

    def __repr__(self) -> str:
        return f"<LiveParameter {self.name} seq={self.seq}>"

    # ------------------------------------------------------------------ publishing

    def publish(self, value: Any, timestamp: datetime | None = None) -> Sample:
        """Make the next sample and offer it to every subscription. Loop thread only.

        Raises ParameterError (101) when ``value`` cannot be sent as JSON.
        """
        try:
            # The codec's rules, not orjson's alone: orjson writes NaN and Infinity as null, but
            # no envelope may carry them, so such a sample would never reach anyone. The value
            # sits one level down in the sample document.
            check_value({"value": value})
        except EnvelopeValidationError as exc:
            raise ParameterError(
                f"{self.name}: the plugin produced a value that is not JSON ({exc})",
                code=ReasonCode.APPLICATION_ERROR,
            ) from None
        self.seq += 1
        sample = Sample(
            value, format_timestamp(timestamp or utc_now()), self.seq, self.runtime.epoch
        )
        self.last = sample
        self.declaration._record(value)
        for subscription in self.subscriptions:
            subscription.offer(sample)
        self.observes.publish(sample)  # once per fan-out group (subscriptions.py)
        for sink in self.sinks:
            sink(self.name, sample)
        return sample

    def _publish_logged(self, value: Any, timestamp: datetime) -> None:
        try:
            self.publish(value, timestamp)
        except ParameterError as exc:
            log.error("publication of %s dropped: %s", self.name, exc.description)

    # Binding protocol (called by Parameter from any thread).
    def publish_threadsafe(self, value: Any, timestamp: datetime) -> None:
        if self.runtime.on_loop():
            self._publish_logged(value, timestamp)
            return
        with self._handoff_lock:
            pending = self._handoff is not None
            if pending:
                self.coalesced += 1  # the loop has not taken the previous one: replace it
            self._handoff = (value, timestamp)
        if pending:
            # A callback is already on its way and will take this value. The loop is behind:
            # let it have the interpreter now rather than at the end of this thread's switch
            # interval (a thread that never blocks would otherwise hold it for 5 ms a turn).
            time.sleep(0)
            return
        try:
            self.runtime.loop.call_soon_threadsafe(self._take_handoff)
        except RuntimeError:  # the loop has closed under a plugin thread: nobody to tell
            log.debug("publication of %s after the server stopped dropped", self.name)

    def _take_handoff(self) -> None:
        with self._handoff_lock:
            handoff, self._handoff = self._handoff, None
        if handoff is not None:
            self._publish_logged(*handoff)

    def interval_changed(self) -> None:
        if self.runtime.on_loop():
            self._on_interval_changed()
        else:
            self.runtime.loop.call_soon_threadsafe(self._on_interval_changed)

    def _on_interval_changed(self) -> None:
        self._interval_changed.set()
        if self._periodic is None and self.declaration.periodic:
            self.start_periodic()

    # ------------------------------------------------------------------ calling plugin code

    async def _call(self, role: str, function: Func, *args: Any) -> Any:
        on_call = self.runtime.on_call
        if on_call is not None:
            started = time.perf_counter()
            try:
                return await self._call_plugin(role, function, *args)
            finally:
                on_call(role, time.perf_counter() - started)
        return await self._call_plugin(role, function, *args)

    async def _call_plugin(self, role: str, function: Func, *args: Any) -> Any:
        try:
            return await self.runtime.call(function, *args)
        except ParameterError:
            raise
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("%s of parameter %s raised", role, self.name)
            raise ParameterError(
                f"{role} of {self.name} failed: {_short(exc)}", code=ReasonCode.APPLICATION_ERROR
            ) from exc

    async def _bounded(self, awaitable: asyncio.Future[Sample], role: str) -> Sample:
        try:
            return await asyncio.wait_for(asyncio.shield(awaitable), self.runtime.timeout)
        except TimeoutError:
            log.warning("%s of %s still running after %g s", role, self.name, self.runtime.timeout)
            raise ParameterError(
                f"{role} of {self.name} timed out after {self.runtime.timeout:g} s",
                code=ReasonCode.APPLICATION_ERROR,
            ) from None

    async def _do_read(self) -> Sample:
        getter = self.declaration.get_function
        assert getter is not None
        value = await self._call("getter", getter)
        return self.publish(value)

    def _read_done(self, task: asyncio.Task[Sample]) -> None:
        if self._read_task is task:
            self._read_task = None
        if not task.cancelled():
            task.exception()  # retrieved: every waiter may have timed out

    async def read(self) -> Sample:
        """A fresh sample from the getter (shared with concurrent readers), or the stored one.

        Raises ParameterError (the plugin's code, or 101).
        """
        if self.declaration.get_function is None:
            assert self.last is not None
            return self.last
        task = self._read_task
        if task is None:
            task = asyncio.create_task(self._do_read(), name=f"rain-read {self.name}")
            task.add_done_callback(self._read_done)
            self._read_task = task
        return await self._bounded(task, "getter")

    async def snapshot(self) -> Sample:
        """The current sample for a new subscriber: the last one when the parameter is
        published periodically or stored, else a fresh read."""
        if self.last is not None and (
            self.declaration.periodic or self.declaration.get_function is None
        ):
            return self.last
        return await self.read()

    async def write(
        self, value: Any, *, before: Callable[[], Awaitable[None]] | None = None
    ) -> Sample:
        """Apply ``value`` (already checked against the schema) and publish the result.

        ``before`` runs under this parameter's set lock just before the setter is called (or
        the value stored): the last moment to refuse (an expired set) or to record that the set
        is being applied; whatever it raises is raised here, and nothing is applied.
        Raises ParameterError (the plugin's code, or 101).
        """
        setter = self.declaration.set_function
        async with self._set_lock:
            if before is not None:
                await before()
            if setter is None:
                return self.publish(value)
            task = asyncio.ensure_future(self._apply(setter, value))
            task.add_done_callback(_retrieve)
            return await self._bounded(task, "setter")

    async def _apply(self, setter: Func, value: Any) -> Sample:
        result = await self._call("setter", setter, value)
        return self.publish(value if result is None else result)

    # ------------------------------------------------------------------ periodic publication

    def start_periodic(self) -> None:
        if self._periodic is None and self.declaration.periodic:
            self._periodic = asyncio.create_task(
                self._run_periodic(), name=f"rain-periodic {self.name}"
            )

    async def _run_periodic(self) -> None:
        loop = self.runtime.loop
        declaration = self.declaration
        next_due = loop.time()
        while True:
            interval = declaration.interval
            if interval is None:
                self._periodic = None
                return
            delay = next_due - loop.time()
            if delay > 0:
                self._interval_changed.clear()
                try:
                    # A timer that an interval change cuts short (then the new period applies).
                    await asyncio.wait_for(self._interval_changed.wait(), delay)
                    next_due = loop.time()
                    continue
                except TimeoutError:
                    pass
            await self._publish_once()
            # Fixed rate without drift; after an overrun start again from now (no burst).
            next_due = max(next_due + interval, loop.time())

    async def _publish_once(self) -> None:
        declaration = self.declaration
        try:
            if declaration.scan_function is not None:
                value = await self.runtime.call(declaration.scan_function)
                if value is not None:
                    self.publish(value)
            else:
                await self.read()
            if self._failing:
                log.info("periodic publication of %s works again", self.name)
            self._failing = False
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # Log the first failure of a streak with its traceback (read() already logged
            # plugin exceptions), then stay quiet until it works again.
            if not self._failing:
                if isinstance(exc, ParameterError):
                    log.error("periodic publication of %s failed: %s", self.name, exc.description)
                else:
                    log.exception("periodic publication of %s failed", self.name)
            self._failing = True

    # ------------------------------------------------------------------ ending

    def stop(self) -> None:
        """Cancel periodic and in-flight work and drop every subscription."""
        for task in (self._periodic, self._read_task):
            if task is not None and not task.done():
                task.cancel()
        self._periodic = None
        for subscription in [*self.subscriptions, *self.observes.fanned]:
            subscription.close()
        self.subscriptions.clear()


def _retrieve(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


