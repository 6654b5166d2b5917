"""Session authentication schemes: what a server offers and accepts, what a client answers.

Schemes (PROTOCOL.md): ``transport`` (the transport proved the client's key, e.g. the ZeroMQ
CURVE User-Id, and the server maps that key to an identity), ``keypair`` (transport-independent:
the client signs a server challenge with its Ed25519 key), and ``guest`` (only when a server
enables it). Invariant: the authenticated identity is always derived from what was *proven* (a
key in the authorised-keys file), never from the ``from`` a client claims.

Pure: no I/O, no asyncio, no zmq; the only side effect is drawing random challenges.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .envelopes import AuthenticationScheme, ReasonCode
from .errors import KeyFileError, RemoteProtocolError
from .keys import (
    AuthorizedKeys,
    Identity,
    parse_public_key,
    sign_keypair_challenge,
    verify_keypair_signature,
)

__all__ = [
    "GUEST_IDENTITY",
    "ClientCredentials",
    "Proof",
    "ServerAuthenticator",
]

#: The identity a guest session gets, whatever node it claims.
GUEST_IDENTITY = "guest"
CHALLENGE_SIZE = 32

_A = AuthenticationScheme


def _auth_failed(message: str) -> RemoteProtocolError:
    return RemoteProtocolError(message, code=ReasonCode.SESSION_AUTHENTICATION_FAILED)


def _b64(value: Any, what: str) -> bytes:
    if not isinstance(value, str):
        raise _auth_failed(f"authentication.{what} must be a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise _auth_failed(f"authentication.{what} is not valid base64") from None


@dataclass(frozen=True)
class Proof:
    """What a client proved: its identity name and the Ed25519 key behind it (None for guests)."""

    identity: str
    key: bytes | None = None


class ServerAuthenticator:
    """Decides which schemes a server offers and whether a client's answer proves an identity.

    ``authorized_keys`` maps public keys to identity names; without it only ``guest`` can work,
    and only when ``allow_guest`` is set. ``keypair_rounds=2`` withholds the challenge from the
    first offer so the client names its key first (a second round trip); 1 is the fast default.
    """

    def __init__(
        self,
        authorized_keys: AuthorizedKeys | None,
        *,
        allow_guest: bool = False,
        schemes: Sequence[AuthenticationScheme] = (_A.TRANSPORT, _A.KEYPAIR),
        keypair_rounds: int = 1,
    ) -> None:
        if keypair_rounds not in (1, 2):
            raise ValueError("keypair_rounds must be 1 or 2")
        self.authorized_keys = authorized_keys
        self.allow_guest = allow_guest
        self.schemes = tuple(AuthenticationScheme(s) for s in schemes)
        self.keypair_rounds = keypair_rounds

    def offered(self, peer_identity: str | None) -> tuple[AuthenticationScheme, ...]:
        """The schemes to offer a client whose transport proved ``peer_identity`` (or not)."""
        out: list[AuthenticationScheme] = []
        if self.authorized_keys is not None:
            if _A.TRANSPORT in self.schemes and peer_identity is not None:
                out.append(_A.TRANSPORT)
            if _A.KEYPAIR in self.schemes:
                out.append(_A.KEYPAIR)
        if self.allow_guest:
            out.append(_A.GUEST)
        return tuple(out)

    def new_challenge(self) -> bytes:
        return secrets.token_bytes(CHALLENGE_SIZE)

    def authenticate(
        self,
        scheme: AuthenticationScheme,
        authentication: Mapping[str, Any],
        *,
        peer_identity: str | None,
        session_id: str,
        challenge: bytes | None,
        client_node: str,
        server_node: str,
    ) -> Proof | None:
        """Check one client answer.

        Returns what was proven, or None when the scheme needs another round (the caller then
        sends a challenge). Raises RemoteProtocolError with code 13 when the
        credentials are refused.
        """
        if scheme is _A.GUEST:
            if not self.allow_guest:
                raise _auth_failed("guest sessions are not enabled on this server")
            return Proof(GUEST_IDENTITY)
        keys = self.authorized_keys
        if keys is None:
            raise _auth_failed("this server has no authorised keys")
        if scheme is _A.TRANSPORT:
            if peer_identity is None:
                raise _auth_failed("the transport proved no key for this peer")
            try:
                key = parse_public_key(peer_identity)
            except KeyFileError:
                raise _auth_failed("the transport proved no valid key") from None
            # The transport proved a Curve25519 key and named the one authorised Ed25519 key
            # with that form (``AuthorizedKeys.lookup_curve``). P and its mirror -P share that
            # form, so with -P listed P's holder gets here as -P: the table refuses to list
            # both (issue 7), which keeps it one key holder with one name; nothing at this
            # level can tell the two spellings apart.
            name = keys.lookup(key)
            if name is None:
                raise _auth_failed("the key the transport proved is not authorised")
            return Proof(name, key)
        if scheme is _A.KEYPAIR:
            key = _b64(authentication.get("key"), "key")
            # The signature proves exactly this Ed25519 key, so look it up exactly: a listed -P
            # does not admit a client naming P here (its holder could sign as -P, which is the
            # listed key and so the listed name; see the transport branch above).
            name = keys.lookup(key)
            if name is None:
                raise _auth_failed("public key is not authorised")
            if "signature" not in authentication:
                if challenge is None:
                    return None
                raise _auth_failed("keypair authentication needs a signature")
            signature = _b64(authentication.get("signature"), "signature")
            if challenge is None or not verify_keypair_signature(
                key, signature, session_id, challenge, client_node, server_node
            ):
                raise _auth_failed("bad keypair signature")
            return Proof(name, key)
        raise _auth_failed(f"scheme {scheme.value} is not supported")


@dataclass(frozen=True)
class ClientCredentials:
    """What a client can prove: its identity key (optional) and whether the link is secured.

    ``choose`` picks, from the schemes a server offers, the strongest the client can answer:
    ``transport`` when the transport already proved our key, then ``keypair``, then ``guest``.
    """

    identity: Identity | None = None
    transport_secured: bool = False
    allow_guest: bool = True

    def choose(self, offered: Sequence[AuthenticationScheme]) -> AuthenticationScheme:
        """Raises RemoteProtocolError (17) when nothing offered can be answered."""
        if _A.TRANSPORT in offered and self.transport_secured:
            return _A.TRANSPORT
        if _A.KEYPAIR in offered and self.identity is not None:
            return _A.KEYPAIR
        if _A.GUEST in offered and self.allow_guest:
            return _A.GUEST
        names = ", ".join(s.value for s in offered) or "none"
        raise RemoteProtocolError(
            f"no authentication scheme we can use was offered (offered: {names})",
            code=ReasonCode.SESSION_NEGOTIATION_INVALID_OPTIONS,
        )

    def propose(self) -> tuple[AuthenticationScheme, dict[str, Any]] | None:
        """The scheme and ``authentication`` to put in a proposal, before any offer is seen.

        The scheme :meth:`choose` would pick if the server offered everything, with what can be
        sent without a challenge: ``{}`` for ``transport`` and ``guest``, only the public key
        for ``keypair`` (its signature must cover the server's fresh challenge, so it comes in
        the next round). None when the client can prove nothing.
        """
        if self.transport_secured:
            return _A.TRANSPORT, {}
        if self.identity is not None:
            return _A.KEYPAIR, {"key": base64.b64encode(self.identity.public_key).decode()}
        if self.allow_guest:
            return _A.GUEST, {}
        return None

    def answer(
        self,
        scheme: AuthenticationScheme,
        *,
        session_id: str,
        challenge: bytes | None,
        client_node: str,
        server_node: str,
    ) -> dict[str, Any]:
        """The ``authentication`` object for ``scheme``."""
        if scheme is not _A.KEYPAIR:
            return {}
        assert self.identity is not None
        out: dict[str, Any] = {"key": base64.b64encode(self.identity.public_key).decode()}
        if challenge is not None:
            signature = sign_keypair_challenge(
                self.identity, session_id, challenge, client_node, server_node
            )
            out["signature"] = base64.b64encode(signature).decode()
        return out
