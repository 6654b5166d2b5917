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
- ``transitions``: every row of ``rain_envelopes.session.TRANSITIONS``, grouped by phase;
- ``reason-codes``: ``rain_envelopes.envelopes.ReasonCode``, with the prose in
  :data:`REASON_NOTES` below (a code with no note, or a note with no code, is an error, so a new
  code cannot reach the docs undocumented).

``tests/test_docs.py`` fails when a committed page differs from what this script would write.
"""

from __future__ import annotations

import argparse
import re
import sys
import zlib
from collections.abc import Callable
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
)
from rain_envelopes.session import PHASE_STATE, TRANSITIONS, Phase, Role, mermaid_diagram  # noqa: E402

#: The pages that must carry each section: deleting a marker pair is drift too.
REQUIRED: dict[str, tuple[str, ...]] = {
    "explanation/session.md": (
        "diagram", "transitions", "sequence-direct", "sequence-keypair", "sequence-two-rounds",
        "sequence-negotiated", "sequence-refused", "sequence-miss",
    ),
    "reference/reason-codes.md": ("reason-codes",),
}

_BLOCK = re.compile(
    r"(?P<begin><!-- BEGIN GENERATED: (?P<name>[a-z0-9-]+) -->\n)"
    r"(?P<body>.*?)"
    r"(?P<end><!-- END GENERATED -->)",
    re.DOTALL,
)

#: For each reason code: (what it means in LIME, when RAIN itself sends or raises it).
REASON_NOTES: dict[str, tuple[str, str]] = {
    "GENERAL_ERROR": (
        "General error.",
        "Default code of a `RemoteProtocolError` raised without one; a channel whose reader "
        "fails internally ends with it.",
    ),
    "SESSION_ERROR": (
        "Session error: invalid session id, establishment failed, server shutting down.",
        "A session id that does not match, a first server session envelope with no id, a frame "
        "after the session ended, an undecodable keypair challenge, a failed link, a peer "
        "that stopped answering pings.",
    ),
    "SESSION_REGISTRATION_ERROR": (
        "Session registration error: the node already has a session.",
        "`NodeRegistry.register` when the same `name@domain/instance` is already connected.",
    ),
    "SESSION_AUTHENTICATION_FAILED": (
        "Authentication failed.",
        "Unknown key, bad or replayed signature, guest not enabled, transport key not "
        "authorised, no scheme available; also an unknown `scheme` value on decode. The "
        "client raises `AuthenticationFailed`.",
    ),
    "SESSION_UNREGISTER_FAILED": ("Unregister failed.", "Not sent by RAIN."),
    "SESSION_INVALID_ACTION_FOR_STATE": (
        "Action not valid for the session state.",
        "Any received envelope the transition table does not allow (`RemoteProtocolError`); "
        "also an unknown `state` value on decode.",
    ),
    "SESSION_NEGOTIATION_TIMEOUT": (
        "Negotiation timeout.",
        "A `ServerChannel` whose client did not establish in time fails the session with it.",
    ),
    "SESSION_NEGOTIATION_INVALID_OPTIONS": (
        "Negotiation: option not offered.",
        "A compression, encryption or scheme that was not offered; an echo that differs from "
        "the client's choice; nothing offered that the client can use; an unknown "
        "`compression` or `encryption` value on decode.",
    ),
    "VALIDATION_ERROR": (
        "Validation: general.",
        "Default code of `EnvelopeDecodeError`: not JSON, wrong top-level type, wrong field "
        "type, nesting too deep, size over the limit, a bad gzip frame.",
    ),
    "VALIDATION_EMPTY_DOCUMENT": ("Validation: empty document.", "Empty input to `decode`."),
    "VALIDATION_INVALID_RESOURCE": (
        "Validation: invalid resource.",
        "A command with `resource` but no `type`.",
    ),
    "VALIDATION_INVALID_STATUS": (
        "Validation: invalid status.",
        "An unknown command `status` on decode.",
    ),
    "VALIDATION_INVALID_IDENTITY": (
        "Validation: invalid identity.",
        "A `from`, `to` or `pp` that is not a valid node address.",
    ),
    "VALIDATION_INVALID_RECIPIENTS": ("Validation: invalid recipients.", "Not sent by RAIN."),
    "VALIDATION_INVALID_METHOD": (
        "Validation: invalid method or URI.",
        "An unknown command `method`, or a request with no `uri`.",
    ),
    "AUTHORIZATION_ERROR": ("Authorisation: general.", "Not sent by the protocol core."),
    "AUTHORIZATION_UNAUTHORIZED_SENDER": (
        "Authorisation: unauthorised sender.",
        "Server access rules: the identity is not mentioned by any rule.",
    ),
    "AUTHORIZATION_DESTINATION_NOT_FOUND": (
        "Authorisation: destination account not found.",
        "Not sent by RAIN.",
    ),
    "AUTHORIZATION_QUOTA_EXCEEDED": ("Authorisation: quota exceeded.", "Not sent by RAIN."),
    "AUTHORIZATION_PERMISSION_REQUIRED": (
        "Authorisation: permission required.",
        "Server access rules: the identity may not use this method on this URI.",
    ),
    "ROUTING_ERROR": ("Routing: general.", "Not sent by RAIN (it does not relay)."),
    "ROUTING_DESTINATION_NOT_FOUND": ("Routing: destination not found.", "Not sent by RAIN."),
    "ROUTING_GATEWAY_NOT_FOUND": ("Routing: gateway not found.", "Not sent by RAIN."),
    "ROUTING_ROUTE_NOT_FOUND": ("Routing: route not found.", "Not sent by RAIN."),
    "DISPATCH_ERROR": ("Dispatch error.", "Not sent by RAIN."),
    "COMMAND_PROCESSING_ERROR": (
        "Command: processing error.",
        "Default code of a server `ParameterError` raised by plugin code.",
    ),
    "COMMAND_RESOURCE_NOT_SUPPORTED": (
        "Command: resource not supported.",
        "A channel with no `on_command` handler answers every command request with it.",
    ),
    "COMMAND_METHOD_NOT_SUPPORTED": (
        "Command: method not supported.",
        "Server: a method the resource does not declare.",
    ),
    "COMMAND_INVALID_ARGUMENT": (
        "Command: invalid argument.",
        "Server: a value refused by the parameter's JSON schema or setter (`InvalidValue`).",
    ),
    "COMMAND_NOT_ALLOWED": (
        "Command: not allowed.",
        "Server: a request understood but not allowed now (`NotAllowed`).",
    ),
    "COMMAND_RESOURCE_NOT_FOUND": (
        "Command: resource not found.",
        "Server: an unknown parameter or path.",
    ),
    "MESSAGE_UNSUPPORTED_CONTENT_TYPE": (
        "Message: unsupported content type.",
        "Not sent by the protocol core.",
    ),
    "APPLICATION_ERROR": (
        "Application error.",
        "A command handler raised (the command is answered with it); a message handler raised "
        "(the `failed` receipt carries it); a plugin raised.",
    ),
    "COMMAND_EXPIRED": (
        "RAIN: the command expired before it could be applied.",
        "Meant for a command whose `metadata[\"#expires\"]` has passed (PROTOCOL.md, RAIN "
        "extensions).",
    ),
    "QUEUE_OVERFLOW": (
        "RAIN: a bounded queue overflowed.",
        "Meant for updates dropped from a full per-subscription queue.",
    ),
}


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

    lines = [
        "| phase | public state | the client may send | the server may send |",
        "|---|---|---|---|",
    ]
    for phase in Phase:
        lines.append(
            f"| {phase.value} | `{PHASE_STATE[phase].value}` "
            f"| {moves(phase, Role.CLIENT)} | {moves(phase, Role.SERVER)} |"
        )
    return "\n".join(lines) + "\n"


def reason_codes() -> str:
    members = {member.name for member in ReasonCode}
    missing = sorted(members - REASON_NOTES.keys())
    extra = sorted(REASON_NOTES.keys() - members)
    if missing or extra:
        raise ValueError(
            "docs/generate.py: REASON_NOTES is out of step with ReasonCode: "
            f"codes without a note {missing}, notes without a code {extra}"
        )
    lines = [
        "| code | `ReasonCode` | meaning | RAIN sends or raises it when |",
        "|---:|---|---|---|",
    ]
    for member in ReasonCode:
        meaning, when = REASON_NOTES[member.name]
        lines.append(f"| {member.value} | `{member.name}` | {meaning} | {when} |")
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
    *, authenticate: bool, gzip: bool = False, rounds: int = 1, authorise: bool = True
) -> tuple[ClientProtocol, ServerProtocol]:
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
    )
    client = ClientProtocol(
        node=_CLIENT_NODE,
        credentials=ClientCredentials(identity=alice),
        compression=gz if gzip else none,
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
    "reason-codes": reason_codes,
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
