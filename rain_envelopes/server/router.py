"""The resource router: (method, URI) -> handler, by URI pattern. Pure: no I/O.

Patterns are paths with ``{name}`` placeholders that match exactly one non-empty segment:
``/params/{name}`` matches ``/params/activity`` and never ``/params/activity_level/x``, and
``/params/activity`` never matches a subscription on ``/params/activity_level`` (matching is
always of the whole path, never of a prefix).

URIs follow LIME: relative ``/path`` or absolute ``lime://owner@domain/path``, with an optional
query string; a trailing ``/`` is ignored. Failures raise :class:`ParameterError` with the LIME
code to answer with: 27 for a URI that cannot be read, 67 for no such resource, 63 for a method
the resource does not support.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Generic, TypeVar
from urllib.parse import parse_qs, urlsplit

from ..envelopes import CommandMethod, ReasonCode
from ..node import Node
from .errors import ParameterError

__all__ = ["ResolvedRoute", "Router", "split_uri"]

H = TypeVar("H")

_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def split_uri(uri: str, owner: Node | None = None) -> tuple[str, dict[str, list[str]]]:
    """``(path, query)`` of a command URI, the path without its trailing ``/``.

    An absolute ``lime://`` URI must name ``owner`` (the server's identity) when one is given.
    Raises ParameterError (27) when the URI cannot be read, (67) when it names another owner.
    """
    if not isinstance(uri, str) or not uri:
        raise ParameterError("the command has no URI", code=ReasonCode.VALIDATION_INVALID_METHOD)
    if uri.startswith("/"):
        path, _, query = uri.partition("?")
    elif uri.lower().startswith("lime://"):
        parts = urlsplit(uri)
        if owner is not None and parts.netloc:
            try:
                named = Node.parse(parts.netloc)
            except ValueError:
                raise ParameterError(
                    f"bad owner in URI {uri!r}", code=ReasonCode.VALIDATION_INVALID_METHOD
                ) from None
            if not named.same_identity(owner):
                raise ParameterError(
                    f"resource owner {parts.netloc} is not this server",
                    code=ReasonCode.COMMAND_RESOURCE_NOT_FOUND,
                )
        path, query = parts.path or "/", parts.query
    else:
        raise ParameterError(
            f"URI {uri!r} must start with '/' or 'lime://'",
            code=ReasonCode.VALIDATION_INVALID_METHOD,
        )
    if len(path) > 1:
        path = path.rstrip("/") or "/"
    return path, parse_qs(query, keep_blank_values=True) if query else {}


@dataclass(frozen=True)
class ResolvedRoute(Generic[H]):
    """A route found for a request: the handler and what the pattern captured."""

    handler: H
    path: str
    params: Mapping[str, str]
    query: Mapping[str, list[str]]
    pattern: str


@dataclass
class _Route(Generic[H]):
    pattern: str
    regex: re.Pattern[str]
    handlers: dict[CommandMethod, H] = field(default_factory=dict)


class Router(Generic[H]):
    """Routes by URI pattern, then by method. Patterns are tried in the order they were added."""

    def __init__(self) -> None:
        self._routes: list[_Route[H]] = []

    def add(self, pattern: str, method: CommandMethod | str, handler: H) -> None:
        """Route ``method`` on paths matching ``pattern`` to ``handler``."""
        if not pattern.startswith("/"):
            raise ValueError(f"route pattern {pattern!r} must start with '/'")
        verb = CommandMethod(str(method).lower())
        for route in self._routes:
            if route.pattern == pattern:
                route.handlers[verb] = handler
                return
        regex_text = "^"
        position = 0
        for found in _PLACEHOLDER.finditer(pattern):
            regex_text += re.escape(pattern[position : found.start()])
            regex_text += f"(?P<{found.group(1)}>[^/]+)"
            position = found.end()
        regex_text += re.escape(pattern[position:]) + "$"
        self._routes.append(_Route(pattern, re.compile(regex_text), {verb: handler}))

    def resolve(
        self, method: CommandMethod | str, uri: str, owner: Node | None = None
    ) -> ResolvedRoute[H]:
        """The handler for ``method`` on ``uri``.

        Raises ParameterError: 27 unreadable URI, 67 no resource there, 63 method not supported.
        """
        path, query = split_uri(uri, owner)
        return self.resolve_path(method, path, query)

    def resolve_path(
        self,
        method: CommandMethod | str,
        path: str,
        query: Mapping[str, list[str]] | None = None,
    ) -> ResolvedRoute[H]:
        """Like :meth:`resolve` for a path already split by :func:`split_uri`."""
        # The server passes the decoded command's member: an enum lookup costs ~1 us per request.
        verb = method if isinstance(method, CommandMethod) else CommandMethod(str(method).lower())
        for route in self._routes:
            found = route.regex.match(path)
            if found is None:
                continue
            handler = route.handlers.get(verb)
            if handler is None:
                allowed = ", ".join(sorted(m.value for m in route.handlers))
                raise ParameterError(
                    f"{verb.value} is not supported on {path} (supported: {allowed})",
                    code=ReasonCode.COMMAND_METHOD_NOT_SUPPORTED,
                )
            return ResolvedRoute(handler, path, found.groupdict(), query or {}, route.pattern)
        raise ParameterError(
            f"no resource at {path}", code=ReasonCode.COMMAND_RESOURCE_NOT_FOUND
        )
