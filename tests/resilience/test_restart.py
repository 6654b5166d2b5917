"""A server killed (``kill -9``) and started again while 20 reconnecting clients hold 5
subscriptions each: every client reconnects by itself, re-subscribes, and every subscription
gets a fresh snapshot marked ``restarted`` within 5 s of the restart (issue 8, item 8).

The clients are library :class:`~rain_envelopes.client.Client` objects with their default
backoff, in this process; the server is ``rain serve`` in a child process, started again on the
same port with the same keys and config. The time to resume is measured per client, from the
moment the new server process is launched to the last of its five restarted snapshots, and
printed as p50/max (also from the moment the new server printed its endpoint).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from pathlib import Path

import pytest

from rain_envelopes.client import Client, Update

from ..adversarial.live import make_site
from .helpers import Station, percentile, wait_for

CLIENTS = 20
URIS = [
    "/params/temperature",
    "/params/pressure",
    "/params/sampling_interval",
    "/params/storm_alert",
    "/params/simulate_storm",
]
RESUME_BOUND = 5.0


@pytest.mark.timeout(90)
async def test_twenty_clients_resume_within_five_seconds_of_a_kill_9_restart(
    tmp_path: Path,
) -> None:
    loop = asyncio.get_running_loop()
    station = Station(make_site(tmp_path))
    await asyncio.to_thread(station.start)
    changed = asyncio.Event()
    # resumed[(client, uri)] = loop time of the first restarted snapshot
    resumed: dict[tuple[int, str], float] = {}
    first_epoch: dict[tuple[int, str], str | None] = {}
    bad: list[str] = []

    def recorder(index: int, uri: str) -> Callable[[Update], None]:
        key = (index, uri)

        def on_update(update: Update) -> None:
            if key not in first_epoch:
                first_epoch[key] = update.epoch
                changed.set()
            elif update.restarted and key not in resumed:
                if not update.snapshot:
                    bad.append(f"{key}: first sample after the restart is not a snapshot")
                if update.epoch == first_epoch[key]:
                    bad.append(f"{key}: restarted but the epoch did not change")
                resumed[key] = loop.time()
                changed.set()

        return on_update

    clients: list[Client] = [station.client() for _ in range(CLIENTS)]
    try:
        await asyncio.gather(*(c.start(timeout=15) for c in clients))
        await asyncio.gather(*(
            client.subscribe(uri, recorder(index, uri), timeout=10)
            for index, client in enumerate(clients)
            for uri in URIS
        ))
        # subscribe() returns with the snapshot; its callback runs on the consumer task.
        await wait_for(lambda: len(first_epoch) == CLIENTS * len(URIS), changed, 5)

        assert await asyncio.to_thread(station.kill) == -9
        launched = loop.time()
        await asyncio.to_thread(station.start)
        serving = loop.time()
        with_timeout = RESUME_BOUND * 3  # wait longer than the bound, to report what it took
        with contextlib.suppress(TimeoutError):
            await wait_for(lambda: len(resumed) == CLIENTS * len(URIS), changed, with_timeout)
    finally:
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
        station.stop()

    missing = sorted({(i, u) for i in range(CLIENTS) for u in URIS} - resumed.keys())
    per_client = [
        max(resumed[(i, u)] for u in URIS) - launched
        for i in range(CLIENTS)
        if all((i, u) in resumed for u in URIS)
    ]
    if per_client:
        print(
            f"\n[resilience] restart: {len(per_client)}/{CLIENTS} clients resumed all"
            f" {len(URIS)} subscriptions; from launch p50 {percentile(per_client, 0.5):.2f} s"
            f" max {max(per_client):.2f} s; from 'serving' p50"
            f" {percentile(per_client, 0.5) - (serving - launched):.2f} s max"
            f" {max(per_client) - (serving - launched):.2f} s (server start took"
            f" {serving - launched:.2f} s)"
        )
    assert not bad, bad
    assert not missing, (
        f"{len(missing)} of {CLIENTS * len(URIS)} subscriptions got no restarted snapshot within"
        f" {with_timeout:g} s of the restart, e.g. {missing[:5]}"
    )
    assert max(per_client) <= RESUME_BOUND, (
        f"slowest client resumed {max(per_client):.2f} s after the restart"
        f" (bound {RESUME_BOUND:g} s); p50 {percentile(per_client, 0.5):.2f} s"
    )

