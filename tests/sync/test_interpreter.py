"""The blocking API in a fresh interpreter (issue 10, item 1: "tested in a subprocess
interpreter"): a ``python -c`` script, the interactive interpreter fed from a pipe, a script left
without ``close()`` and one interrupted with Ctrl-C (SIGINT) while it iterates a monitor. Each
must exit with status 0 and write nothing to standard error: no warning, no "Task was destroyed
but it is pending", no traceback from a thread, no hang at exit.

The server runs in this process (tests/sync/conftest.py); the children reach it over loopback.
Warnings are turned on in the children (``-W default``) so that a ResourceWarning or a coroutine
never awaited would show.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

from ..serverprocess import rain_env
from .conftest import ServerLog, ServerThread, Site

LIMIT = 30.0


def child(site: Site, station: ServerThread, code: str, *flags: str) -> list[str]:
    """The command running ``code`` in a fresh interpreter, with the keys in the environment."""
    assert station.endpoint is not None
    return [sys.executable, "-W", "default", *flags, "-c", textwrap.dedent(code)]


def environment(site: Site, station: ServerThread) -> dict[str, str]:
    assert station.endpoint is not None
    env = rain_env()
    env.update(
        RAIN_KEY=str(site.alice_key),
        RAIN_SERVER_KEY=str(site.station_pub),
        ENDPOINT=station.endpoint,
        PYTHONUNBUFFERED="1",
    )
    return env


def test_a_script_connects_gets_and_exits_cleanly(site: Site, station: ServerThread) -> None:
    code = """
        import os
        from rain_envelopes import sync

        with sync.connect(os.environ["ENDPOINT"], timeout=10) as station:
            print(station.get("temperature"))
            print(station.set("knob", 4))
            with station.monitor("knob") as monitor:
                print(next(monitor).value)
    """
    done = subprocess.run(
        child(site, station, code), env=environment(site, station),
        capture_output=True, text=True, timeout=LIMIT,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["20.5", "4", "4"]
    assert done.stderr == ""


def test_a_client_never_closed_is_closed_at_exit(
    site: Site, station: ServerThread, server_log: ServerLog
) -> None:
    # No with-block, no close(), a monitor left open: the finalizer closes it all at exit,
    # politely: the server sees the session finished, not lost.
    code = """
        import os
        from rain_envelopes import sync

        station = sync.connect(os.environ["ENDPOINT"], timeout=10)
        monitor = station.monitor("temperature")
        print(next(monitor).value, station.get("model"))
    """
    done = subprocess.run(
        child(site, station, code), env=environment(site, station),
        capture_output=True, text=True, timeout=LIMIT,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["20.5", "WS-1"]
    assert done.stderr == ""
    line = server_log.wait_for(r"^session (ended|lost|failed): ")
    assert line.startswith("session ended: "), line


def test_the_interactive_interpreter(
    site: Site, station: ServerThread, server_log: ServerLog
) -> None:
    # What a person types at >>>, fed through a pipe; the session ends at end of input.
    session = textwrap.dedent("""\
        import os
        from rain_envelopes import sync
        station = sync.connect(os.environ["ENDPOINT"], timeout=10)
        station.get("temperature")
        station.set("temperature", 18.25)
        station
    """)
    done = subprocess.run(
        [sys.executable, "-W", "default", "-q", "-i"], input=session,
        env=environment(site, station), capture_output=True, text=True, timeout=LIMIT,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:3] == [
        "20.5", "18.25", f"<BlockingClient {station.endpoint} established>",
    ]
    # The prompts go to standard error in interactive mode; nothing else may.
    assert done.stderr.replace(">>> ", "").strip() == "", done.stderr
    assert server_log.wait_for(r"^session (ended|lost|failed): ").startswith("session ended")


def test_ctrl_c_while_monitoring_exits_cleanly(
    site: Site, station: ServerThread, server_log: ServerLog
) -> None:
    code = """
        import os
        from rain_envelopes import sync

        with sync.connect(os.environ["ENDPOINT"], timeout=10) as station:
            try:
                for update in station.monitor("temperature"):
                    print("update", update.value)   # then blocks: nothing else is published
            except KeyboardInterrupt:
                print("interrupted")
    """
    process = subprocess.Popen(
        child(site, station, code), env=environment(site, station),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().split() == ["update", "20.5"]  # iterating now
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=LIMIT)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, err
    assert out.split() == ["interrupted"]
    assert err == ""
    assert server_log.wait_for(r"^session (ended|lost|failed): ").startswith("session ended")


def test_under_a_running_loop_with_asyncio_debug_on(site: Site, station: ServerThread) -> None:
    # A notebook cell runs inside the kernel's loop. With -X dev, asyncio's debug mode (in both
    # loops) raises on any loop call made from the wrong thread, and -W error fails the run on a
    # coroutine never awaited. (Debug mode may also note that the caller's loop was blocked:
    # that is what a blocking call does, so those lines are allowed.)
    code = """
        import asyncio, os
        from rain_envelopes import sync

        async def cell():
            with sync.connect(os.environ["ENDPOINT"], timeout=10) as station:
                return station.get("temperature")

        print(asyncio.run(cell()))
    """
    done = subprocess.run(
        child(site, station, code, "-X", "dev", "-W", "error"), env=environment(site, station),
        capture_output=True, text=True, timeout=LIMIT,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["20.5"]
    for line in done.stderr.splitlines():
        assert line.startswith("Executing <Task"), done.stderr
