"""Access rules: which authenticated identity may use which method on which URI. Pure.

A rule names an identity glob (``alice@irf``, ``*@irf``, ``*``; case-insensitive), a URI glob on
the request path (``/params/*``, ``/params/temperature``; case-sensitive) and the methods it
grants (``get``, ``set``, ``delete``, ``merge``, ``subscribe``, ``message``, or ``*`` for all).
Rules only grant; a request is allowed when any rule matching its identity and path grants its
method. ``message`` is sending a message to another node with a session on the server, checked
on the path ``/nodes/<name@domain>`` of the destination (routing.py).

- With no rules at all (``AccessPolicy(None)``) every authenticated identity may do everything,
  except guests (identity ``guest``), who may only ``get`` and ``subscribe`` (so a guest cannot
  message other nodes).
- ``unsubscribe`` is always allowed: it only releases the caller's own subscriptions.
- Refusals: an identity no rule mentions gets 32 (unauthorised sender); an identity with rules
  that grant nothing here gets 35 (permission required).

Invariant: the identity is the one the session authenticated (``ServerChannel.remote_identity``),
never a ``from`` the client wrote. A refusal is decided before any plugin code runs, so a refused
request changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase

from ..auth import GUEST_IDENTITY
from ..envelopes import CommandMethod, ReasonCode
from .errors import ParameterError

__all__ = ["GRANTABLE_METHODS", "AccessPolicy", "AccessRule"]

GRANTABLE_METHODS = frozenset({"get", "set", "delete", "merge", "subscribe", "message"})
_GUEST_DEFAULT = frozenset({"get", "subscribe"})


@dataclass(frozen=True)
class AccessRule:
    """Grant ``methods`` on paths matching ``uri`` to identities matching ``identity``."""

    identity: str
    uri: str = "*"
    methods: frozenset[str] = frozenset({"get", "subscribe"})

    def __post_init__(self) -> None:
        if not isinstance(self.identity, str) or not self.identity:
            raise ValueError("identity must be a non-empty glob such as 'alice@irf' or '*@irf'")
        if not isinstance(self.uri, str) or not (self.uri.startswith("/") or self.uri == "*"):
            raise ValueError("uri must be a path glob such as '/params/*'")
        methods = {str(m).lower() for m in self.methods}
        if "*" in methods:
            methods = set(GRANTABLE_METHODS)
        unknown = methods - GRANTABLE_METHODS
        if unknown:
            raise ValueError(
                f"unknown method {sorted(unknown)[0]!r}: expected some of "
                + ", ".join(sorted(GRANTABLE_METHODS))
                + " or '*'"
            )
        object.__setattr__(self, "methods", frozenset(methods))
        object.__setattr__(self, "identity", self.identity.casefold())

    def matches_identity(self, identity: str) -> bool:
        return fnmatchcase(identity.casefold(), self.identity)

    def matches_path(self, path: str) -> bool:
        return fnmatchcase(path, self.uri)


class AccessPolicy:
    """The server's access rules. ``AccessPolicy(None)`` allows every authenticated identity."""

    def __init__(self, rules: Iterable[AccessRule] | None = None) -> None:
        self.rules: Sequence[AccessRule] | None = None if rules is None else tuple(rules)

    def __repr__(self) -> str:
        return f"AccessPolicy({list(self.rules) if self.rules is not None else None})"

    def allows(self, identity: str, method: CommandMethod | str, path: str) -> bool:
        try:
            self.check(identity, method, path)
        except ParameterError:
            return False
        return True

    def check(self, identity: str, method: CommandMethod | str, path: str) -> None:
        """Return when allowed; raise ParameterError with code 32 or 35 when not."""
        verb = str(method).lower()
        if verb == CommandMethod.UNSUBSCRIBE:
            return
        if self.rules is None:
            if identity.casefold() == GUEST_IDENTITY and verb not in _GUEST_DEFAULT:
                raise ParameterError(
                    f"guests may not {verb} here", code=ReasonCode.AUTHORIZATION_PERMISSION_REQUIRED
                )
            return
        mentioned = False
        for rule in self.rules:
            if not rule.matches_identity(identity):
                continue
            mentioned = True
            if verb in rule.methods and rule.matches_path(path):
                return
        if not mentioned:
            raise ParameterError(
                f"{identity} is not allowed to use this server",
                code=ReasonCode.AUTHORIZATION_UNAUTHORIZED_SENDER,
            )
        raise ParameterError(
            f"{identity} may not {verb} {path}",
            code=ReasonCode.AUTHORIZATION_PERMISSION_REQUIRED,
        )
