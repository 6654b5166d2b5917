"""Ed25519 node identities, the authorised-keys and known-hosts tables, and the ``keypair`` proof.

Every node has one Ed25519 keypair. The ZeroMQ transport derives its CURVE keys from it (pynacl
converts Ed25519 keys to Curve25519), so a node keeps a single key file. This module is the key
*math* and the tables *in memory*: parsing and formatting keys, curve conversion, signing and
verifying the ``keypair`` transcript, and the lookups a server makes on every session. It does
no I/O, like the rest of the protocol core (tests/core/test_layering.py enforces it); the files
that hold keys are read and written by :mod:`rain_envelopes.keyfiles`.

The file methods users know -- ``Identity.load``/``save``, ``AuthorizedKeys.load``/``reload``/
``save``, ``KnownHosts.load``/``save`` and :func:`load_public_key` -- stay here for
compatibility, each a one-line hand-over to :mod:`rain_envelopes.keyfiles`, imported when one is
called. They are the only way out of the core, and nothing in the protocol path calls them.

Invariants:

- Nothing secret appears in a ``repr`` or ``str`` or in an error message.
- A peer's identity is what it *proved*: the name an :class:`AuthorizedKeys` table gives the key
  that signed a challenge (or that the transport authenticated), never a name the peer claimed.
- Public keys are validated once, where they enter (``parse_public_key``, the tables): a key that
  is not a point of the Ed25519 main subgroup is refused there, so the rest of the code can trust
  every 32-byte key it holds.
- One Curve25519 key has at most one name. An Ed25519 key P and its mirror -P (P with the top
  bit of its last byte flipped) are both valid keys with the same Curve25519 form, and the CURVE
  handshake proves only that form (trap 13 in RELIABILITY.md). An :class:`AuthorizedKeys` table
  therefore refuses two entries with one Curve25519 form, whatever their names (issue 7).
- A table is swapped whole when it changes, so a lookup in another thread (a ZAP handler) sees
  the old table or the new one, never a mix.

Bad keys, names and endpoints raise :class:`KeyFileError` naming what is wrong.
"""

from __future__ import annotations

import base64
import binascii
import struct
from collections.abc import ItemsView, Mapping
from typing import TYPE_CHECKING, TypeAlias

import nacl.bindings
import nacl.exceptions
import nacl.signing

from .errors import EnvelopeValidationError, KeyFileError
from .node import Node

if TYPE_CHECKING:
    import os
    from pathlib import Path

    PathArg: TypeAlias = str | os.PathLike[str]

__all__ = [
    "KEYPAIR_TRANSCRIPT_VERSION",
    "AuthorizedKeys",
    "Identity",
    "KnownHosts",
    "curve_public_key",
    "format_public_key",
    "keypair_transcript",
    "load_public_key",
    "parse_public_key",
    "sign_keypair_challenge",
    "verify_keypair_signature",
]

KEYPAIR_TRANSCRIPT_VERSION = b"RAIN-keypair-v1"

_KEY_PREFIX = "ed25519:"
_KEY_SIZE = 32
_SIGNATURE_SIZE = 64


# ------------------------------------------------------------------------------ public keys


def _raw_curve_public(ed25519_public: bytes) -> bytes | None:
    """The Curve25519 form of an Ed25519 public key, or None if the key is not a valid point.

    pynacl's ``VerifyKey`` accepts any 32 bytes; libsodium's conversion is what checks that the
    key is on the curve, not of small order and in the main subgroup (it fails with a bare
    "Unexpected library error" otherwise), so it doubles as our point validation.
    """
    if len(ed25519_public) != _KEY_SIZE:
        return None
    try:
        return nacl.bindings.crypto_sign_ed25519_pk_to_curve25519(ed25519_public)
    except nacl.exceptions.CryptoError:
        return None


def _checked_key(key: object, where: str) -> bytes:
    """``key`` as 32 raw bytes of a valid Ed25519 point; KeyFileError naming ``where`` if not."""
    if not isinstance(key, bytes | bytearray | memoryview):
        raise KeyFileError(f"{where}: a public key must be bytes, got {type(key).__name__}")
    raw = bytes(key)
    if len(raw) != _KEY_SIZE:
        raise KeyFileError(f"{where}: a public key is {_KEY_SIZE} bytes, got {len(raw)}")
    if _raw_curve_public(raw) is None:
        raise KeyFileError(f"{where}: not a valid Ed25519 public key (not a usable curve point)")
    return raw


def format_public_key(key: bytes) -> str:
    """``"ed25519:"`` followed by the standard base64 of the 32-byte key.

    Raises KeyFileError when ``key`` is not 32 bytes.
    """
    if not isinstance(key, bytes | bytearray | memoryview) or len(key) != _KEY_SIZE:
        size = len(key) if isinstance(key, bytes | bytearray | memoryview) else type(key).__name__
        raise KeyFileError(f"a public key is {_KEY_SIZE} bytes, got {size}")
    return _KEY_PREFIX + base64.b64encode(bytes(key)).decode("ascii")


def parse_public_key(text: str) -> bytes:
    """The 32 raw bytes of a public key written as ``ed25519:<base64>`` (the prefix is optional).

    Surrounding whitespace is ignored. Raises KeyFileError naming the problem when the text is not
    canonical standard base64 of exactly 32 bytes, names another key type, or is not a valid
    Ed25519 point.
    """
    if not isinstance(text, str):
        raise KeyFileError(f"a public key must be text, got {type(text).__name__}")
    body = text.strip()
    if body[: len(_KEY_PREFIX)].lower() == _KEY_PREFIX:
        body = body[len(_KEY_PREFIX) :].strip()
    elif ":" in body:
        kind = body.split(":", 1)[0]
        raise KeyFileError(f"unsupported key type {kind!r}: expected an 'ed25519:' public key")
    if not body:
        raise KeyFileError("empty public key: expected 'ed25519:<base64 of 32 bytes>'")
    try:
        raw = base64.b64decode(body.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error) as exc:
        raise KeyFileError(f"public key is not valid base64 ({exc})") from None
    if len(raw) != _KEY_SIZE:
        raise KeyFileError(f"public key decodes to {len(raw)} bytes, expected {_KEY_SIZE}")
    # Base64 leaves spare bits in the last character; insisting on the canonical spelling keeps
    # one key one string, so tables keyed on text cannot hold the same key twice.
    if base64.b64encode(raw).decode("ascii") != body:
        raise KeyFileError("public key is not canonical base64 (its padding bits are not zero)")
    if _raw_curve_public(raw) is None:
        raise KeyFileError("public key is not a valid Ed25519 point")
    return raw


def curve_public_key(ed25519_public: bytes) -> bytes:
    """The Curve25519 public key (32 raw bytes) derived from an Ed25519 public key.

    This is the key the ZeroMQ CURVE handshake sees for a node. Raises KeyFileError when
    ``ed25519_public`` is not a valid 32-byte Ed25519 public key.
    """
    raw = _checked_key(ed25519_public, "curve_public_key")
    curve = _raw_curve_public(raw)
    assert curve is not None  # _checked_key just validated it
    return curve


def load_public_key(path: PathArg) -> bytes:
    """Read a public key file (see :func:`rain_envelopes.keyfiles.load_public_key`).

    Raises KeyFileError when the file is missing or unreadable or holds no valid public key.
    """
    from . import keyfiles

    return keyfiles.load_public_key(path)


# ------------------------------------------------------------------------------ identities


class Identity:
    """A node's Ed25519 keypair: signs challenges and yields the node's CURVE keys.

    ``repr`` and ``str`` show the public key only.
    """

    __slots__ = ("signing_key",)

    def __init__(self, signing_key: nacl.signing.SigningKey) -> None:
        """Wrap a pynacl signing key. Raises TypeError for anything else."""
        if not isinstance(signing_key, nacl.signing.SigningKey):
            raise TypeError(f"Identity needs a nacl.signing.SigningKey, got {type(signing_key)}")
        self.signing_key = signing_key

    @classmethod
    def generate(cls) -> Identity:
        """A fresh random identity (from the operating system's CSPRNG). Never raises."""
        return cls(nacl.signing.SigningKey.generate())

    @classmethod
    def load(cls, path: PathArg) -> Identity:
        """Read a secret key file (:func:`rain_envelopes.keyfiles.load_identity`).

        Raises KeyFileError when the file is missing, unreadable or malformed (naming the line),
        or when its permissions let group or others read or write it (naming the mode and the
        ``chmod 600`` that fixes it).
        """
        from . import keyfiles

        return keyfiles.load_identity(path)

    def save(self, path: PathArg, *, overwrite: bool = False) -> None:
        """Write the secret key file ``path`` (mode 0600) and the public key file ``path.pub``
        (:func:`rain_envelopes.keyfiles.save_identity`).

        Raises KeyFileError when either file already exists and ``overwrite`` is false (nothing
        is written then), or when a file cannot be written.
        """
        from . import keyfiles

        keyfiles.save_identity(self, path, overwrite=overwrite)

    @property
    def public_key(self) -> bytes:
        """The 32 raw bytes of the Ed25519 public key."""
        return bytes(self.signing_key.verify_key)

    @property
    def public_key_text(self) -> str:
        """The public key as ``ed25519:<base64>``."""
        return format_public_key(self.public_key)

    def sign(self, data: bytes) -> bytes:
        """The 64-byte detached Ed25519 signature of ``data``. Raises TypeError for non-bytes."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError(f"sign() takes bytes, got {type(data).__name__}")
        return bytes(self.signing_key.sign(bytes(data)).signature)

    def curve_keypair(self) -> tuple[bytes, bytes]:
        """``(curve25519 public, curve25519 secret)``, 32 raw bytes each, for CURVE transports.

        Derived from this identity, so a node needs no second key file. Never raises.
        """
        public = bytes(self.signing_key.verify_key.to_curve25519_public_key())
        secret = bytes(self.signing_key.to_curve25519_private_key())
        return public, secret

    def __repr__(self) -> str:
        return f"Identity({self.public_key_text!r})"

    __str__ = __repr__


# ------------------------------------------------------------------------------ keypair scheme


def keypair_transcript(
    session_id: str, challenge: bytes, client_node: str, server_node: str
) -> bytes:
    """The bytes a client signs to answer a ``keypair`` challenge.

    Layout: every part is a 4-byte big-endian length followed by its bytes, in this order: the
    version tag ``RAIN-keypair-v1``, the session id (UTF-8), the challenge, the client node and
    the server node (both casefolded, since LIME nodes compare case-insensitively, then UTF-8).
    Length prefixes make the encoding injective: no two different inputs give the same bytes,
    and the version tag keeps these signatures from meaning anything in another protocol or
    version. Lone surrogates are encoded with ``surrogatepass``, which keeps it injective and
    total over ``str``.

    Pass the nodes as they appear in the session: the client's ``from`` and the server's
    ``from``. Raises TypeError when a part has the wrong type.

    Note: the proof shows the client holds the key to whoever issued the challenge; it does not
    authenticate the server. Pin the server key at the transport (CURVE) so a relay cannot
    forward another server's challenge.
    """
    for name, value, kind in (
        ("session_id", session_id, str),
        ("client_node", client_node, str),
        ("server_node", server_node, str),
    ):
        if not isinstance(value, kind):
            raise TypeError(f"{name} must be str, got {type(value).__name__}")
    if not isinstance(challenge, bytes | bytearray | memoryview):
        raise TypeError(f"challenge must be bytes, got {type(challenge).__name__}")
    parts = (
        KEYPAIR_TRANSCRIPT_VERSION,
        session_id.encode("utf-8", "surrogatepass"),
        bytes(challenge),
        client_node.casefold().encode("utf-8", "surrogatepass"),
        server_node.casefold().encode("utf-8", "surrogatepass"),
    )
    return b"".join(struct.pack(">I", len(part)) + part for part in parts)


def sign_keypair_challenge(
    identity: Identity, session_id: str, challenge: bytes, client_node: str, server_node: str
) -> bytes:
    """The client's 64-byte signature over :func:`keypair_transcript` of these values.

    Raises TypeError when a part has the wrong type.
    """
    return identity.sign(keypair_transcript(session_id, challenge, client_node, server_node))


def verify_keypair_signature(
    public_key: bytes,
    signature: bytes,
    session_id: str,
    challenge: bytes,
    client_node: str,
    server_node: str,
) -> bool:
    """True only if ``signature`` is ``public_key``'s signature over the transcript of the rest.

    Everything here may come from the peer, so bad input of any type or length (including an
    invalid or small-order key) gives False; it never raises.
    """
    if not isinstance(public_key, bytes | bytearray | memoryview):
        return False
    if not isinstance(signature, bytes | bytearray | memoryview):
        return False
    key, sig = bytes(public_key), bytes(signature)
    if len(sig) != _SIGNATURE_SIZE or _raw_curve_public(key) is None:
        return False
    try:
        transcript = keypair_transcript(session_id, challenge, client_node, server_node)
        nacl.signing.VerifyKey(key).verify(transcript, sig)
    except (nacl.exceptions.CryptoError, TypeError, ValueError):
        return False
    return True


# ------------------------------------------------------------------------------ tables


class AuthorizedKeys:
    """A server's table of authorised public keys: Ed25519 key -> identity name (``alice@irf``).

    File format: one ``<public key> <identity name>`` per line; blank lines and lines starting
    with ``#`` are ignored, as is a ``# comment`` after the name. Several keys may share a name
    (one person, several machines); one key has one name. :meth:`save` writes the entries back
    without the original comments.

    No two entries may share a Curve25519 form (a key and its mirror, see the module docstring):
    the constructor, :meth:`load`, :meth:`reload`, :meth:`from_mapping` and :meth:`add` all refuse
    it, through one check, so :meth:`lookup_curve` has exactly one answer. What that cannot
    change: a transport that proves only the Curve25519 key (ZeroMQ CURVE) cannot tell P's holder
    from -P's, so listing -P alone lets P's holder in under -P's name. That is not a second
    identity: the holder of P's secret scalar can also sign as -P (negate the scalar), so P and
    -P are one key holder under two spellings, and the table gives that holder one name.

    The table is swapped whole on :meth:`reload`, so a lookup running in another thread (a ZAP
    handler) sees either the old table or the new one, never a mix.
    """

    def __init__(
        self, entries: Mapping[bytes, str] | None = None, path: Path | None = None
    ) -> None:
        """Raises KeyFileError when a key is not a valid Ed25519 key, a name is not valid, or
        two keys have the same Curve25519 form (a key and its mirror)."""
        #: The file the table was loaded from (set by :meth:`load`), where :meth:`save` writes.
        self.path: Path | None = path
        self.version = 0
        table: dict[bytes, str] = {}
        for key, name in (entries or {}).items():
            table[_checked_key(key, "authorised key")] = _checked_name(name, "authorised key")
        self._tables = _with_curve(table)

    @classmethod
    def _from_table(
        cls, table: dict[bytes, str], *, path: Path | None, lines: Mapping[bytes, str]
    ) -> AuthorizedKeys:
        """A table of entries already checked one by one (by the key-files parser), now checked
        as a whole; ``lines`` names where each key came from, for the error."""
        keys = cls(path=path)
        keys._tables = _with_curve(table, lines)
        return keys

    def _replace(self, table: dict[bytes, str], lines: Mapping[bytes, str]) -> set[bytes]:
        """Swap in new entries whole (see :meth:`reload`); return the keys that lost their name."""
        tables = _with_curve(table, lines)
        revoked = {key for key, name in self._tables[0].items() if tables[0].get(key) != name}
        self._tables = tables
        self.version += 1
        return revoked

    @classmethod
    def load(cls, path: PathArg) -> AuthorizedKeys:
        """Read an authorised-keys file (:func:`rain_envelopes.keyfiles.load_authorized_keys`).

        Raises KeyFileError naming the file and line for a bad line or a duplicate key, naming
        both lines for two keys with one Curve25519 form (a key and its mirror), or when the file
        is missing, unreadable, or writable by group or others (naming the ``chmod`` that fixes
        it).
        """
        from . import keyfiles

        return keyfiles.load_authorized_keys(path)

    @classmethod
    def from_mapping(cls, mapping: Mapping[str | bytes, str]) -> AuthorizedKeys:
        """A table from ``{public key (text or 32 raw bytes): identity name}``.

        Raises KeyFileError for a bad key or name, when two spellings give the same key, or
        when two keys have the same Curve25519 form (a key and its mirror).
        """
        table: dict[bytes, str] = {}
        for key, name in mapping.items():
            raw = parse_public_key(key) if isinstance(key, str) else _checked_key(key, "key")
            if raw in table:
                raise KeyFileError(f"key {format_public_key(raw)} is listed twice")
            table[raw] = _checked_name(name, format_public_key(raw))
        return cls(table)

    def lookup(self, public_key: bytes) -> str | None:
        """The identity name for an Ed25519 public key, or None if it is not authorised.

        Never raises.
        """
        if not isinstance(public_key, bytes | bytearray | memoryview):
            return None
        return self._tables[0].get(bytes(public_key))

    def lookup_curve(self, curve_public: bytes) -> bytes | None:
        """The authorised Ed25519 key whose Curve25519 form is ``curve_public``, or None.

        For transports whose handshake sees the Curve25519 key (ZeroMQ CURVE ``User-Id``). The
        reverse table is built when the entries change, so this is one dict lookup. Never raises.
        """
        if not isinstance(curve_public, bytes | bytearray | memoryview):
            return None
        return self._tables[1].get(bytes(curve_public))

    def reload(self) -> set[bytes]:
        """Re-read :attr:`path` and return the Ed25519 keys that lost their authorisation.

        That is every key that was removed *or now maps to a different name*: sessions already
        authenticated with such a key hold an identity the file no longer grants, so the caller
        should close them (libzmq checks keys only once per connection; RELIABILITY.md trap 3).
        Raises KeyFileError when there is no path or the file is bad (as for :meth:`load`: a
        bad line, two keys with one Curve25519 form, a mode that lets group or others write it);
        the old entries stay then. (:func:`rain_envelopes.keyfiles.reload_authorized_keys`.)
        """
        from . import keyfiles

        return keyfiles.reload_authorized_keys(self)

    def add(self, public_key: bytes, name: str) -> None:
        """Authorise ``public_key`` as ``name`` (in memory; :meth:`save` writes it).

        Adding a key again under the same name does nothing but count as a change. Raises
        KeyFileError for an invalid key or name, when the key is already listed under
        another name (remove it from the file first: renaming is a revocation), or when its
        mirror (the other key with its Curve25519 form) is listed.
        """
        raw = _checked_key(public_key, "authorised key")
        checked = _checked_name(name, format_public_key(raw))
        current = self._tables[0].get(raw)
        if current is not None and current != checked:
            raise KeyFileError(
                f"key {format_public_key(raw)} is already authorised as {current!r}; remove that"
                " entry first to give it another name"
            )
        table = dict(self._tables[0])
        table[raw] = checked
        self._tables = _with_curve(table)
        self.version += 1

    def save(self, path: PathArg | None = None) -> None:
        """Write the table to ``path`` (default: :attr:`path`), replacing the file atomically
        (:func:`rain_envelopes.keyfiles.save_authorized_keys`).

        An existing file keeps its permission bits, less write access for group and others
        (which :meth:`load` would refuse). Raises KeyFileError when there is no path or the file
        cannot be written.
        """
        from . import keyfiles

        keyfiles.save_authorized_keys(self, path)

    def items(self) -> ItemsView[bytes, str]:
        """A snapshot of ``(Ed25519 key, identity name)`` pairs."""
        return dict(self._tables[0]).items()

    def __contains__(self, key: object) -> bool:
        """True for an authorised key given as raw bytes or as text; never raises."""
        if isinstance(key, str):
            try:
                key = parse_public_key(key)
            except KeyFileError:
                return False
        return isinstance(key, bytes | bytearray | memoryview) and bytes(key) in self._tables[0]

    def __len__(self) -> int:
        return len(self._tables[0])

    def __repr__(self) -> str:
        source = f" from {self.path}" if self.path is not None else ""
        return f"<AuthorizedKeys {len(self)} keys{source} version={self.version}>"


class KnownHosts:
    """A client's pinned server keys: endpoint (``tcp://host:port``) -> Ed25519 public key.

    File format: one ``<endpoint> <public key>`` per line; blank lines and ``#`` comments are
    ignored. Endpoints are matched exactly (after trimming whitespace).
    """

    def __init__(
        self, entries: Mapping[str, bytes] | None = None, path: Path | None = None
    ) -> None:
        """Raises KeyFileError for an invalid endpoint or key."""
        #: The file the pins were loaded from (set by :meth:`load`), where :meth:`save` writes.
        self.path: Path | None = path
        self._hosts: dict[str, bytes] = {}
        for endpoint, key in (entries or {}).items():
            name = _checked_endpoint(endpoint, "known host")
            self._hosts[name] = _checked_key(key, f"known host {name}")

    @classmethod
    def load(cls, path: PathArg) -> KnownHosts:
        """Read a known-hosts file (:func:`rain_envelopes.keyfiles.load_known_hosts`).

        Raises KeyFileError naming the file and line for a bad line or an endpoint listed twice,
        or when the file is missing or unreadable.
        """
        from . import keyfiles

        return keyfiles.load_known_hosts(path)

    def lookup(self, endpoint: str) -> bytes | None:
        """The pinned Ed25519 key for ``endpoint``, or None. Never raises."""
        if not isinstance(endpoint, str):
            return None
        return self._hosts.get(endpoint.strip())

    def add(self, endpoint: str, key: bytes) -> None:
        """Pin ``key`` for ``endpoint`` (in memory; :meth:`save` writes it).

        Raises KeyFileError for an invalid endpoint or key, or when the endpoint is already
        pinned to a different key: a changed server key must be accepted by a person (by editing
        the file), not silently.
        """
        name = _checked_endpoint(endpoint, "known host")
        raw = _checked_key(key, f"known host {name}")
        current = self._hosts.get(name)
        if current is not None and current != raw:
            raise KeyFileError(
                f"{name} is pinned to {format_public_key(current)}, not {format_public_key(raw)};"
                " if the server key really changed, remove the old line from the known-hosts file"
            )
        self._hosts[name] = raw

    def save(self, path: PathArg | None = None) -> None:
        """Write the pins to ``path`` (default: :attr:`path`), replacing the file atomically
        (:func:`rain_envelopes.keyfiles.save_known_hosts`).

        Raises KeyFileError when there is no path or the file cannot be written.
        """
        from . import keyfiles

        keyfiles.save_known_hosts(self, path)

    def items(self) -> ItemsView[str, bytes]:
        """A snapshot of ``(endpoint, Ed25519 key)`` pairs."""
        return dict(self._hosts).items()

    def __contains__(self, endpoint: object) -> bool:
        return isinstance(endpoint, str) and endpoint.strip() in self._hosts

    def __len__(self) -> int:
        return len(self._hosts)

    def __repr__(self) -> str:
        source = f" from {self.path}" if self.path is not None else ""
        return f"<KnownHosts {len(self)} hosts{source}>"


# ------------------------------------------------------------------------------ helpers


def _with_curve(
    table: dict[bytes, str], lines: Mapping[bytes, str] | None = None
) -> tuple[dict[bytes, str], dict[bytes, bytes]]:
    """The table and its Curve25519 -> Ed25519 reverse index, built together to swap as one.

    The one place that refuses two keys with one Curve25519 form (KeyFileError naming both, by
    ``lines[key]`` -- ``file:line`` -- when given). Without it the reverse index would keep
    whichever came last, and the holder of one key would pass CURVE under the other's name.
    """
    curve: dict[bytes, bytes] = {}
    for key, name in table.items():
        converted = _raw_curve_public(key)
        assert converted is not None  # every key in a table was validated on the way in
        other = curve.get(converted)
        if other is not None:
            where = lines or {}
            raise KeyFileError(
                f"{where.get(key, 'authorised key')}: key {format_public_key(key)} ({name}) is"
                f" the mirror of {format_public_key(other)} ({table[other]})"
                f"{' on ' + where[other] if other in where else ''}: the two keys have the same"
                " Curve25519 form, so the holder of either passes the CURVE handshake as both."
                " One key can have only one name: remove one of the two entries"
            )
        curve[converted] = key
    return table, curve


def _checked_name(name: object, where: str) -> str:
    if not isinstance(name, str) or not name or any(ch.isspace() for ch in name):
        raise KeyFileError(f"{where}: identity name must be non-empty text without spaces")
    if name.startswith("#"):
        raise KeyFileError(f"{where}: identity name must not start with '#'")
    # The name becomes the session's node identity, so it must read as one (alice@irf).
    try:
        node = Node.parse(name)
    except EnvelopeValidationError as exc:
        message = f"{where}: identity name {name!r} is not a node identity: {exc}"
        raise KeyFileError(message) from None
    if node.instance is not None or node.name is None:
        raise KeyFileError(
            f"{where}: identity name {name!r} must be name@domain (or a bare name), no instance"
        )
    return name


def _checked_endpoint(endpoint: object, where: str) -> str:
    if not isinstance(endpoint, str):
        raise KeyFileError(f"{where}: endpoint must be text, got {type(endpoint).__name__}")
    name = endpoint.strip()
    if not name or any(ch.isspace() for ch in name) or name.startswith("#"):
        raise KeyFileError(f"{where}: {endpoint!r} is not an endpoint such as tcp://host:4505")
    return name
