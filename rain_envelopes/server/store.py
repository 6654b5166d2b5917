"""The server's persistent state: parameter values and the exactly-once SET window, in SQLite.

A *state file* keeps what a server must not forget across a restart (issue 8, items 3 and 4;
DESIGN.md section 11):

- the last value set on each writable parameter, restored before the server serves again
  (like EPICS autosave);
- for every recent ``set``: (proven identity, command id) -> (fingerprint of the request, the
  encoded response), so a retry of a set that was applied, even by a server that was killed
  before it could answer, is answered with the first response and not applied again.

::

    with StateStore.open("state.db", durability="sync") as store:
        restored = store.load_values()                 # {"sampling": StoredValue(...)}
        record = store.lookup_set("alice@irf", "c-17")  # None: not seen yet
        store.apply_set("alice@irf", "c-17", "sampling", 2.5, fingerprint, response, time.time())

Guarantees and invariants:

- **Atomic**: :meth:`StateStore.apply_set` writes the value, the de-duplication record and the
  pruning of the window in one SQLite transaction: after any failure or crash either all of it
  is in the file or none of it is.
- **Durability** (``durability=``): once ``apply_set`` has returned, the set survives a crash
  of the server process (``kill -9``) in both modes, because SQLite has handed the committed
  transaction to the operating system. ``"sync"`` (``PRAGMA synchronous=FULL``) also makes it
  survive a power loss or kernel crash: every commit waits for the write-ahead log to reach the
  disk (an ``fsync`` per set). ``"batch"`` (``synchronous=NORMAL``, which in WAL mode syncs
  only at checkpoints) may lose the most recently committed sets on power loss or a kernel crash,
  never on a process crash, and the file stays consistent either way (never half a
  transaction). Choose ``"batch"`` where a power cut may forget the last second of settings.
- **Bounded**: the window keeps, per identity, at most ``max_records`` records (the newest), so
  one identity's flood of sets never evicts another identity's records; and no record older than
  ``max_age`` seconds outlives the next set or :meth:`StateStore.prune`. Records are aged by the
  wall clock (``now`` is seconds since the Unix epoch, as ``time.time()`` gives), because they
  must outlive a restart. ``max_age`` should exceed the longest ``#expires`` the server accepts:
  a retry older than its expiry is refused anyway, so the record is not needed after that.
- **Loud**: a file that cannot be opened for reading and writing, is not a SQLite database, is
  another program's database, is corrupt (``PRAGMA quick_check`` at open), is from a newer
  format version, or is in use by another process raises :class:`StateStoreError`, which names
  the file and says what to do. Nothing is ever reset silently.
- **One owner**: the file is held in SQLite's exclusive locking mode while open, so two servers
  can never share one state file (the second gets a StateStoreError at open). The price: other
  programs cannot read it while the server runs (copy it after the server stops).
- A new file is created with mode 0600 (SQLite gives its ``-wal`` file the same mode).
- The format version is ``PRAGMA user_version`` (:data:`FORMAT_VERSION`), and
  ``PRAGMA application_id`` marks the file as RAIN's (:data:`APPLICATION_ID`).

Threads. The store is synchronous and thread-safe (one lock serialises every call; the SQLite
connection may be used from any thread). The server is meant to call it from **one dedicated
worker thread** (``ThreadPoolExecutor(max_workers=1)``), not from the event loop: in ``"sync"``
mode every set waits for an ``fsync``, which takes milliseconds on a real disk and would stall
every session, and a single worker keeps the commits in submission order. ``open``,
``load_values`` and ``close`` run before serving and after it stops, so calling them directly
is fine.

How :class:`~rain_envelopes.server.server.Server` uses it (server.py's docstring has the whole
story): ``open`` and ``load_values`` at ``start()``, then the stored values are applied through
the setters before serving; for a set with an id, ``lookup_set`` when the in-memory window
misses; :meth:`StateStore.begin_set` under the parameter's set lock just before a setter runs;
``apply_set`` with the outcome (``parameter=None`` for a parameter that opted out of
persistence, or a failure) right after it, with no await in between, so the single worker
commits the sets of one parameter in the order they were applied; ``store_value`` for a set
without an id; ``close`` when the server has closed.

In-progress records. A plugin setter acts on hardware outside the transaction, so a crash after
the setter ran but before ``apply_set`` committed would leave a set applied but not recorded,
and its retry would apply it again. ``begin_set`` closes that gap: it commits a record with an
empty response (``SetRecord.in_progress``) before the setter is called, and ``apply_set``
replaces it with the outcome. After a crash in between, ``lookup_set`` finds the in-progress
record and the server answers the retry with "outcome unknown" instead of applying it twice.
The price is a second commit (a second fsync in ``"sync"`` mode) per set that runs a setter.
"""

from __future__ import annotations

import os
import sqlite3
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, NamedTuple

import orjson

from ..errors import StateStoreError
from .samples import format_timestamp

__all__ = [
    "APPLICATION_ID",
    "FORMAT_VERSION",
    "Durability",
    "SetRecord",
    "StateStore",
    "StateStoreError",
    "StoredValue",
]

#: ``PRAGMA user_version`` of the files this code writes. Bump it, and add a migration from the
#: previous version in ``_initialise``, whenever the schema changes.
FORMAT_VERSION = 1
#: ``PRAGMA application_id``: "RAIN" in ASCII; tells a RAIN state file from other SQLite files.
APPLICATION_ID = 0x5241494E

Durability = Literal["sync", "batch"]
#: The response of a set record that has begun but has no outcome yet.
_IN_PROGRESS = b""

_SCHEMA = (
    # The last value of each parameter, as JSON text (readable with the sqlite3 shell).
    """CREATE TABLE parameter_value (
        name TEXT PRIMARY KEY,
        value TEXT NOT NULL,
        timestamp TEXT NOT NULL,
        seq INTEGER NOT NULL
    )""",
    # The exactly-once window. ``n`` numbers one identity's records 1, 2, 3, ... so the count
    # bound is one indexed range delete per set.
    """CREATE TABLE set_record (
        identity TEXT NOT NULL,
        command_id TEXT NOT NULL,
        n INTEGER NOT NULL,
        created REAL NOT NULL,
        fingerprint BLOB NOT NULL,
        response BLOB NOT NULL,
        PRIMARY KEY (identity, command_id)
    )""",
    "CREATE UNIQUE INDEX set_record_order ON set_record (identity, n)",
    "CREATE INDEX set_record_age ON set_record (created)",
    # The last ``n`` given out per identity.
    """CREATE TABLE set_window (
        identity TEXT PRIMARY KEY,
        last_n INTEGER NOT NULL
    )""",
)

_RESET_ADVICE = (
    "The server will not start on it rather than lose its settings: restore the file from a "
    "backup, or move it aside to start again from the plugins' initial values"
)


class StoredValue(NamedTuple):
    """A parameter's last stored value: the JSON value, its sample timestamp and seq."""

    value: Any
    timestamp: str
    seq: int


class SetRecord(NamedTuple):
    """What a set asked for (its fingerprint) and the response it was answered with; an empty
    ``response`` marks a set that began (:meth:`StateStore.begin_set`) with no outcome yet."""

    fingerprint: bytes
    response: bytes

    @property
    def in_progress(self) -> bool:
        """True when the set began but its outcome was never recorded."""
        return not self.response


class StateStore:
    """A server's state file. Build with :meth:`open`; see the module docstring."""

    def __init__(
        self,
        connection: sqlite3.Connection,
        path: Path,
        *,
        durability: Durability,
        max_records: int,
        max_age: float,
    ) -> None:
        self._db: sqlite3.Connection | None = connection
        self.path = path
        self.durability: Durability = durability
        self.max_records = max_records
        self.max_age = max_age
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ opening and closing

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        durability: Durability = "sync",
        max_records: int = 1024,
        max_age: float = 86400.0,
    ) -> StateStore:
        """Open the state file at ``path``, creating it (mode 0600) when it does not exist.

        ``max_records`` bounds the SET window per identity, ``max_age`` (seconds) by age.
        Raises StateStoreError when the file cannot be used, ValueError for bad arguments.
        """
        if durability not in ("sync", "batch"):
            raise ValueError(f"durability must be 'sync' or 'batch', not {durability!r}")
        if max_records < 1:
            raise ValueError(f"max_records must be at least 1, not {max_records!r}")
        if not max_age > 0:
            raise ValueError(f"max_age must be a positive number of seconds, not {max_age!r}")
        file = Path(path)
        _create_private(file)
        if not os.access(file, os.R_OK | os.W_OK):
            # Checked here: SQLite would open a read-only file read-only, and fail only at the
            # first set.
            raise StateStoreError(
                f"state file {file} is not readable and writable by this user. Give the "
                "server's user read and write access to it (mode 0600)",
                path=file,
            )
        try:
            connection = sqlite3.connect(
                file, timeout=0, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise _open_error(file, exc) from None
        try:
            _initialise(connection, file, durability)
        except BaseException as exc:
            connection.close()
            if isinstance(exc, sqlite3.Error):
                raise _open_error(file, exc) from None
            raise
        return cls(
            connection, file, durability=durability, max_records=max_records, max_age=max_age
        )

    def close(self) -> None:
        """Close the file (checkpointing the log into it). Idempotent."""
        with self._lock:
            if self._db is not None:
                db, self._db = self._db, None
                try:
                    db.close()
                except sqlite3.Error as exc:
                    raise self._error("could not be closed cleanly", exc) from None

    @property
    def closed(self) -> bool:
        return self._db is None

    def __enter__(self) -> StateStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._db is None else self.durability
        return f"<StateStore {str(self.path)!r} {state}>"

    # ------------------------------------------------------------------ parameter values

    def load_values(self) -> dict[str, StoredValue]:
        """Every stored parameter value, by parameter name."""
        with self._connection() as db:
            rows = db.execute("SELECT name, value, timestamp, seq FROM parameter_value").fetchall()
        values: dict[str, StoredValue] = {}
        for name, text, timestamp, seq in rows:
            try:
                value = orjson.loads(text)
            except orjson.JSONDecodeError as exc:
                raise StateStoreError(
                    f"state file {self.path}: the stored value of parameter {name!r} is not "
                    f"JSON ({exc}). {_RESET_ADVICE}.",
                    path=self.path,
                ) from None
            values[name] = StoredValue(value, timestamp, seq)
        return values

    def store_value(self, parameter: str, value: Any, timestamp: str, seq: int) -> None:
        """Store ``value`` as the last value of ``parameter`` (a set without a command id).

        Raises TypeError when ``value`` is not JSON, StateStoreError when the file fails.
        """
        text = _encode(value, parameter)
        with self._transaction() as db:
            _upsert_value(db, parameter, text, timestamp, seq)

    # ------------------------------------------------------------------ exactly-once SET

    def lookup_set(self, identity: str, command_id: str) -> SetRecord | None:
        """The record of the set ``command_id`` from ``identity``, or None when not in the window.

        Compare its ``fingerprint`` with the repeat's: the same id with another request is
        refused (64), a true repeat is answered with ``response``.
        """
        with self._connection() as db:
            row = db.execute(
                "SELECT fingerprint, response FROM set_record "
                "WHERE identity = ? AND command_id = ?",
                (identity, command_id),
            ).fetchone()
        return None if row is None else SetRecord(bytes(row[0]), bytes(row[1]))

    def apply_set(
        self,
        identity: str,
        command_id: str,
        parameter: str | None,
        value: Any,
        fingerprint: bytes,
        response: bytes,
        now: float,
        *,
        timestamp: str | None = None,
        seq: int | None = None,
    ) -> None:
        """Record an applied set, all in one transaction: the new value of ``parameter`` (none
        when ``parameter`` is None: a parameter that does not persist), the record
        (``identity``, ``command_id``) -> (``fingerprint``, ``response``) created at ``now``
        (seconds since the Unix epoch), and the pruning of the window.

        ``timestamp`` and ``seq`` describe the sample the value became; they default to ``now``
        formatted as a sample timestamp and the stored seq plus one. If the window already holds
        a finished record for this id, the first record is kept; an in-progress one
        (:meth:`begin_set`) is completed in place. Raises TypeError when ``value`` is not
        JSON, ValueError for an empty ``response``, and StateStoreError when the file fails;
        either way nothing was stored.
        """
        text = None if parameter is None else _encode(value, parameter)
        if timestamp is None:
            timestamp = format_timestamp(datetime.fromtimestamp(now, UTC))
        if not response:
            raise ValueError("a set's response cannot be empty (that marks one in progress)")
        with self._transaction() as db:
            if parameter is not None and text is not None:
                if seq is None:
                    row = db.execute(
                        "SELECT seq FROM parameter_value WHERE name = ?", (parameter,)
                    ).fetchone()
                    seq = 1 if row is None else int(row[0]) + 1
                _upsert_value(db, parameter, text, timestamp, seq)
            # The outcome replaces the set's "in progress" record (begin_set), keeping its
            # place in the window; a finished record is never replaced.
            updated = db.execute(
                "UPDATE set_record SET response = ? "
                "WHERE identity = ? AND command_id = ? AND response = ?",
                (response, identity, command_id, _IN_PROGRESS),
            ).rowcount
            if not updated:
                self._insert_record(db, identity, command_id, fingerprint, response, now)

    def begin_set(self, identity: str, command_id: str, fingerprint: bytes, now: float) -> None:
        """Record that the set ``command_id`` is about to be applied (before the setter runs).

        Until :meth:`apply_set` records its outcome, :meth:`lookup_set` returns a record whose
        ``in_progress`` is true: a server that was killed in between answers a retry with
        "outcome unknown" instead of applying the set a second time. Raises StateStoreError
        when the file fails (then nothing was recorded).
        """
        with self._transaction() as db:
            self._insert_record(db, identity, command_id, fingerprint, _IN_PROGRESS, now)

    def _insert_record(
        self,
        db: sqlite3.Connection,
        identity: str,
        command_id: str,
        fingerprint: bytes,
        response: bytes,
        now: float,
    ) -> None:
        if db.execute(
            "SELECT 1 FROM set_record WHERE identity = ? AND command_id = ?",
            (identity, command_id),
        ).fetchone() is not None:
            return  # the first record is kept, and a repeat takes no place in the window
        db.execute(
            "INSERT INTO set_window (identity, last_n) VALUES (?, 1) "
            "ON CONFLICT (identity) DO UPDATE SET last_n = last_n + 1",
            (identity,),
        )
        (last_n,) = db.execute(
            "SELECT last_n FROM set_window WHERE identity = ?", (identity,)
        ).fetchone()
        db.execute(
            "INSERT INTO set_record "
            "(identity, command_id, n, created, fingerprint, response) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (identity, command_id, last_n, now, fingerprint, response),
        )
        db.execute(
            "DELETE FROM set_record WHERE identity = ? AND n <= ?",
            (identity, last_n - self.max_records),
        )
        db.execute("DELETE FROM set_record WHERE created < ?", (now - self.max_age,))

    def prune(self, now: float) -> int:
        """Enforce both window bounds on every identity (``apply_set`` does it for its own
        identity, and by age for all). Returns how many records were dropped."""
        with self._transaction() as db:
            dropped = db.execute(
                "DELETE FROM set_record WHERE created < ?", (now - self.max_age,)
            ).rowcount
            dropped += db.execute(
                "DELETE FROM set_record WHERE n <= (SELECT last_n FROM set_window "
                "WHERE set_window.identity = set_record.identity) - ?",
                (self.max_records,),
            ).rowcount
            # An identity with no records left starts numbering again from 1.
            db.execute(
                "DELETE FROM set_window WHERE NOT EXISTS (SELECT 1 FROM set_record "
                "WHERE set_record.identity = set_window.identity)"
            )
        return dropped

    # ------------------------------------------------------------------ internals

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._db is None:
                raise StateStoreError(f"state file {self.path} is closed", path=self.path)
            try:
                yield self._db
            except sqlite3.Error as exc:
                raise self._error("could not be read or written", exc) from None

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._connection() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise

    def _error(self, what: str, exc: sqlite3.Error) -> StateStoreError:
        return StateStoreError(
            f"state file {self.path} {what}: {exc}. Check the disk (space, permissions, "
            "errors); if the file is damaged, restore it from a backup or move it aside",
            path=self.path,
        )


def _encode(value: Any, parameter: str) -> str:
    try:
        return orjson.dumps(value).decode()
    except orjson.JSONEncodeError as exc:
        raise TypeError(f"the value of parameter {parameter!r} is not JSON: {exc}") from None


def _upsert_value(
    db: sqlite3.Connection, parameter: str, text: str, timestamp: str, seq: int
) -> None:
    db.execute(
        "INSERT INTO parameter_value (name, value, timestamp, seq) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (name) DO UPDATE SET value = excluded.value, "
        "timestamp = excluded.timestamp, seq = excluded.seq",
        (parameter, text, timestamp, seq),
    )


def _create_private(file: Path) -> None:
    """Create ``file`` empty with mode 0600 unless something is already there."""
    try:
        if stat.S_ISDIR(file.stat().st_mode):
            raise StateStoreError(
                f"state file {file} is a directory; point the state setting at a file (it "
                "is created when missing)",
                path=file,
            )
        return
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise StateStoreError(
            f"state file {file} cannot be examined: {exc.strerror}", path=file
        ) from None
    try:
        fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return  # someone else created it meanwhile; open it as any existing file
    except OSError as exc:
        raise StateStoreError(
            f"state file {file} cannot be created: {exc.strerror}. Check that its directory "
            "exists and is writable by the server",
            path=file,
        ) from None
    os.close(fd)


def _initialise(db: sqlite3.Connection, file: Path, durability: Durability) -> None:
    """Check the file is a usable RAIN state file and prepare it; raises StateStoreError or
    sqlite3.Error (turned into StateStoreError by the caller)."""
    # Exclusive: the locks taken below are held until close, so no other process can use the
    # file meanwhile; in WAL mode it also means no shared-memory file.
    db.execute("PRAGMA locking_mode = EXCLUSIVE")
    # Check before writing anything, so another program's database is never touched.
    _check_format(db, file)
    (mode,) = db.execute("PRAGMA journal_mode = WAL").fetchone()
    if str(mode).lower() != "wal":
        raise StateStoreError(
            f"state file {file} cannot use SQLite's write-ahead log (journal mode {mode!r}); "
            "put it on a local file system",
            path=file,
        )
    db.execute("BEGIN IMMEDIATE")  # takes the write lock now: a second server fails here
    try:
        if _check_format(db, file):
            for statement in _SCHEMA:
                db.execute(statement)
            db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            db.execute(f"PRAGMA user_version = {FORMAT_VERSION}")
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    problems = [row[0] for row in db.execute("PRAGMA quick_check").fetchall()]
    if problems != ["ok"]:
        raise StateStoreError(
            f"state file {file} is corrupt ({'; '.join(map(str, problems[:3]))}). "
            f"{_RESET_ADVICE}.",
            path=file,
        )
    db.execute(f"PRAGMA synchronous = {'FULL' if durability == 'sync' else 'NORMAL'}")


def _check_format(db: sqlite3.Connection, file: Path) -> bool:
    """True when the file is new (empty), False when it is a current RAIN state file."""
    (application_id,) = db.execute("PRAGMA application_id").fetchone()
    (version,) = db.execute("PRAGMA user_version").fetchone()
    (objects,) = db.execute("SELECT count(*) FROM sqlite_master").fetchone()
    if application_id == 0 and version == 0 and objects == 0:
        return True
    if application_id != APPLICATION_ID:
        raise StateStoreError(
            f"state file {file} is a SQLite database of another program, not a RAIN state "
            "file. Point the state setting at another file; this one is left untouched",
            path=file,
        )
    if version > FORMAT_VERSION:
        raise StateStoreError(
            f"state file {file} has format version {version}, newer than this RAIN "
            f"understands ({FORMAT_VERSION}). Run the RAIN version that wrote it, or move the "
            "file aside to start again from the plugins' initial values",
            path=file,
        )
    if version != FORMAT_VERSION:
        raise StateStoreError(
            f"state file {file} has format version {version}, which this RAIN cannot read "
            f"(it reads {FORMAT_VERSION}). {_RESET_ADVICE}.",
            path=file,
        )
    return False


def _open_error(file: Path, exc: sqlite3.Error) -> StateStoreError:
    name = getattr(exc, "sqlite_errorname", "")
    if name.startswith("SQLITE_BUSY") or name.startswith("SQLITE_LOCKED"):
        return StateStoreError(
            f"state file {file} is in use by another process (another server with the same "
            "state file?). Stop it, or give this server a state file of its own",
            path=file,
        )
    if name == "SQLITE_NOTADB":
        return StateStoreError(
            f"state file {file} is not a SQLite database ({exc}). {_RESET_ADVICE}.", path=file
        )
    if name.startswith("SQLITE_CORRUPT"):
        return StateStoreError(f"state file {file} is corrupt ({exc}). {_RESET_ADVICE}.", path=file)
    if name.startswith("SQLITE_CANTOPEN") or name.startswith("SQLITE_READONLY"):
        return StateStoreError(
            f"state file {file} cannot be opened for reading and writing ({exc}). Check that "
            "it is a file the server's user may read and write, in a writable directory",
            path=file,
        )
    return StateStoreError(
        f"state file {file} cannot be used ({exc}). {_RESET_ADVICE}.", path=file
    )
