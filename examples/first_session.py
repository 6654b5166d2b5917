"""A first RAIN session: a server and a client in one process, over the memory transport.

Run it with ``python examples/first_session.py``. It needs nothing but the installed package:
no network, no key files. Each step prints one line, and the tutorial
(docs/tutorial/index.md) explains them in order.
"""

from __future__ import annotations

import asyncio

from rain_envelopes import (
    AuthorizedKeys,
    ClientChannel,
    Command,
    CommandFailed,
    Identity,
    Message,
    Notification,
    ReasonCode,
    ServerAuthenticator,
    ServerChannel,
)
from rain_envelopes.testing import memory_transport_pair

# The instrument's only parameter, kept in a dict so the handler can change it.
station = {"/params/temp": 21.5}


def handle_command(command: Command) -> Command:
    """The server's resource handler: answer get and set on the station's parameters."""
    if command.uri not in station:
        return command.failure(ReasonCode.COMMAND_RESOURCE_NOT_FOUND, f"no {command.uri}")
    if command.method == "get":
        return command.success(station[command.uri])
    if command.method == "set":
        station[command.uri] = command.resource
        return command.success()
    if command.method == "subscribe":
        return command.success(station[command.uri])
    return command.failure(ReasonCode.COMMAND_METHOD_NOT_SUPPORTED, f"no {command.method}")


async def main() -> None:
    # 1. Keys. The client has an Ed25519 identity; the server authorises its public key
    #    under the name "alice@lab". That name, not what the client claims, is who it is.
    alice = Identity.generate()
    authorized = AuthorizedKeys.from_mapping({alice.public_key_text: "alice@lab"})

    # 2. A link. Two connected in-memory transports stand in for a network connection.
    client_end, server_end = memory_transport_pair()

    # 3. Both ends of the session. The server offers the keypair scheme; the client signs.
    server = ServerChannel(
        server_end, node="station@lab", authenticator=ServerAuthenticator(authorized)
    )
    server.on_command = handle_command
    server.on_message = lambda message: print(f"server: message {message.content!r}")
    client = ClientChannel(client_end, node="alice@lab/laptop", identity=alice)
    await asyncio.gather(server.establish_session(), client.establish_session())
    print(f"client: established as {client.local_node} with {client.remote_node}")
    print(f"server: peer authenticated as {server.remote_identity}")

    # 4. Commands. get and set return the response; a failure raises CommandFailed.
    reply = await client.get("/params/temp")
    print(f"client: get /params/temp -> {reply.resource}")
    await client.set("/params/temp", 19.0)
    print(f"client: set /params/temp 19.0 -> {(await client.get('/params/temp')).resource}")
    try:
        await client.get("/params/wind")
    except CommandFailed as error:
        print(f"client: get /params/wind failed with code {error.reason.code}")

    # 5. A message with an id: the server's channel answers with receipts on its own.
    receipts: asyncio.Queue[Notification] = asyncio.Queue()
    client.on_notification = receipts.put_nowait
    await client.send_message(Message("text/plain", "hello station", id="m1"))
    for _ in range(2):
        receipt = await asyncio.wait_for(receipts.get(), timeout=5)
        print(f"client: receipt for {receipt.id}: {receipt.event}")

    # 6. A subscription. The response carries the current value; updates arrive as observe.
    updates: asyncio.Queue[Command] = asyncio.Queue()
    reply = await client.subscribe("/params/temp", updates.put_nowait)
    print(f"client: subscribed, current value {reply.resource}")
    await server.send(Command("observe", "/params/temp", type="application/json", resource=18.5))
    update = await asyncio.wait_for(updates.get(), timeout=5)
    print(f"client: update {update.uri} -> {update.resource}")

    # 7. A clean end: the client asks to finish, the server answers finished.
    await client.finish()
    await asyncio.wait_for(server.wait_closed(), timeout=5)
    print(f"client: session {client.state}; server: session {server.state}")


if __name__ == "__main__":
    asyncio.run(main())
