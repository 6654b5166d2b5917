"""Fixtures for the ZeroMQ transport tests: identities, key files and a log watcher."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import zmq
import zmq.asyncio

from rain_envelopes.keys import AuthorizedKeys, Identity

from .helpers import LogWatcher


@pytest.fixture
def log_watcher() -> Iterator[LogWatcher]:
    watcher = LogWatcher()
    logger = logging.getLogger("rain_transport_zmq")
    previous = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(watcher)
    try:
        yield watcher
    finally:
        logger.removeHandler(watcher)
        logger.setLevel(previous)


@pytest.fixture
def server_identity() -> Identity:
    return Identity.generate()


@pytest.fixture
def client_identity() -> Identity:
    return Identity.generate()


@pytest.fixture
def keys_file(tmp_path: Path, client_identity: Identity) -> Path:
    """An authorised-keys file listing ``client_identity`` as alice@irf."""
    path = tmp_path / "authorized_keys"
    AuthorizedKeys({client_identity.public_key: "alice@irf"}).save(path)
    return path


@pytest.fixture
def authorized_keys(keys_file: Path) -> AuthorizedKeys:
    return AuthorizedKeys.load(keys_file)


@pytest.fixture
async def zmq_context() -> AsyncIterator[zmq.asyncio.Context]:
    """An asyncio zmq context of the test's own (raw attackers and clients), destroyed after."""
    context = zmq.asyncio.Context()
    try:
        yield context
    finally:
        context.destroy(linger=0)
