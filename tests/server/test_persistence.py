"""Persistent server state (issue 8, item 4): a server with a state file restores the values set
on its writable parameters before it serves, keeps opt-out parameters out of it, answers a
retried set from the window stored with the value even after a restart, stops at start-up on a
state file it cannot trust, and after ``kill -9`` between apply and answer neither loses nor
repeats a set.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from rain_envelopes.auth import ServerAuthenticator
from rain_envelopes.envelopes import Command, CommandMethod, CommandStatus, ReasonCode
from rain_envelopes.server import Parameter, Server
from rain_envelopes.server.dedup import fingerprint
from rain_envelopes.server.store import StateStore, StateStoreError

from ..adversarial.live import LiveServer, eventually, make_site
from .conftest import ZMQ, Keys, client, running_server

STEP = 5.0


def declare(applied: list[Any]) -> list[Parameter]:
    """A fresh set of declarations (a restarted server binds new ones, as plugins reload)."""

    def apply(value: Any) -> None:
        applied.append(value)

    return [
        Parameter("gain", value=1, schema={"type": "integer", "maximum": 100}, setter=apply),
        Parameter("label", value="none", writable=True),
        Parameter("scratch", value=0, writable=True, persist=False),
    ]


def set_command(uri: str, value: Any, command_id: str | None = None) -> Command:
    return Command(
        CommandMethod.SET, uri, id=command_id, resource=value, type="application/json"
    )


@asynccontextmanager
async def served(
    keys: Keys, state: Path, applied: list[Any]
) -> AsyncIterator[tuple[Server, list[Parameter]]]:
    parameters = declare(applied)
    async with running_server(parameters, keys, "memory", state=state) as server:
        yield server, parameters


async def test_values_persist_across_a_restart_and_are_restored_before_serving(
    keys: Keys, tmp_path: Path
) -> None:
    state = tmp_path / "state.db"
    applied: list[Any] = []
    async with served(keys, state, applied) as (server, _):
        alice = await client(server, keys, keys.alice)
        for uri, value in (("/params/gain", 42), ("/params/label", "north"),
                           ("/params/scratch", 9)):
            response = await alice.set(uri, value)
            assert response.status is CommandStatus.SUCCESS
        await alice.finish()
    assert applied == [42]

    # Restart: a new server on the same file. start() alone, no session yet: the setter has
    # already been given the stored value, and the declarations hold it.
    again: list[Any] = []
    parameters = declare(again)
    server = Server(
        parameters, node="station@irf", authenticator=ServerAuthenticator(keys.authorized),
        state=state,
    )
    async with server:
        assert again == [42]
        gain, label, scratch = parameters
        assert (gain.value, label.value, scratch.value) == (42, "north", 0)  # opt-out: initial
        assert server.restore_seconds is not None
        await server.listen(["memory://persist-restart"])
        alice = await client(server, keys, keys.alice)
        values = [(await alice.get(f"/params/{name}")).resource["value"]
                  for name in ("gain", "label", "scratch")]
        assert values == [42, "north", 0]
        await alice.finish()


async def test_stored_value_failing_the_schema_is_logged_and_skipped(
    keys: Keys, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = tmp_path / "state.db"
    with StateStore.open(state) as store:
        store.store_value("gain", 1000, "2026-01-01T00:00:00.000Z", 1)  # over its maximum
        store.store_value("label", "east", "2026-01-01T00:00:00.000Z", 1)
        store.store_value("gone", 1, "2026-01-01T00:00:00.000Z", 1)  # no such parameter
    applied: list[Any] = []
    with caplog.at_level(logging.INFO, logger="rain.server"):
        async with served(keys, state, applied) as (_, parameters):
            assert applied == []
            assert [p.value for p in parameters] == [1, "east", 0]
    assert "stored value of gain skipped" in caplog.text
    assert "stored value of gone kept but not restored" in caplog.text


async def test_set_window_survives_a_restart(keys: Keys, tmp_path: Path) -> None:
    state = tmp_path / "state.db"
    applied: list[Any] = []
    async with served(keys, state, applied) as (server, _):
        alice = await client(server, keys, keys.alice)
        first = await alice.send_command(set_command("/params/gain", 7, "set-1"))
        assert first.status is CommandStatus.SUCCESS
        await alice.finish()
    assert applied == [7]

    again: list[Any] = []
    async with served(keys, state, again) as (server, _):
        assert again == [7]  # the restore
        alice = await client(server, keys, keys.alice)
        retry = await alice.send_command(set_command("/params/gain", 7, "set-1"))
        # The first answer (its sample comes from the first server's epoch), not a new one.
        assert retry.status is CommandStatus.SUCCESS
        assert retry.resource == first.resource
        assert again == [7]  # not applied again
        reused = await alice.send_command(set_command("/params/gain", 8, "set-1"))
        assert reused.reason is not None
        assert reused.reason.code == ReasonCode.COMMAND_INVALID_ARGUMENT
        # The window is per identity: bob's set with the same id is his own.
        bob = await client(server, keys, keys.bob)
        other = await bob.send_command(set_command("/params/gain", 9, "set-1"))
        assert other.status is CommandStatus.SUCCESS
        assert again == [7, 9]


async def test_set_that_began_but_has_no_recorded_outcome_is_answered_outcome_unknown(
    keys: Keys, tmp_path: Path
) -> None:
    # What a server killed inside its setter leaves behind: the set's "in progress" record.
    state = tmp_path / "state.db"
    command = set_command("/params/gain", 7, "set-1")
    with StateStore.open(state) as store:
        store.begin_set("alice@irf", "set-1", fingerprint(command), time.time())
    applied: list[Any] = []
    async with served(keys, state, applied) as (server, _):
        alice = await client(server, keys, keys.alice)
        retry = await alice.send_command(command)
        assert retry.reason is not None
        assert retry.reason.code == ReasonCode.COMMAND_PROCESSING_ERROR
        assert "outcome unknown" in (retry.reason.description or "")
        assert applied == []


# ---------------------------------------------------------------------- bad state files


def _newer(path: Path) -> None:
    with StateStore.open(path):
        pass
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version = 99")
    db.commit()
    db.close()


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda p: p.write_bytes(b"this is not a database" * 100), "not a SQLite database"),
        (_newer, "newer than this RAIN"),
        (lambda p: p.mkdir(), "is a directory"),
    ],
    ids=["garbage", "newer-format", "directory"],
)
async def test_bad_state_file_stops_start_up_and_leaves_nothing_bound(
    keys: Keys, tmp_path: Path, make: Any, words: str
) -> None:
    state = tmp_path / "state.db"
    make(state)
    before = state.read_bytes() if state.is_file() else None
    parameters = declare([])
    server = Server(parameters, node="station@irf", state=state)
    with pytest.raises(StateStoreError, match=words) as raised:
        await server.start()
    assert str(state) in str(raised.value)
    assert "\n" not in str(raised.value)
    if before is not None:
        assert state.read_bytes() == before  # never reset
    # Nothing was left bound: the same declarations serve from another server.
    async with Server(parameters, node="station@irf"):
        pass


@pytest.mark.skipif(not ZMQ, reason="rain serve needs the ZMQ transport")
def test_rain_serve_stops_on_a_corrupt_state_file_with_one_line(tmp_path: Path) -> None:
    site = make_site(tmp_path)
    config = site.config.read_text()
    site.config.write_text('state = "state.db"\n' + config)
    (tmp_path / "state.db").write_bytes(b"garbage" * 1000)
    done = subprocess.run(
        [sys.executable, "-m", "rain_envelopes.cli", "serve", str(site.config)],
        capture_output=True, text=True, timeout=30,
        env={k: v for k, v in os.environ.items() if not k.startswith("RAIN_")},
    )
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if "error" in line]
    assert len(errors) == 1, done.stderr
    assert "state.db" in errors[0]
    assert "not a SQLite database" in errors[0]
    assert "Traceback" not in done.stderr
    assert "serving" not in done.stdout


# ---------------------------------------------------------------------- kill -9

#: A setter that records each application in a marker file (flushed to the disk before it
#: returns) and, for the value "hold", then waits forever: the server is killed inside it.
MARKER_PLUGIN = '''
import os
import threading

from rain_envelopes.server import Parameter

MARKER = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "applied")

dial = Parameter("dial", value="start", schema={"type": "string"}, persist=False)


@dial.setter
def dial(value):
    with open(MARKER, "a") as out:
        out.write(value + "\\n")
        out.flush()
        os.fsync(out.fileno())
    if value == "hold":
        threading.Event().wait()
'''


@pytest.mark.skipif(not ZMQ, reason="rain serve needs the ZMQ transport")
@pytest.mark.timeout(90)
async def test_kill_9_between_apply_and_answer_loses_nothing_and_applies_nothing_twice(
    tmp_path: Path,
) -> None:
    site = make_site(tmp_path, plugins={"marker.py": MARKER_PLUGIN})
    site.config.write_text('state = "state.db"\n' + site.config.read_text())
    marker = tmp_path / "applied"

    def applications() -> list[str]:
        return marker.read_text().splitlines() if marker.exists() else []

    async def session(server: LiveServer) -> Any:
        from rain_envelopes.channel import connect

        return await connect(
            server.endpoint, identity=site.alice, server_key=site.station.public_key,
            establish_timeout=STEP, command_timeout=STEP,
        )

    def start() -> LiveServer:
        return LiveServer(site.config, tmp_path / f"server-{len(started)}.log")

    started: list[LiveServer] = []
    started.append(await asyncio.to_thread(start))
    try:
        # 1. Applied, recorded and answered; for the server, an answer that then never reached
        # the client (a cut link, or a kill a moment earlier) is the same: the retry below
        # must get the first answer, and must not apply the set again.
        alice = await session(started[-1])
        acknowledged = await alice.send_command(set_command("/params/dial", "first", "set-1"))
        assert acknowledged.status is CommandStatus.SUCCESS
        # 2. Killed inside the setter: applied, not recorded.
        held = asyncio.ensure_future(
            alice.send_command(set_command("/params/dial", "hold", "set-2"))
        )
        took = await asyncio.to_thread(
            eventually, lambda: applications() == ["first", "hold"], STEP, 0.01
        )
        assert took is not None, applications()
        assert started[-1].stop(signal.SIGKILL) == -signal.SIGKILL
        held.cancel()
        await alice.close()

        started.append(await asyncio.to_thread(start))
        alice = await session(started[-1])
        retry_first = await alice.send_command(set_command("/params/dial", "first", "set-1"))
        retry_held = await alice.send_command(set_command("/params/dial", "hold", "set-2"))
        await alice.close()
    finally:
        for server in started:
            if server.alive():
                server.stop(signal.SIGKILL)
    # 0 lost: the acknowledged set is answered from its record, with its first answer.
    assert retry_first.status is CommandStatus.SUCCESS
    assert retry_first.resource == acknowledged.resource
    # The set cut off inside its setter is not applied again: its outcome is unknown.
    assert retry_held.reason is not None
    assert retry_held.reason.code == ReasonCode.COMMAND_PROCESSING_ERROR
    assert "outcome unknown" in (retry_held.reason.description or "")
    # 0 doubled.
    assert applications() == ["first", "hold"]


@pytest.mark.parametrize("durability", ["sync", "batch"])
async def test_both_durability_modes_serve_and_record(
    keys: Keys, tmp_path: Path, durability: str
) -> None:
    state = tmp_path / "state.db"
    applied: list[Any] = []
    server = Server(
        declare(applied), node="station@irf", authenticator=ServerAuthenticator(keys.authorized),
        state=state, durability=durability,  # type: ignore[arg-type]
    )
    async with server:
        await server.listen([f"memory://durability-{durability}"])
        alice = await client(server, keys, keys.alice)
        await alice.send_command(set_command("/params/gain", 5, "set-1"))
        await alice.finish()
    with StateStore.open(state) as store:
        assert store.load_values()["gain"].value == 5
        record = store.lookup_set("alice@irf", "set-1")
        assert record is not None
        assert not record.in_progress
