"""How sessions end and are refused, as a client and an operator see it (issue 8, items 1, 2):

- a server at ``limits.max_sessions`` answers one more with a coded ``failed`` (34, "server
  full: N sessions") before closing, instead of a bare close;
- the server logs a session that ended without ``finished`` as lost, not finished.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from rain_envelopes.envelopes import ReasonCode
from rain_envelopes.errors import SessionFailed
from rain_envelopes.server import Limits, Parameter

from .conftest import Keys, client, running_server


async def test_a_full_server_refuses_with_a_coded_reason(keys: Keys) -> None:
    limits = Limits(max_sessions=2)
    async with running_server([Parameter("x", value=1)], keys, "memory", limits=limits) as server:
        alice = await client(server, keys, keys.alice)
        bob = await client(server, keys, keys.bob)
        bob_served = next(s for s in server.sessions if s.identity == "bob@irf")
        with pytest.raises(SessionFailed) as refused:
            await client(server, keys, keys.carol)
        assert refused.value.reason.code == ReasonCode.AUTHORIZATION_QUOTA_EXCEEDED
        assert refused.value.reason.description == "server full: 2 sessions"
        # The two sessions are unharmed, and a place freed is a place taken.
        assert (await alice.get("/params/x")).resource["value"] == 1
        await bob.finish()
        async with asyncio.timeout(5):
            await bob_served.ended.wait()  # the server has released bob's session
        carol = await client(server, keys, keys.carol)
        assert (await carol.get("/params/x")).resource["value"] == 1
        await carol.finish()
        await alice.finish()


async def test_a_lost_session_is_logged_as_lost_and_a_finished_one_as_finished(
    keys: Keys, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="rain.server"):
        async with running_server([Parameter("x", value=1)], keys, "memory") as server:
            alice = await client(server, keys, keys.alice)
            bob = await client(server, keys, keys.bob)
            ended = {s.identity: s.ended for s in server.sessions}
            await alice.close()  # the link ends: no finishing, no finished
            await bob.finish()  # finishing, finished
            async with asyncio.timeout(5):
                await ended["alice@irf"].wait()
                await ended["bob@irf"].wait()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("session ")]
    alice_lines = [line for line in lines if "alice@irf" in line and "established" not in line]
    bob_lines = [line for line in lines if "bob@irf" in line and "established" not in line]
    assert len(alice_lines) == 1, lines
    assert alice_lines[0].startswith("session lost: alice@irf"), alice_lines
    assert "finished" not in alice_lines[0].replace("without finished", "")
    assert len(bob_lines) == 1, lines
    assert bob_lines[0].startswith("session ended: bob@irf"), bob_lines
    assert bob_lines[0].endswith("(finished)")
