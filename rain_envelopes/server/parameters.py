"""Declaring parameters: the plugin API (modelled on caproto's ``pvproperty``).

A parameter is a named value an instrument exposes at ``/params/{name}``. Plugin files declare
them; the server reads, writes and publishes them::

    from rain_envelopes.server import Parameter, parameter

    @parameter(unit="degC", description="Air temperature", interval=2.0)
    def temperature() -> float:          # the getter; called every 2 s and on `get`
        return sensor.read()

    sampling = Parameter("sampling_interval", value=2.0, unit="s",
                         schema={"type": "number", "minimum": 0.1, "maximum": 3600})

    @sampling.setter                     # makes the parameter settable
    def sampling(value: float) -> None:  # checked against the schema before this is called
        temperature.interval = value

    storm = Parameter("storm_alert", description="Raised when pressure falls fast")
    ...
    storm.publish({"level": "warning"})  # triggered publication, from any thread

Getters, setters and scan functions may be plain functions (run in a worker thread, so a slow
instrument never stalls the server) or ``async def`` (awaited on the event loop: never block in
them). A setter returns the value actually applied, or None to mean "the value given".

Invariants: a Parameter is a *declaration*. Its name is checked and its JSON schema compiled
(fastjsonschema, once) when it is declared, so a mistake fails at start-up with the plugin's file
and line. Runtime state (sequence numbers, subscribers, periodic task) lives in the server that
binds the parameter; a parameter is bound to at most one running server at a time.
"""

from __future__ import annotations

import contextvars
import difflib
import math
import os
import re
import sys
import threading
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, Protocol, TypeVar

import fastjsonschema

from .errors import PluginError
from .samples import utc_now

__all__ = ["Parameter", "parameter"]

_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}$")
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))

Func = Callable[..., Any]
_F = TypeVar("_F", bound=Func)


class _Binding(Protocol):
    """What the server gives a bound parameter (see ``server.live``)."""

    def publish_threadsafe(self, value: Any, timestamp: datetime) -> None: ...

    def interval_changed(self) -> None: ...


#: Set by the plugin loader while a plugin file runs: every Parameter declared lands here.
_collector: contextvars.ContextVar[list[Parameter] | None] = contextvars.ContextVar(
    "rain_parameter_collector", default=None
)


def _declaration_site() -> tuple[str | None, int | None]:
    """File and line of the first caller outside this package (the plugin's declaration)."""
    frame = sys._getframe(1)
    while frame is not None:
        filename = os.path.abspath(frame.f_code.co_filename)
        if not filename.startswith(_PACKAGE_DIR + os.sep):
            return frame.f_code.co_filename, frame.f_lineno
        frame = frame.f_back  # type: ignore[assignment]
    return None, None


_JSON_TYPES = ("array", "boolean", "integer", "null", "number", "object", "string")
# Keywords whose values are data, not schemas: a "type" key inside them is not a type.
_DATA_KEYWORDS = frozenset({"const", "enum", "default", "examples"})


def _unknown_type(schema: Any, where: str = "") -> str | None:
    """Say which ``type`` of ``schema`` is not a JSON Schema type, and where; None if none is.

    Walks nested schemas (``properties``, ``items``, ``anyOf``...) but not data keywords.
    """
    if isinstance(schema, list):
        for index, item in enumerate(schema):
            found = _unknown_type(item, f"{where}[{index}]")
            if found:
                return found
        return None
    if not isinstance(schema, Mapping):
        return None
    kinds = schema.get("type")
    if isinstance(kinds, Mapping):
        kinds = None  # a property called "type" (under properties), not the keyword
    for kind in kinds if isinstance(kinds, list) else [kinds]:
        if kinds is not None and kind not in _JSON_TYPES:
            close = difflib.get_close_matches(str(kind), _JSON_TYPES, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            return (
                f"unknown type {kind!r} at {where + '.' if where else ''}type{hint}"
                f" (JSON Schema types: {', '.join(_JSON_TYPES)})"
            )
    for key, value in schema.items():
        if key in _DATA_KEYWORDS or (key == "type" and not isinstance(value, Mapping)):
            continue
        found = _unknown_type(value, f"{where}.{key}" if where else str(key))
        if found:
            return found
    return None


def _check_interval(interval: float | None, where: str) -> float | None:
    if interval is None:
        return None
    if isinstance(interval, bool) or not isinstance(interval, (int, float)):
        raise ValueError(f"{where}: interval must be a number of seconds, got {interval!r}")
    if not math.isfinite(interval) or interval <= 0:
        raise ValueError(f"{where}: interval must be a positive number of seconds")
    return float(interval)


class Parameter:
    """A parameter declaration: name, metadata, and the plugin functions behind it.

    ``value`` is the initial value of a parameter without a getter (a stored value). ``schema``
    is a JSON schema that values given to ``set`` must match. ``interval`` (seconds) publishes
    the getter's (or the scan function's) result periodically. ``writable=True`` lets clients
    set a parameter that has no setter (the value is simply stored and published).
    ``persist=False`` keeps a settable parameter's value out of the server's state file, so a
    restart starts it from the plugin's initial value (by default the last value set is
    restored before the server serves again). ``archive=True`` marks its samples for
    store-and-forward to a central archive (``rain_transport_nats.archive``): the server does
    nothing with the flag by itself; an archiver attached to it keeps those samples.

    Raises PluginError (naming the declaration's file and line) for a bad name, interval or
    schema.
    """

    def __init__(
        self,
        name: str,
        *,
        value: Any = None,
        description: str = "",
        unit: str | None = None,
        schema: Mapping[str, Any] | None = None,
        interval: float | None = None,
        writable: bool = False,
        persist: bool = True,
        archive: bool = False,
        getter: Func | None = None,
        setter: Func | None = None,
    ) -> None:
        self.path, self.line = _declaration_site()
        if not isinstance(name, str) or not _NAME.match(name):
            raise self._error(
                f"parameter name {name!r} is not valid: use letters, digits, '_', '.' or '-'"
                " (at most 128 characters, not starting with '.' or '-')"
            )
        self.name = name
        self.description = str(description)
        self.unit = unit
        self.schema: dict[str, Any] | None = dict(schema) if schema is not None else None
        self._validate: Callable[[Any], Any] | None = None
        if schema is not None:
            try:
                self._validate = fastjsonschema.compile(dict(schema))
            except Exception as exc:  # fastjsonschema raises several kinds for a bad schema
                # Its "Unknown type" names neither the type nor where it is: find it.
                detail = _unknown_type(schema) if str(exc) == "Unknown type" else None
                raise self._error(
                    f"parameter {name!r}: JSON schema does not compile: {detail or exc}"
                ) from None
        try:
            self._interval = _check_interval(interval, f"parameter {name!r}")
        except ValueError as exc:
            raise self._error(str(exc)) from None
        self.writable = bool(writable)
        self.persist = bool(persist)
        self.archive = bool(archive)
        self.get_function: Func | None = getter
        self.set_function: Func | None = setter
        self.scan_function: Func | None = None
        self._value = value
        self._binding: _Binding | None = None
        self._lock = threading.Lock()
        collected = _collector.get()
        if collected is not None:
            collected.append(self)

    def __repr__(self) -> str:
        return f"<Parameter {self.name!r}>"

    def _error(self, message: str) -> PluginError:
        return PluginError(message, path=self.path, line=self.line)

    # ------------------------------------------------------------------ decorators (caproto-like)

    def getter(self, function: _F) -> Parameter:
        """Decorator: the function that reads the current value."""
        self.get_function = function
        return self

    def setter(self, function: _F) -> Parameter:
        """Decorator: the function that applies a new value; makes the parameter settable."""
        self.set_function = function
        return self

    def scan(self, interval: float) -> Callable[[_F], Parameter]:
        """Decorator: call the function every ``interval`` s and publish what it returns
        (nothing is published when it returns None)."""
        try:
            checked = _check_interval(interval, f"parameter {self.name!r}")
        except ValueError as exc:
            raise self._error(str(exc)) from None

        def decorate(function: _F) -> Parameter:
            self.scan_function = function
            self.interval = checked
            return self

        return decorate

    # ------------------------------------------------------------------ runtime API for plugins

    @property
    def interval(self) -> float | None:
        """Seconds between periodic publications, or None. Settable at run time (any thread)."""
        return self._interval

    @interval.setter
    def interval(self, value: float | None) -> None:
        self._interval = _check_interval(value, f"parameter {self.name!r}")
        binding = self._binding
        if binding is not None:
            binding.interval_changed()

    @property
    def value(self) -> Any:
        """The last value read, set or published."""
        return self._value

    def publish(self, value: Any) -> None:
        """Publish a new value to every subscriber now (triggered publication).

        Safe to call from any thread and from async code; never blocks. Before the parameter is
        served it only records the value.
        """
        timestamp = utc_now()
        with self._lock:
            self._value = value
            binding = self._binding
        if binding is not None:
            binding.publish_threadsafe(value, timestamp)

    # ------------------------------------------------------------------ used by the server

    @property
    def settable(self) -> bool:
        return self.set_function is not None or self.writable

    @property
    def persists(self) -> bool:
        """True when the server keeps the last value set in its state file (if it has one)."""
        return self.persist and self.settable

    @property
    def periodic(self) -> bool:
        return self._interval is not None and (
            self.scan_function is not None or self.get_function is not None
        )

    @property
    def methods(self) -> list[str]:
        methods = ["get"]
        if self.settable:
            methods.append("set")
        methods.append("subscribe")  # unsubscribe goes with it
        return methods

    def validate(self, value: Any) -> None:
        """Raise ``fastjsonschema.JsonSchemaException`` when ``value`` fails the schema."""
        if self._validate is not None:
            self._validate(value)

    def check(self) -> None:
        """Raise PluginError when the declaration is incomplete (called at start-up)."""
        if self._interval is not None and self.scan_function is None and self.get_function is None:
            raise self._error(
                f"parameter {self.name!r} has an interval but neither a getter nor a scan function"
            )
        for role, function in (
            ("getter", self.get_function),
            ("setter", self.set_function),
            ("scan function", self.scan_function),
        ):
            if function is not None and not callable(function):
                raise self._error(f"parameter {self.name!r}: {role} is not callable")

    def descriptor(self) -> dict[str, Any]:
        """The ``application/vnd.rain.parameter+json`` document."""
        doc: dict[str, Any] = {
            "name": self.name,
            "description": self.description,
            "unit": self.unit,
            "schema": self.schema,
            "methods": self.methods,
        }
        if self._interval is not None:
            doc["interval"] = self._interval
        return doc

    def _bind(self, binding: _Binding | None) -> None:
        with self._lock:
            if binding is not None and self._binding is not None and self._binding is not binding:
                raise self._error(f"parameter {self.name!r} is already served by another server")
            self._binding = binding

    def _record(self, value: Any) -> None:
        with self._lock:
            self._value = value


def parameter(
    name: str | None = None,
    *,
    value: Any = None,
    description: str | None = None,
    unit: str | None = None,
    schema: Mapping[str, Any] | None = None,
    interval: float | None = None,
    writable: bool = False,
    persist: bool = True,
    archive: bool = False,
) -> Callable[[Func], Parameter]:
    """Decorator: declare a parameter whose getter is the decorated function.

    The name defaults to the function's name and the description to its docstring's first line.
    Returns the :class:`Parameter`, so ``@name.setter`` can follow.
    """

    def decorate(function: Func) -> Parameter:
        doc = (function.__doc__ or "").strip().splitlines()
        return Parameter(
            name or function.__name__,
            value=value,
            description=description if description is not None else (doc[0] if doc else ""),
            unit=unit,
            schema=schema,
            interval=interval,
            writable=writable,
            persist=persist,
            archive=archive,
            getter=function,
        )

    return decorate
