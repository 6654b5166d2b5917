"""The subject scheme: where RAIN frames travel on a NATS broker, and why the broker can vouch
for the identity a subject names.

Every link between a client with user nkey ``C`` and a server with user nkey ``S`` is one
*session* ``N`` (a random token the client picks) and uses two subject families::

    rain.S.in.C.N.<kind>      client -> server    kind: d (one frame), hello, bye, hb
    rain.S.out.C.N.<kind>     server -> client    kind: d (one frame), welcome, bye, hb

``S`` and ``C`` are the nkeys derived from the two RAIN identity files
(:mod:`rain_transport_nats.nkey`). The server subscribes ``rain.S.in.*.*.*``; each client
subscribes its own ``rain.S.out.C.N.*``. ``d`` subjects carry envelope bytes exactly; the other
kinds are transport control with an empty payload (``hello``/``welcome`` open the session,
``bye`` ends it from either side, ``hb`` is a heartbeat sent on an otherwise idle link).

The proof of identity is the broker's permissions, written by ``rain nats-config``
(:mod:`rain_transport_nats.config`) for every user ``K`` it knows:

- publish ``rain.K.out.>`` (answer as the server ``K``) and ``rain.<S>.in.K.>`` for each server
  ``S`` that authorises ``K`` (speak as the client ``K``, to that server only);
- subscribe ``rain.K.in.>`` (listen as the server ``K``) and ``rain.*.out.K.>`` (hear the
  answers addressed to the client ``K``).

NATS authenticates each connection by an nkey signature over a server nonce, then checks every
PUB against the connection's own permissions. So a frame that reaches ``rain.S.in.C...`` was
published by a connection that proved the key ``C`` -- the same guarantee as ZeroMQ's CURVE
``User-Id``, and the server reads the client's identity from the subject's fourth token. In the
other direction only the holder of ``S`` may publish on ``rain.S.out...``, so the answers a
client hears come from the server whose key it pinned, as far as the broker is trusted. The
listener checks at start-up that the broker really enforces this (see
:class:`~rain_transport_nats.transport.NatsTransportListener`).

This module is pure: string building and parsing, no I/O.
"""

from __future__ import annotations

import secrets
from typing import NamedTuple

__all__ = [
    "CLIENT_KINDS",
    "ROOT",
    "SERVER_KINDS",
    "Route",
    "client_permissions",
    "new_session_token",
    "parse_inbound",
    "server_permissions",
    "to_client",
    "to_server",
]

ROOT = "rain"
DATA = "d"
HELLO = "hello"
WELCOME = "welcome"
BYE = "bye"
HEARTBEAT = "hb"
#: A server's subject families beside its sessions' ``in`` and ``out``: samples published once
#: for every subscriber (fanout.py), archived samples for the site's JetStream stream, and that
#: stream's acknowledgements to the archiver (archive.py).
OBSERVE = "obs"
ARCHIVE = "arc"
INBOX = "inbox"
#: Kinds a client may send, and kinds a server may send.
CLIENT_KINDS = frozenset({DATA, HELLO, BYE, HEARTBEAT})
SERVER_KINDS = frozenset({DATA, WELCOME, BYE, HEARTBEAT})


def new_session_token() -> str:
    """A fresh session token: 24 lowercase hex digits (96 random bits)."""
    return secrets.token_hex(12)


def to_server(server: str, client: str, session: str, kind: str) -> str:
    """The subject a client publishes ``kind`` on."""
    return f"{ROOT}.{server}.in.{client}.{session}.{kind}"


def to_client(server: str, client: str, session: str, kind: str) -> str:
    """The subject a server publishes ``kind`` on."""
    return f"{ROOT}.{server}.out.{client}.{session}.{kind}"


def server_subscription(server: str) -> str:
    """What a listener with nkey ``server`` subscribes: every client's frames to it."""
    return f"{ROOT}.{server}.in.*.*.*"


def client_subscription(server: str, client: str, session: str) -> str:
    """What one client session subscribes: its server's answers."""
    return f"{ROOT}.{server}.out.{client}.{session}.*"


class Route(NamedTuple):
    """A parsed subject: who published it, for which session, what kind."""

    server: str
    client: str
    session: str
    kind: str


def parse_inbound(subject: str) -> Route | None:
    """Parse ``rain.S.in.C.N.kind`` or ``rain.S.out.C.N.kind``; None for anything else."""
    parts = subject.split(".")
    if len(parts) != 6 or parts[0] != ROOT or parts[2] not in ("in", "out"):
        return None
    return Route(parts[1], parts[3], parts[4], parts[5])


def server_permissions(user: str) -> tuple[list[str], list[str]]:
    """(publish, subscribe) subjects a user needs to serve as itself."""
    return (
        [f"{ROOT}.{user}.out.>", f"{ROOT}.{user}.{OBSERVE}.>", f"{ROOT}.{user}.{ARCHIVE}.>"],
        [f"{ROOT}.{user}.in.>", f"{ROOT}.{user}.{INBOX}.>"],
    )


def client_permissions(user: str, servers: list[str] | None) -> tuple[list[str], list[str]]:
    """(publish, subscribe) subjects a user needs to be a client of ``servers`` (nkeys), or of
    any server when ``servers`` is None."""
    targets = ["*"] if servers is None else servers
    return [f"{ROOT}.{s}.in.{user}.>" for s in targets], [f"{ROOT}.*.out.{user}.>"]
