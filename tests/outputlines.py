"""A child process's standard output, read line by line as it comes, and waits for a line.

The reader is a daemon thread that appends each line under a condition; :meth:`OutputLines.
wait_for` waits on that condition (never a sleep) until enough lines match or the deadline
passes, and gives a process that has exited half a second at a time for its last lines.
"""

from __future__ import annotations

import re
import subprocess
import threading
import time


class OutputLines:
    """The lines ``process`` has printed so far (``process.stdout`` must be a text pipe)."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self.lines: list[str] = []
        self.changed = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self.changed:
                self.lines.append(line.rstrip("\n"))
                self.changed.notify_all()

    def wait_for(self, pattern: str, timeout: float = 30.0, count: int = 1) -> list[str]:
        """The first ``count`` lines matching ``pattern``; AssertionError after ``timeout``."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                found = [line for line in self.lines if re.search(pattern, line)]
                if len(found) >= count:
                    return found[:count]
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"{count} lines matching {pattern!r} within {timeout} s: {self.lines}"
                    )
                # A process that has exited adds no more lines; give its reader a moment.
                self.changed.wait(min(left, 0.5) if self.process.poll() is not None else left)
