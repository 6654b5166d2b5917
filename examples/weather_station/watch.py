"""Watch the weather station's temperature through lost links and server restarts.

Run from this folder while `rain serve rain.toml` runs (see docs/tutorial/weather-station.md).
"""

import asyncio

from rain_envelopes import Client, Identity, Update
from rain_envelopes.keys import load_public_key


def show(update: Update) -> None:
    note = " (the server restarted)" if update.restarted else ""
    print(update.sample["timestamp"], update.value, note)


async def main() -> None:
    client = Client(
        "tcp://127.0.0.1:4505",
        identity=Identity.load("keys/alice.key"),
        server_key=load_public_key("keys/station.key.pub"),
    )
    async with client:
        await client.subscribe("/params/temperature", show)
        async for change in client.changes():  # until Ctrl-C
            print("link:", change)


asyncio.run(main())
