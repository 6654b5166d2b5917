"""Exactly-once SET on the server (issue 8, item 3; RELIABILITY.md trap 16).

- a set whose session ends while its setter runs is still finished and recorded; its retry on
  a new session (same id) waits for that first outcome and is answered with it, applied once;
- with a state file, the same holds when the retry comes after the server has restarted;
- a set that expires while it waits behind another set of its parameter is refused with 1001
  and never applied; a late retry of a set that *was* applied gets its first answer, not 1001
  (which would tell the client it was not applied);
- the same id reused for another value is refused with 64.
"""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from rain_envelopes.envelopes import Command, CommandMethod, CommandStatus, ReasonCode
from rain_envelopes.errors import ChannelClosed, SessionError
from rain_envelopes.server import Parameter

from .conftest import Keys, client, running_server

STEP = 5.0  # seconds any single wait may take before the test fails


class Knob:
    """A settable parameter whose setter counts applications and can be held at a gate."""

    def __init__(self, name: str = "knob", *, persist: bool = True) -> None:
        self.applied: list[Any] = []
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.gate.set()
        self.parameter = Parameter(
            name, value=0, schema={"type": "integer"}, persist=persist,
            setter=self._set,
        )

    def _set(self, value: Any) -> None:
        self.entered.set()
        if not self.gate.wait(STEP):  # the instrument, held by the test
            raise TimeoutError("the test never opened the gate")
        self.applied.append(value)


def set_command(value: Any, command_id: str, *, expires: datetime | None = None) -> Command:
    metadata = None
    if expires is not None:
        metadata = {"#expires": expires.isoformat(timespec="milliseconds")}
    return Command(
        CommandMethod.SET, "/params/knob", id=command_id, resource=value,
        type="application/json", metadata=metadata,
    )


async def wait_until(moment: datetime) -> None:
    # Waiting for a moment of the wall clock to pass (an expiry), not for another task.
    await asyncio.sleep(max(0.0, (moment - datetime.now(UTC)).total_seconds()) + 0.01)
    assert datetime.now(UTC) > moment


# ---------------------------------------------------------------------- cut sessions


@pytest.mark.parametrize("stored", [False, True], ids=["memory", "state-file"])
async def test_set_whose_session_ends_while_applying_is_applied_once_and_its_retry_answered(
    keys: Keys, kind: str, tmp_path: Path, stored: bool
) -> None:
    knob = Knob()
    knob.gate.clear()
    state = tmp_path / "state.db" if stored else None
    async with running_server([knob.parameter], keys, kind, state=state) as server:
        first_session = await client(server, keys, keys.alice)
        command = set_command(5, "set-1")
        first = asyncio.ensure_future(first_session.send_command(command))
        async with asyncio.timeout(STEP):
            await asyncio.to_thread(knob.entered.wait, STEP)
        await first_session.close()  # the link drops while the setter runs
        with pytest.raises((ChannelClosed, SessionError)):
            await first
        second_session = await client(server, keys, keys.alice)
        retry = asyncio.ensure_future(second_session.send_command(command))
        knob.gate.set()
        async with asyncio.timeout(STEP):
            response = await retry
        assert response.status is CommandStatus.SUCCESS, response
        assert response.resource["value"] == 5
        # The same id again, once the first outcome is known: the same answer.
        again = await second_session.send_command(command)
        assert again.resource == response.resource
        # The same id for another value: refused (64), whichever record answers it.
        reused = await second_session.send_command(set_command(6, "set-1"))
        assert reused.reason is not None
        assert reused.reason.code == ReasonCode.COMMAND_INVALID_ARGUMENT
        assert knob.applied == [5]
        await second_session.finish()



# ---------------------------------------------------------------------- expiry


async def test_set_that_expires_while_waiting_behind_another_is_refused_and_never_applied(
    keys: Keys,
) -> None:
    knob = Knob()
    knob.gate.clear()
    async with running_server([knob.parameter], keys, "memory") as server:
        alice = await client(server, keys, keys.alice)
        first = asyncio.ensure_future(alice.send_command(set_command(1, "set-1")))
        async with asyncio.timeout(STEP):
            await asyncio.to_thread(knob.entered.wait, STEP)
        # Valid when it arrives, expired by the time the first set lets it run.
        expiry = datetime.now(UTC) + timedelta(seconds=0.3)
        second = asyncio.ensure_future(
            alice.send_command(set_command(2, "set-2", expires=expiry))
        )
        await wait_until(expiry)
        knob.gate.set()
        async with asyncio.timeout(STEP):
            assert (await first).status is CommandStatus.SUCCESS
            refused = await second
        assert refused.reason is not None
        assert refused.reason.code == ReasonCode.COMMAND_EXPIRED, refused
        assert knob.applied == [1]


async def test_late_retry_of_an_applied_set_gets_its_first_answer_not_1001(
    keys: Keys,
) -> None:
    knob = Knob()
    async with running_server([knob.parameter], keys, "memory") as server:
        alice = await client(server, keys, keys.alice)
        expiry = datetime.now(UTC) + timedelta(seconds=0.3)
        command = set_command(3, "set-1", expires=expiry)
        first = await alice.send_command(command)
        assert first.status is CommandStatus.SUCCESS
        await wait_until(expiry)
        late = await alice.send_command(command)
        assert late.status is CommandStatus.SUCCESS, late
        assert late.resource == first.resource
        # A set never seen before that arrives expired is refused and not applied.
        stale = await alice.send_command(set_command(4, "set-2", expires=expiry))
        assert stale.reason is not None
        assert stale.reason.code == ReasonCode.COMMAND_EXPIRED
        assert knob.applied == [3]
