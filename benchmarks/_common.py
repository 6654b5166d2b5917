"""Pieces every benchmark script here shares: the ratio column, the raw pyzmq servers' one-key
CURVE check, the control pipe between a benchmark and its child-process server, and the run of
a script's lines-producing coroutine with its total wall time.

Imported by the scripts as a sibling module (each script puts its own folder on ``sys.path``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from multiprocessing.connection import Connection
from typing import Any

__all__ = ["KeyCheck", "pipe_inbox", "print_run", "ratio"]


def ratio(ours: float, raw: float) -> str:
    """``ours / raw`` as the tables print it (``n/a`` without a baseline)."""
    return f"{ours / raw:.2f}x" if raw else "n/a"


class KeyCheck:
    """pyzmq credentials provider: exactly one client key (Z85) may in."""

    def __init__(self, allowed_z85: bytes) -> None:
        self.allowed = allowed_z85

    def callback(self, domain: str, key: bytes) -> bool:
        return key == self.allowed


def pipe_inbox(conn: Connection) -> asyncio.Queue[tuple[str, Any]]:
    """Messages from the parent's end of ``conn``, as the running loop reads them.

    A closed pipe arrives as ``("stop", None)``, so a child whose parent died stops too. The
    caller removes the reader (``loop.remove_reader(conn.fileno())``) when it is done.
    """
    loop = asyncio.get_running_loop()
    inbox: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

    def on_pipe() -> None:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            message = ("stop", None)
            loop.remove_reader(conn.fileno())
        inbox.put_nowait(message)

    loop.add_reader(conn.fileno(), on_pipe)
    return inbox


def print_run(
    main_async: Callable[[Any], Coroutine[Any, Any, list[str]]], settings: Any
) -> int:
    """Run ``main_async(settings)``, print the lines it returns and the total wall time; 0."""
    started = time.perf_counter()
    lines = asyncio.run(main_async(settings))
    lines += ["", f"total wall time {time.perf_counter() - started:.1f} s"]
    print("\n".join(lines))
    return 0
