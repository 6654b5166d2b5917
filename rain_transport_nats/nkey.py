"""One identity everywhere: a RAIN Ed25519 identity as a NATS user nkey.

A NATS nkey *is* an Ed25519 key: the user's public nkey is the 32-byte public key and the
user's seed is the 32-byte private seed, each written in RFC 4648 base32 (no padding) after a
prefix that names the role, and followed by a CRC-16 of everything before it. So the identity
file a node already has is also its NATS credential; nothing new is generated or stored:

- public nkey: base32(``0x14 << 3`` (role *user*, prints as ``U``) + key + crc16) -- 56 chars;
- seed: base32(two prefix bytes (``S`` then the role ``U``) + seed + crc16) -- 58 chars, ``SU...``.

The seed is derived in memory when a connection is made and handed to nats-py only; it is
never written anywhere. The public nkey is what ``nats-server`` lists under ``users`` and what
the subject scheme (:mod:`rain_transport_nats.subjects`) carries as the proven identity.

This module does no I/O and imports neither nats-py nor asyncio; the encoding is the one nkeys
documents, done here with the nkeys package's CRC so the two always agree.
"""

from __future__ import annotations

import base64

import nkeys

from rain_envelopes.errors import KeyFileError
from rain_envelopes.keys import Identity

__all__ = ["is_user_nkey", "user_nkey", "user_public_key", "user_seed"]

_KEY_SIZE = 32
_PUBLIC_SIZE = 1 + _KEY_SIZE + 2  # prefix byte, key, crc16
#: The length of a user's public nkey as text.
NKEY_LENGTH = 56


def _b32(data: bytes) -> str:
    return base64.b32encode(data).decode("ascii").rstrip("=")


def user_nkey(public_key: bytes) -> str:
    """The NATS user nkey (``U...``, 56 characters) of a raw 32-byte Ed25519 public key.

    Raises KeyFileError when ``public_key`` is not 32 bytes.
    """
    if not isinstance(public_key, bytes | bytearray | memoryview) or len(public_key) != _KEY_SIZE:
        raise KeyFileError("an Ed25519 public key is 32 bytes")
    body = bytes([nkeys.PREFIX_BYTE_USER]) + bytes(public_key)
    return _b32(body + bytes(nkeys.crc16_checksum(body)))


def user_public_key(nkey: str) -> bytes:
    """The raw Ed25519 public key of a user nkey (``U...``).

    Raises KeyFileError when the text is not a user nkey or its checksum is wrong.
    """
    if not isinstance(nkey, str) or len(nkey) != NKEY_LENGTH or not nkey.startswith("U"):
        raise KeyFileError(f"{nkey!r} is not a NATS user nkey (56 characters starting with U)")
    try:
        raw = base64.b32decode(nkey + "=" * (-len(nkey) % 8))
    except ValueError:
        raise KeyFileError(f"{nkey!r} is not base32") from None
    if len(raw) != _PUBLIC_SIZE or raw[0] != nkeys.PREFIX_BYTE_USER:
        raise KeyFileError(f"{nkey!r} is not a NATS user nkey")
    if bytes(nkeys.crc16_checksum(raw[:-2])) != raw[-2:]:
        raise KeyFileError(f"{nkey!r} has a bad checksum")
    return raw[1:-2]


def is_user_nkey(text: str) -> bool:
    """True when ``text`` is a well-formed user nkey. Never raises."""
    try:
        user_public_key(text)
    except KeyFileError:
        return False
    return True


def user_seed(identity: Identity) -> str:
    """The nkeys user seed (``SU...``) of ``identity``: its Ed25519 seed in NATS' encoding.

    A secret: pass it to nats-py and drop it; never log or store it.
    """
    seed = bytes(identity.signing_key)  # pynacl: the 32-byte seed
    encoded: bytes = nkeys.encode_seed(seed, nkeys.PREFIX_BYTE_USER)
    return encoded.decode("ascii")
