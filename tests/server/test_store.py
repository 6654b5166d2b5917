"""The server's state file (rain_envelopes.server.store): values and the exactly-once SET window
survive a restart and a kill -9, a set is stored all or nothing, the window is bounded per
identity, and a file that cannot be trusted stops the server with a clear error."""

from __future__ import annotations

import os
import select
import sqlite3
import stat
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from rain_envelopes.errors import RainError
from rain_envelopes.server.store import (
    APPLICATION_ID,
    FORMAT_VERSION,
    SetRecord,
    StateStore,
    StateStoreError,
    StoredValue,
)

NOW = 1_700_000_000.0
FP = b'["/params/sampling",null,2.5]'
RESPONSE = b'{"id":"c-1","method":"set","status":"success"}'


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "state.db"


def set_one(store: StateStore, identity: str, command_id: str, now: float = NOW) -> None:
    store.apply_set(identity, command_id, "sampling", 1, FP, RESPONSE + command_id.encode(), now)


def record_ids(store: StateStore, identity: str, ids: list[str]) -> list[str]:
    return [i for i in ids if store.lookup_set(identity, i) is not None]


# ---------------------------------------------------------------------- values and records


@pytest.mark.parametrize("durability", ["sync", "batch"])
def test_values_and_records_survive_close_and_reopen(path: Path, durability: str) -> None:
    value = {"gain": [1, 2.5, None], "label": "ä"}
    with StateStore.open(path, durability=durability) as store:  # type: ignore[arg-type]
        assert store.load_values() == {}
        store.apply_set("alice@irf", "c-1", "setup", value, FP, RESPONSE, NOW,
                        timestamp="2026-01-01T00:00:00.000Z", seq=7)
        store.store_value("sampling", 2.5, "2026-01-01T00:00:01.000Z", 3)
        store.apply_set("alice@irf", "c-2", "sampling", 3.0, FP, RESPONSE, NOW + 1)
    assert store.closed
    with StateStore.open(path, durability=durability) as store:  # type: ignore[arg-type]
        assert store.load_values() == {
            "setup": StoredValue(value, "2026-01-01T00:00:00.000Z", 7),
            # seq defaults to the stored one plus one; timestamp to `now`.
            "sampling": StoredValue(3.0, "2023-11-14T22:13:21.000Z", 4),
        }
        assert store.lookup_set("alice@irf", "c-1") == SetRecord(FP, RESPONSE)
        assert store.lookup_set("alice@irf", "c-3") is None
        assert store.lookup_set("bob@irf", "c-1") is None  # records are per identity


def test_record_without_value_and_first_record_kept(path: Path) -> None:
    with StateStore.open(path) as store:
        store.apply_set("alice@irf", "c-1", None, object(), FP, b"first", NOW)
        assert store.load_values() == {}  # a parameter that does not persist
        store.apply_set("alice@irf", "c-1", None, None, b"other", b"second", NOW)
        assert store.lookup_set("alice@irf", "c-1") == SetRecord(FP, b"first")


def test_usable_from_another_thread(path: Path) -> None:
    with StateStore.open(path) as store, ThreadPoolExecutor(max_workers=1) as worker:
        worker.submit(set_one, store, "alice@irf", "c-1").result(timeout=10)
        assert store.lookup_set("alice@irf", "c-1") is not None


def test_closed_store_refuses(path: Path) -> None:
    store = StateStore.open(path)
    store.close()
    store.close()  # idempotent
    with pytest.raises(StateStoreError, match="closed"):
        store.load_values()


def test_bad_arguments(path: Path) -> None:
    with pytest.raises(ValueError, match="durability"):
        StateStore.open(path, durability="often")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_records"):
        StateStore.open(path, max_records=0)
    with pytest.raises(ValueError, match="max_age"):
        StateStore.open(path, max_age=0)


# ---------------------------------------------------------------------- atomicity


def test_unencodable_value_stores_nothing(path: Path) -> None:
    with StateStore.open(path) as store:
        store.apply_set("alice@irf", "c-1", "sampling", 1.0, FP, RESPONSE, NOW)
        with pytest.raises(TypeError, match="sampling"):
            store.apply_set("alice@irf", "c-2", "sampling", {1j}, FP, RESPONSE, NOW)
        assert store.load_values()["sampling"].value == 1.0
        assert store.lookup_set("alice@irf", "c-2") is None


def test_failure_after_the_value_was_written_rolls_back_both(path: Path) -> None:
    # Make the record's insert fail inside the transaction, after the value's upsert ran: a
    # trigger added through a second connection while the store is closed.
    with StateStore.open(path) as store:
        store.apply_set("alice@irf", "c-1", "sampling", 1.0, FP, RESPONSE, NOW)
    raw = sqlite3.connect(path)
    raw.execute(
        "CREATE TRIGGER fail BEFORE INSERT ON set_record "
        "WHEN NEW.command_id = 'c-2' BEGIN SELECT RAISE(ABORT, 'injected failure'); END"
    )
    raw.commit()
    raw.close()
    with StateStore.open(path) as store:
        with pytest.raises(StateStoreError, match="injected failure"):
            store.apply_set("alice@irf", "c-2", "sampling", 2.0, FP, RESPONSE, NOW)
        assert store.load_values()["sampling"].value == 1.0
        assert store.lookup_set("alice@irf", "c-2") is None
        # The store is still usable after the rolled-back transaction.
        store.apply_set("alice@irf", "c-3", "sampling", 3.0, FP, RESPONSE, NOW)
    with StateStore.open(path) as store:
        assert store.load_values()["sampling"].value == 3.0
        assert store.lookup_set("alice@irf", "c-2") is None
        assert store.lookup_set("alice@irf", "c-3") is not None


# ---------------------------------------------------------------------- kill -9


CHILD = textwrap.dedent(
    """
    import sys
    from rain_envelopes.server.store import StateStore
    store = StateStore.open(sys.argv[1], durability=sys.argv[2])
    store.apply_set("alice@irf", "c-1", "sampling", 2.5, b"fp", b"response", 1.0e9)
    sys.stdout.write("applied\\n")
    sys.stdout.flush()
    sys.stdin.read()  # never closed by the parent: it kills us instead
    """
)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("durability", ["sync", "batch"])
def test_record_survives_kill_9_right_after_apply(path: Path, durability: str) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path), durability],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert child.stdout is not None
        ready, _, _ = select.select([child.stdout], [], [], 20)
        assert ready, "the child did not apply the set in 20 s"
        assert child.stdout.readline() == b"applied\n"
        child.kill()  # SIGKILL: no close, no checkpoint; the set is only in the log
    finally:
        child.kill()
        child.wait(timeout=10)
        assert child.stdin is not None
        assert child.stdout is not None
        child.stdin.close()
        child.stdout.close()
    assert child.returncode == -9
    with StateStore.open(path) as store:
        assert store.lookup_set("alice@irf", "c-1") == SetRecord(b"fp", b"response")
        assert store.load_values()["sampling"].value == 2.5


# ---------------------------------------------------------------------- the bounded window


def test_window_bounded_by_count_per_identity(path: Path) -> None:
    ids = [f"c-{i}" for i in range(100)]
    with StateStore.open(path, max_records=3) as store:
        set_one(store, "bob@irf", "b-1")
        for i, command_id in enumerate(ids):
            set_one(store, "alice@irf", command_id, NOW + i)
        assert record_ids(store, "alice@irf", ids) == ids[-3:]
        # Alice's flood did not evict Bob's record.
        assert store.lookup_set("bob@irf", "b-1") is not None
    with StateStore.open(path, max_records=3) as store:  # the numbering survives a reopen
        set_one(store, "alice@irf", "c-100", NOW + 100)
        assert record_ids(store, "alice@irf", [*ids, "c-100"]) == ["c-98", "c-99", "c-100"]
    with StateStore.open(path, max_records=1) as store:  # a smaller window applies at prune
        assert store.prune(NOW + 100) == 2
        assert record_ids(store, "alice@irf", ["c-98", "c-99", "c-100"]) == ["c-100"]
        assert store.lookup_set("bob@irf", "b-1") is not None


def test_window_bounded_by_age(path: Path) -> None:
    with StateStore.open(path, max_age=10) as store:
        set_one(store, "bob@irf", "b-1", NOW)
        set_one(store, "alice@irf", "a-1", NOW + 5)
        assert store.prune(NOW + 10) == 0  # exactly max_age old: still kept
        assert store.prune(NOW + 12) == 1
        assert store.lookup_set("bob@irf", "b-1") is None
        assert store.lookup_set("alice@irf", "a-1") is not None
        # apply_set prunes by age too, every identity's records.
        set_one(store, "bob@irf", "b-2", NOW + 16)
        assert store.lookup_set("alice@irf", "a-1") is None
        assert store.lookup_set("bob@irf", "b-2") is not None
        # An identity whose records all aged out starts numbering again; nothing collides.
        assert store.prune(NOW + 100) == 1
        set_one(store, "bob@irf", "b-3", NOW + 100)
        assert store.lookup_set("bob@irf", "b-3") is not None


# ---------------------------------------------------------------------- files not to trust


def test_new_file_is_private_and_marked(path: Path) -> None:
    with StateStore.open(path) as store:
        set_one(store, "alice@irf", "c-1")
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        wal = path.with_name(path.name + "-wal")
        assert stat.S_IMODE(wal.stat().st_mode) == 0o600
    raw = sqlite3.connect(path)
    assert raw.execute("PRAGMA application_id").fetchone() == (APPLICATION_ID,)
    assert raw.execute("PRAGMA user_version").fetchone() == (FORMAT_VERSION,)
    assert raw.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    raw.close()


def test_empty_existing_file_is_initialised(path: Path) -> None:
    path.touch()
    with StateStore.open(path) as store:
        assert store.load_values() == {}


def assert_refused(path: Path, *words: str) -> StateStoreError:
    with pytest.raises(StateStoreError) as info:
        StateStore.open(path)
    message = str(info.value)
    assert str(path) in message
    for word in words:
        assert word in message
    assert isinstance(info.value, RainError)
    assert info.value.path == path
    return info.value


def test_not_a_database(path: Path) -> None:
    content = b"[server]\nidentity = 'station@irf'\n" * 200
    path.write_bytes(content)
    assert_refused(path, "is not a SQLite database", "move it aside")
    assert path.read_bytes() == content  # never reset


def test_another_programs_database(path: Path) -> None:
    raw = sqlite3.connect(path)
    raw.execute("CREATE TABLE mine (x)")
    raw.commit()
    raw.close()
    assert_refused(path, "another program")
    raw = sqlite3.connect(path)
    assert raw.execute("PRAGMA journal_mode").fetchone() == ("delete",)  # untouched
    raw.close()


def test_newer_format_version(path: Path) -> None:
    with StateStore.open(path) as store:
        set_one(store, "alice@irf", "c-1")
    raw = sqlite3.connect(path)
    raw.execute(f"PRAGMA user_version = {FORMAT_VERSION + 1}")
    raw.close()
    assert_refused(path, f"format version {FORMAT_VERSION + 1}", "newer")
    raw = sqlite3.connect(path)
    assert raw.execute("SELECT count(*) FROM set_record").fetchone() == (1,)  # never reset
    raw.close()


def test_corrupt_file(path: Path) -> None:
    with StateStore.open(path) as store:
        for i in range(300):  # enough rows for several pages per table
            store.apply_set("alice@irf", f"c-{i}", f"p{i}", "x" * 100, FP, RESPONSE, NOW)
    size = path.stat().st_size
    page = 4096
    assert size >= 8 * page
    with path.open("r+b") as file:  # keep the header page, scribble over the b-trees
        file.seek(2 * page)
        file.write(bytes(range(256)) * ((size - 3 * page) // 256))
    assert_refused(path, "is corrupt", "move it aside")


def test_directory_in_place_of_the_file(path: Path) -> None:
    path.mkdir()
    assert_refused(path, "is a directory")


def test_missing_directory(tmp_path: Path) -> None:
    assert_refused(tmp_path / "nowhere" / "state.db", "cannot be created")


@pytest.mark.skipif(
    hasattr(os, "geteuid") and os.geteuid() == 0,
    reason="running as root, where mode 000 does not stop reading or writing; "
    "test_directory_in_place_of_the_file covers an unopenable file",
)
def test_unreadable_file(path: Path) -> None:
    with StateStore.open(path) as store:
        set_one(store, "alice@irf", "c-1")
    try:
        for mode in (0o000, 0o400):  # 0400: SQLite alone would open it read-only
            path.chmod(mode)
            assert_refused(path, "not readable and writable")
    finally:
        path.chmod(0o600)


def test_second_opener_is_refused_while_open(path: Path) -> None:
    with StateStore.open(path) as store:
        set_one(store, "alice@irf", "c-1")
        assert_refused(path, "in use by another process")
        assert store.lookup_set("alice@irf", "c-1") is not None  # the owner is unaffected
    with StateStore.open(path) as store:  # and the file is free again after close
        assert store.lookup_set("alice@irf", "c-1") is not None


def test_begin_set_marks_in_progress_and_apply_set_completes_it_in_place(path: Path) -> None:
    with StateStore.open(path, max_records=2) as store:
        for number in (1, 2, 3):
            command_id = f"c-{number}"
            store.begin_set("alice@irf", command_id, FP, NOW + number)
            record = store.lookup_set("alice@irf", command_id)
            assert record is not None
            assert record.in_progress
            store.apply_set("alice@irf", command_id, "sampling", number, FP,
                            RESPONSE + command_id.encode(), NOW + number)
        # Completing a record does not count as another set: the window keeps two sets.
        assert record_ids(store, "alice@irf", ["c-1", "c-2", "c-3"]) == ["c-2", "c-3"]
        assert store.lookup_set("alice@irf", "c-3") == SetRecord(FP, RESPONSE + b"c-3")
        assert store.load_values()["sampling"].value == 3
        # A finished record is never replaced, nor turned back into one in progress.
        store.begin_set("alice@irf", "c-3", FP, NOW + 4)
        store.apply_set("alice@irf", "c-3", None, None, FP, b"second", NOW + 4)
        assert store.lookup_set("alice@irf", "c-3") == SetRecord(FP, RESPONSE + b"c-3")
    # An in-progress record survives a reopen (what a kill inside the setter leaves).
    with StateStore.open(path) as store:
        store.begin_set("alice@irf", "c-9", FP, NOW + 5)
    with StateStore.open(path) as store:
        record = store.lookup_set("alice@irf", "c-9")
        assert record is not None
        assert record.in_progress
