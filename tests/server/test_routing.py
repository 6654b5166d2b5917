"""Routing by address (issue 11, item 5): a message whose ``to`` names another node with a
session on the server is passed on, the sender hears ``dispatched``, and the destination's
receipts come back, under the access rules; over both memory:// and tcp:// (ZeroMQ + CURVE).
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from rain_envelopes.channel import ClientChannel
from rain_envelopes.envelopes import (
    Message,
    Notification,
    NotificationEvent,
    ReasonCode,
)
from rain_envelopes.node import Node
from rain_envelopes.server import AccessPolicy, AccessRule, Parameter
from rain_envelopes.server.routing import MAX_IN_FLIGHT, Switchboard

from .conftest import Keys, client, running_server

#: Seconds any single wait in these tests may take.
WAIT = 5.0


class Inbox:
    """Collects what a channel receives, with a wait for the n-th item that matches."""

    def __init__(self, channel: ClientChannel) -> None:
        self.messages: list[Message] = []
        self.notes: list[Notification] = []
        self._changed = asyncio.Condition()
        channel.on_message = self._message
        channel.on_notification = self._note

    async def _message(self, message: Message) -> None:
        async with self._changed:
            self.messages.append(message)
            self._changed.notify_all()

    async def _note(self, note: Notification) -> None:
        async with self._changed:
            self.notes.append(note)
            self._changed.notify_all()

    async def events(self, message_id: str, *events: NotificationEvent) -> list[Notification]:
        """Wait until notifications about ``message_id`` with each of ``events`` arrived."""
        def arrived() -> bool:
            have = {n.event for n in self.notes if n.id == message_id}
            return all(event in have for event in events)

        async with asyncio.timeout(WAIT), self._changed:
            await self._changed.wait_for(arrived)
        return [n for n in self.notes if n.id == message_id]

    async def message_count(self, count: int) -> list[Message]:
        async with asyncio.timeout(WAIT), self._changed:
            await self._changed.wait_for(lambda: len(self.messages) >= count)
        return self.messages


async def test_a_message_to_another_node_arrives_with_receipts_back(
    keys: Keys, kind: str
) -> None:
    async with running_server([Parameter("x", value=1)], keys, kind) as server:
        alice = await client(server, keys, keys.alice)
        bob = await client(server, keys, keys.bob)
        alice_in, bob_in = Inbox(alice), Inbox(bob)
        assert bob.local_node is not None
        assert alice.local_node is not None
        # Alice claims to be someone else: the server passes on what it proved instead.
        await alice.send_message(Message(
            "text/plain", "the magnetometer needs a look", id="m1", to=Node.parse("bob@irf"),
            from_=Node.parse("mallory@irf/x"), pp=Node.parse("carol@elsewhere/y"),
        ))
        [got] = await bob_in.message_count(1)
        assert got.content == "the magnetometer needs a look"
        assert got.from_ == alice.local_node  # proven, with the instance the server gave
        assert got.pp is None  # never passed on: receipts cannot be aimed at a third node
        assert got.to == bob.local_node
        notes = await alice_in.events(
            "m1", NotificationEvent.DISPATCHED, NotificationEvent.RECEIVED,
            NotificationEvent.CONSUMED,
        )
        by_event = {n.event: n for n in notes}
        assert by_event[NotificationEvent.DISPATCHED].from_ == server.node
        assert by_event[NotificationEvent.RECEIVED].from_ == bob.local_node
        assert by_event[NotificationEvent.CONSUMED].from_ == bob.local_node
        # The application handler of the server never saw it, and the route was forgotten
        # at the final receipt.
        assert server.switchboard._routes == {}
        await alice.finish()
        await bob.finish()


async def test_a_message_to_an_instance_goes_to_that_session_only(keys: Keys) -> None:
    async with running_server([Parameter("x", value=1)], keys, "memory") as server:
        alice = await client(server, keys, keys.alice)
        bob1 = await client(server, keys, keys.bob)
        bob2 = await client(server, keys, keys.bob)
        in1, in2 = Inbox(bob1), Inbox(bob2)
        alice_in = Inbox(alice)
        assert bob2.local_node is not None
        await alice.send_message(Message("text/plain", "for two", id="a", to=bob2.local_node))
        await alice.send_message(Message("text/plain", "for any", id="b", to=Node.parse("bob@irf")))
        await alice_in.events("a", NotificationEvent.CONSUMED)
        await alice_in.events("b", NotificationEvent.CONSUMED)
        assert [m.content for m in in2.messages] == ["for two"]
        # No instance: the identity's earliest session.
        assert [m.content for m in in1.messages] == ["for any"]
        for channel in (alice, bob1, bob2):
            await channel.finish()


async def test_messages_from_one_sender_keep_their_order(keys: Keys, kind: str) -> None:
    async with running_server([Parameter("x", value=1)], keys, kind) as server:
        alice = await client(server, keys, keys.alice)
        bob = await client(server, keys, keys.bob)
        bob_in = Inbox(bob)
        for i in range(200):
            await alice.send_message(Message("application/json", i, to=Node.parse("bob@irf")))
        got = await bob_in.message_count(200)
        assert [m.content for m in got] == list(range(200))
        await alice.finish()
        await bob.finish()


async def test_no_session_for_the_node_fails_with_42(keys: Keys, kind: str) -> None:
    async with running_server([Parameter("x", value=1)], keys, kind) as server:
        alice = await client(server, keys, keys.alice)
        alice_in = Inbox(alice)
        nobody = Node.parse("nobody@irf")
        await alice.send_message(Message("text/plain", "hello?", id="m", to=nobody))
        [failed] = await alice_in.events("m", NotificationEvent.FAILED)
        assert failed.reason is not None
        assert failed.reason.code == ReasonCode.ROUTING_DESTINATION_NOT_FOUND
        # A message without an id asks for nothing and gets nothing (but is still logged).
        await alice.send_message(Message("text/plain", "hello?", to=Node.parse("nobody@irf")))
        assert (await alice.get("/params/x")).resource["value"] == 1  # the session goes on
        assert [n.id for n in alice_in.notes] == ["m"]
        await alice.finish()


async def test_access_rules_decide_who_may_message_whom(keys: Keys) -> None:
    access = AccessPolicy([
        AccessRule("alice@irf", "/nodes/bob@irf", frozenset({"message"})),
        AccessRule("bob@irf", "/params/*", frozenset({"get"})),
    ])
    async with running_server([Parameter("x", value=1)], keys, "memory", access=access) as server:
        alice = await client(server, keys, keys.alice)
        bob = await client(server, keys, keys.bob)
        carol = await client(server, keys, keys.carol)
        alice_in, bob_in, carol_in = Inbox(alice), Inbox(bob), Inbox(carol)
        await alice.send_message(Message("text/plain", "ok", id="1", to=Node.parse("bob@irf")))
        await alice_in.events("1", NotificationEvent.CONSUMED)
        # Bob has rules, none granting message: 35. Carol has none at all: 32.
        await bob.send_message(Message("text/plain", "no", id="2", to=Node.parse("alice@irf")))
        await carol.send_message(Message("text/plain", "no", id="3", to=Node.parse("bob@irf")))
        [refused_bob] = await bob_in.events("2", NotificationEvent.FAILED)
        [refused_carol] = await carol_in.events("3", NotificationEvent.FAILED)
        assert refused_bob.reason is not None
        assert refused_bob.reason.code == ReasonCode.AUTHORIZATION_PERMISSION_REQUIRED
        assert refused_carol.reason is not None
        assert refused_carol.reason.code == ReasonCode.AUTHORIZATION_UNAUTHORIZED_SENDER
        assert [m.content for m in bob_in.messages] == ["ok"]
        assert alice_in.messages == []
        for channel in (alice, bob, carol):
            await channel.finish()


async def test_a_notification_that_answers_nothing_routed_is_dropped(
    keys: Keys, caplog: pytest.LogCaptureFixture
) -> None:
    async with running_server([Parameter("x", value=1)], keys, "memory") as server:
        alice = await client(server, keys, keys.alice)
        bob = await client(server, keys, keys.bob)
        alice_in = Inbox(alice)
        with caplog.at_level(logging.INFO, logger="rain.server"):
            # Bob forges a receipt for a message Alice never sent him.
            await bob.send_notification(Notification(
                NotificationEvent.CONSUMED, id="forged", to=Node.parse("alice@irf")))
            # A real exchange after it, so we know the forged one was processed first.
            await bob.send_message(Message("text/plain", "hi", id="h", to=Node.parse("alice@irf")))
            await Inbox(bob).events("h", NotificationEvent.CONSUMED)
        assert all(n.id != "forged" for n in alice_in.notes)
        assert any("it answers no message routed there" in r.getMessage() for r in caplog.records)
        await alice.finish()
        await bob.finish()


async def test_a_destination_that_is_not_reading_is_bounded(keys: Keys) -> None:
    """Past MAX_IN_FLIGHT envelopes waiting for one destination, the sender hears 51."""
    async with running_server([Parameter("x", value=1)], keys, "memory") as server:
        alice = await client(server, keys, keys.alice)
        bob = await client(server, keys, keys.bob)
        alice_in = Inbox(alice)
        board: Switchboard = server.switchboard
        assert bob.local_node is not None
        # As if MAX_IN_FLIGHT sends to bob were stuck behind a full link.
        board._in_flight[bob.local_node] = MAX_IN_FLIGHT
        await alice.send_message(Message("text/plain", "x", id="busy", to=bob.local_node))
        [failed] = await alice_in.events("busy", NotificationEvent.FAILED)
        assert failed.reason is not None
        assert failed.reason.code == ReasonCode.DISPATCH_ERROR
        del board._in_flight[bob.local_node]
        await alice.finish()
        await bob.finish()


async def test_a_message_for_the_server_itself_still_reaches_its_handler(keys: Keys) -> None:
    async with running_server([Parameter("x", value=1)], keys, "memory") as server:
        seen: asyncio.Queue[Message] = asyncio.Queue()
        server.on_message = lambda session, message: seen.put_nowait(message)
        alice = await client(server, keys, keys.alice)
        alice_in = Inbox(alice)
        station = Node.parse("station@irf")
        await alice.send_message(Message("text/plain", "to you", id="s", to=station))
        await alice.send_message(Message("text/plain", "no to", id="t"))
        async with asyncio.timeout(WAIT):
            first, second = await seen.get(), await seen.get()
        assert (first.content, second.content) == ("to you", "no to")
        await alice_in.events("s", NotificationEvent.CONSUMED)
        assert not any(n.event is NotificationEvent.DISPATCHED for n in alice_in.notes)
        await alice.finish()
