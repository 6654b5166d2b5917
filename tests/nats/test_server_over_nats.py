"""The server's end-to-end suite over NATS: the same test functions as over memory:// and
tcp://, run with ``kind="nats"`` (a real nats-server per test, its users from nats-config).

A representative subset, to keep the default suite quick: requests and their error codes,
exactly-once sets (also across a session that ends mid-set), subscriptions (snapshot, updates,
a subscriber that never reads), access refusals by the proven identity, routing by address,
clean shutdown and revocation. (Every ``kind`` test of tests/server passed over NATS when this
was written; the rest are left to memory:// and tcp:// for time.)
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from ..server import test_end_to_end as e2e
from ..server import test_exactly_once as exactly_once
from ..server import test_routing as routing
from ..server.conftest import Keys, keys  # noqa: F401 - the fixture, for this module's tests

SUBSET: list[Callable[..., Awaitable[None]]] = [
    e2e.test_list_get_set,
    e2e.test_errors_carry_the_right_codes,
    e2e.test_a_repeated_set_is_applied_once,
    e2e.test_subscribe_snapshot_then_periodic_and_triggered_updates,
    e2e.test_a_set_is_pushed_to_other_subscribers,
    e2e.test_access_refusal_uses_the_authenticated_identity_and_changes_nothing,
    e2e.test_a_subscriber_that_never_reads_costs_bounded_memory,
    e2e.test_clean_shutdown_finishes_sessions_and_leaves_nothing_running,
    e2e.test_revoked_key_loses_its_session_within_a_second,
    exactly_once.test_set_whose_session_ends_while_applying_is_applied_once_and_its_retry_answered,
    routing.test_a_message_to_another_node_arrives_with_receipts_back,
    routing.test_messages_from_one_sender_keep_their_order,
    routing.test_no_session_for_the_node_fails_with_42,
]


@pytest.mark.parametrize("test", SUBSET, ids=lambda test: test.__name__.removeprefix("test_"))
async def test_end_to_end_over_nats(
    test: Callable[..., Awaitable[None]], keys: Keys, tmp_path: Path  # noqa: F811
) -> None:
    given: dict[str, Any] = {"keys": keys, "kind": "nats", "tmp_path": tmp_path, "stored": True}
    wanted = inspect.signature(test).parameters
    await test(**{name: given[name] for name in wanted})
