"""Regenerate the parts of the docs that are drawn from the code.

Run from anywhere::

    python docs/generate.py          # rewrite the generated sections in place
    python docs/generate.py --check  # exit 1, naming the stale files, if any section is out of date

A generated section sits between two marker comments in a Markdown file::

    <!-- BEGIN GENERATED: diagram -->
    ... written by this script, never by hand ...
    <!-- END GENERATED -->

Sections and their sources:

- ``diagram``: the session state diagram, from ``rain_envelopes.session.mermaid_diagram()``;
- ``transitions``: every row of ``rain_envelopes.session.TRANSITIONS``, grouped by phase, with
  the ``#:`` comment of each ``Phase`` member;
- ``reason-codes``: ``rain_envelopes.envelopes.ReasonCode``, with the prose of each member's
  ``#:`` comment in the source (what it means in LIME, then ``In RAIN:`` when RAIN sends it; a
  code with no comment is an error, so a new code cannot reach the docs undocumented);
- ``enums``: the envelope enums, their values and each member's ``#:`` comment;
- ``server-api``: ``rain_envelopes.server.__all__``, grouped by :data:`SERVER_API_GROUPS`;
- ``config-keys``: every key the config loader accepts (its own key lists), with the prose in
  :data:`CONFIG_NOTES` (checked both ways, like the reason codes) and defaults read from the
  config dataclasses;
- ``config-limits``: the fields of ``Limits``, their defaults and ``#:`` comments.

``tests/test_docs.py`` fails when a committed page differs from what this script would write.
"""

from __future__ import annotations

import argparse
import re
import sys
import zlib
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Any

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
# Document the code of this checkout, not whatever version is installed elsewhere.
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import nacl.signing  # noqa: E402

from rain_envelopes import (  # noqa: E402
    AuthorizedKeys,
    ClientCredentials,
    ClientProtocol,
    Command,
    Identity,
    ReasonCode,
    RemoteProtocolError,
    ServerAuthenticator,
    ServerProtocol,
    SessionCompression,
    SessionEncryption,
)
from rain_envelopes.session import PHASE_STATE, TRANSITIONS, Phase, Role, mermaid_diagram  # noqa: E402

#: The pages that must carry each section: deleting a marker pair is drift too.
REQUIRED: dict[str, tuple[str, ...]] = {
    "explanation/session.md": (
        "diagram", "transitions", "sequence-direct", "sequence-keypair", "sequence-two-rounds",
        "sequence-negotiated", "sequence-refused", "sequence-miss", "round-trips",
        "sequence-shortcut", "sequence-shortcut-keypair",
    ),
    "reference/reason-codes.md": ("reason-codes",),
    "reference/wire-format.md": ("limits", "enums"),
    "reference/errors.md": ("error-tree",),
    "reference/api.md": ("api",),
    "reference/transport-options.md": ("zmq-options", "nats-options"),
    "reference/server.md": ("server-api",),
    "reference/config.md": ("config-keys", "config-limits"),
}

_BLOCK = re.compile(
    r"(?P<begin><!-- BEGIN GENERATED: (?P<name>[a-z0-9-]+) -->\n)"
    r"(?P<body>.*?)"
    r"(?P<end><!-- END GENERATED -->)",
    re.DOTALL,
)

def member_comments(enum: type[Enum]) -> dict[str, list[str]]:
    """The ``#:`` comment lines just above each member of ``enum``, read from its source: the
    prose lives next to the value it explains, and a member without one has no entry."""
    import inspect

    comments: dict[str, list[str]] = {}
    pending: list[str] = []
    for line in inspect.getsource(enum).splitlines()[1:]:
        stripped = line.strip()
        if stripped.startswith("#:"):
            pending.append(stripped[2:].strip())
            continue
        member = re.match(r"([A-Z][A-Z0-9_]*)\s*=", stripped)
        if member and pending:
            comments[member[1]] = pending
        pending = []
    return comments


def _documented(enum: type[Enum]) -> dict[str, list[str]]:
    """:func:`member_comments`, refusing an enum with an undocumented member."""
    # The source is reStructuredText (``code``); the pages are Markdown (`code`).
    comments = {
        name: [line.replace("``", "`") for line in lines]
        for name, lines in member_comments(enum).items()
    }
    missing = [member.name for member in enum if member.name not in comments]
    if missing:
        raise ValueError(
            f"docs/generate.py: {enum.__name__} members without a #: comment: {missing}"
        )
    return comments


# ------------------------------------------------------------------------------ sections


def diagram() -> str:
    return f"```mermaid\n{mermaid_diagram()}```\n"


def transitions() -> str:
    """One row per phase: what each side may send there, and where it leads."""

    def moves(phase: Phase, sender: Role) -> str:
        by_target: dict[Phase, list[str]] = {}
        for (source, who, step), target in TRANSITIONS.items():
            if source is phase and who is sender:
                by_target.setdefault(target, []).append(step.value)
        if not by_target:
            return "nothing"
        return "; ".join(
            f"{', '.join(steps)} → {target.value}" for target, steps in by_target.items()
        )

    meanings = _documented(Phase)
    lines = [
        "| phase | public state | what it means | the client may send | the server may send |",
        "|---|---|---|---|---|",
    ]
    for phase in Phase:
        lines.append(
            f"| {phase.value} | `{PHASE_STATE[phase].value}` | {' '.join(meanings[phase.name])} "
            f"| {moves(phase, Role.CLIENT)} | {moves(phase, Role.SERVER)} |"
        )
    return "\n".join(lines) + "\n"


def _reason_note(lines: list[str]) -> tuple[str, str]:
    """(what the code means in LIME, when RAIN sends or raises it) from a member's comment."""
    for index, line in enumerate(lines):
        if line.startswith("In RAIN:"):
            when = [line.removeprefix("In RAIN:").strip(), *lines[index + 1:]]
            return " ".join(lines[:index]), " ".join(when)
    raise ValueError(f"docs/generate.py: a ReasonCode comment has no 'In RAIN:' part: {lines}")


def reason_codes() -> str:
    comments = _documented(ReasonCode)
    lines = [
        "| code | `ReasonCode` | meaning | RAIN sends or raises it when |",
        "|---:|---|---|---|",
    ]
    for member in ReasonCode:
        meaning, when = _reason_note(comments[member.name])
        lines.append(f"| {member.value} | `{member.name}` | {meaning} | {when} |")
    return "\n".join(lines) + "\n"


def limits() -> str:
    from rain_envelopes.auth import CHALLENGE_SIZE
    from rain_envelopes.codec import MAX_DEPTH, MAX_ENVELOPE_SIZE
    from rain_envelopes.node import _MAX_NODE_LENGTH

    rows = [
        (
            "envelope size",
            f"{MAX_ENVELOPE_SIZE:,} bytes of UTF-8",
            "`rain_envelopes.codec.MAX_ENVELOPE_SIZE`; `decode(data, max_size=...)`; also the "
            "bound on a gzip frame's inflated size",
        ),
        (
            "nesting depth",
            f"{MAX_DEPTH} levels of objects and arrays, the envelope itself included",
            "`rain_envelopes.codec.MAX_DEPTH`; `decode(data, max_depth=...)`",
        ),
        ("node address", f"{_MAX_NODE_LENGTH:,} characters", "checked by `Node.parse`"),
        (
            "keypair challenge",
            f"{CHALLENGE_SIZE} random bytes (base64 on the wire)",
            "`ServerAuthenticator`",
        ),
    ]
    lines = ["| limit | value | where |", "|---|---|---|"]
    lines += [f"| {name} | {value} | {where} |" for name, value, where in rows]
    return "\n".join(lines) + "\n"


def enums() -> str:
    from rain_envelopes.envelopes import (
        AuthenticationScheme,
        CommandMethod,
        CommandStatus,
        NotificationEvent,
        SessionCompression,
        SessionEncryption,
        SessionState,
    )

    rows = [
        ("Command `method`", CommandMethod),
        ("Command `status`", CommandStatus),
        ("Notification `event`", NotificationEvent),
        ("Session `state`", SessionState),
        ("Session `compression`, `compressionOptions`", SessionCompression),
        ("Session `encryption`, `encryptionOptions`", SessionEncryption),
        ("Session `scheme`, `schemeOptions`", AuthenticationScheme),
    ]
    lines = ["| field | Python enum | values |", "|---|---|---|"]
    for field, enum in rows:
        values = ", ".join(f"`{member.value}`" for member in enum)
        lines.append(f"| {field} | `{enum.__name__}` | {values} |")
    lines += ["", "What each value means:", "", "| Python enum | value | meaning |",
              "|---|---|---|"]
    for _, enum in rows:
        comments = _documented(enum)
        for member in enum:
            lines.append(
                f"| `{enum.__name__}` | `{member.value}` | {' '.join(comments[member.name])} |"
            )
    return "\n".join(lines) + "\n"


def error_tree() -> str:
    """Every RainError subclass RAIN defines, as a tree, with the module to import it from."""
    # discovery defines errors of its own: imported here, so that the tree does not depend on
    # what happened to be imported before.
    import rain_envelopes
    import rain_envelopes.discovery
    import rain_envelopes.errors as errors
    import rain_envelopes.server
    import rain_transport_zmq

    public = (rain_envelopes, rain_envelopes.server, rain_transport_zmq)

    def home(cls: type) -> str:
        for package in public:
            if cls.__name__ in getattr(package, "__all__", ()):
                return package.__name__
        return cls.__module__

    def also(cls: type) -> str:
        names = [base.__name__ for base in cls.__bases__[1:]]
        return f" (also {', '.join(names)})" if names else ""

    lines: list[str] = []

    def walk(cls: type, prefix: str, branch: str, child_prefix: str) -> None:
        label = f"{prefix}{branch}{cls.__name__}{also(cls)}"
        lines.append(f"{label:<46} {home(cls)}")
        children = [
            sub for sub in cls.__subclasses__()
            if sub.__bases__[0] is cls and sub.__module__.startswith("rain_")
        ]
        children.sort(key=lambda sub: (sub.__module__ != errors.__name__, sub.__name__))
        for index, child in enumerate(children):
            last = index == len(children) - 1
            walk(
                child,
                prefix + child_prefix,
                "└── " if last else "├── ",
                "    " if last else "│   ",
            )

    walk(errors.RainError, "", "", "")
    return "```text\n" + "\n".join(lines) + "\n```\n"


# ------------------------------------------------------------------------------ API reference

#: How the public API (``rain_envelopes.__all__``) is grouped on docs/reference/api.md. Every
#: exported name must appear exactly once: a new export fails the generator until it is placed.
API_GROUPS: dict[str, tuple[str, ...]] = {
    "The reconnecting client": ("Client", "ClientState", "StateChange", "Backoff", "Update"),
    "The blocking API": ("BlockingClient",),
    "Connecting and channels": ("connect", "Channel", "ClientChannel", "ServerChannel"),
    "Envelopes": ("Envelope", "Message", "Notification", "Command", "Session", "Reason", "Node"),
    "Enumerations": (
        "CommandMethod", "CommandStatus", "NotificationEvent", "SessionState",
        "SessionCompression", "SessionEncryption", "AuthenticationScheme", "ReasonCode",
    ),
    "Encoding and decoding": ("encode", "decode"),
    "Keys and authentication": (
        "Identity", "AuthorizedKeys", "KnownHosts", "ServerAuthenticator", "ClientCredentials",
    ),
    "Sans-I/O protocol": ("ClientProtocol", "ServerProtocol", "NodeRegistry"),
    "Transports": (
        "Transport", "TransportListener", "TransportFactory", "transport_factory",
        "ClientSecurity", "ServerSecurity",
    ),
    "Errors": (
        "RainError", "ProtocolError", "LocalProtocolError", "RemoteProtocolError",
        "EnvelopeDecodeError", "EnvelopeValidationError", "SessionError", "SessionFailed",
        "AuthenticationFailed", "EstablishTimeout", "CommandFailed", "CommandTimeout",
        "ChannelClosed", "KeyFileError", "ConfigError", "TransportError", "TransportClosed",
        "QueueFull", "TransportSecurityError", "NotDone", "Disconnected", "ResponseTimeout",
        "ClientClosed", "StateStoreError", "HandshakeFailed", "PeerGone",
        "SecurityCause", "EnvelopeKind", "CommandRefused",
    ),
}

_ROLE = re.compile(r":(?:class|meth|func|data|attr|exc|mod):`~?(?:[\w.]+\.)?([^`]+)`")


class _Text:
    """Shows as its text in a signature (annotations are strings under PEP 563)."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


def _default_text(value: object) -> str:
    import enum

    if isinstance(value, enum.Enum):
        return f"{type(value).__name__}.{value.name}"
    if isinstance(value, tuple):
        inner = ", ".join(_default_text(item) for item in value)
        return f"({inner},)" if len(value) == 1 else f"({inner})"
    if isinstance(value, (set, frozenset)):
        # Sorted: the repr of a set follows string hashing, which changes from run to run.
        inner = ", ".join(sorted(_default_text(item) for item in value))
        return f"{type(value).__name__}({{{inner}}})"
    return repr(value)


def _annotation_text(annotation: object) -> str:
    # Type variables bound to the class itself read better as Self.
    text = str(annotation)
    return "Self" if text in ("_T", "_C") else text


def _signature(obj: Any, name: str) -> str:
    import inspect

    is_class = isinstance(obj, type)
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):
        return name
    parameters = []
    for parameter in signature.parameters.values():
        # Private parameters (Command's trusted-path ``_parsed``) are not part of the API.
        if parameter.name in ("self", "cls") or parameter.name.startswith("_"):
            continue
        changes: dict[str, Any] = {}
        if parameter.annotation is not inspect.Parameter.empty:
            changes["annotation"] = _Text(_annotation_text(parameter.annotation))
        if parameter.default is not inspect.Parameter.empty:
            changes["default"] = _Text(_default_text(parameter.default))
        parameters.append(parameter.replace(**changes))
    returns = signature.return_annotation
    result = signature.replace(
        parameters=parameters,
        return_annotation=(
            _Text(_annotation_text(returns))
            if returns is not inspect.Signature.empty and not (is_class and returns == "None")
            else inspect.Signature.empty
        ),
    )
    text = f"{name}{result}"
    if len(text) <= 96:
        return text
    # One parameter per line, as a formatter would.
    _, _, tail = str(result).partition("(")
    inner, _, after = tail.rpartition(")")
    pieces = _split_parameters(inner)
    body = "".join(f"    {piece},\n" for piece in pieces)
    return f"{name}(\n{body}){after}"


def _split_parameters(text: str) -> list[str]:
    pieces, depth, current = [], 0, ""
    for char in text:
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        if char == "," and depth == 0:
            pieces.append(current.strip())
            current = ""
        else:
            current += char
    if current.strip():
        pieces.append(current.strip())
    return pieces


def _doc(obj: Any) -> str:
    """A docstring as Markdown: RST roles and literals become code spans; ``::`` blocks fenced."""
    import inspect

    text = inspect.getdoc(obj) or ""
    text = _ROLE.sub(lambda match: f"`{match[1]}`", text)
    text = re.sub(r"``([^`]+)``", r"`\1`", text)
    out: list[str] = []
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        line = lines[index]
        if line.rstrip().endswith("::"):
            out.append(line.rstrip()[:-1])
            index += 1
            block: list[str] = []
            while index < len(lines) and (not lines[index].strip() or lines[index][:1] == " "):
                block.append(lines[index])
                index += 1
            code = "\n".join(part[4:] if part.startswith("    ") else part for part in block)
            out += ["", "```python", code.strip("\n"), "```", ""]
            continue
        out.append(line)
        index += 1
    return "\n".join(out).strip()


def _attribute_docs(cls: type) -> dict[str, str]:
    """``#:`` comments above class attributes (the Sphinx convention), by attribute name."""
    import inspect

    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    docs: dict[str, str] = {}
    pending: list[str] = []
    for line in source.splitlines():
        stripped = line.strip()
        if stripped.startswith("#:"):
            pending.append(stripped[2:].strip())
            continue
        match = re.match(r"(?:self\.)?(\w+)\s*(?::[^=]+)?=?", stripped)
        if pending and match and not stripped.startswith(("def ", "class ", "@")):
            docs.setdefault(match[1], " ".join(pending))
        pending = []
    return docs


def _member_entries(cls: type) -> list[str]:
    """Public members defined by ``cls`` itself: methods, properties, documented attributes."""
    import inspect

    entries: list[str] = []
    attributes = _attribute_docs(cls)
    for name, member in cls.__dict__.items():
        if name.startswith("_"):
            continue
        if isinstance(member, property):
            doc = _doc(member) or attributes.get(name, "")
            entries.append(f"- **`{name}`** (property){': ' + doc if doc else ''}")
        elif isinstance(member, (classmethod, staticmethod)) or inspect.isfunction(member):
            is_wrapped = isinstance(member, (classmethod, staticmethod))
            function = member.__func__ if is_wrapped else member
            prefix = "async " if inspect.iscoroutinefunction(function) else ""
            kind = "classmethod " if isinstance(member, classmethod) else ""
            code = "\n".join(
                f"  {line}" for line in f"{kind}{prefix}{_signature(function, name)}".splitlines()
            )
            doc = _doc(function)
            body = "\n".join(f"  {line}" if line else "" for line in doc.splitlines())
            entries.append(f"- **`{name}`**\n\n  ```python\n{code}\n  ```" + (
                f"\n\n{body}" if doc else ""
            ))
    listed = {entry.split("`")[1] for entry in entries}
    for name, doc in attributes.items():
        if name.startswith("_") or name in listed:
            continue
        member = cls.__dict__.get(name)
        if callable(member) or isinstance(member, property):
            continue
        entries.append(f"- **`{name}`** (attribute): {doc}")
    return entries


#: Hand-written notes appended to an API entry, for what docstrings cannot carry.
API_NOTES: dict[str, str] = {
    "Channel": (
        "Handlers, set as attributes (each may be a plain function or a coroutine function; "
        "an exception in one is logged, never fatal): `on_message(message)`, "
        "`on_notification(notification)`, and `on_command(command)`, which returns the "
        "response Command (or `None` to send none). The constructor's arguments stay "
        "readable as attributes of the same names (`transport`, `command_timeout`, ...)."
    ),
    "ClientProtocol": (
        "State, readable at any time on both protocol classes: `state` (a `SessionState`), "
        "`session_id`, `local_node`, `remote_node`, `compression`, `encryption`, "
        "`is_established`, `closed`."
    ),
}

_SHARED_SHOWN: set[type] = set()


def _entry(name: str, obj: Any) -> str:
    import dataclasses
    import enum
    import inspect

    import rain_envelopes

    lines = [f"### `{name}`", ""]
    if isinstance(obj, type) and issubclass(obj, BaseException):
        bases = ", ".join(f"`{base.__name__}`" for base in obj.__bases__)
        lines += [f"Exception, subclass of {bases}.", "", _doc(obj)]
        own_init = obj.__dict__.get("__init__")
        if own_init is not None:
            lines += ["", "```python", _signature(obj, name), "```"]
        return "\n".join(lines).rstrip() + "\n"
    if isinstance(obj, type) and issubclass(obj, enum.Enum):
        base = "IntEnum" if issubclass(obj, int) else "StrEnum"
        own = obj.__dict__.get("__doc__") or ""
        own_doc = _doc(obj) if own.strip() else ""
        lines += [f"`{base}`. {own_doc}".rstrip(), ""]
        if issubclass(obj, int):
            lines.append("Members: see [reason codes](reason-codes.md).")
        else:
            lines.append(
                "Members: " + ", ".join(f"`{m.name}` (`{m.value}`)" for m in obj) + "."
            )
        return "\n".join(lines).rstrip() + "\n"
    if inspect.isfunction(obj):
        prefix = "async " if inspect.iscoroutinefunction(obj) else ""
        lines += ["```python", f"{prefix}{_signature(obj, name)}", "```", "", _doc(obj)]
        return "\n".join(lines).rstrip() + "\n"
    assert isinstance(obj, type), name
    lines += ["```python", f"class {_signature(obj, name)}", "```", ""]
    bases = [base for base in obj.__bases__ if base is not object]
    if bases and bases[0].__name__ in rain_envelopes.__all__:
        lines += [f"Subclass of `{bases[0].__name__}` (everything documented there applies).", ""]
    if obj.__doc__ and not obj.__doc__.startswith(f"{obj.__name__}("):
        lines += [_doc(obj), ""]
    if dataclasses.is_dataclass(obj):
        inherited = {
            field.name for base in obj.__bases__ if dataclasses.is_dataclass(base)
            for field in dataclasses.fields(base)
        }
        fields = [
            f"`{field.name}: {field.type}`" for field in dataclasses.fields(obj)
            if not field.name.startswith("_") and field.name not in inherited
        ]
        if fields:
            lines += ["Fields: " + ", ".join(fields) + ".", ""]
    members = _member_entries(obj)
    if members:
        lines += ["Members:", "", "\n\n".join(members), ""]
    for base in obj.__mro__[1:]:
        if not base.__name__.startswith("_") or base.__module__.split(".")[0] != "rain_envelopes":
            continue
        if base in _SHARED_SHOWN:
            lines += [
                f"Also has the members of its private base `{base.__name__}`, listed above.",
                "",
            ]
            continue
        _SHARED_SHOWN.add(base)
        shared = _member_entries(base)
        if shared:
            lines += [
                f"Members of the private base `{base.__name__}`, shared with its other "
                "subclasses:",
                "",
                "\n\n".join(shared),
                "",
            ]
    if name in API_NOTES:
        lines += [API_NOTES[name], ""]
    if "__aenter__" in obj.__dict__:
        lines += ["Usable as an async context manager (`async with`).", ""]
    return "\n".join(lines).rstrip() + "\n"


def api() -> str:
    import rain_envelopes

    _SHARED_SHOWN.clear()
    placed = [name for names in API_GROUPS.values() for name in names]
    exported = set(rain_envelopes.__all__)
    duplicates = sorted({name for name in placed if placed.count(name) > 1})
    missing = sorted(exported - set(placed))
    extra = sorted(set(placed) - exported)
    if duplicates or missing or extra:
        raise ValueError(
            "docs/generate.py: API_GROUPS is out of step with rain_envelopes.__all__: "
            f"not placed {missing}, not exported {extra}, placed twice {duplicates}"
        )
    out: list[str] = []
    for title, names in API_GROUPS.items():
        out += [f"## {title}", ""]
        for name in names:
            out += [_entry(name, getattr(rain_envelopes, name)), ""]
    return "\n".join(out).rstrip() + "\n"


def zmq_options() -> str:
    """The ZeroMQ transport's options, from ``ZmqOptions``: its docstring table says why."""
    from rain_transport_zmq import ZmqOptions

    return _options_table(ZmqOptions, "why this value")


def nats_options() -> str:
    """The NATS transport's options, from ``NatsOptions``'s docstring table."""
    from rain_transport_nats import NatsOptions

    return _options_table(NatsOptions, "meaning")


def _options_table(options: type, third: str) -> str:
    """A transport options dataclass's docstring table as Markdown; ValueError when the table
    and the fields differ."""
    import dataclasses

    doc = options.__doc__ or ""
    owner = options.__name__
    lines = doc.splitlines()
    rulers = [index for index, line in enumerate(lines) if line.strip().startswith("=====")]
    if len(rulers) != 3:
        raise ValueError(f"{owner} docstring: expected one reST table (three ===== rulers)")
    ruler = lines[rulers[0]]
    starts = [match.start() for match in re.finditer(r"=+", ruler)]
    rows: list[list[str]] = []
    for line in lines[rulers[1] + 1 : rulers[2]]:
        cells = [
            line[start : starts[index + 1] if index + 1 < len(starts) else None].strip()
            for index, start in enumerate(starts)
        ]
        if cells[0]:
            rows.append(cells)
        elif rows:
            rows[-1][2] = f"{rows[-1][2]} {cells[2]}".strip()
    documented: set[str] = set()
    out = [f"| option | default | {third} |", "|---|---|---|"]
    for name, default, why in rows:
        names = [part.strip() for part in name.split("/")]
        documented.update(names)
        why = re.sub(r"``([^`]+)``", r"`\1`", why)
        label = " / ".join(f"`{part}`" for part in names)
        out.append(f"| {label} | {default} | {why} |")
    fields = {field.name for field in dataclasses.fields(options)}
    if fields != documented:
        raise ValueError(
            f"{owner} docstring table and fields differ: undocumented "
            f"{sorted(fields - documented)}, unknown {sorted(documented - fields)}"
        )
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------------------ server reference

#: How ``rain_envelopes.server.__all__`` is grouped on docs/reference/server.md. Every exported
#: name must appear exactly once, as in :data:`API_GROUPS`.
SERVER_API_GROUPS: dict[str, tuple[str, ...]] = {
    "The server": ("Server", "ServedSession", "Request"),
    "Declaring parameters": ("parameter", "Parameter", "load_plugins"),
    "Errors": ("ParameterError", "InvalidValue", "NotAllowed", "PluginError"),
    "Configuration and access rules": (
        "load_config", "parse_config", "ServerConfig", "Limits", "LoggingConfig",
        "AccessPolicy", "AccessRule",
    ),
    "Samples and media types": ("Sample", "SAMPLE_TYPE", "PARAMETER_TYPE", "COLLECTION_TYPE"),
}


def server_api() -> str:
    from rain_envelopes import server

    placed = [name for names in SERVER_API_GROUPS.values() for name in names]
    exported = set(server.__all__)
    duplicates = sorted({name for name in placed if placed.count(name) > 1})
    missing = sorted(exported - set(placed))
    extra = sorted(set(placed) - exported)
    if duplicates or missing or extra:
        raise ValueError(
            "docs/generate.py: SERVER_API_GROUPS is out of step with "
            f"rain_envelopes.server.__all__: not placed {missing}, not exported {extra}, "
            f"placed twice {duplicates}"
        )
    _SHARED_SHOWN.clear()
    out: list[str] = []
    for title, names in SERVER_API_GROUPS.items():
        out += [f"### {title}", ""]
        for name in names:
            obj = getattr(server, name)
            if isinstance(obj, str):
                out += [f"#### `{name}`", "", f"`{obj!r}`", ""]
                continue
            entry = _entry(name, obj).replace("### `", "#### `", 1)
            out += [entry, ""]
    return "\n".join(out).rstrip() + "\n"


#: For each key the config loader accepts outside ``[limits]``: (TOML type, meaning) or
#: (TOML type, meaning, default as shown). Defaults are otherwise read from ServerConfig,
#: LoggingConfig and AccessRule. A key without a note, or a note without a key, is an error.
CONFIG_NOTES: dict[str, tuple[str, ...]] = {
    "identity": (
        "string",
        "The server's node name, `name@domain` (an `/instance` part is allowed): who clients "
        "find at the other end of the session, and the owner an absolute `lime://` URI must "
        "name.",
    ),
    "listen": (
        "list of strings (a single string is accepted)",
        "Endpoints to accept sessions on, such as `tcp://0.0.0.0:4505` or `ipc:///run/rain.sock`. "
        "Each must contain `://`. `rain serve` refuses to start with none.",
    ),
    "key_file": (
        "path",
        "The server's secret key file (`rain keygen`). Needed for `tcp://` and `ipc://` unless "
        "`insecure = true`; a missing file stops start-up.",
    ),
    "authorized_keys": (
        "path",
        "The authorised-keys file, `<public key> <identity>` per line. Required unless "
        "`insecure = true` or `allow_guest = true`. Re-read on SIGHUP.",
    ),
    "allow": (
        "list of strings (a single string is accepted)",
        "IP networks clients may connect from (`127.0.0.1/32`, `::1`, `10.0.0.0/8`); empty "
        "means any address. Enforced by the transport, also when insecure.",
    ),
    "plugins": (
        "path",
        "The folder of plugin files. Must exist and be a folder. Without it the server has no "
        "parameters.",
    ),
    "allow_guest": (
        "boolean",
        "Also offer the `guest` scheme: a client without an authorised key gets the identity "
        "`guest`.",
    ),
    "insecure": (
        "boolean",
        "Serve without transport security (no CURVE). For loopback experiments only.",
    ),
    "access": (
        "array of tables `[[access]]`",
        "Access rules (keys below). Absent: every authenticated identity may do everything and "
        "guests may `get` and `subscribe`. Present, even as `access = []`: only what a rule "
        "grants is allowed.",
    ),
    "state": (
        "path",
        "The server's SQLite state file, created (mode 0600) when missing. It keeps the last "
        "value set on each writable parameter (restored before the server serves again) and "
        "the window of recent `set` command ids, so a retried set is applied once even across "
        "a restart. Absent: both live in memory only. An unreadable, corrupt or newer-format "
        "file stops start-up; see [persistent state](server.md#persistent-state).",
    ),
    "state_durability": (
        "string",
        "`\"sync\"`: each set reaches the disk (an fsync) before it is answered, and survives "
        "a power cut. `\"batch\"`: the disk is synced at checkpoints only; a set survives a "
        "crash of the server process, but the last ones may be lost on a power cut. Only with "
        "`state`.",
    ),
    "limits": ("table", "Resource limits; every key is in the next table."),
    "logging": ("table", "Where the server logs and how much (keys below)."),
    "transport": (
        "table",
        "Passed as is to the transport of the listen endpoints; for ZeroMQ, the options of "
        "[ZeroMQ transport options](transport-options.md). Checked by the transport when "
        "the file is loaded, before any plugin code runs.",
    ),
    "logging.level": (
        "string",
        "One of `DEBUG`, `INFO`, `WARNING`, `ERROR`, `CRITICAL` (any case). `rain -v serve` "
        "lowers it to `INFO`, `-vv` to `DEBUG`.",
    ),
    "logging.file": ("path", "Log to this file (appended to) instead of standard error."),
    "discovery": (
        "table",
        "Advertising the server on the local network (keys below); needs the `discovery` "
        "extra. See [discovery on the LAN](../howto/discovery.md).",
    ),
    "discovery.advertise": (
        "boolean",
        "Advertise the server (mDNS/DNS-SD `_rain._tcp`: node name, endpoints, key "
        "fingerprint) once it listens, for `rain discover` and `rain://NAME@DOMAIN` endpoints; "
        "withdrawn when it stops. `rain serve --advertise`/`--no-advertise` overrides it. Off by "
        "default: it tells everyone on the network that an instrument is here, its name and "
        "where it listens. It grants nothing: clients still pin the server key.",
    ),
    "discovery.interfaces": (
        "list of strings (a single string is accepted)",
        "IPv4 addresses of this host to advertise on and announce; a wildcard listen "
        "endpoint (`tcp://0.0.0.0:4505`) is advertised once per address. Empty: every "
        "interface, announcing every address but loopback.",
    ),
    "archive": (
        "table",
        "Store-and-forward of the parameters a plugin declares with `archive=True` (keys "
        "below); needs the `nats` extra. See [fan-out and store-and-forward]"
        "(../explanation/fan-out.md#store-and-forward-archives-through-wan-outages).",
    ),
    "archive.endpoint": (
        "string",
        "The site's NATS leaf node (`nats://host:port`): `rain serve` publishes each sample of "
        "an archived parameter there, to the site stream, as the server's own NATS user, and "
        "retries until the leaf acknowledges it. Unset: nothing is archived.",
    ),
    "archive.stream": (
        "string",
        "The site stream's name; the operator creates it (`rain_transport_nats.archive."
        "site_stream_config`).",
    ),
    "archive.domain": ("string", "The leaf node's JetStream domain, when it has one."),
    "access.identity": (
        "string",
        "Glob on the authenticated identity (`alice@irf`, `*@irf`, `*`); case-insensitive.",
    ),
    "access.uri": (
        "string",
        "Glob on the request path, starting with `/` (`/params/*`), or `*`; case-sensitive.",
    ),
    "access.methods": (
        "list of strings",
        "Methods granted: some of `get`, `set`, `subscribe`, `delete`, `merge`, `message` (to "
        "`/nodes/<name@domain>`), or `[\"*\"]` for all of them.",
        "required",
    ),
}


def _toml_text(value: object) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "`true`" if value else "`false`"
    if isinstance(value, (tuple, list)):
        return "`[" + ", ".join(repr(item) for item in value) + "]`"
    if isinstance(value, dict):
        return "`{}`" if not value else f"`{value!r}`"
    if isinstance(value, str):
        return f'`"{value}"`'
    return f"`{value}`"


def _config_defaults() -> dict[str, str]:
    import dataclasses

    from rain_envelopes.server.access import AccessRule
    from rain_envelopes.server.config import (
        ArchiveConfig,
        DiscoveryConfig,
        LoggingConfig,
        ServerConfig,
    )

    defaults: dict[str, str] = {}
    for prefix, cls in (("", ServerConfig), ("logging.", LoggingConfig), ("access.", AccessRule),
                        ("discovery.", DiscoveryConfig), ("archive.", ArchiveConfig)):
        for item in dataclasses.fields(cls):
            if item.default is not dataclasses.MISSING:
                text = _toml_text(item.default)
            elif item.default_factory is not dataclasses.MISSING:
                made = item.default_factory()
                text = "(table)" if dataclasses.is_dataclass(made) else _toml_text(made)
            else:
                text = "required"
            defaults[prefix + item.name] = text
    return defaults


def config_keys() -> str:
    """Every key the config loader accepts outside ``[limits]``, from its own key lists."""
    from rain_envelopes.server.config import (
        _ACCESS_KEYS,
        _ARCHIVE_KEYS,
        _DISCOVERY_KEYS,
        _LOGGING_KEYS,
        _TOP_KEYS,
    )

    accepted = [*_TOP_KEYS, *(f"logging.{k}" for k in _LOGGING_KEYS),
                *(f"discovery.{k}" for k in _DISCOVERY_KEYS),
                *(f"archive.{k}" for k in _ARCHIVE_KEYS),
                *(f"access.{k}" for k in _ACCESS_KEYS)]
    missing = sorted(set(accepted) - CONFIG_NOTES.keys())
    extra = sorted(CONFIG_NOTES.keys() - set(accepted))
    if missing or extra:
        raise ValueError(
            "docs/generate.py: CONFIG_NOTES is out of step with the config loader: "
            f"keys without a note {missing}, notes without a key {extra}"
        )
    defaults = _config_defaults()
    lines = ["| key | TOML type | default | meaning |", "|---|---|---|---|"]
    for key in accepted:
        note = CONFIG_NOTES[key]
        kind, meaning = note[0], note[1]
        default = note[2] if len(note) > 2 else defaults[key]
        shown = f"`[[access]]` `{key[7:]}`" if key.startswith("access.") else f"`{key}`"
        lines.append(f"| {shown} | {kind} | {default} | {meaning} |")
    return "\n".join(lines) + "\n"


def config_limits() -> str:
    """The ``[limits]`` table, from the fields of ``Limits`` and their ``#:`` comments."""
    import dataclasses

    from rain_envelopes.server.config import Limits

    docs = _attribute_docs(Limits)
    lines = ["| key | TOML type | default | meaning |", "|---|---|---|---|"]
    for item in dataclasses.fields(Limits):
        if item.name not in docs:
            raise ValueError(f"Limits.{item.name} has no #: comment to document it")
        kind = "integer ≥ 1" if item.type == "int" else "number > 0 (seconds)"
        lines.append(
            f"| `limits.{item.name}` | {kind} | `{item.default}` | {docs[item.name]} |"
        )
    return "\n".join(lines) + "\n"


# Example sessions, run for real through the sans-I/O protocol objects. Keys, the session id
# and the challenge are fixed so the page is the same on every run; the signatures are real.
_CLIENT_NODE = "alice@lab/laptop"
_SERVER_NODE = "station@lab"
_SESSION_ID = "hx4c2lq7a5fk3m2b"
_GZIP_MAGIC = b"\x1f\x8b"


class _FixedChallenge(ServerAuthenticator):
    def new_challenge(self) -> bytes:
        return bytes(range(32))


def _identity(seed: int) -> Identity:
    return Identity(nacl.signing.SigningKey(bytes([seed]) * 32))


def _pair(
    *,
    authenticate: bool,
    gzip: bool = False,
    rounds: int = 1,
    authorise: bool = True,
    shortcut: bool = False,
    transport_proved: bool = False,
) -> tuple[ClientProtocol, ServerProtocol]:
    """A client and a server. The plain LIME exchange unless ``shortcut``; with
    ``transport_proved`` the link proved alice's key, as ZeroMQ CURVE does."""
    alice, stranger = _identity(1), _identity(2)
    authenticator = None
    if authenticate:
        known = alice if authorise else stranger
        keys = AuthorizedKeys.from_mapping({known.public_key_text: "alice@lab"})
        authenticator = _FixedChallenge(keys, keypair_rounds=rounds)
    none, gz = SessionCompression.NONE, SessionCompression.GZIP
    server = ServerProtocol(
        node=_SERVER_NODE,
        authenticator=authenticator,
        compression_options=(none, gz) if gzip else (none,),
        session_id=_SESSION_ID,
        peer_identity=alice.public_key_text if transport_proved else None,
        encryption=SessionEncryption.CURVE if transport_proved else SessionEncryption.NONE,
    )
    client = ClientProtocol(
        node=_CLIENT_NODE,
        credentials=ClientCredentials(identity=alice, transport_secured=transport_proved),
        compression=gz if gzip else none,
        shortcut=shortcut,
    )
    return client, server


def _line(sender: str, data: bytes) -> str:
    if data.startswith(_GZIP_MAGIC):
        return f"{sender} (gzip): {zlib.decompress(data, 31).decode()}"
    return f"{sender}: {data.decode()}"


def _exchange(client: ClientProtocol, server: ServerProtocol, lines: list[str]) -> None:
    """Move frames both ways, as two channels and a perfect link would, until quiet."""

    def move(sender: str, source: Any, target: Any) -> bool:
        frames = source.data_to_send()
        for data in frames:
            lines.append(_line(sender, data))
            if target.closed:
                continue
            try:
                target.receive_data(data)
            except RemoteProtocolError as error:
                target.reply_to_error(error)
        return bool(frames)

    while move("C", client, server) | move("S", server, client):
        pass


def _text_block(lines: list[str]) -> str:
    return "```text\n" + "\n".join(lines) + "\n```\n"


def _sequence(client: ClientProtocol, server: ServerProtocol) -> str:
    lines: list[str] = []
    client.start()
    _exchange(client, server, lines)
    if client.is_established:
        client.finish()
        _exchange(client, server, lines)
    return _text_block(lines)


def sequence_direct() -> str:
    return _sequence(*_pair(authenticate=False))


def sequence_keypair() -> str:
    return _sequence(*_pair(authenticate=True))


def sequence_two_rounds() -> str:
    return _sequence(*_pair(authenticate=True, rounds=2))


def sequence_refused() -> str:
    return _sequence(*_pair(authenticate=True, authorise=False))


def sequence_negotiated() -> str:
    client, server = _pair(authenticate=True, gzip=True)
    lines: list[str] = []
    client.start()
    _exchange(client, server, lines)
    client.send(Command("get", "/params/temp", id="1"))
    _exchange(client, server, lines)
    for request in server.events_received():
        assert isinstance(request, Command)
        server.send(request.success(21.5))
    _exchange(client, server, lines)
    client.finish()
    _exchange(client, server, lines)
    return _text_block(lines)


def sequence_shortcut() -> str:
    return _sequence(*_pair(authenticate=True, gzip=True, shortcut=True, transport_proved=True))


def sequence_shortcut_keypair() -> str:
    return _sequence(*_pair(authenticate=True, gzip=True, shortcut=True))


def _round_trips(client: ClientProtocol, server: ServerProtocol) -> int:
    """Flights from the server back to the client before ``established`` (as in the tests)."""
    trips = 0
    client.start()
    while not client.is_established:
        if client.closed:
            raise ValueError("docs/generate.py: a round-trip example did not establish")
        for data in client.data_to_send():
            server.receive_data(data)
        replies = server.data_to_send()
        trips += bool(replies)
        for data in replies:
            client.receive_data(data)
    return trips


def round_trips() -> str:
    """Round trips of the LIME part of an establishment, plain and with the shortcut."""
    cases: list[tuple[str, dict[str, Any]]] = [
        ("ZeroMQ with CURVE (`transport` scheme), compression offered",
         {"authenticate": True, "gzip": True, "transport_proved": True}),
        ("a link that proves nothing (`keypair`), compression offered",
         {"authenticate": True, "gzip": True}),
        ("the same with `keypair_rounds=2`", {"authenticate": True, "gzip": True, "rounds": 2}),
        ("`keypair`, one compression", {"authenticate": True}),
        ("no authenticator, one compression", {"authenticate": False}),
    ]
    lines = ["| session | plain LIME | with the shortcut |", "|---|---:|---:|"]
    for label, options in cases:
        plain = _round_trips(*_pair(**options))
        fast = _round_trips(*_pair(shortcut=True, **options))
        lines.append(f"| {label} | {plain} | {fast} |")
    return "\n".join(lines) + "\n"


def sequence_miss() -> str:
    client, server = _pair(authenticate=True)
    lines: list[str] = []
    client.start()
    _exchange(client, server, lines)
    # A peer that skips authentication: our own ClientProtocol would refuse to send this
    # (LocalProtocolError), so the frame is written by hand.
    early = b'{"id":"1","method":"get","uri":"/params/temp"}'
    lines.append(_line("C", early))
    try:
        server.receive_data(early)
    except RemoteProtocolError as error:
        server.reply_to_error(error)
    lines += [_line("S", data) for data in server.data_to_send()]
    return _text_block(lines)


SECTIONS: dict[str, Callable[[], str]] = {
    "diagram": diagram,
    "transitions": transitions,
    "sequence-direct": sequence_direct,
    "sequence-keypair": sequence_keypair,
    "sequence-two-rounds": sequence_two_rounds,
    "sequence-negotiated": sequence_negotiated,
    "sequence-refused": sequence_refused,
    "sequence-miss": sequence_miss,
    "sequence-shortcut": sequence_shortcut,
    "sequence-shortcut-keypair": sequence_shortcut_keypair,
    "round-trips": round_trips,
    "reason-codes": reason_codes,
    "limits": limits,
    "enums": enums,
    "error-tree": error_tree,
    "api": api,
    "zmq-options": zmq_options,
    "nats-options": nats_options,
    "server-api": server_api,
    "config-keys": config_keys,
    "config-limits": config_limits,
}


# ------------------------------------------------------------------------------ rewriting


def render(text: str, where: str = "<text>") -> str:
    """``text`` with every generated section rewritten. Raises ValueError for a bad marker."""
    if text.count("<!-- BEGIN GENERATED:") != len(_BLOCK.findall(text)):
        raise ValueError(f"{where}: a BEGIN GENERATED marker has no matching END GENERATED")

    def replace(match: re.Match[str]) -> str:
        name = match["name"]
        if name not in SECTIONS:
            raise ValueError(f"{where}: unknown generated section {name!r}")
        return f"{match['begin']}{SECTIONS[name]()}{match['end']}"

    return _BLOCK.sub(replace, text)


def pages() -> list[Path]:
    """Every Markdown page under docs/ that has a generated section."""
    return sorted(
        path for path in DOCS.rglob("*.md") if "<!-- BEGIN GENERATED:" in path.read_text("utf-8")
    )


def expected() -> dict[Path, str]:
    """What each page with generated sections should contain. Raises ValueError on drift in
    the markers themselves (a required section missing, a marker unmatched or unknown)."""
    out: dict[Path, str] = {}
    for relative, names in REQUIRED.items():
        path = DOCS / relative
        text = path.read_text("utf-8") if path.exists() else ""
        found = {match["name"] for match in _BLOCK.finditer(text)}
        for name in names:
            if name not in found:
                raise ValueError(f"docs/{relative}: generated section {name!r} is missing")
    for path in pages():
        out[path] = render(path.read_text("utf-8"), str(path.relative_to(ROOT)))
    return out


def stale() -> list[Path]:
    """The pages whose committed text differs from what :func:`expected` would write."""
    return [path for path, text in expected().items() if path.read_text("utf-8") != text]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report stale pages")
    args = parser.parse_args(argv)
    try:
        pages_text = expected()
    except ValueError as error:
        print(error, file=sys.stderr)
        return 2
    if args.check:
        out_of_date = [path for path, text in pages_text.items() if path.read_text("utf-8") != text]
        for path in out_of_date:
            print(f"{path.relative_to(ROOT)} is out of date: run python docs/generate.py")
        return 1 if out_of_date else 0
    for path, text in pages_text.items():
        if path.read_text("utf-8") != text:
            path.write_text(text, "utf-8")
            print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
