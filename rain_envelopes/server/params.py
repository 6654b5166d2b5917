"""The ``/params`` resource: list, get, set, subscribe and unsubscribe parameters.

- ``get /params``: a collection of parameter descriptors, showing only what the caller may use;
- ``get | set | subscribe | unsubscribe /params/{name}``: sample documents.

Each handler is reached through the request pipeline (pipeline.py), so the request has passed
expiry, URI, access and route; each refuses by raising CommandRefused (67 no such parameter,
66 read-only, 64 a value the schema refuses, 34 too many subscriptions; plugin code's own
ParameterError, or 101 from live.py) and never builds a failure itself. What can be answered on
the spot (the list, a stored value, an unsubscribe) is returned as a Command; what runs plugin
code (a getter, a set, a subscription's snapshot) is returned as a coroutine, so a slow getter
delays nobody else.

A set, with a state file and a command id (see pipeline.py for the exactly-once path): under
the parameter's set lock, just before the setter, the expiry is checked again and an *in
progress* record is committed; after the setter, the outcome (a refusal too, once the setter
ran) and the new value are committed in one transaction, and only then is the set answered.
Store calls go through the server's single store worker, submitted with no await since the
setter returned, so the sets of one parameter are committed in the order they were applied.

A subscription is registered and snapshotted with no await in between (every later sample is
queued for it, every earlier one is in the snapshot), and its snapshot is sent before its first
``observe``.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Coroutine, Mapping
from typing import TYPE_CHECKING, Any

import fastjsonschema

from ..codec import encode
from ..envelopes import Command, CommandMethod, ReasonCode, SessionCompression
from ..errors import (
    ChannelClosed,
    CommandRefused,
    InvalidValue,
    LocalProtocolError,
    NotAllowed,
    StateStoreError,
    TransportError,
)
from .dedup import fingerprint
from .live import LiveParameter
from .pipeline import Handler, Request, Response, check_expiry
from .router import Router
from .samples import COLLECTION_TYPE, PARAMETER_TYPE, SAMPLE_TYPE, Sample, collection
from .subscriptions import Subscription

if TYPE_CHECKING:
    from .server import Server

__all__ = ["ParamsResource"]

log = logging.getLogger("rain.server")


def _value_of(command: Command) -> Any:
    if command.resource is None:
        raise InvalidValue("set needs a value: the command has no resource")
    media = (command.type or "").split(";", 1)[0].strip().lower()
    if media == SAMPLE_TYPE:
        if not isinstance(command.resource, Mapping) or "value" not in command.resource:
            raise InvalidValue("a sample document needs a 'value'")
        return command.resource["value"]
    return command.resource


class ParamsResource:
    """The handlers of ``/params`` and ``/params/{name}`` for one server's parameters."""

    def __init__(self, server: Server) -> None:
        self._server = server

    def register(self, router: Router[Handler]) -> None:
        router.add("/params", CommandMethod.GET, self.list_parameters)
        router.add("/params/{name}", CommandMethod.GET, self.get)
        router.add("/params/{name}", CommandMethod.SET, self.set)
        router.add("/params/{name}", CommandMethod.SUBSCRIBE, self.subscribe)
        router.add("/params/{name}", CommandMethod.UNSUBSCRIBE, self.unsubscribe)

    def _lookup(self, request: Request) -> LiveParameter:
        name = request.params["name"]
        live = self._server._live.get(name)
        if live is None:
            raise CommandRefused(
                f"no parameter {name!r}", code=ReasonCode.COMMAND_RESOURCE_NOT_FOUND
            )
        return live

    # ------------------------------------------------------------------ list, get

    def list_parameters(self, request: Request) -> Command:
        access = self._server.access
        live_parameters = self._server._live
        items = []
        for name in sorted(live_parameters):
            declaration = live_parameters[name].declaration
            path = f"/params/{name}"
            allowed = [m for m in declaration.methods if access.allows(request.identity, m, path)]
            if not allowed:
                continue  # what you may not touch, you are not shown
            descriptor = declaration.descriptor()
            descriptor["methods"] = allowed
            items.append(descriptor)
        return request.command.success(collection(PARAMETER_TYPE, items), COLLECTION_TYPE)

    def get(self, request: Request) -> Command | Coroutine[Any, Any, Response]:
        live = self._lookup(request)
        if live.declaration.get_function is None and live.last is not None:
            return request.command.success(live.last.document(), SAMPLE_TYPE)
        return self._read(request.command, live)

    @staticmethod
    async def _read(command: Command, live: LiveParameter) -> Response:
        sample = await live.read()
        return command.success(sample.document(), SAMPLE_TYPE)

    # ------------------------------------------------------------------ set

    def set(self, request: Request) -> Coroutine[Any, Any, Response]:
        live = self._lookup(request)
        declaration = live.declaration
        if not declaration.settable:
            raise NotAllowed(f"parameter {live.name!r} is read-only")
        value = _value_of(request.command)
        try:
            declaration.validate(value)
        except fastjsonschema.JsonSchemaValueException as exc:
            message = exc.message
            if message.startswith("data"):
                message = live.name + message[len("data"):]
            raise InvalidValue(f"invalid value: {message}") from None
        except fastjsonschema.JsonSchemaException as exc:
            raise InvalidValue(f"invalid value: {exc}") from None
        return self._write(request, live, value)

    async def _write(self, request: Request, live: LiveParameter, value: Any) -> Response:
        """Apply a checked value; with a state file, record it (see the module docstring)."""
        server = self._server
        command = request.command
        store = server._store
        recorded = store is not None and command.id is not None
        # An intent is recorded only where applying acts outside the transaction (a setter);
        # a stored value is published and recorded with nothing in between to lose.
        intent = recorded and live.declaration.set_function is not None
        digest = fingerprint(command) if recorded else b""
        reached = False

        async def before() -> None:
            nonlocal reached
            check_expiry(command)
            if intent:
                assert store is not None
                assert command.id is not None
                try:
                    await server._in_store(
                        store.begin_set, request.identity, command.id, digest, time.time()
                    )
                except StateStoreError as exc:
                    log.error("%s", exc)
                    raise CommandRefused(
                        "the server's state file failed; the set was not applied",
                        code=ReasonCode.COMMAND_PROCESSING_ERROR,
                    ) from None
            reached = True

        try:
            sample = await live.write(value, before=before)
        except CommandRefused as refusal:
            if recorded and reached:  # the setter ran (or is still running): its outcome
                # Recorded as the channel will answer it, for a retry to be answered alike.
                await self._record(request, None, None, digest, command.failure(refusal.reason))
            raise
        response = command.success(sample.document(), SAMPLE_TYPE)
        if store is not None:
            # Submitted with no await since the setter returned: the single store worker
            # commits the sets of one parameter in the order they were applied.
            name = live.name if live.declaration.persists else None
            if recorded:
                await self._record(request, name, sample, digest, response)
            elif name is not None:
                await self._store_quietly(
                    store.store_value, name, sample.value, sample.timestamp, sample.seq
                )
        return response

    async def _record(
        self,
        request: Request,
        name: str | None,
        sample: Sample | None,
        digest: bytes,
        response: Command,
    ) -> None:
        store = self._server._store
        assert store is not None
        assert request.command.id is not None
        call = functools.partial(
            store.apply_set, request.identity, request.command.id, name,
            None if sample is None else sample.value, digest, encode(response), time.time(),
            timestamp=None if sample is None else sample.timestamp,
            seq=None if sample is None else sample.seq,
        )
        await self._store_quietly(call)

    async def _store_quietly(self, function: Callable[..., object], *args: Any) -> None:
        # The set has been applied: it is answered as it went even when the file fails now;
        # the failure is the operator's to see (a retry after a restart then gets 61).
        try:
            await self._server._in_store(function, *args)
        except StateStoreError as exc:
            log.error("a set was applied but not recorded: %s", exc)

    # ------------------------------------------------------------------ subscriptions

    def subscribe(self, request: Request) -> Coroutine[Any, Any, Response]:
        live = self._lookup(request)
        session = request.session
        limit = self._server.limits.max_subscriptions
        if live.name not in session.subscriptions and len(session.subscriptions) >= limit:
            raise CommandRefused(
                f"at most {limit} subscriptions per session",
                code=ReasonCode.AUTHORIZATION_QUOTA_EXCEEDED,
            )
        return self._start_subscription(request, live)

    async def _start_subscription(self, request: Request, live: LiveParameter) -> Response:
        session = request.session
        command = request.command
        await live.snapshot()
        if session.closed or self._server._closing:
            return None
        previous = session.subscriptions.pop(live.name, None)
        if previous is not None:
            previous.close()
            live.subscriptions.discard(previous)
        channel = session.channel
        # Through a broker each sample can leave once for all subscribers (Transport.fanout);
        # a compressing session cannot share the bytes, so it is always sent to directly.
        fanout = (
            channel.transport.fanout(live.name, command.uri or "")
            if channel.compression is SessionCompression.NONE
            else None
        )
        subscription = Subscription(
            live.name, command.uri or "", session.channel.send,
            maxlen=self._server.limits.queue_length,
            # Each sample is encoded once per URI text and the same bytes go to everyone.
            cache=live.observes, send_encoded=session.channel.send_encoded, fanout=fanout,
            members=live.subscriptions,
        )
        # Registered and snapshotted with no await in between: every later sample is queued,
        # every earlier one is in the snapshot.
        session.subscriptions[live.name] = subscription
        live.subscriptions.add(subscription)
        assert live.last is not None
        response = command.success(live.last.document(), SAMPLE_TYPE)
        try:
            # Sent here, not returned: the snapshot must leave before the first observe.
            await session.channel.send(response)
        except (ChannelClosed, LocalProtocolError, TransportError):
            subscription.close()
            live.subscriptions.discard(subscription)
            session.subscriptions.pop(live.name, None)
            return None
        subscription.start()
        return None

    def unsubscribe(self, request: Request) -> Command:
        live = self._lookup(request)
        subscription = request.session.subscriptions.pop(live.name, None)
        if subscription is not None:
            subscription.close()
            live.subscriptions.discard(subscription)
        return request.command.success()
