"""Watch several RAIN servers at once from one asyncio program.

Run it with one ``--server`` per server: its endpoint, the file of its public key (each server
is pinned to its own key) and the parameters to watch there, comma-separated::

    python watch_many.py --key keys/alice.key \\
        --server tcp://magnetometer.example:4601 keys/magnetometer.key.pub field_nT \\
        --server tcp://station.example:4602 keys/station.key.pub temperature,storm_alert

It prints one line per update, ``ENDPOINT  NAME  VALUE``, and one per change of a link,
``ENDPOINT  link  STATE``, until Ctrl-C (or, with ``--count N``, until every server has sent
N updates). ``examples/two_sites/`` runs it against two servers of their own.

How it works: one :class:`rain_envelopes.Client` per server, all in one event loop. Each
client connects, reconnects and re-subscribes on its own, so a server that is down or far
away never holds up the others: its updates start (again) when its link comes back. Only a
definitive refusal (for instance a server whose key is not the pinned one) makes a client
give up; that is reported, the other servers are still watched, and the exit status is 1.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from rain_envelopes import Client, ClientClosed, ClientState, CommandFailed, Identity, Update
from rain_envelopes.keys import load_public_key


@dataclass
class Watch:
    """One server and what to watch there."""

    endpoint: str
    server_key: Path
    names: list[str]
    updates: int = 0
    gave_up: str | None = None
    enough: asyncio.Event = field(default_factory=asyncio.Event)


def printer(watch: Watch, count: int | None) -> Callable[[Update], None]:
    """The subscription callback: one line per update."""

    def on_update(update: Update) -> None:
        name = update.uri.removeprefix("/params/")
        notes = []
        if update.restarted:
            notes.append("(the server restarted)")
        if update.dropped:
            notes.append(f"({update.dropped} updates dropped)")
        print(watch.endpoint, name, orjson.dumps(update.value).decode(), *notes, sep="  ",
              flush=True)
        watch.updates += 1
        if count is not None and watch.updates >= count:
            watch.enough.set()

    return on_update


async def subscribe(watch: Watch, client: Client, count: int | None) -> None:
    try:
        for name in watch.names:
            # Waits for this server's link only; made again on every new session.
            await client.subscribe(f"/params/{name}", printer(watch, count), timeout=3600)
    except (ClientClosed, CommandFailed) as error:
        watch.gave_up = str(error)
        watch.enough.set()


async def follow(watch: Watch, client: Client, count: int | None) -> None:
    """Subscribe, and print the link's changes until the client closes."""
    changes = client.changes()  # before anything happens, so no change is missed
    subscribing = asyncio.create_task(subscribe(watch, client, count))
    try:
        async for change in changes:
            print(watch.endpoint, "link", change.state.value, sep="  ", flush=True)
            if change.state is ClientState.RETRYING and change.error is not None:
                print(f"{watch.endpoint}: {change.error}", file=sys.stderr, flush=True)
            if change.state is ClientState.CLOSED:
                if client.close_reason is not None:
                    watch.gave_up = str(client.close_reason)
                watch.enough.set()
    finally:
        subscribing.cancel()
        await asyncio.gather(subscribing, return_exceptions=True)


async def watch_all(key: Path, watches: list[Watch], count: int | None) -> int:
    identity = Identity.load(key)
    clients = [
        Client(watch.endpoint, identity=identity, server_key=load_public_key(watch.server_key))
        for watch in watches
    ]
    tasks = []
    try:
        for watch, client in zip(watches, clients, strict=True):
            await client.start(wait=False)  # connect in the background, each on its own
            tasks.append(asyncio.create_task(follow(watch, client, count)))
        await asyncio.gather(*(watch.enough.wait() for watch in watches))
    finally:
        await asyncio.gather(*(client.close() for client in clients))
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    failed = [watch for watch in watches if watch.gave_up]
    for watch in failed:
        print(f"{watch.endpoint}: gave up: {watch.gave_up}", file=sys.stderr)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--key", type=Path, required=True, help="your secret key file")
    parser.add_argument(
        "--server", nargs=3, action="append", required=True,
        metavar=("ENDPOINT", "SERVER_KEY", "NAMES"),
        help="a server: its endpoint, its public key file, comma-separated parameter names",
    )
    parser.add_argument("--count", type=int, help="stop once every server sent this many updates")
    args = parser.parse_args(argv)
    watches = [
        Watch(endpoint, Path(server_key), [name for name in names.split(",") if name])
        for endpoint, server_key, names in args.server
    ]
    try:
        return asyncio.run(watch_all(args.key, watches, args.count))
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
