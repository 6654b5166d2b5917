"""Channels: the asyncio shell around the sans-I/O protocol objects.

One reader task per channel takes every queued frame in one call (``transport.receive_batch()``),
feeds each to the protocol and dispatches what it reports, then flushes all the replies once
(``send_batch``): command responses resolve the future registered under the request id
(``pending`` is never final); a :class:`~rain_envelopes.protocol.RequestFailed` event fails it
(a peer's ``failed`` notification about it, or a response that could not be read); ``observe``
commands go to subscription callbacks for their exact URI; other commands go to ``on_command``,
messages to ``on_message``, notifications to ``on_notification``. Callbacks may be plain
functions or coroutine functions; their exceptions are logged, never fatal to the channel.

The LIME rules are the protocol's, not the channel's: it answers ``get /ping`` (which never
reaches the application), sends ``received`` receipts and decides which messages want receipts
at all. The channel only tells it how a message handler ended.

The message handler contract. ``on_message(message)`` returns anything (ignored) or an
awaitable; when it returns, or its awaitable finishes, without raising, the channel reports the
message consumed (``protocol.message_consumed``); when it raises, it is logged and the message
is reported failed (``protocol.message_failed``: 101 "the message handler failed"). The
protocol sends the ``consumed`` or ``failed`` receipt when the message wants receipts. With no
``on_message`` a message gets only its ``received`` receipt.

The command handler contract. ``on_command(command)`` returns the response (a Command, sent
as is), None (no answer), or an awaitable of either; or it raises. A
:class:`~rain_envelopes.errors.CommandRefused`, raised at once or by the awaitable, is
answered with ``command.failure(refusal.reason)``; anything else is logged with its traceback
and answered with ``handler_fault`` (101 "the handler failed" unless the owner chose another);
an error from this channel's own link after the session ended is not answered at all. These
mappings are made in one place (``_refusal``), so a handler never builds a failure for an error.

A peer's requests cost tasks only within a bound: while ``max_requests_in_progress`` requests
of this channel have an ``on_command`` answer in the works (the handler returned an awaitable
that has not finished), every further request is refused at once, before the handler runs,
with code 34 (AUTHORIZATION_QUOTA_EXCEEDED: the peer may try again once it has its answers).
A request counts from the moment its handler returns an awaitable until that awaitable ends.
Pings (answered by the protocol), responses and observes never count. The bound is
here rather than in the server because this is where the tasks are made: any handler, not only
the RAIN server's, is covered, and the refusal needs no cooperation from it. The number is
policy: None (the default for a channel made by hand) means no bound; the RAIN server passes
``limits.max_requests_in_progress``.

What a request costs. A handler that answers at once (a Command, or None) is answered inline,
in the reader's wake-up: no task, no future, and the reply leaves in the batch's one flush. Only
a handler that returns an awaitable costs more. A coroutine runs in one task, whose last step
queues and flushes the answer, so no loop turn passes between the answer and its sending (a
task made on the coroutine itself, with the answer sent by a done-callback, would cost the
same task and two loop turns more per answer: measured, about 10-15 us of round trip). A
future is only watched: no task, a done-callback queues the answer, and the channel's writer
(one task per channel, started the first time it is needed) sends every answer queued since
its last turn in one ``send_batch``. Message handlers (their receipts) go the same two ways;
an awaitable notification or observe callback, which answers nothing, is only watched.

Everything a peer can make a channel log (frames that break the protocol, replies dropped for
a full peer queue, requests over the bound) goes through a :class:`~rain_envelopes.peerlog.
PeerLog`, keyed by the peer's proven identity or key, else its address: one line per kind and
peer per interval, then one summary with the count. A server hands its channels its own
PeerLog and flushes it from a timer; a channel used alone has its own, whose summaries are
written by the next event after the interval.

How a channel ends, and what it says afterwards (``close_reason``, ``state``, ``link_lost``):

=======================================  ==========================  ==========  =========
how it ended                             close_reason                state       link_lost
=======================================  ==========================  ==========  =========
``finished`` (either side asked)         None                        finished    False
``failed`` sent or received              the Reason                  failed      False
:meth:`close` on this side               None                        finished    False
link lost under a live session           code 11, "link lost: ..."   failed      True
link lost after we sent ``finishing``    None                        finished    False
no answer to keepalive pings             code 11, "peer did not..."  failed      False
=======================================  ==========================  ==========  =========

A lost link is the transport ending (peer gone, connection reset, heartbeats timed out) while
the session was live. It is not a clean finish, so it has a reason; but the peer never said
``failed``, so requests waiting on the channel get ChannelClosed (not SessionFailed). ``state``
is read from the protocol while the channel is open; once it has closed, a state the protocol
left live never shows: it reads ``failed`` with a reason and ``finished`` without one.

Invariants:
- every pending request is failed (ChannelClosed, or SessionFailed with the reason) when the
  session ends, and a timeout is raised in the caller's task, never in a callback;
- receipts go only for messages that carry an id and were meant for us, to ``pp`` else ``from``
  (the protocol's rule);
- command ids are a per-channel random prefix plus a counter (cheap, unique per session);
- frames leave in the order the protocol queued them: a flush sends the whole queue with one
  ``send_batch``, and a flush that comes while another waits for room waits behind it.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from .auth import ClientCredentials, ServerAuthenticator
from .envelopes import (
    Command,
    CommandMethod,
    CommandStatus,
    Envelope,
    Message,
    Notification,
    Reason,
    ReasonCode,
    Session,
    SessionCompression,
    SessionEncryption,
    SessionState,
)
from .errors import (
    AuthenticationFailed,
    ChannelClosed,
    CommandFailed,
    CommandRefused,
    CommandTimeout,
    EstablishTimeout,
    LocalProtocolError,
    QueueFull,
    RemoteProtocolError,
    SessionError,
    SessionFailed,
    TransportClosed,
    TransportError,
)
from .keys import Identity
from .node import Node
from .peerlog import PeerLog
from .protocol import (
    DEFAULT_COMPRESSION_OPTIONS,
    PING_MEDIA_TYPE,
    PING_URI,
    ClientProtocol,
    NodeRegistry,
    RequestFailed,
    ServerProtocol,
    _Protocol,
)
from .transport import ClientSecurity, Transport, transport_factory

__all__ = [
    "PING_MEDIA_TYPE",
    "Channel",
    "ClientChannel",
    "ServerChannel",
    "connect",
]

log = logging.getLogger("rain.channel")

_T = TypeVar("_T")
MessageHandler = Callable[[Message], object]
NotificationHandler = Callable[[Notification], object]
#: Returns the response (or None to send none); may be a coroutine function.
CommandHandler = Callable[[Command], "Command | Awaitable[Command | None] | None"]
ObserveCallback = Callable[[Command], object]


def _expire(future: asyncio.Future[Any]) -> None:
    if not future.done():
        future.set_exception(TimeoutError())


def _close_unstarted(coroutine: Any, depth: int = 4) -> None:
    # A handler's task cancelled before its first step (the session ended right after the
    # request arrived) never runs its coroutine, nor any coroutine that one was handed as an
    # argument to await (a server's wrapper around its resource's work): close them all, or
    # Python warns that they were never awaited. Called at shutdown only, so it costs the hot
    # path nothing.
    if depth < 1 or inspect.getcoroutinestate(coroutine) != inspect.CORO_CREATED:
        return
    frame = coroutine.cr_frame
    arguments = list(frame.f_locals.values()) if frame is not None else []
    coroutine.close()
    for value in arguments:
        if inspect.iscoroutine(value):
            _close_unstarted(value, depth - 1)


_ENDED = (SessionState.FINISHED, SessionState.FAILED)


def _normalise_uri(uri: str) -> str:
    # LIME: a trailing '/' is ignored.
    return uri[:-1] if len(uri) > 1 and uri.endswith("/") else uri


class Channel:
    """What client and server channels share. Not made directly: use a subclass."""

    _protocol: _Protocol

    def __init__(
        self,
        transport: Transport,
        *,
        command_timeout: float = 10.0,
        establish_timeout: float = 30.0,
        ping_interval: float | None = None,
        ping_timeout: float = 5.0,
        max_requests_in_progress: int | None = None,
        peer_log: PeerLog | None = None,
    ) -> None:
        if max_requests_in_progress is not None and max_requests_in_progress < 1:
            raise ValueError("max_requests_in_progress must be at least 1 (or None)")
        self.transport = transport
        self.command_timeout = command_timeout
        self.establish_timeout = establish_timeout
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.on_message: MessageHandler | None = None
        self.on_notification: NotificationHandler | None = None
        self.on_command: CommandHandler | None = None
        #: The reason a request is answered with when its handler raises anything but
        #: CommandRefused (the traceback goes to the log, never to the peer).
        self.handler_fault = Reason(ReasonCode.APPLICATION_ERROR, "the handler failed")
        #: Requests the peer may have in the works at once (see the module docstring).
        self.max_requests_in_progress = max_requests_in_progress
        self._in_progress = 0
        # Where what the peer can make us log goes: one line per kind per interval.
        self._peer_log = peer_log or PeerLog(log)
        self._pending: dict[str, asyncio.Future[Command]] = {}
        self._subscriptions: dict[str, list[ObserveCallback]] = {}
        self._id_prefix = os.urandom(4).hex() + "-"
        self._id_counter = itertools.count(1)
        # Flush ordering (see _flush): True while a flush is in send_batch; flushes that come
        # meanwhile wait on a future of their own in _flush_waiters.
        self._flushing = False
        self._flush_waiters: list[asyncio.Future[None]] = []
        # What handlers and callbacks left running (their tasks, or the futures they returned):
        # cancelled at shutdown.
        self._tasks: set[asyncio.Future[Any]] = set()
        # The writer (see _flush_soon): flushes what was queued outside the reader.
        self._writer: asyncio.Task[None] | None = None
        self._write_wanted = asyncio.Event()
        self._flush_scheduled = False
        self._reader: asyncio.Task[None] | None = None
        self._keepalive: asyncio.Task[None] | None = None
        self._established: asyncio.Future[None] | None = None
        self._closed = asyncio.Event()
        self._closing = False
        self._last_received = 0.0
        #: Why the channel ended, once it has: None for a clean finish (`finished`, or
        #: `close()` on this side), else the Reason (code 11 "link lost: ..." when the
        #: link ended under a live session).
        self.close_reason: Reason | None = None
        self._link_lost = False

    # ------------------------------------------------------------------ state, for the caller

    @property
    def session(self) -> Session | None:
        """The ``established`` session envelope, once established."""
        return self._protocol.established

    @property
    def session_id(self) -> str | None:
        return self._protocol.session_id

    @property
    def local_node(self) -> Node | None:
        return self._protocol.local_node

    @property
    def remote_node(self) -> Node | None:
        return self._protocol.remote_node

    @property
    def state(self) -> SessionState:
        """The session state; never ``established`` (or another live state) once closed.

        While the channel is open this is the protocol's state. Once it has ended, a state the
        protocol left live (the link was lost, or the channel was closed without the finishing
        handshake) reads ``failed`` when there is a :attr:`close_reason` and ``finished`` when
        there is none (closed on purpose by this side).
        """
        state = self._protocol.state
        if self._closing and state not in _ENDED:
            return SessionState.FAILED if self.close_reason is not None else SessionState.FINISHED
        return state

    @property
    def link_lost(self) -> bool:
        """True once the channel has ended because its link was lost under a live session
        (no ``finished`` or ``failed`` came): ``close_reason`` is then code 11 "link lost"."""
        return self._link_lost

    @property
    def compression(self) -> SessionCompression:
        return self._protocol.compression

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    async def wait_closed(self) -> None:
        """Wait until the channel has ended (finished, failed or link lost)."""
        await self._closed.wait()

    def new_id(self) -> str:
        """A fresh id for an envelope sent on this channel."""
        return f"{self._id_prefix}{next(self._id_counter)}"

    # ---------------------------------------------------------------------------- sending

    async def _flush(self, *, on_full: Callable[[QueueFull], None] | None = None) -> None:
        # Everything the protocol has queued goes out in one send_batch. The common case (the
        # transport has room, so send_batch never suspends) takes no lock and makes no future:
        # nothing can run between taking the frames and sending them. Only while a flush is
        # suspended in send_batch, waiting for room, do later flushes wait for it to end, so
        # frames still leave in the order the protocol queued them.
        #
        # A frame that meets QueueFull is dropped. Without ``on_full`` the error goes to whoever
        # flushed and the rest of the batch (perhaps other callers' frames) waits for the next
        # flush. The reader passes ``on_full``: each frame that does not fit is dropped and
        # reported to it, and the rest is tried at once, so replies to a peer that does not
        # read never pile up (one batch in, one batch of replies out or dropped).
        while self._flushing:
            waiter = asyncio.get_running_loop().create_future()
            self._flush_waiters.append(waiter)
            await waiter
        if not self._protocol.has_data_to_send:
            return  # nothing queued (or a flush we waited for took ours): no await
        frames = self._protocol.data_to_send()
        self._flushing = True
        try:
            while frames:
                try:
                    await self.transport.send_batch(frames)
                except QueueFull as exc:
                    if on_full is None:
                        self._protocol.requeue(frames[1:])
                        raise
                    on_full(exc)
                    del frames[0]
        finally:
            self._flushing = False
            if self._flush_waiters:
                waiters, self._flush_waiters = self._flush_waiters, []
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_result(None)

    async def send(self, envelope: Envelope) -> None:
        """Send any envelope as it is (no response awaited).

        Raises LocalProtocolError when the session state forbids it (e.g. before
        ``established``), ChannelClosed once the channel has ended, TransportError on a
        failed link (QueueFull when the peer's queue is full).
        """
        if self.closed:
            raise ChannelClosed("the channel has ended")
        self._protocol.send(envelope)
        await self._flush()

    async def send_encoded(self, envelope: Envelope, data: bytes) -> None:
        """Send ``envelope`` as ``data``, its encoding made once for many sessions (a published
        sample goes to every subscriber as the same bytes).

        The session state is checked as :meth:`send` checks it, and it raises as :meth:`send`
        does. ``data`` must be ``encode(envelope)``; a session that compresses encodes
        ``envelope`` itself.
        """
        if self.closed:
            raise ChannelClosed("the channel has ended")
        protocol = self._protocol
        if protocol.compression is not SessionCompression.NONE:
            protocol.send(envelope)
        else:
            protocol.machine.send(envelope)  # LocalProtocolError when the state forbids it
            queued = protocol.data_to_send()
            queued.append(data)
            protocol.requeue(queued)  # behind whatever was queued before it
        await self._flush()

    async def send_message(self, message: Message) -> None:
        """Send a message. With an ``id`` the peer answers with receipts (``on_notification``)."""
        await self.send(message)

    async def send_notification(self, notification: Notification) -> None:
        await self.send(notification)

    async def send_command(self, command: Command, *, timeout: float | None = None) -> Command:
        """Send a command request and return its response, whatever its status.

        An id is assigned when the command has none. Raises CommandTimeout (also a
        TimeoutError) when no final response arrives within ``timeout`` (default
        ``command_timeout``), ChannelClosed or SessionFailed when the session ends first,
        EnvelopeDecodeError when the response arrived but could not be read.
        """
        if command.is_response or command.method is CommandMethod.OBSERVE:
            raise LocalProtocolError("send_command is for requests; use send() for one-way ones")
        if command.id is None:
            command = command.replace(id=self.new_id())
        assert command.id is not None
        if command.id in self._pending:
            raise LocalProtocolError(f"a request with id {command.id!r} is already pending")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Command] = loop.create_future()
        self._pending[command.id] = future
        try:
            await self.send(command)
            # One timer handle, no Timeout context: expiry fails the future, so TimeoutError
            # is still raised here, in the caller's task.
            timer = loop.call_later(
                self.command_timeout if timeout is None else timeout, _expire, future
            )
            try:
                return await future
            finally:
                timer.cancel()
        except TimeoutError:
            raise CommandTimeout(
                f"no response to {command.method.value} {command.uri} within "
                f"{self.command_timeout if timeout is None else timeout:g} s"
            ) from None
        finally:
            self._pending.pop(command.id, None)

    async def _request(
        self, method: CommandMethod, uri: str, timeout: float | None, **fields: Any
    ) -> Command:
        response = await self.send_command(
            Command(method, uri, id=self.new_id(), **fields), timeout=timeout
        )
        if response.status is CommandStatus.FAILURE:
            assert response.reason is not None
            raise CommandFailed(response.reason, response)
        return response

    async def get(self, uri: str, *, timeout: float | None = None) -> Command:
        """GET ``uri``; returns the success response (``.resource`` holds the value).

        Raises CommandFailed (with ``.reason``) on failure, CommandTimeout, ChannelClosed.
        """
        return await self._request(CommandMethod.GET, uri, timeout)

    async def set(
        self,
        uri: str,
        value: Any,
        *,
        type: str = "application/json",
        timeout: float | None = None,
    ) -> Command:
        """SET ``uri`` to ``value``; raises like :meth:`get`."""
        return await self._request(CommandMethod.SET, uri, timeout, resource=value, type=type)

    async def delete(self, uri: str, *, timeout: float | None = None) -> Command:
        """DELETE ``uri``; raises like :meth:`get`."""
        return await self._request(CommandMethod.DELETE, uri, timeout)

    async def subscribe(
        self, uri: str, callback: ObserveCallback, *, timeout: float | None = None
    ) -> Command:
        """Subscribe to ``uri``: ``callback(observe_command)`` runs for every update.

        The callback is registered before the request leaves, so no update that follows the
        response can be missed. Returns the response (a RAIN server puts the current sample
        in it). Raises like :meth:`get`; on failure the callback is removed again.
        """
        key = _normalise_uri(uri)
        callbacks = self._subscriptions.setdefault(key, [])
        callbacks.append(callback)
        try:
            return await self._request(CommandMethod.SUBSCRIBE, uri, timeout)
        except BaseException:
            callbacks.remove(callback)
            if not callbacks:
                self._subscriptions.pop(key, None)
            raise

    async def unsubscribe(self, uri: str, *, timeout: float | None = None) -> Command:
        """Unsubscribe from ``uri`` and drop its callbacks; raises like :meth:`get`."""
        self._subscriptions.pop(_normalise_uri(uri), None)
        return await self._request(CommandMethod.UNSUBSCRIBE, uri, timeout)

    async def ping(self, *, timeout: float | None = None) -> float:
        """Round-trip a ``get /ping``; returns the seconds it took. Raises like :meth:`get`."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        await self._request(CommandMethod.GET, PING_URI, timeout)
        return loop.time() - started

    # ---------------------------------------------------------------------------- receiving

    def _start_reader(self) -> None:
        if self._reader is None:
            self._last_received = asyncio.get_running_loop().time()
            self._reader = asyncio.create_task(self._read_loop(), name=f"rain-reader-{self}")

    async def _read_loop(self) -> None:
        reason: Reason | None = None
        loop = asyncio.get_running_loop()
        try:
            while not self._protocol.closed:
                # One wake-up: every frame queued, decoded and dispatched, then one flush.
                frames = await self.transport.receive_batch()
                self._last_received = loop.time()
                # Each frame is dispatched before the next is fed, so replies are queued in
                # exactly the order one frame per wake-up would give (a message's receipts
                # before the next message's); they all leave in the one flush below.
                for data in frames:
                    if self._protocol.closed:
                        break  # a frame ended the session: what came after it is not read
                    try:
                        self._protocol.receive_data(data)
                    except RemoteProtocolError as exc:
                        self._peer_log.event(
                            logging.WARNING, "bad-frame", self._peer_name(),
                            "%s: peer broke the protocol: %s", self, exc,
                        )
                        self._protocol.reply_to_error(exc)
                    self._dispatch_all()
                await self._flush(on_full=self._reply_dropped)
                if self._established is not None and not self._established.done() and (
                    self._protocol.is_established
                ):
                    self._established.set_result(None)
            reason = self._protocol.failure
        except TransportClosed as exc:
            reason = self._protocol.failure
            if not self._protocol.closed and self._protocol.state is not SessionState.FINISHING:
                # The link ended under a live session: neither `finished` nor `failed` came.
                # Not a clean finish, so say so (code 11); waiters get ChannelClosed, as the
                # session did not fail on the peer's word.
                reason = Reason(ReasonCode.SESSION_ERROR, f"link lost: {exc}")
                self._link_lost = True
        except TransportError as exc:
            log.warning("%s: link failed: %s", self, exc)
            reason = Reason(ReasonCode.SESSION_ERROR, f"link failed: {exc}")
        except Exception:  # a bug of ours: log it and end the channel rather than hang
            log.exception("%s: reader failed", self)
            reason = Reason(ReasonCode.GENERAL_ERROR, "internal error in the channel")
        finally:
            if not self._closing:
                await self._shutdown(reason)

    def _reply_dropped(self, error: QueueFull) -> None:
        # A peer that does not read must not end the session from our side.
        self._peer_log.event(
            logging.WARNING, "queue-full", self._peer_name(),
            "%s: peer queue full, a frame was dropped: %s", self, error,
        )

    def _peer_name(self) -> str | None:
        """Who is at the other end, for the peer log: the proven key, else the address."""
        return self.transport.peer_identity or self.transport.peer_address

    def _dispatch_all(self) -> None:
        for event in self._protocol.events_received():
            if isinstance(event, Command):
                self._dispatch_command(event)
            elif isinstance(event, Message):
                self._dispatch_message(event)
            elif isinstance(event, Notification):
                self._dispatch_notification(event)
            elif isinstance(event, RequestFailed):
                self._fail_request(event)

    def _fail_request(self, event: RequestFailed) -> None:
        # The protocol says the answer will not come: end the wait at once rather than leave
        # it to time out. An id with nothing waiting (a receipt about a message) is ignored.
        future = self._pending.get(event.id)
        if future is not None and not future.done():
            future.set_exception(event.error)

    def _dispatch_command(self, command: Command) -> None:
        if command.status is not None:
            if command.status is CommandStatus.PENDING or command.id is None:
                return  # `pending` is never a final answer
            future = self._pending.get(command.id)
            if future is not None and not future.done():
                future.set_result(command)
            else:
                log.debug("%s: response to unknown request %s dropped", self, command.id)
            return
        if command.method is CommandMethod.OBSERVE:
            for callback in list(self._subscriptions.get(_normalise_uri(command.uri or ""), ())):
                self._call(callback, command, "observe callback")
            return
        handler = self.on_command
        if handler is None:
            self._reply(command.failure(
                ReasonCode.COMMAND_RESOURCE_NOT_SUPPORTED, f"no resource {command.uri}"
            ))
            return
        limit = self.max_requests_in_progress
        if limit is not None and self._in_progress >= limit:
            # Refused before the handler runs, so no task, no plugin call, no side effect.
            self._peer_log.event(
                logging.INFO, "request-limit", self._peer_name(),
                "%s: %d requests in progress; refusing more", self, limit,
            )
            self._reply(command.failure(
                ReasonCode.AUTHORIZATION_QUOTA_EXCEEDED,
                f"at most {limit} requests in progress per session",
            ))
            return
        try:
            result = handler(command)
        except Exception as exc:
            result = self._refusal(command, exc)
        if isinstance(result, Command):
            self._reply(result)  # answered inline: no task, no future, flushed with the batch
        elif inspect.isawaitable(result):
            self._in_progress += 1
            if inspect.iscoroutine(result):
                # Work the handler still has to do: one task, whose last step sends the
                # answer, so no loop turn passes between the answer and its flush.
                self._spawn(self._finish_command(command, result))
            else:
                # A future (the handler's work runs elsewhere): no task, only a callback, and
                # the answer leaves with every other one that finished in the same loop turn.
                self._spawn(result).add_done_callback(
                    lambda done: self._command_future_done(command, done)
                )

    async def _finish_command(self, command: Command, pending: Awaitable[Any]) -> None:
        try:
            try:
                result = await pending
            except Exception as exc:
                result = self._refusal(command, exc)
        finally:
            self._in_progress -= 1  # the answer exists (or never will): room for the next one
        if isinstance(result, Command) and not self.closed:
            self._reply(result)
            await self._flush_replies()

    def _command_future_done(self, command: Command, done: asyncio.Future[Any]) -> None:
        self._in_progress -= 1  # as in _finish_command
        if done.cancelled():
            return  # the session ended under it (shutdown cancels what it waits for)
        error = done.exception()
        if error is not None and not isinstance(error, Exception):
            return  # KeyboardInterrupt and the like are the loop's to handle, not a reply
        result = done.result() if error is None else self._refusal(command, error)
        if isinstance(result, Command) and not self.closed:
            self._reply(result)
            self._flush_soon()

    async def _flush_replies(self) -> None:
        # As the reader flushes: a reply meeting a full peer queue is dropped and counted, so
        # replies to a peer that does not read never pile up; a failed link is the reader's
        # to report.
        try:
            await self._flush(on_full=self._reply_dropped)
        except TransportError as exc:
            log.debug("%s: could not flush: %s", self, exc)

    def _flush_soon(self) -> None:
        # For replies queued by a callback (a handler's future finished): the channel's writer
        # flushes them on its next turn, once for every reply queued until then (when the
        # reader's flush takes them first, the writer finds nothing and does not await). The
        # writer is one task for the channel's life, started the first time it is needed, so
        # a reply made this way costs a wake-up, not a task.
        if self._flush_scheduled:
            return
        self._flush_scheduled = True
        if self._writer is None:
            self._writer = asyncio.create_task(self._write_loop(), name=f"rain-writer-{self}")
        else:
            self._write_wanted.set()

    async def _write_loop(self) -> None:
        while not self.closed:
            if not self._flush_scheduled:
                self._write_wanted.clear()
                await self._write_wanted.wait()
                continue
            self._flush_scheduled = False
            await self._flush_replies()

    def _refusal(self, command: Command, error: Exception) -> Command | None:
        """The answer to a request whose handler raised ``error``: the one place where a
        handler's exception becomes a reply (see the module docstring)."""
        if isinstance(error, CommandRefused):
            return command.failure(error.reason)
        if self.closed and isinstance(error, (ChannelClosed, LocalProtocolError, TransportError)):
            log.debug("%s: %s %s ended with the session: %s", self, command.method, command.uri,
                      error)
            return None  # the session ended under the handler: nobody to answer
        log.error(
            "%s: command handler failed for %s %s", self, command.method, command.uri,
            exc_info=error,
        )
        return command.failure(self.handler_fault)

    def _reply(self, envelope: Envelope) -> None:
        # Called from dispatch: queue now, the reader flushes after the batch.
        try:
            self._protocol.send(envelope)
        except LocalProtocolError as exc:
            log.debug("%s: reply dropped: %s", self, exc)

    def _dispatch_message(self, message: Message) -> None:
        # The protocol has queued the `received` receipt; it sends `consumed` or `failed` when
        # told how the handler ended (the handler contract in the module docstring).
        handler = self.on_message
        if handler is None:
            return
        try:
            result = handler(message)
        except Exception:
            log.exception("%s: message handler failed", self)
            self._protocol.message_failed(message)
            return
        if inspect.iscoroutine(result):
            self._spawn(self._finish_message(message, result))  # as _finish_command
        elif inspect.isawaitable(result):
            self._spawn(result).add_done_callback(
                lambda done: self._message_future_done(message, done)
            )
        else:
            self._protocol.message_consumed(message)

    async def _finish_message(self, message: Message, pending: Awaitable[Any]) -> None:
        try:
            await pending
        except Exception as exc:
            self._message_ended(message, exc)
        else:
            self._message_ended(message, None)
        if not self.closed:
            await self._flush_replies()  # the receipt it queued, if the message wants one

    def _message_future_done(self, message: Message, done: asyncio.Future[Any]) -> None:
        if done.cancelled() or self.closed:
            return
        self._message_ended(message, done.exception())
        self._flush_soon()  # the receipt it queued, if the message wants one

    def _message_ended(self, message: Message, error: BaseException | None) -> None:
        # The protocol decides whether a receipt is due; the channel only says how it ended.
        if error is not None:
            log.error("%s: message handler failed", self, exc_info=error)
            self._protocol.message_failed(message)
        else:
            self._protocol.message_consumed(message)

    def _dispatch_notification(self, notification: Notification) -> None:
        if self.on_notification is not None:
            self._call(self.on_notification, notification, "notification handler")

    def _call(self, callback: Callable[[_T], object], argument: _T, what: str) -> None:
        try:
            result = callback(argument)
        except Exception:
            log.exception("%s: %s failed", self, what)
            return
        if inspect.isawaitable(result):
            self._spawn(result).add_done_callback(lambda done: self._log_failure(done, what))

    def _log_failure(self, done: asyncio.Future[Any], what: str) -> None:
        if not done.cancelled() and (error := done.exception()) is not None:
            log.error("%s: %s failed", self, what, exc_info=error)

    def _spawn(self, awaitable: Awaitable[Any]) -> asyncio.Future[Any]:
        # A coroutine becomes a task; a future is taken as it is. Either is kept in _tasks until
        # done (the loop holds tasks only weakly), and shutdown cancels what is still running.
        future = asyncio.ensure_future(awaitable)
        self._tasks.add(future)
        future.add_done_callback(self._tasks.discard)
        return future

    # ---------------------------------------------------------------------------- keepalive

    def _start_keepalive(self) -> None:
        if self.ping_interval is not None and self._keepalive is None:
            self._keepalive = asyncio.create_task(self._keepalive_loop())

    async def _keepalive_loop(self) -> None:
        assert self.ping_interval is not None
        loop = asyncio.get_running_loop()
        while not self.closed:
            idle = loop.time() - self._last_received
            if idle < self.ping_interval:
                # A timer, not synchronisation: wake when the link would have been idle long.
                await asyncio.sleep(self.ping_interval - idle)
                continue
            try:
                await self.ping(timeout=self.ping_timeout)
            except CommandFailed:
                continue  # a peer that answers, even with a failure, is alive
            except CommandTimeout:
                log.warning("%s: peer silent for %.1f s; ending the session", self, idle)
                # _shutdown never cancels the task it runs in, so no helper task is needed.
                await self._shutdown(
                    Reason(ReasonCode.SESSION_ERROR, "peer did not answer pings")
                )
                return
            except (ChannelClosed, SessionError, TransportError, LocalProtocolError):
                return  # ended, or finishing: no more requests may be sent

    # ---------------------------------------------------------------------------- ending

    async def close(self) -> None:
        """End the channel at once, without the finishing handshake. Idempotent."""
        await self._shutdown(self.close_reason)

    async def _shutdown(self, reason: Reason | None) -> None:
        if self._closing:
            await self._closed.wait()
            return
        self._closing = True
        self.close_reason = reason
        if self._link_lost:
            error: Exception = ChannelClosed(f"the session ended: {reason}")
        elif reason is not None:
            error = (
                AuthenticationFailed(reason)
                if reason.code == ReasonCode.SESSION_AUTHENTICATION_FAILED
                else SessionFailed(reason)
            )
        else:
            error = ChannelClosed("the session ended")
        for future in self._pending.values():
            if not future.done():
                future.set_exception(error)
        if self._established is not None and not self._established.done():
            self._established.set_exception(error)
            self._established.exception()  # retrieved: nobody may be waiting any more
        current = asyncio.current_task()
        for task in [self._reader, self._keepalive, self._writer, *self._tasks]:
            if task is not None and task is not current and not task.done():
                if isinstance(task, asyncio.Task) and inspect.iscoroutine(coro := task.get_coro()):
                    _close_unstarted(coro)
                task.cancel()
        await self.transport.close()
        self._on_closed()
        self._closed.set()

    def _on_closed(self) -> None:
        """Subclass hook: release what the session held."""

    async def __aenter__(self: _C) -> _C:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.finish()

    async def finish(self) -> None:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.session_id or '-'} {self.state.value}>"


_C = TypeVar("_C", bound=Channel)


class ClientChannel(Channel):
    """The client side of a session.

    ``channel = await ClientChannel(transport, identity=keys).establish_session()``.
    ``identity`` is the Ed25519 identity used for ``keypair`` authentication (and, over a
    CURVE-secured transport, proven by the transport itself); ``node`` is the node we claim
    (the server decides the identity from what is proven and tells us in ``local_node``).
    """

    _protocol: ClientProtocol

    def __init__(
        self,
        transport: Transport,
        *,
        node: Node | str | None = None,
        identity: Identity | None = None,
        compression: SessionCompression = SessionCompression.NONE,
        allow_guest: bool = True,
        **options: Any,
    ) -> None:
        super().__init__(transport, **options)
        credentials = ClientCredentials(
            identity=identity,
            transport_secured=transport.encryption is not SessionEncryption.NONE,
            allow_guest=allow_guest,
        )
        self._protocol = ClientProtocol(node=node, credentials=credentials, compression=compression)

    async def establish_session(self, *, timeout: float | None = None) -> ClientChannel:
        """Open the transport and run the session to ``established``; returns the channel.

        Raises EstablishTimeout (also TimeoutError) past ``timeout`` (default
        ``establish_timeout``), AuthenticationFailed when credentials are refused,
        SessionFailed for any other refusal, SessionError/TransportError when the link fails.
        """
        limit = self.establish_timeout if timeout is None else timeout
        self._established = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(limit):
                await self.transport.open()
                self._protocol.start()
                self._start_reader()
                await self._flush()
                await asyncio.shield(self._established)
        except TimeoutError:
            await self._shutdown(Reason(ReasonCode.SESSION_NEGOTIATION_TIMEOUT, "timed out"))
            raise EstablishTimeout(f"no established session within {limit:g} s") from None
        except (RemoteProtocolError, TransportError) as exc:
            await self._shutdown(Reason(ReasonCode.SESSION_ERROR, str(exc)))
            raise
        except BaseException:
            await self._shutdown(self.close_reason)
            raise
        self._start_keepalive()
        return self

    async def finish(self, *, timeout: float = 5.0) -> None:
        """End the session politely: ``finishing``, wait for ``finished``, close. Idempotent."""
        if self.closed:
            return
        if self._protocol.is_established:
            try:
                self._protocol.finish()
                await self._flush()
                async with asyncio.timeout(timeout):
                    await self._closed.wait()
                return
            except (TimeoutError, TransportError, LocalProtocolError):
                pass
        await self.close()


class ServerChannel(Channel):
    """The server side of a session; the authenticated identity is ``remote_identity``."""

    _protocol: ServerProtocol

    def __init__(
        self,
        transport: Transport,
        *,
        node: Node | str,
        authenticator: ServerAuthenticator | None,
        registry: NodeRegistry | None = None,
        compression_options: tuple[SessionCompression, ...] | None = None,
        **options: Any,
    ) -> None:
        super().__init__(transport, **options)
        self.registry = registry
        self._protocol = ServerProtocol(
            node=node,
            authenticator=authenticator,
            peer_identity=transport.peer_identity,
            compression_options=compression_options or DEFAULT_COMPRESSION_OPTIONS,
            encryption=transport.encryption,
            registry=registry,
        )

    @property
    def remote_identity(self) -> str | None:
        """The authenticated identity name ("alice@irf"); never what the client claimed."""
        return self._protocol.remote_identity

    def _peer_name(self) -> str | None:
        return self.remote_identity or super()._peer_name()

    @property
    def remote_key(self) -> bytes | None:
        """The Ed25519 public key the client proved (None for guest or anonymous sessions)."""
        return self._protocol.remote_key

    async def establish_session(self, *, timeout: float | None = None) -> ServerChannel:
        """Serve the establishment until ``established``; returns the channel.

        Raises EstablishTimeout when the client does not complete in time (the session is
        failed with code 16), SessionFailed when it was refused (bad credentials, ...).
        """
        limit = self.establish_timeout if timeout is None else timeout
        self._established = asyncio.get_running_loop().create_future()
        self._start_reader()
        try:
            async with asyncio.timeout(limit):
                await asyncio.shield(self._established)
        except TimeoutError:
            await self._fail_quietly(
                Reason(ReasonCode.SESSION_NEGOTIATION_TIMEOUT, "establishment timed out")
            )
            raise EstablishTimeout(f"client did not establish within {limit:g} s") from None
        self._start_keepalive()
        return self

    async def _fail_quietly(self, reason: Reason) -> None:
        try:
            self._protocol.fail(reason)
            await self._flush()
        except (LocalProtocolError, TransportError):
            pass
        await self._shutdown(reason)

    async def finish(self) -> None:
        """End the session with ``finished`` and close. Idempotent."""
        if self.closed:
            return
        try:
            self._protocol.finish()
            await self._flush()
        except (LocalProtocolError, TransportError):
            pass
        await self._shutdown(None)

    async def fail(self, reason: Reason) -> None:
        """End the session with ``failed`` and ``reason``, then close. Idempotent."""
        if not self.closed:
            await self._fail_quietly(reason)

    def _on_closed(self) -> None:
        if self.registry is not None:
            self.registry.unregister(self._protocol.remote_node)


async def connect(
    endpoint: str,
    *,
    identity: Identity | None = None,
    server_key: bytes | None = None,
    node: Node | str | None = None,
    insecure: bool = False,
    establish_timeout: float = 30.0,
    transport_options: dict[str, Any] | None = None,
    **channel_options: Any,
) -> ClientChannel:
    """Connect to ``endpoint`` (``tcp://host:port``, ``ipc://path``, ``memory://name``) and
    establish a session; returns the ClientChannel.

    Raises ConfigError for an endpoint no installed transport handles, and whatever
    :meth:`ClientChannel.establish_session` raises.
    """
    factory = transport_factory(endpoint)
    transport = factory.connect(
        endpoint,
        ClientSecurity(identity=identity, server_key=server_key, insecure=insecure),
        transport_options,
    )
    channel = ClientChannel(
        transport, node=node, identity=identity, establish_timeout=establish_timeout,
        **channel_options,
    )
    try:
        return await channel.establish_session()
    except BaseException:
        await transport.close()
        raise
