"""LIME node addresses: ``name@domain/instance``.

The identity is ``name@domain``. Parsing follows LIME: split on the first ``@``; the domain runs to
the first ``/``; the instance is everything after it and may itself contain ``/``. Each part
compares case-insensitively, so ``Alice@IRF`` and ``alice@irf`` are the same node.

Why it matters. A node address is what a server routes by and what it decides identity from,
so two texts that mean the same node must compare equal (case), and no value may be built whose
text reads back as another node (a ``/`` in a domain, an ``@`` in a domainless instance): the
constructor refuses those, so the text form of any Node parses back to the same Node.
Identity is never taken from an address a peer claims; the session layer replaces the claimed
``name@domain`` with the proven one and keeps only the instance (see ``protocol.py``).

An empty part is no part: ``Node("", "irf")`` is ``Node(None, "irf")``, so the text form never
has a dangling separator that some peer would read differently.

This module imports nothing beyond the standard library: it is part of the pure protocol core.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import EnvelopeValidationError

__all__ = ["Node"]

# Longer addresses are no real node's: refused before they are split, so a peer cannot make
# every envelope it sends cost a long parse.
_MAX_NODE_LENGTH = 1024
# Whitespace and NUL inside an address would break the text form in logs and in the key files
# that name identities, and no LIME implementation produces them.
_FORBIDDEN = frozenset("\x00\r\n\t ")


@dataclass(frozen=True, slots=True, eq=False)
class Node:
    """A node address. ``Node.parse("alice@irf/lab")`` or ``Node("alice", "irf", "lab")``.

    Frozen and hashable: nodes are kept in sets (the server's registry of connected nodes)
    and compare case-insensitively, part by part (``eq=False`` because the comparison is ours,
    not the dataclass's field-by-field one).
    """

    name: str | None = None
    domain: str | None = None
    instance: str | None = None

    def __post_init__(self) -> None:
        for part_name in ("name", "domain", "instance"):
            part = getattr(self, part_name)
            if part is None:
                continue
            if not isinstance(part, str):
                raise EnvelopeValidationError(f"node {part_name} must be a string")
            if part == "":
                # Frozen, so the normalisation goes around __setattr__ (as dataclasses do).
                object.__setattr__(self, part_name, None)
            elif _FORBIDDEN.intersection(part):
                raise EnvelopeValidationError(f"node {part_name} {part!r} contains whitespace")
        if self.name is not None and "@" in self.name:
            raise EnvelopeValidationError(f"node name {self.name!r} must not contain '@'")
        if self.domain is not None and "/" in self.domain:
            raise EnvelopeValidationError(f"node domain {self.domain!r} must not contain '/'")
        if self.domain is None:
            # Without a domain the text form is "name/instance": a '/' in the name or an '@'
            # in the instance would make it parse back as another node.
            if self.name is not None and "/" in self.name:
                raise EnvelopeValidationError(f"node name {self.name!r} must not contain '/'")
            if self.instance is not None and "@" in self.instance:
                raise EnvelopeValidationError(
                    f"node instance {self.instance!r} needs a domain to contain '@'"
                )

    @classmethod
    def parse(cls, text: str) -> Node:
        """Parse ``name@domain/instance``; any part may be missing.

        Raises EnvelopeValidationError for a non-string, an over-long value or whitespace.
        """
        if not isinstance(text, str):
            raise EnvelopeValidationError(f"node must be a string, got {type(text).__name__}")
        if len(text) > _MAX_NODE_LENGTH:
            raise EnvelopeValidationError("node address longer than 1024 characters")
        name: str | None
        rest: str
        if "@" in text:
            # The first '@' ends the name: a later one belongs to the instance.
            name, rest = text.split("@", 1)
        else:
            name, rest = None, text
            # No '@': LIME reads "x/y" as name "x", instance "y" (an identity with no domain).
            if "/" in rest:
                name, instance = rest.split("/", 1)
                return cls(name or None, None, instance or None)
            return cls(rest or None, None, None)
        if "/" in rest:
            # The first '/' ends the domain; the instance keeps any later ones ("lab/rack2").
            domain, instance = rest.split("/", 1)
        else:
            domain, instance = rest, ""
        return cls(name or None, domain or None, instance or None)

    @classmethod
    def coerce(cls, value: Node | str) -> Node:
        """Return ``value`` as a Node, parsing it when it is a string."""
        return value if isinstance(value, Node) else cls.parse(value)

    @property
    def empty(self) -> bool:
        """True when no part is set (what "@" or "/" parse to)."""
        return self.name is None and self.domain is None and self.instance is None

    @property
    def identity(self) -> str:
        """``name@domain`` (without the instance)."""
        if self.domain is None:
            return self.name or ""
        return f"{self.name or ''}@{self.domain}"

    def with_instance(self, instance: str | None) -> Node:
        """A copy of this node with another instance."""
        return Node(self.name, self.domain, instance)

    def same_identity(self, other: Node) -> bool:
        """True when both nodes name the same ``name@domain``, whatever their instances."""
        return _fold(self.name) == _fold(other.name) and _fold(self.domain) == _fold(other.domain)

    def __str__(self) -> str:
        if self.instance is None:
            return self.identity
        return f"{self.identity}/{self.instance}"

    def __repr__(self) -> str:
        return f"Node({str(self)!r})"

    def _key(self) -> tuple[str | None, str | None, str | None]:
        # What equality and the hash are made of: the three parts, case-folded. Folding on
        # each comparison rather than storing folded parts keeps the text as it was written
        # for display, at the cost of a casefold that only addresses of a few bytes pay.
        return (_fold(self.name), _fold(self.domain), _fold(self.instance))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Node):
            return self._key() == other._key()
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._key())


def _fold(part: str | None) -> str | None:
    # casefold, not lower: it also matches forms that lower() leaves apart (German sharp s).
    return None if part is None else part.casefold()
