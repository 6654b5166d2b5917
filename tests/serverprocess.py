"""`rain serve` as a child process, shared by the CLI, adversarial, resilience and persistence
tests: started from a config, its endpoint read from its first line, its memory, descriptors and
log readable while it runs, and stopped (SIGTERM, then SIGKILL) with every handle closed."""

from __future__ import annotations

import concurrent.futures
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

__all__ = ["ServerProcess", "rain_env"]


def rain_env() -> dict[str, str]:
    """This environment without RAIN_* variables, which would change what rain does."""
    return {k: v for k, v in os.environ.items() if not k.startswith("RAIN_")}


class ServerProcess:
    """`rain serve CONFIG` as a child process; ``endpoint`` is read from its first line.

    Raises AssertionError when the server does not start within ``timeout`` (with its log).
    """

    def __init__(self, config: Path, log: Path, timeout: float = 15.0) -> None:
        self.log = log
        self._log_file = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "rain_envelopes.cli", "serve", str(config)],
            stdout=subprocess.PIPE, stderr=self._log_file, text=True, env=rain_env(),
        )
        assert self.process.stdout is not None
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            try:
                line = pool.submit(self.process.stdout.readline).result(timeout=timeout)
            except concurrent.futures.TimeoutError:
                line = ""
        found = re.search(r"serving \S+ on ((?:tcp|nats)://\S+)", line)
        if found is None:
            self.stop()
            raise AssertionError(f"server did not start: {line!r}\n{log.read_text()}")
        self.endpoint = found.group(1)
        self.port = int(self.endpoint.rsplit(":", 1)[1])
        self.pid = self.process.pid

    # -------------------------------------------------------------------------- measures

    def alive(self) -> bool:
        return self.process.poll() is None

    def rss(self) -> int:
        """Resident memory in bytes (VmRSS)."""
        status = Path(f"/proc/{self.pid}/status").read_text()
        found = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
        assert found is not None, status
        return int(found.group(1)) * 1024

    def fds(self) -> int:
        """Open file descriptors."""
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def log_bytes(self) -> int:
        self._log_file.flush()
        return self.log.stat().st_size

    def log_text(self, since: int = 0, until: int | None = None) -> str:
        """The log from byte ``since`` to byte ``until`` (default: its end)."""
        with open(self.log, "rb") as handle:
            handle.seek(since)
            data = handle.read() if until is None else handle.read(max(0, until - since))
        return data.decode("utf-8", "replace")

    # -------------------------------------------------------------------------- stop

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            code = self.process.wait(timeout=10)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait(5)
            self._log_file.close()
            if self.process.stdout is not None:
                self.process.stdout.close()
        return code
