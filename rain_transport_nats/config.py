"""``rain nats-config``: the nats-server authorization block from RAIN's own key files.

Theory of operation
-------------------

A RAIN deployment already says who may talk to whom: each server has an identity key and an
``authorized_keys`` file (public key -> identity name), and optionally ``[[access]]`` rules
(which identities may use it at all, and for what). This module turns that into the users and
subject permissions of a nats-server ``authorization`` block, so the broker enforces the
subject scheme of :mod:`rain_transport_nats.subjects`:

- every server's key becomes a user that may subscribe ``rain.<S>.in.>`` and publish
  ``rain.<S>.out.>``: it listens as itself and answers as itself, nothing else;
- every authorised client key becomes a user that may publish ``rain.<S>.in.<C>.>`` for each
  server ``S`` that lets it in, and subscribe ``rain.*.out.<C>.>`` (the answers addressed to it);
- a key that is both (a server that is also a client of another) gets the union;
- archives (:mod:`rain_transport_nats.archive`): each server may also publish
  ``rain.<S>.arc.>`` (its archived samples, for the site's JetStream stream) and subscribe
  ``rain.<S>.inbox.>`` (the stream's acknowledgements); creating streams is left to an
  administrative user;
- fan-out (:mod:`rain_transport_nats.fanout`): each server may also publish ``rain.<S>.obs.>``,
  and each client may subscribe ``rain.<S>.obs.<parameter>.*`` for the parameters the access
  rules let it subscribe to (``rain.<S>.obs.>`` when there are no rules, or a rule's URI glob
  covers every parameter). A rule whose glob the broker cannot express (``/params/temp*``)
  grants nothing here: the server then sends those samples to that client directly.

"Lets it in" means: the key is in that server's ``authorized_keys`` and, when the server has
access rules, at least one rule's identity glob matches the key's name. A key no rule mentions
could only be refused by the server (code 13) after a session; the broker refuses it earlier and
never carries its frames. Finer rules (which parameters, which methods) stay the server's to
enforce: the broker cannot read inside frames, and does not need to.

Nothing is secret in the output: nkeys here are public keys. Users are sorted by nkey and each
carries a comment naming the identities, so the file diffs well when keys change; revoking a key
is removing it from ``authorized_keys``, running this again, and reloading both servers
(``nats-server --signal reload``).

This module does no network I/O; :func:`from_server_configs` reads the RAIN config files.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rain_envelopes.errors import ConfigError
from rain_envelopes.keys import AuthorizedKeys, Identity, format_public_key, load_public_key
from rain_envelopes.server.access import AccessRule

from . import fanout, subjects
from .nkey import user_nkey

__all__ = [
    "NatsUser",
    "ServerGrant",
    "authorization_block",
    "from_server_configs",
    "generate",
    "grant_for",
    "nats_users",
    "render",
    "write",
]


@dataclass(frozen=True)
class ServerGrant:
    """One RAIN server: its key and the client keys it lets in (key -> identity names)."""

    server_key: bytes
    name: str
    clients: Mapping[bytes, str]
    #: Per client key, the parameters it may hear through the broker's fan-out (None: all).
    #: None for the whole mapping: every client hears every parameter (no access rules).
    observable: Mapping[bytes, frozenset[str] | None] | None = None


@dataclass
class NatsUser:
    """One nats-server user: an nkey and the subjects it may publish and subscribe."""

    nkey: str
    publish: list[str] = field(default_factory=list)
    subscribe: list[str] = field(default_factory=list)
    roles: list[str] = field(default_factory=list)

    def add(self, publish: Iterable[str], subscribe: Iterable[str], role: str) -> None:
        for subject in publish:
            if subject not in self.publish:
                self.publish.append(subject)
        for subject in subscribe:
            if subject not in self.subscribe:
                self.subscribe.append(subject)
        if role not in self.roles:
            self.roles.append(role)


def nats_users(grants: Sequence[ServerGrant]) -> list[NatsUser]:
    """The users (sorted by nkey) that the broker needs for ``grants``."""
    users: dict[str, NatsUser] = {}

    def user(key: bytes) -> NatsUser:
        nkey = user_nkey(key)
        return users.setdefault(nkey, NatsUser(nkey))

    for grant in grants:
        server = user_nkey(grant.server_key)
        publish, subscribe = subjects.server_permissions(server)
        user(grant.server_key).add(publish, subscribe, f"server {grant.name}")
        for key, name in sorted(grant.clients.items()):
            publish, subscribe = subjects.client_permissions(user_nkey(key), [server])
            user(key).add(publish, subscribe, f"{name} -> {grant.name}")
            names = None if grant.observable is None else grant.observable.get(key, frozenset())
            if names is None:
                hear = [fanout.observe_subscribe_permission(server, None)]
            else:
                hear = [fanout.observe_subscribe_permission(server, n) for n in sorted(names)]
            user(key).add([], hear, f"{name} -> {grant.name}")
    return [users[nkey] for nkey in sorted(users)]


def _quote(text: str) -> str:
    return json.dumps(text)  # nats-server config strings accept JSON string syntax


def render(users: Sequence[NatsUser]) -> str:
    """The ``authorization { users = [...] }`` block for ``users``, as nats-server config."""
    lines = [
        "# Generated by `rain nats-config` from RAIN authorised keys and access rules.",
        "# Users are RAIN identities as NATS nkeys; subjects follow rain_transport_nats.subjects.",
        "authorization {",
        "  users = [",
    ]
    for entry in users:
        lines.append(f"    # {'; '.join(entry.roles)}")
        lines.append("    {")
        lines.append(f"      nkey: {_quote(entry.nkey)}")
        lines.append("      permissions: {")
        lines.append(f"        publish: {{ allow: [{', '.join(map(_quote, entry.publish))}] }}")
        lines.append(
            f"        subscribe: {{ allow: [{', '.join(map(_quote, entry.subscribe))}] }}"
        )
        lines.append("      }")
        lines.append("    }")
    lines += ["  ]", "}", ""]
    return "\n".join(lines)


def authorization_block(grants: Sequence[ServerGrant]) -> str:
    """:func:`render` of :func:`nats_users`: the block to include in nats-server's config."""
    return render(nats_users(grants))


def _admitted(name: str, rules: Sequence[AccessRule] | None) -> bool:
    if rules is None:
        return True
    return any(rule.matches_identity(name) for rule in rules)


_GLOB = re.compile(r"[*?\[]")
_PARAMS = "/params/"


def _observable(name: str, rules: Sequence[AccessRule]) -> frozenset[str] | None:
    """The parameters ``name`` may subscribe to that the broker can express: None for all."""
    names: set[str] = set()
    for rule in rules:
        if "subscribe" not in rule.methods or not rule.matches_identity(name):
            continue
        glob = rule.uri
        if glob.endswith("*") and not _GLOB.search(glob[:-1]) and _PARAMS.startswith(glob[:-1]):
            return None  # "*", "/*", "/params/*": every parameter
        if not _GLOB.search(glob) and glob.startswith(_PARAMS) and "/" not in glob[len(_PARAMS):]:
            names.add(glob[len(_PARAMS):])
    return frozenset(names)


def grant_for(
    server_key: bytes,
    name: str,
    authorized: AuthorizedKeys,
    rules: Sequence[AccessRule] | None = None,
) -> ServerGrant:
    """A server's grant: its authorised keys, less the names no access rule mentions."""
    clients = {key: who for key, who in authorized.items() if _admitted(who, rules)}
    observable = (
        None if rules is None else {key: _observable(who, rules) for key, who in clients.items()}
    )
    return ServerGrant(server_key, name, clients, observable)


def from_server_configs(paths: Sequence[str | Path]) -> list[ServerGrant]:
    """One grant per RAIN server config file (its key file's public key, its authorised keys,
    its access rules). Raises ConfigError naming the file when one is unusable."""
    from rain_envelopes.server.config import load_config

    grants = []
    for path in paths:
        config = load_config(path)
        if config.key_file is None:
            raise ConfigError(f"{path}: key_file is missing; the server's key is its NATS user")
        public = Path(str(config.key_file) + ".pub")
        # The .pub beside the key file when there is one (no secret read), else the key file.
        if public.is_file():
            key = load_public_key(public)
        else:
            key = Identity.load(config.key_file).public_key
        if config.authorized_keys is None:
            raise ConfigError(f"{path}: authorized_keys is missing; nothing to grant")
        authorized = AuthorizedKeys.load(config.authorized_keys)
        rules = list(config.access) if config.access is not None else None
        grants.append(grant_for(key, str(config.identity), authorized, rules))
    return grants


def describe(grants: Sequence[ServerGrant]) -> str:
    """A short human summary (for stderr): how many users and which servers."""
    users = nats_users(grants)
    names = ", ".join(f"{g.name} ({format_public_key(g.server_key)})" for g in grants)
    return f"{len(users)} NATS users for {len(grants)} RAIN server(s): {names}"


def generate(paths: Sequence[str | Path]) -> tuple[str, str]:
    """What ``rain nats-config CONFIG...`` prints: (the authorization block, a summary line).
    Raises ConfigError or KeyFileError naming the file at fault."""
    if not paths:
        raise ConfigError("nats-config needs at least one server config file")
    grants = from_server_configs(paths)
    return authorization_block(grants), describe(grants)


def write(text: str, path: str | Path) -> None:
    """Replace ``path`` with ``text`` atomically (a reloading nats-server never reads half a
    file). Mode 0644: nothing in it is secret. Raises OSError."""
    target = Path(path)
    # mkstemp: a fresh name made with O_EXCL, so a file or link planted beside the target under
    # a guessable name is never written through.
    handle, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    temporary = Path(name)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
        temporary.chmod(0o644)
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)
