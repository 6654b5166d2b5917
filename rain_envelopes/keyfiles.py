"""Key files: reading and writing the files that hold keys, apart from the key math.

:mod:`rain_envelopes.keys` is the math (keys, identities, signatures, the tables in memory) and
does no I/O; this module is everything that touches the file system for them, so the protocol
core stays testable without a disk. It reads and writes four kinds of file:

- the **secret key file**: a comment saying what it is, then ``ed25519-secret: <base64 seed>``;
- the **public key file** (``<secret file>.pub``): ``ed25519:<base64 key>``, safe to share;
- the **authorised-keys file** of a server: ``<public key> <identity name>`` per line;
- the **known-hosts file** of a client: ``<endpoint> <public key>`` per line.

The familiar methods (``Identity.load``/``save``, ``AuthorizedKeys.load``/``reload``/``save``,
``KnownHosts.load``/``save``, ``keys.load_public_key``) stay where users know them and hand over
to the functions here; call either.

Invariants:

- A secret key file is created with mode 0600 in the same system call that creates it (never
  written and then chmod-ed), and a secret key file that group or others may read or write is
  refused on load (trap 12 in RELIABILITY.md: other tools write keys world-readable).
- A public key file given where the secret one belongs (a ``.pub`` passed as ``--key``) is
  named as a public key, with the secret file's name when it is next to it, before its mode
  is judged: a ``.pub`` is world-readable by design, so "chmod 600" would be wrong advice.
- Modes are checked on the opened descriptor (``fstat``), so the file checked is the file read;
  a FIFO planted at a secret key's path cannot hang the reader (``O_NONBLOCK``).
- Every file is written to a temporary name (``O_EXCL``, its final mode from creation, synced)
  and renamed or hard-linked into place, so a crash never leaves a half-written key file.
- An authorised-keys file that group or others may write is refused on load and reload: whoever
  can write it decides who gets in (issue 7).
- Nothing secret appears in an error message.

Every failure to read, parse or write one of these files raises :class:`KeyFileError`, naming the
file (and the line, for table files) and what to do about it.
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets
import stat
from collections.abc import Iterable
from pathlib import Path

import nacl.signing

from .errors import KeyFileError
from .keys import (
    _KEY_SIZE,
    AuthorizedKeys,
    Identity,
    KnownHosts,
    _checked_endpoint,
    _checked_name,
    format_public_key,
    parse_public_key,
)

__all__ = [
    "load_authorized_keys",
    "load_identity",
    "load_known_hosts",
    "load_public_key",
    "public_key_argument",
    "reload_authorized_keys",
    "save_authorized_keys",
    "save_identity",
    "save_known_hosts",
]

PathArg = str | os.PathLike[str]

_SECRET_LABEL = "ed25519-secret:"
_PUBLIC_LABEL = "ed25519:"
# Key files are a few lines; tables are a few thousand. Anything far larger is not ours.
_MAX_KEY_FILE = 64 * 1024
_MAX_TABLE_FILE = 16 * 1024 * 1024
_UNSAFE_BITS = stat.S_IRWXG | stat.S_IRWXO
# Public keys may be read by anyone; only writing a table of who may connect is a privilege.
_TABLE_UNSAFE_BITS = stat.S_IWGRP | stat.S_IWOTH


def _as_path(path: PathArg | None) -> Path | None:
    return Path(path) if path is not None else None


# ------------------------------------------------------------------------------ key files


def load_public_key(path: PathArg) -> bytes:
    """Read a public key file: the first token of its first line that is not blank or a comment.

    (Also ``rain_envelopes.keys.load_public_key``.)

    Raises KeyFileError when the file is missing or unreadable or holds no valid public key.
    """
    file = Path(path)
    for number, line in enumerate(_read_text(file, "public key file", _MAX_KEY_FILE), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.startswith(_SECRET_LABEL):
            raise KeyFileError(
                f"{file}:{number}: this is a secret key file, not a public one; keep it private"
                " and give out the matching .pub file instead"
            )
        try:
            return parse_public_key(stripped.split()[0])
        except KeyFileError as exc:
            raise KeyFileError(f"{file}:{number}: {exc}") from None
    raise KeyFileError(f"{file}: no public key in the file (expected a line 'ed25519:<base64>')")


def public_key_argument(value: PathArg, source: str) -> bytes:
    """A public key given as ``ed25519:...`` text or as the path of its ``.pub`` file: how the
    ``rain`` command (``--server-key``, ``rain authorize``) and the blocking API take one.

    Text that starts with ``ed25519:`` is the key; otherwise a path that exists is read as a
    public key file, and other text is tried as the key without its (optional) prefix. Raises
    KeyFileError for a bad key or file; a path that does not exist is reported as a missing
    file, named with ``source`` (the option or argument it came from), not as text that is not
    base64. A path object is always a file.
    """
    if isinstance(value, os.PathLike):
        return load_public_key(value)
    if value.strip().lower().startswith(_PUBLIC_LABEL):
        return parse_public_key(value)
    if os.path.lexists(value):
        return load_public_key(value)
    try:
        return parse_public_key(value)
    except KeyFileError:
        raise KeyFileError(
            f"{source}: public key file {value} does not exist (and it is not an"
            " 'ed25519:...' key either)"
        ) from None


def load_identity(path: PathArg) -> Identity:
    """Read a secret key file written by :func:`save_identity` (``Identity.load``).

    Raises KeyFileError when the file is missing, unreadable or malformed (naming the line),
    or when its permissions let group or others read or write it (naming the mode and the
    ``chmod 600`` that fixes it).
    """
    file = Path(path)
    text = _read_secret_text(file)
    seed: bytes | None = None
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if not stripped.startswith(_SECRET_LABEL):
            raise KeyFileError(
                f"{file}:{number}: expected '{_SECRET_LABEL} <base64>' (is this a RAIN secret"
                " key file?)"
            )
        if seed is not None:
            raise KeyFileError(f"{file}:{number}: a second secret key; a file holds one key")
        value = stripped[len(_SECRET_LABEL) :].strip()
        try:
            seed = base64.b64decode(value.encode("ascii"), validate=True)
        except (UnicodeEncodeError, binascii.Error):
            # The message must not echo the value: it is (nearly) the secret.
            raise KeyFileError(f"{file}:{number}: the secret key is not valid base64") from None
        if len(seed) != _KEY_SIZE:
            raise KeyFileError(
                f"{file}:{number}: the secret key decodes to {len(seed)} bytes,"
                f" expected {_KEY_SIZE}"
            )
    if seed is None:
        raise KeyFileError(f"{file}: no '{_SECRET_LABEL}' line; not a RAIN secret key file")
    return Identity(nacl.signing.SigningKey(seed))

def save_identity(identity: Identity, path: PathArg, *, overwrite: bool = False) -> None:
    """Write the secret key file ``path`` (mode 0600) and the public key file ``path.pub``
    (``Identity.save``).

    Each file is written to a temporary name in the same folder and renamed into place, so a
    crash never leaves a half-written key under either name; the secret is created 0600 by
    the same ``open`` that creates it. Raises KeyFileError when either file already exists
    and ``overwrite`` is false (nothing is written then), or when a file cannot be written.
    """
    secret_file = Path(path)
    public_file = Path(f"{secret_file}.pub")
    if not overwrite:
        for existing in (secret_file, public_file):
            if os.path.lexists(existing):
                raise KeyFileError(
                    f"refusing to overwrite existing key file {existing}; delete it first or"
                    " pass overwrite=True"
                )
    seed = base64.b64encode(identity.signing_key.encode()).decode("ascii")
    secret_text = (
        "# RAIN Ed25519 secret key: this file IS the node's identity.\n"
        "# Keep it private (mode 0600); anyone who can read it can act as this node.\n"
        f"# public key: {identity.public_key_text}\n"
        f"{_SECRET_LABEL} {seed}\n"
    )
    public_text = f"{identity.public_key_text} RAIN node public key (safe to share)\n"
    _write_file(secret_file, secret_text, 0o600, overwrite=overwrite)
    _write_file(public_file, public_text, 0o644, overwrite=overwrite)


# ------------------------------------------------------------------------------ tables


def load_authorized_keys(path: PathArg) -> AuthorizedKeys:
    """Read an authorised-keys file (``AuthorizedKeys.load``).

    Raises KeyFileError naming the file and line for a bad line or a duplicate key, naming
    both lines for two keys with one Curve25519 form (a key and its mirror), or when the file
    is missing, unreadable, or writable by group or others (naming the ``chmod`` that fixes
    it).
    """
    file = Path(path)
    table, lines = _parse_authorized(file)
    return AuthorizedKeys._from_table(table, path=file, lines=lines)


def reload_authorized_keys(keys: AuthorizedKeys) -> set[bytes]:
    """Re-read ``keys.path`` into ``keys`` and return the Ed25519 keys that lost their
    authorisation (``AuthorizedKeys.reload``, which documents what counts as lost).

    Raises KeyFileError when there is no path or the file is bad (as for
    :func:`load_authorized_keys`); the old entries stay then.
    """
    file = _as_path(keys.path)
    if file is None:
        raise KeyFileError("this authorised-keys table was not loaded from a file")
    table, lines = _parse_authorized(file)
    return keys._replace(table, lines)


def save_authorized_keys(keys: AuthorizedKeys, path: PathArg | None = None) -> None:
    """Write the table to ``path`` (default: ``keys.path``), replacing the file atomically
    (``AuthorizedKeys.save``).

    An existing file keeps its permission bits, less write access for group and others
    (which loading would refuse). Raises KeyFileError when there is no path or the file
    cannot be written.
    """
    target = Path(path) if path is not None else _as_path(keys.path)
    if target is None:
        raise KeyFileError("no path to save the authorised keys to")
    lines = ["# RAIN authorised keys: <public key> <identity name>"]
    lines += [f"{format_public_key(key)} {name}" for key, name in keys.items()]
    mode = _existing_mode(target, 0o644) & ~_TABLE_UNSAFE_BITS
    _write_file(target, "\n".join(lines) + "\n", mode, overwrite=True)


def load_known_hosts(path: PathArg) -> KnownHosts:
    """Read a known-hosts file (``KnownHosts.load``).

    Raises KeyFileError naming the file and line for a bad line or an endpoint listed twice,
    or when the file is missing or unreadable.
    """
    file = Path(path)
    hosts: dict[str, bytes] = {}
    first_seen: dict[str, int] = {}
    for number, first, second in _table_lines(file, "known-hosts file"):
        where = f"{file}:{number}"
        endpoint = _checked_endpoint(first, where)
        try:
            key = parse_public_key(second)
        except KeyFileError as exc:
            raise KeyFileError(f"{where}: {exc}") from None
        if endpoint in hosts:
            raise KeyFileError(
                f"{where}: {endpoint} is already pinned on line {first_seen[endpoint]}"
            )
        hosts[endpoint] = key
        first_seen[endpoint] = number
    return KnownHosts(hosts, path=file)


def save_known_hosts(hosts: KnownHosts, path: PathArg | None = None) -> None:
    """Write the pins to ``path`` (default: ``hosts.path``), replacing the file atomically
    (``KnownHosts.save``).

    Raises KeyFileError when there is no path or the file cannot be written.
    """
    target = Path(path) if path is not None else _as_path(hosts.path)
    if target is None:
        raise KeyFileError("no path to save the known hosts to")
    lines = ["# RAIN known hosts: <endpoint> <server public key>"]
    lines += [f"{endpoint} {format_public_key(key)}" for endpoint, key in hosts.items()]
    _write_file(target, "\n".join(lines) + "\n", _existing_mode(target, 0o644), overwrite=True)


# ------------------------------------------------------------------------------ helpers


def _parse_authorized(file: Path) -> tuple[dict[bytes, str], dict[bytes, str]]:
    """``(key -> name, key -> "file:line")``; KeyFileError naming the line for a bad one."""
    table: dict[bytes, str] = {}
    first_seen: dict[bytes, int] = {}
    for number, first, second in _table_lines(
        file, "authorised-keys file", refuse_bits=_TABLE_UNSAFE_BITS
    ):
        where = f"{file}:{number}"
        try:
            key = parse_public_key(first)
        except KeyFileError as exc:
            raise KeyFileError(f"{where}: {exc}") from None
        name = _checked_name(second, where)
        if key in table:
            raise KeyFileError(
                f"{where}: key {format_public_key(key)} is already listed on line {first_seen[key]}"
            )
        table[key] = name
        first_seen[key] = number
    return table, {key: f"{file}:{number}" for key, number in first_seen.items()}


def _table_lines(file: Path, what: str, *, refuse_bits: int = 0) -> Iterable[tuple[int, str, str]]:
    """``(line number, first field, second field)`` for each entry of a two-column table file.

    Raises KeyFileError naming the line when it does not have exactly two fields (a trailing
    ``# comment`` is allowed), or naming the mode when it has any of ``refuse_bits``.
    """
    lines = _read_text(file, what, _MAX_TABLE_FILE, refuse_bits=refuse_bits)
    for number, line in enumerate(lines, 1):
        fields = line.split(None, 2)
        if not fields or fields[0].startswith("#"):
            continue
        where = f"{file}:{number}"
        if len(fields) < 2 or (len(fields) == 3 and not fields[2].startswith("#")):
            raise KeyFileError(f"{where}: expected two fields, got {line.strip()!r}")
        yield number, fields[0], fields[1]


def _read_text(file: Path, what: str, limit: int, *, refuse_bits: int = 0) -> list[str]:
    """The lines of a UTF-8 file; KeyFileError saying what is wrong with it otherwise.

    A file whose mode has any of ``refuse_bits`` is refused; the mode is read from the opened
    file (``fstat``), so the file checked is the file read.
    """
    try:
        with open(file, "rb") as handle:
            mode = stat.S_IMODE(os.fstat(handle.fileno()).st_mode)
            if mode & refuse_bits:
                raise KeyFileError(
                    f"{what} {file} has mode {mode:04o}: {_who_may(mode & refuse_bits)} may"
                    " change it, and so decide who may connect. Remove their write access"
                    f" with `chmod go-w {file}`"
                )
            data = handle.read(limit + 1)
    except FileNotFoundError:
        raise KeyFileError(f"{what} {file} does not exist") from None
    except OSError as exc:
        raise KeyFileError(f"cannot read {what} {file}: {exc.strerror or exc}") from None
    return _decode(data, file, what, limit).splitlines()


def _read_secret_text(file: Path) -> str:
    """Read a secret key file, refusing it if its permissions expose it.

    The mode is checked on the opened descriptor (``fstat``), not the name, so the file checked
    is the file read.
    """
    # O_NONBLOCK so that a FIFO planted at the path cannot hang us before the type check.
    flags = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(file, flags)
    except FileNotFoundError:
        raise KeyFileError(
            f"secret key file {file} does not exist; create one with `rain keygen`"
        ) from None
    except OSError as exc:
        raise KeyFileError(f"cannot read secret key file {file}: {exc.strerror or exc}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise KeyFileError(f"secret key file {file} is not a regular file")
        chunks: list[bytes] = []
        size = 0
        while size <= _MAX_KEY_FILE:
            chunk = os.read(fd, _MAX_KEY_FILE + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        data = b"".join(chunks)
    except OSError as exc:
        raise KeyFileError(f"cannot read secret key file {file}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    # What the file is comes before its mode: a .pub given for the secret key is readable by
    # everyone by design, and "chmod 600" would be the wrong advice (issue 10).
    if _holds_public_key(data):
        raise _public_not_secret(file)
    mode = stat.S_IMODE(info.st_mode)
    if mode & _UNSAFE_BITS:
        raise KeyFileError(
            f"secret key file {file} has mode {mode:04o}: {_who_may(mode)} may use it."
            f" Restrict it to its owner with `chmod 600 {file}`"
        )
    return _decode(data, file, "secret key file", _MAX_KEY_FILE)


def _holds_public_key(data: bytes) -> bool:
    """Whether the first line that is not blank or a comment is a public key line."""
    for raw in data[:_MAX_KEY_FILE].splitlines():
        line = raw.decode("utf-8", "replace").strip()
        if line and not line.startswith("#"):
            return line[: len(_PUBLIC_LABEL)].lower() == _PUBLIC_LABEL
    return False


def _public_not_secret(file: Path) -> KeyFileError:
    secret = file.with_suffix("") if file.suffix == ".pub" else None
    hint = (
        f"; the secret key file is {secret}, the one `rain keygen` wrote next to it"
        if secret is not None and secret.is_file()
        else "; give the secret key file `rain keygen` wrote (the same name without .pub)"
    )
    return KeyFileError(
        f"{file} is a public key file, not a secret key file: it says who a node is, but"
        f" cannot act as it{hint}"
    )


def _who_may(mode: int) -> str:
    parts = []
    for who, read, write, execute in (
        ("group", stat.S_IRGRP, stat.S_IWGRP, stat.S_IXGRP),
        ("others", stat.S_IROTH, stat.S_IWOTH, stat.S_IXOTH),
    ):
        rights = [
            verb for bit, verb in ((read, "read"), (write, "write"), (execute, "run")) if mode & bit
        ]
        if rights:
            parts.append(f"{who} ({'/'.join(rights)})")
    return " and ".join(parts)


def _decode(data: bytes, file: Path, what: str, limit: int) -> str:
    if len(data) > limit:
        raise KeyFileError(f"{what} {file} is larger than {limit} bytes; is it the right file?")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise KeyFileError(f"{what} {file} is not UTF-8 text (byte {exc.start})") from None


def _existing_mode(file: Path, default: int) -> int:
    try:
        return stat.S_IMODE(os.stat(file).st_mode)
    except OSError:
        return default


def _write_file(file: Path, text: str, mode: int, *, overwrite: bool) -> None:
    """Write ``text`` to a new file with ``mode`` from creation, then move it to ``file``.

    The temporary file is created with O_EXCL and ``mode`` (so a secret is never readable by
    others, not even for an instant), synced, then renamed over ``file`` (``overwrite``) or
    hard-linked to it, which fails if ``file`` exists. Raises KeyFileError.
    """
    temp = file.with_name(f".{file.name}.{secrets.token_hex(6)}.tmp")
    try:
        _create_exclusive(temp, text, mode)
        try:
            if overwrite:
                os.replace(temp, file)
            else:
                _link_new(temp, file, mode, text)
        finally:
            temp.unlink(missing_ok=True)
    except FileExistsError:
        raise KeyFileError(
            f"refusing to overwrite existing key file {file}; delete it first or pass"
            " overwrite=True"
        ) from None
    except OSError as exc:
        raise KeyFileError(f"cannot write {file}: {exc.strerror or exc}") from None


def _create_exclusive(file: Path, text: str, mode: int) -> None:
    """Create ``file`` (never an existing one) with ``mode`` from the start, write, sync."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(file, flags, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(text.encode("utf-8"))
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        file.unlink(missing_ok=True)
        raise


def _link_new(temp: Path, file: Path, mode: int, text: str) -> None:
    """Give ``temp`` the name ``file`` only if nothing has that name (atomic no-clobber)."""
    try:
        os.link(temp, file)
    except FileExistsError:
        raise
    except OSError:
        # Some filesystems have no hard links: fall back to creating the file in place, still
        # exclusively and with its mode from the start.
        _create_exclusive(file, text, mode)
