"""Every shell and Python block of the tutorials and the how-to guides runs, or says why not.

A block in ``docs/tutorial/*.md`` or ``docs/howto/*.md`` whose language is a shell or Python
must be one of:

- an interactive example (``>>>``), run as a doctest by ``tests/test_docs.py``;
- marked ``<!-- test: run -->``, ``<!-- test: file NAME -->`` or ``<!-- test: tree PATH -->``
  (run by ``tests/test_docs.py`` and ``tests/test_docs_reference.py``);
- marked ``<!-- test: shell -->``: run here, line by line, as a reader would type it (below);
- marked ``<!-- test: runs in TEST -->``: the block is a file of the repository that the named
  test function runs (that function must exist under ``tests/``);
- marked ``<!-- test: not run: REASON -->``: an excerpt or a command against a remote machine,
  with the reason it cannot run on its own.

A new block with none of these fails :func:`test_every_block_runs_or_says_why_not`.

Shell blocks run in a scratch folder prepared for their page (:data:`SETUPS`), in page order,
one shared environment per page: ``rain`` is this checkout's command, ``export`` lines carry
over to later blocks, ``# exit status N`` at the end of a line is the status expected (0 when
absent), ``rain serve`` and ``rain monitor`` start in the background as in a second terminal,
``<pid of rain serve>`` is the server's process id, and the page's port 4505 is an ephemeral
port on 127.0.0.1 (the config is rewritten to port 0 and the port the server reports is used).
When a ``text`` block follows a shell block with nothing but blank lines between, each line of
it must appear in what the commands printed, with numbers, hex digests and spacing free to
differ (temperatures and round-trip times change from run to run).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.outputlines import OutputLines

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = sorted([*(DOCS / "tutorial").glob("*.md"), *(DOCS / "howto").glob("*.md")])
RUNNABLE = {"sh", "shell", "bash", "console", "python", "py", "pycon"}
COMMAND_TIMEOUT = 60.0
START_TIMEOUT = 30.0
DOC_PORT = "4505"

_FENCE = re.compile(
    r"(?:<!-- test: (?P<directive>[^\n]*?) -->\n)?```(?P<language>\w*)\n(?P<code>.*?)```\n",
    re.DOTALL,
)


@dataclass
class Block:
    page: Path
    line: int
    language: str
    directive: str | None
    code: str
    #: The ``text`` block just below, when only blank lines separate them.
    output: str | None = None

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks(page: Path) -> list[Block]:
    text = page.read_text("utf-8")
    found: list[Block] = []
    matches = list(_FENCE.finditer(text))
    for index, match in enumerate(matches):
        block = Block(
            page, text.count("\n", 0, match.start("code")), match["language"],
            match["directive"], match["code"],
        )
        following = matches[index + 1] if index + 1 < len(matches) else None
        if (
            following is not None
            and following["language"] == "text"
            and not following["directive"]
            and not text[match.end():following.start()].strip()
        ):
            block.output = following["code"]
        found.append(block)
    return found


def _test_functions() -> set[str]:
    names: set[str] = set()
    for path in (ROOT / "tests").rglob("test_*.py"):
        names.update(re.findall(r"^\s*(?:async )?def (test_\w+)\(", path.read_text("utf-8"), re.M))
    return names


# ------------------------------------------------------------------------------ coverage


def test_every_block_runs_or_says_why_not() -> None:
    tests = _test_functions()
    problems = []
    for page in PAGES:
        for block in blocks(page):
            if block.language not in RUNNABLE:
                continue
            directive = block.directive or ""
            if block.code.lstrip().startswith(">>>") and block.language == "python":
                continue
            if directive in ("run", "shell") or re.fullmatch(r"(file|tree) \S+", directive):
                continue
            if directive.startswith("not run:"):
                if len(directive[len("not run:"):].strip()) < 10:
                    problems.append(f"{block.where}: 'not run:' needs a reason")
                continue
            if directive.startswith("runs in "):
                name = directive[len("runs in "):].strip()
                if name not in tests:
                    problems.append(f"{block.where}: no test function {name} under tests/")
                continue
            problems.append(
                f"{block.where}: a {block.language} block that no test runs; mark it "
                "<!-- test: run|shell|file NAME|runs in TEST|not run: REASON -->"
            )
    assert not problems, "\n".join(problems)


def test_the_coverage_check_would_catch_an_unmarked_block(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "<!-- test: not run: a remote machine -->\n```sh\nrain ping tcp://far:1\n```\n\n"
        "```sh\nrain ping tcp://near:1\n```\n\nText.\n\n```text\nout\n```\n", "utf-8"
    )
    found = blocks(page)
    assert [(b.directive, b.output) for b in found] == [
        ("not run: a remote machine", None), (None, None), (None, None)
    ]
    page.write_text("```sh\nrain ping x\n```\n\n```text\npong\n```\n", "utf-8")
    assert blocks(page)[0].output == "pong\n"


# ------------------------------------------------------------------------------ shell runner


def _normalise(line: str) -> str:
    line = re.sub(r"ed25519:[A-Za-z0-9+/]{43}=", "ed25519:KEY", line)
    line = re.sub(r"\b[0-9a-f]{8,}\b", "H", line)
    line = re.sub(r"\d+(\.\d+)?", "N", line)
    return " ".join(line.split())


class ShellSession:
    """One page's commands, typed in order into terminals sharing one folder."""

    def __init__(self, folder: Path, bin_dir: Path) -> None:
        self.folder = folder
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("RAIN_")}
        self.env["PATH"] = f"{bin_dir}{os.pathsep}{self.env.get('PATH', '')}"
        self.env["PYTHONPATH"] = str(ROOT)
        self.port: str | None = None
        self.server: OutputLines | None = None
        self.monitors: list[OutputLines] = []
        self.logs: list[Path] = []

    def _background(self, command: str, name: str) -> OutputLines:
        log = self.folder.parent / f"{name}-{len(self.logs)}.log"
        self.logs.append(log)
        with open(log, "wb") as errors:
            process = subprocess.Popen(
                ["bash", "-c", f"exec {command}"], cwd=self.folder, env=self.env,
                stdout=subprocess.PIPE, stderr=errors, text=True,
            )
        return OutputLines(process)

    def _port_in(self, text: str) -> str:
        return text if self.port is None else text.replace(f":{DOC_PORT}", f":{self.port}")

    def run(self, block: Block) -> list[str]:
        """Run ``block``; the lines the foreground commands (and a server start) printed."""
        printed: list[str] = []
        for raw in block.code.replace("\\\n", " ").splitlines():
            command, _, comment = raw.partition(" #")
            command = command.strip()
            if not command or command.startswith("#"):
                continue
            expected = re.search(r"exit(?: status)? (\d+)", comment)
            status = int(expected[1]) if expected else 0
            command = self._port_in(command)
            if self.server is not None:
                command = command.replace("<pid of rain serve>", str(self.server.process.pid))
            words = shlex.split(command)
            if words[0] == "export":
                for assignment in words[1:]:
                    name, _, value = assignment.partition("=")
                    self.env[name] = value
            elif words[:2] == ["rain", "serve"]:
                self.server = self._background(command, "serve")
                [line] = self.server.wait_for(r"serving \S+ on tcp://", START_TIMEOUT)
                found = re.search(r"tcp://127\.0\.0\.1:(\d+)", line)
                assert found, line
                self.port = found[1]
                printed.append(line.replace(f":{self.port}", f":{DOC_PORT}"))
            elif words[:2] == ["rain", "monitor"] and not {"-n", "--count"} & set(words):
                monitor = self._background(command, "monitor")
                monitor.wait_for(r"\S", START_TIMEOUT)
                self.monitors.append(monitor)
            else:
                done = subprocess.run(
                    ["bash", "-c", command], cwd=self.folder, env=self.env,
                    capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False,
                )
                assert done.returncode == status, (
                    f"{block.where}: `{command}` exited {done.returncode}, the page says "
                    f"{status}\n{done.stdout}{done.stderr}"
                )
                output = done.stdout + done.stderr
                if self.port is not None:
                    output = output.replace(f":{self.port}", f":{DOC_PORT}")
                printed += output.splitlines()
        return printed

    def close(self) -> None:
        """Ctrl-C in every terminal; the server must exit 0, as the tutorial says."""
        for job in self.monitors:
            if job.process.poll() is None:
                job.process.send_signal(signal.SIGINT)
            job.process.wait(timeout=20)
        if self.server is not None:
            if self.server.process.poll() is None:
                self.server.process.send_signal(signal.SIGINT)
            code = self.server.process.wait(timeout=20)
            assert code == 0, f"rain serve exited {code}:\n{self.logs[0].read_text()}"

    def kill(self) -> None:
        for job in [*self.monitors, *([self.server] if self.server else [])]:
            if job.process.poll() is None:
                job.process.kill()
                job.process.wait(timeout=10)


def _weather_station(folder: Path) -> None:
    """The tutorial's folder: a copy of examples/weather_station, its server on port 0."""
    shutil.copytree(
        ROOT / "examples" / "weather_station", folder, dirs_exist_ok=True,
        ignore=shutil.ignore_patterns("keys", "authorized_keys", "__pycache__", "*.state"),
    )
    config = folder / "rain.toml"
    text = config.read_text("utf-8")
    assert f"127.0.0.1:{DOC_PORT}" in text
    config.write_text(text.replace(f"127.0.0.1:{DOC_PORT}", "127.0.0.1:0"), "utf-8")


def _empty(folder: Path) -> None:
    del folder


def _plugin_howto(folder: Path) -> None:
    """The how-to's project (its ``test: tree`` files) with keys made as in the tutorial, the
    client's exported as there, and the server on 127.0.0.1 rather than every interface."""
    text = (DOCS / "howto" / "write-a-plugin.md").read_text("utf-8")
    for path, code in re.findall(r"<!-- test: tree (\S+) -->\n```\w*\n(.*?)```", text, re.S):
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        (folder / path).write_text(code, "utf-8")
    config = folder / "rain.toml"
    config.write_text(
        config.read_text("utf-8").replace(f"0.0.0.0:{DOC_PORT}", "127.0.0.1:0"), "utf-8"
    )
    # What `rain keygen` and `rain authorize` write (the tutorial's test types those out).
    from rain_envelopes import AuthorizedKeys, Identity

    (folder / "keys").mkdir()
    Identity.generate().save(folder / "keys" / "cryostat.key")
    alice = Identity.generate()
    alice.save(folder / "keys" / "alice.key")
    AuthorizedKeys.from_mapping({alice.public_key_text: "alice@irf"}).save(
        folder / "authorized_keys"
    )


#: How the scratch folder of each page with shell blocks is prepared.
SETUPS: dict[str, Callable[[Path], None]] = {
    "tutorial/weather-station.md": _weather_station,
    "howto/keys.md": _empty,
    "howto/write-a-plugin.md": _plugin_howto,
}

#: Environment a page's prose sets up before its shell blocks (as "keys made as in ...").
ENVIRONMENTS: dict[str, dict[str, str]] = {
    "howto/write-a-plugin.md": {
        "RAIN_KEY": "keys/alice.key", "RAIN_SERVER_KEY": "keys/cryostat.key.pub",
    },
}


def _before_block(session: ShellSession, page: str, block: Block) -> None:
    """The prose steps just above a block, done as the reader would."""
    if page == "tutorial/weather-station.md" and "kill -HUP" in block.code:
        # "Remove Bob's line from authorized_keys and tell the running server with SIGHUP"
        keys = session.folder / "authorized_keys"
        lines = keys.read_text("utf-8").splitlines(keepends=True)
        kept = [line for line in lines if not line.rstrip().endswith(" bob@irf")]
        assert len(kept) == len(lines) - 1, lines
        keys.write_text("".join(kept), "utf-8")


def _after_block(session: ShellSession, page: str, block: Block) -> None:
    """What the page says happens next, checked where the page's prose says it."""
    if page != "tutorial/weather-station.md":
        return
    if "simulate_storm true" in block.code:
        # "within a couple of seconds the plugin publishes the alert"
        (monitor,) = session.monitors
        monitor.wait_for(r'storm_alert\s+\{"level":"warning"', 30)
    if "kill -HUP" in block.code:
        assert session.server is not None
        assert session.server.process.poll() is None, "rain serve died on SIGHUP"
        # "...and refuses those keys from then on. Other sessions carry on."
        port = session.port
        bob = f"RAIN_KEY=keys/bob.key rain get tcp://127.0.0.1:{port} temperature"
        deadline = time.monotonic() + 20
        while True:
            done = subprocess.run(
                ["bash", "-c", bob], cwd=session.folder, env=session.env,
                capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False,
            )
            if done.returncode == 4 or time.monotonic() > deadline:
                break
        assert done.returncode == 4, f"bob still let in after SIGHUP: {done.stdout}{done.stderr}"
        alice = f"rain get tcp://127.0.0.1:{port} temperature"
        done = subprocess.run(
            ["bash", "-c", alice], cwd=session.folder, env=session.env,
            capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False,
        )
        assert done.returncode == 0, done.stderr


def _shell_pages() -> list[str]:
    return [
        str(page.relative_to(DOCS)) for page in PAGES
        if any(block.directive == "shell" for block in blocks(page))
    ]


def test_every_page_with_shell_blocks_has_a_setup() -> None:
    assert set(_shell_pages()) <= set(SETUPS), "add the page's folder setup to SETUPS"


@pytest.mark.timeout(240)
@pytest.mark.parametrize("page", _shell_pages())
def test_shell_blocks_run_as_the_page_says(page: str, tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    rain = bin_dir / "rain"
    rain.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m rain_envelopes "$@"\n', "utf-8")
    rain.chmod(0o755)
    folder = tmp_path / "work"
    folder.mkdir()
    SETUPS[page](folder)
    session = ShellSession(folder, bin_dir)
    session.env.update(ENVIRONMENTS.get(page, {}))
    try:
        for block in blocks(DOCS / page):
            if block.directive != "shell":
                continue
            _before_block(session, page, block)
            printed = [_normalise(line) for line in session.run(block)]
            if block.output is not None:
                missing = [
                    line for line in block.output.splitlines()
                    if line.strip() and _normalise(line) not in printed
                ]
                assert not missing, (
                    f"{block.where}: the page shows {missing}, the commands printed:\n"
                    + "\n".join(printed)
                )
            _after_block(session, page, block)
        session.close()
    finally:
        session.kill()
