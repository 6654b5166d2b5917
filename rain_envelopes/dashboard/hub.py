"""The dashboard's view of its servers: one reconnecting client each, and what the page needs.

Theory of operation. A :class:`Hub` owns one :class:`Station` per server endpoint. A station is
a :class:`~rain_envelopes.client.Client` (the dashboard's own identity, the server's pinned key)
plus what the page shows of that server: the connection state and how often it came back, the
parameter descriptors the server's ``get /params`` gives *this identity* (so "who may do what"
is what the server says, never a guess), the last sample of each parameter and the samples lost
on the way. At every ``established`` the station lists the parameters again (a restarted server
may serve other ones) and subscribes to those it may subscribe and is not subscribed to yet;
the client re-issues the rest itself on every new session.

Everything the page must learn is an *event*: a plain JSON-ready dict (``t`` is its kind)
handed to every registered listener, which must not block (the web layer queues them per
browser with a bound). A listener that joins late first takes :meth:`Hub.snapshot`, which holds
everything the events so far have said; event and snapshot are made with no await between, so
a listener added right after a snapshot misses nothing.

Events:

- ``{"t": "state", "s": station}``: the station's whole header (state, reason, reconnects).
- ``{"t": "params", "s": station}``: the station's whole parameter list changed.
- ``{"t": "sample", "s": id, "n": name, "v": value, "ts": timestamp, "seq": n,
  "dropped": n, "restarted": bool, "snapshot": bool}``: one sample.

A set from the page goes through :meth:`Hub.set`, which only accepts names the server listed (the
page is not a way to reach any other URI with the dashboard's identity) and lets the server decide
the rest: access rules and the schema refuse on the server, and the refusal's code and reason come
back to the page as they are.

Nothing here imports aiohttp or does I/O but through the client: the web layer (web.py) is a
shell around this module, and the tests drive it without a browser too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..client import Client, ClientState, StateChange, Update
from ..errors import (
    ClientClosed,
    CommandFailed,
    NotDone,
    RainError,
    ResponseTimeout,
)

__all__ = ["Event", "Hub", "ServerSpec", "SetOutcome", "Station"]

log = logging.getLogger("rain.dashboard")

Event = dict[str, Any]
Listener = Callable[[Event], None]

#: Longest text taken from a server for one descriptor field (a name, unit, description); the
#: page shows text, and a hostile server must not make every browser hold megabytes of it.
MAX_TEXT = 4096


@dataclass(frozen=True)
class ServerSpec:
    """One server to watch: its endpoint and the :class:`Client` keyword arguments."""

    endpoint: str
    client_options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SetOutcome:
    """What became of a set from the page: applied (``value``) or refused (``code``, ``reason``)."""

    ok: bool
    value: Any = None
    code: int | None = None
    reason: str = ""

    def event(self, request_id: Any) -> Event:
        return {"t": "set-result", "id": request_id, "ok": self.ok, "value": self.value,
                "code": self.code, "reason": self.reason}


def _text(value: Any) -> str:
    """A descriptor field as bounded text (whatever type a server sent)."""
    if value is None:
        return ""
    text = value if isinstance(value, str) else repr(value)
    return text[:MAX_TEXT]


def _descriptor(item: Any) -> dict[str, Any] | None:
    """A parameter descriptor reduced to what the page uses, each field of a known type."""
    if not isinstance(item, Mapping) or not isinstance(item.get("name"), str):
        return None
    methods = item.get("methods")
    schema = item.get("schema")
    interval = item.get("interval")
    return {
        "name": _text(item["name"]),
        "description": _text(item.get("description")),
        "unit": _text(item.get("unit")),
        "schema": schema if isinstance(schema, Mapping) else None,
        "methods": [m for m in methods if isinstance(m, str)] if isinstance(methods, list) else [],
        "interval": interval if isinstance(interval, int | float)
        and not isinstance(interval, bool) else None,
    }


class Station:
    """One server as the dashboard sees it. See the module docstring."""

    def __init__(self, station_id: str, spec: ServerSpec, hub: Hub) -> None:
        self.id = station_id
        self.endpoint = spec.endpoint
        self._hub = hub
        self.client = Client(spec.endpoint, on_state=self._on_state, **dict(spec.client_options))
        self.state = ClientState.CONNECTING.value
        self.reason = ""
        self.delay: float | None = None
        self.node = ""
        #: Sessions established after the first: how often the dashboard came back.
        self.reconnects = 0
        self._established_once = False
        self.error = ""
        self.params: list[dict[str, Any]] = []
        self.last: dict[str, Event] = {}
        #: Samples lost per parameter since the dashboard started (client and server side).
        self.dropped: dict[str, int] = {}
        self._subscribed: set[str] = set()
        self._refresh: asyncio.Task[None] | None = None
        self._again = False

    # ------------------------------------------------------------------ what the page sees

    def header(self) -> Event:
        return {
            "id": self.id, "endpoint": self.endpoint, "node": self.node, "state": self.state,
            "reason": self.reason, "delay": self.delay, "reconnects": self.reconnects,
            "error": self.error,
        }

    def view(self) -> Event:
        return {**self.header(), "params": self.params, "last": list(self.last.values()),
                "dropped": self.dropped}

    # ------------------------------------------------------------------ life

    async def start(self) -> None:
        await self.client.start(wait=False)

    async def close(self) -> None:
        task, self._refresh = self._refresh, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        channel = self.client.channel
        closing = asyncio.ensure_future(self.client.close())
        done, _ = await asyncio.wait({closing}, timeout=1.0)
        if not done and channel is not None:
            await channel.close()  # no answer to `finishing`: drop the session at once
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(closing, 1.0)

    def _on_state(self, change: StateChange) -> None:
        self.state = change.state.value
        self.delay = change.delay
        if change.reason is not None:
            self.reason = str(change.reason)
        elif change.error is not None:
            self.reason = str(change.error) or type(change.error).__name__
        elif change.state is ClientState.ESTABLISHED:
            self.reason = ""
        if change.state is ClientState.ESTABLISHED:
            if self._established_once:
                self.reconnects += 1
            self._established_once = True
            channel = self.client.channel
            self.node = str(channel.remote_node) if channel and channel.remote_node else ""
            if self._refresh is None or self._refresh.done():
                self._refresh = asyncio.create_task(self._refresh_loop(),
                                                    name=f"rain-dashboard {self.endpoint}")
            else:
                self._again = True  # a new session while listing: list again when done
        self._hub.emit({"t": "state", "s": self.header()})

    async def _refresh_loop(self) -> None:
        while True:
            self._again = False
            await self._list_and_subscribe()
            if not self._again:
                return

    async def _list_and_subscribe(self) -> None:
        try:
            response = await self.client.get("/params")
        except (CommandFailed, NotDone) as exc:
            self._set_error(f"cannot list the parameters: {exc}")
            return
        resource = response.resource
        items = resource.get("items") if isinstance(resource, Mapping) else None
        params = [d for d in map(_descriptor, items if isinstance(items, list) else []) if d]
        names = {d["name"] for d in params}
        self.params = params
        self.error = ""
        self._hub.emit({"t": "params", "s": self.view()})
        for gone in sorted(self._subscribed - names):
            self._subscribed.discard(gone)
            await self.client.unsubscribe(f"/params/{gone}")
        for descriptor in params:
            name = descriptor["name"]
            if "subscribe" not in descriptor["methods"] or name in self._subscribed:
                continue
            try:
                await self.client.subscribe(f"/params/{name}", self._sample_callback(name))
            except ClientClosed:
                return
            except ResponseTimeout:
                pass  # it stays with the client, which makes it on every new session
            except (RainError, ValueError) as exc:
                # Refused, the session went before it was made (the next `established` lists
                # and subscribes again), or the server listed a name that is no URI.
                text = exc.reason if isinstance(exc, CommandFailed) else exc
                self._set_error(f"subscribe {name}: {text}")
                continue
            self._subscribed.add(name)

    def _set_error(self, text: str) -> None:
        log.info("%s: %s", self.endpoint, text)
        self.error = text[:MAX_TEXT]
        self._hub.emit({"t": "state", "s": self.header()})

    def _sample_callback(self, name: str) -> Callable[[Update], None]:
        def on_update(update: Update) -> None:
            sample = update.sample
            if not isinstance(sample, Mapping):
                sample = {"value": sample}
            if update.dropped:
                self.dropped[name] = self.dropped.get(name, 0) + update.dropped
            event: Event = {
                "t": "sample", "s": self.id, "n": name, "v": sample.get("value"),
                "ts": sample.get("timestamp"), "seq": sample.get("seq"),
                "dropped": self.dropped.get(name, 0), "restarted": update.restarted,
                "snapshot": update.snapshot,
            }
            self.last[name] = event
            self._hub.emit(event)

        return on_update

    # ------------------------------------------------------------------ requests

    async def set(self, name: str, value: Any, timeout: float) -> SetOutcome:
        if not any(d["name"] == name for d in self.params):
            return SetOutcome(False, reason=f"{self.endpoint} lists no parameter {name!r}")
        try:
            response = await self.client.set(f"/params/{name}", value, timeout=timeout)
        except CommandFailed as exc:
            return SetOutcome(False, code=exc.reason.code, reason=exc.reason.description or "")
        except NotDone as exc:
            return SetOutcome(False, reason=f"not done: {exc}")
        except RainError as exc:  # e.g. a value no envelope can carry
            return SetOutcome(False, reason=str(exc))
        resource = response.resource
        applied = resource.get("value", value) if isinstance(resource, Mapping) else value
        return SetOutcome(True, value=applied)


class Hub:
    """Every server the dashboard watches, and the listeners (browsers) that watch it."""

    def __init__(self, specs: list[ServerSpec], *, set_timeout: float = 10.0) -> None:
        if not specs:
            raise ValueError("the dashboard needs at least one server")
        self.set_timeout = set_timeout
        self.stations = {f"s{i}": Station(f"s{i}", spec, self) for i, spec in enumerate(specs)}
        self._listeners: list[Listener] = []

    async def start(self) -> None:
        for station in self.stations.values():
            await station.start()

    async def close(self) -> None:
        await asyncio.gather(*(s.close() for s in self.stations.values()))

    async def __aenter__(self) -> Hub:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def snapshot(self) -> Event:
        return {"t": "hello", "servers": [s.view() for s in self.stations.values()]}

    def listen(self, listener: Listener) -> Callable[[], None]:
        """Add a listener; returns the function that removes it."""
        self._listeners.append(listener)

        def remove() -> None:
            with contextlib.suppress(ValueError):
                self._listeners.remove(listener)

        return remove

    def emit(self, event: Event) -> None:
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                log.exception("dashboard listener failed")

    async def set(self, station_id: str, name: str, value: Any) -> SetOutcome:
        station = self.stations.get(station_id)
        if station is None:
            return SetOutcome(False, reason=f"no server {station_id!r}")
        return await station.set(name, value, self.set_timeout)
