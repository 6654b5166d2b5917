"""What one client can make a live server spend or forget, and what it can make it log.

- requests in progress per session are bounded (issue 7, defect 2);
- a hang-up during establishment is an ordinary end, not a traceback (defect 4);
- refused connections are a bounded number of log lines with a count (defect 5);
- the set window is kept per identity: another identity cannot evict my retry (defect 8);
- a schema is enforced on a set even when no setter runs (defect 10).
"""

from __future__ import annotations

import asyncio
import logging
import threading

import pytest

from rain_envelopes.auth import ClientCredentials
from rain_envelopes.envelopes import Command, CommandStatus, ReasonCode
from rain_envelopes.errors import RainError
from rain_envelopes.peerlog import PeerLog
from rain_envelopes.protocol import ClientProtocol
from rain_envelopes.server import Limits, Parameter, parameter
from rain_envelopes.transport import ClientSecurity, transport_factory

from .conftest import Keys, client, running_server

STEP = 5.0  # seconds any single wait may take before the test fails


class Clock:
    """A clock the test moves, so a log interval can end without waiting for it."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# ------------------------------------------------------------------------ requests in progress


async def test_a_session_has_at_most_the_bound_in_progress_the_rest_get_34_at_once(
    keys: Keys, kind: str
) -> None:
    bound, sent = 5, 60
    gate = threading.Event()
    started = threading.Event()

    @parameter()
    def slow() -> int:
        started.set()
        gate.wait(STEP)  # the slow instrument: released by the test
        return 7

    limits = Limits(max_requests_in_progress=bound)
    try:
        async with running_server([slow], keys, kind, limits=limits) as server:
            alice = await client(server, keys, keys.alice)
            requests = [
                asyncio.ensure_future(alice.send_command(Command("get", "/params/slow")))
                for _ in range(sent)
            ]
            refused = []
            async with asyncio.timeout(STEP):
                for future in asyncio.as_completed(requests):
                    refused.append(await future)
                    if len(refused) == sent - bound:
                        break
            assert {(r.status, r.reason and r.reason.code) for r in refused} == {
                (CommandStatus.FAILURE, ReasonCode.AUTHORIZATION_QUOTA_EXCEEDED)
            }
            assert started.is_set()
            waiting = [r for r in requests if not r.done()]
            assert len(waiting) == bound
            # Another session has its own bound.
            bob = await client(server, keys, keys.bob)
            other = asyncio.ensure_future(bob.send_command(Command("get", "/params/slow")))
            gate.set()
            async with asyncio.timeout(STEP):
                answers = await asyncio.gather(*waiting, other)
            assert [a.resource["value"] for a in answers] == [7] * (bound + 1)
            # Answered requests no longer count.
            async with asyncio.timeout(STEP):
                assert (await alice.get("/params/slow")).resource["value"] == 7
            await alice.finish()
            await bob.finish()
    finally:
        gate.set()


# ------------------------------------------------------------------------ establishment


async def test_a_hang_up_during_establishment_logs_no_error(
    keys: Keys, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with running_server([], keys, "memory") as server:
        endpoint = server.endpoints[0]
        transport = transport_factory(endpoint).connect(
            endpoint, ClientSecurity(identity=keys.alice, server_key=keys.station.public_key)
        )
        await transport.open()
        opening = ClientProtocol(
            node="alice@irf", credentials=ClientCredentials(identity=keys.alice)
        )
        opening.start()
        for frame in opening.data_to_send():
            await transport.send(frame)
        async with asyncio.timeout(STEP):
            await transport.receive()  # the server is now half way through establishing us
        sessions = [t for t in server._tasks if t.get_name() == "rain-session"]
        assert len(sessions) == 1
        await transport.close()
        async with asyncio.timeout(STEP):
            await asyncio.wait(sessions)
        assert server.sessions == []
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert errors == []
    assert any("not established" in r.getMessage() for r in caplog.records)


# ------------------------------------------------------------------------------ logging


async def test_refused_connections_are_two_lines_with_a_count(
    keys: Keys, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="rain.server")
    clock = Clock()
    attempts = 300
    async with running_server([], keys, "memory", limits=Limits(max_sessions=1)) as server:
        server.peer_log = PeerLog(logging.getLogger("rain.server"), clock=clock)
        alice = await client(server, keys, keys.alice)
        endpoint = server.endpoints[0]
        for _ in range(attempts):
            with pytest.raises(RainError):
                async with asyncio.timeout(STEP):
                    await client(server, keys, keys.bob)
        assert server.peer_log.counts["connection-refused"] == attempts
        clock.now += 10.0
        server.peer_log.flush()
        lines = [r.getMessage() for r in caplog.records if "refus" in r.getMessage()]
        assert len(lines) == 2, lines
        assert lines[0].startswith("refusing a connection")
        assert lines[1].startswith(f"{attempts - 1} more connection-refused events")
        assert endpoint in server.endpoints
        await alice.finish()


# ------------------------------------------------------------------------ repeated sets


async def test_another_identity_cannot_evict_my_set_from_the_window(
    keys: Keys, kind: str
) -> None:
    applied: list[tuple[int, str]] = []
    knob = Parameter("knob", value=0, schema={"type": "integer"})

    @knob.setter
    def set_knob(value: int) -> None:
        applied.append(value)

    window = 8
    async with running_server([knob], keys, kind, limits=Limits(dedup_window=window)) as server:
        alice = await client(server, keys, keys.alice)
        bob = await client(server, keys, keys.bob)
        mine = Command("set", "/params/knob", id="alice-1", type="application/json", resource=3)
        first = await alice.send_command(mine)
        assert first.status is CommandStatus.SUCCESS
        for index in range(window * 3):
            answer = await bob.send_command(
                Command("set", "/params/knob", id=f"bob-{index}", type="application/json",
                        resource=100 + index)
            )
            assert answer.status is CommandStatus.SUCCESS
        retry = await alice.send_command(mine)
        assert retry.status is CommandStatus.SUCCESS
        assert retry.resource == first.resource  # answered from memory
        assert applied.count(3) == 1
        assert len(applied) == 1 + window * 3
        # Alice's own sets still bound her window.
        for index in range(window):
            await alice.send_command(mine.replace(id=f"alice-more-{index}", resource=4))
        await alice.send_command(mine)
        assert applied.count(3) == 2
        await alice.finish()
        await bob.finish()


# ------------------------------------------------------------------------------ schema


async def test_a_set_without_a_setter_is_still_checked_against_the_schema(
    keys: Keys, kind: str
) -> None:
    # writable, with a schema, and no plugin code at all: the server alone must refuse.
    level = Parameter("level", value=1.5, writable=True, schema={"type": "number", "maximum": 5})
    assert level.set_function is None
    async with running_server([level], keys, kind) as server:
        alice = await client(server, keys, keys.alice)
        for bad in ("high", 6, [1], {"value": 2}):
            refused = await alice.send_command(
                Command("set", "/params/level", type="application/json", resource=bad)
            )
            assert refused.status is CommandStatus.FAILURE
            assert refused.reason is not None
            assert refused.reason.code == ReasonCode.COMMAND_INVALID_ARGUMENT == 64
            assert refused.reason.description.startswith("invalid value: level")
        assert (await alice.get("/params/level")).resource["value"] == 1.5
        await alice.set("/params/level", 4.5)
        assert (await alice.get("/params/level")).resource["value"] == 4.5
        await alice.finish()
