"""The broker connection, shared by the links (:mod:`.transport`), the fan-out
(:mod:`.fanout`) and the archiver (:mod:`.archive`): connecting with the identity's nkey and
mapping nats-py's failures to RAIN's errors in one place, waiting until the broker has seen what
was sent (:func:`barrier`), and fire-and-forget publications that must not be lost to the
garbage collector or raise into nobody's task.

Nothing here keeps state but :data:`BACKGROUND`, the publications (and connection closings)
still running; a benchmark waits on it to know the broker has everything.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

import nats.errors
from nats.aio.client import Client as NatsClient

from rain_envelopes.errors import (
    HandshakeFailed,
    SecurityCause,
    TransportError,
    TransportSecurityError,
)
from rain_envelopes.keys import Identity

from .nkey import user_nkey, user_seed

if TYPE_CHECKING:
    from .transport import Endpoint, NatsOptions

__all__ = [
    "BACKGROUND",
    "SUB_PENDING_BYTES",
    "SUB_PENDING_MSGS",
    "barrier",
    "connect",
    "in_background",
    "is_permission_error",
    "publish_soon",
    "quiet_close",
]

# nats-py drops messages past a subscription's pending limits (a "slow consumer"), which would
# break the ordering promise without a word; ours are far above any max_queue so that the
# link's own bound, which ends the link instead, is the one that acts.
SUB_PENDING_MSGS = 1_000_000
SUB_PENDING_BYTES = 1024 * 1024 * 1024

#: Background publications and closings still running (held so they are not collected).
BACKGROUND: set[asyncio.Future[None]] = set()


def in_background(work: Awaitable[None]) -> asyncio.Future[None]:
    """Run ``work`` without awaiting it, holding it in :data:`BACKGROUND` until done."""
    task = asyncio.ensure_future(work)
    BACKGROUND.add(task)
    task.add_done_callback(BACKGROUND.discard)
    return task


def publish_soon(
    client: NatsClient | None,
    subject: str,
    data: bytes = b"",
    headers: dict[str, str] | None = None,
) -> bool:
    """Publish in the background, ignoring failure (a lost connection ends the links anyway);
    False, and nothing sent, when there is no connection."""
    if client is None or not client.is_connected:
        return False
    in_background(_publish_quietly(client, subject, data, headers))
    return True


async def _publish_quietly(
    client: NatsClient, subject: str, data: bytes, headers: dict[str, str] | None
) -> None:
    with contextlib.suppress(Exception):
        await client.publish(subject, data, headers=headers)


def is_permission_error(error: Exception) -> bool:
    """True when ``error`` is the broker refusing a publish or subscribe (nats-py gives only
    the server's text)."""
    return "permissions violation" in str(error).lower()


async def connect(
    endpoint: Endpoint,
    options: NatsOptions,
    identity: Identity | None,
    *,
    name: str,
    reconnect: bool,
    **callbacks: Any,
) -> NatsClient:
    """A broker connection authenticated by ``identity``'s nkey. Raises TransportError, or
    TransportSecurityError when the broker refuses the key or TLS fails."""
    context = options.ssl_context()
    credentials: dict[str, Any] = {}
    if identity is not None:
        credentials["nkeys_seed_str"] = user_seed(identity)
    where = endpoint.broker_url(context is not None)
    client = NatsClient()
    try:
        await client.connect(
            servers=[where],
            name=name,
            tls=context,
            tls_hostname=options.tls_hostname,
            allow_reconnect=reconnect,
            max_reconnect_attempts=-1 if reconnect else 0,
            reconnect_time_wait=1,
            connect_timeout=max(1, round(options.open_timeout)),
            pending_size=8 * 1024 * 1024,
            **credentials,
            **callbacks,
        )
    except Exception as exc:
        _abort(client)
        raise _connect_error(exc, where, identity) from None
    return client


def _abort(client: NatsClient) -> None:
    """Release a client whose connect failed. nats-py has no task left running then, and its
    close() can wait forever on a TLS handshake that failed (nats-py 2.16), so only the socket
    is closed."""
    transport = getattr(client, "_transport", None)
    if transport is not None:
        with contextlib.suppress(Exception):
            transport.close()


def _connect_error(exc: Exception, where: str, identity: Identity | None) -> TransportError:
    """What a failed broker connection means for RAIN."""
    text = str(exc) or type(exc).__name__
    # nats-py reports a refused key as AuthorizationError, or as a plain Error with the
    # server's text, depending on when the -ERR arrives.
    if isinstance(exc, nats.errors.AuthorizationError) or "authorization violation" in (
        text.lower()
    ):
        who = f" ({user_nkey(identity.public_key)})" if identity is not None else ""
        return HandshakeFailed(
            f"the NATS broker at {where} refused this key{who}: it is not among the broker's"
            " users (run `rain nats-config` and reload the broker)",
            SecurityCause.REFUSED,
        )
    if isinstance(exc, ssl.SSLError | nats.errors.SecureConnFailedError):
        return TransportSecurityError(f"TLS to the NATS broker at {where} failed: {text}")
    if isinstance(exc, nats.errors.SecureConnRequiredError | nats.errors.SecureConnWantedError):
        return TransportSecurityError(
            f"the NATS broker at {where} and this end disagree about TLS: {text}"
        )
    return TransportError(f"cannot reach the NATS broker at {where}: {text}")


async def barrier(client: NatsClient, timeout: float) -> None:
    """Return once the broker has processed every command ``client`` sent before the call, and
    its answers to them (MSG, -ERR) have been read.

    One ``flush()`` does not promise that: nats-py writes the flush's PING straight to the
    socket, ahead of commands still in its pending buffer, so the PONG can come back before
    the broker saw them (a test counting permission violations after one flush saw 1 of 4 now
    and then). Two do: the first flush wakes the flusher task before awaiting its PONG, so the
    buffer is on the socket before that PONG is read, and the second PING follows it. Raises
    nats.errors.TimeoutError (FlushTimeoutError) after ``timeout`` seconds per flush."""
    seconds = max(1, round(timeout))
    await client.flush(timeout=seconds)
    await client.flush(timeout=seconds)


async def quiet_close(client: NatsClient) -> None:
    """Close ``client``, giving up after 2 s; never raises."""
    with contextlib.suppress(Exception):
        async with asyncio.timeout(2.0):
            await client.close()
