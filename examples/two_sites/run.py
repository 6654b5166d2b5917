"""Two sites, one operator: run both servers and watch them from one client.

Run from anywhere: ``python examples/two_sites/run.py`` (Ctrl-C to stop), or with
``--count N`` to stop once each site has sent N updates. README.md in this folder explains
the setup and the commands, which this script runs for you:

1. keys, once: each site's server key (``rain keygen``) and the operator's key, which each
   site authorises under the name ``alice@irf`` (``rain authorize``). Existing keys are kept;
2. both servers (``rain serve kiruna/rain.toml``, ``rain serve abisko/rain.toml``), each with
   its own key, config, plugins and access rules; the endpoint each one reports is used, so a
   config listening on port 0 (an ephemeral port) works too;
3. the monitoring client, ``examples/watch_many.py``, with one ``--server`` per site, each
   pinned to that site's public key;
4. at the end, Ctrl-C for both servers (they finish their sessions), and the client's exit
   status is this script's.
"""

from __future__ import annotations

import argparse
import queue
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

HERE = Path(__file__).resolve().parent
RAIN = [sys.executable, "-m", "rain_envelopes"]
START_TIMEOUT = 30.0

#: Each site: its folder, the server's identity, its key file, the parameters to watch.
SITES = (
    ("kiruna", "magnetometer@kiruna", "keys/magnetometer.key", "field_nT"),
    ("abisko", "station@abisko", "keys/station.key", "temperature,storm_alert"),
)
OPERATOR = ("alice@irf", HERE / "operator" / "keys" / "alice.key")


def rain(*args: str, cwd: Path) -> None:
    """One ``rain`` command, as typed in the README; stop with its message if it fails."""
    done = subprocess.run([*RAIN, *args], cwd=cwd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"rain {' '.join(args)}: {done.stderr.strip()}")


def make_keys() -> None:
    name, key = OPERATOR
    if not key.exists():
        rain("keygen", name, "--out", str(key), cwd=HERE)
    operator_pub = key.with_name(key.name + ".pub")
    public = operator_pub.read_text("utf-8").split()[0]
    for folder, identity, key_file, _ in SITES:
        site = HERE / folder
        if not (site / key_file).exists():
            rain("keygen", identity, "--out", key_file, cwd=site)
        authorized = site / "authorized_keys"
        if not authorized.exists() or public not in authorized.read_text("utf-8"):
            rain("authorize", "authorized_keys", str(operator_pub), name, cwd=site)


def start_server(folder: str) -> tuple[subprocess.Popen[str], str]:
    """``rain serve`` for one site, and the endpoint it says it serves on."""
    server = subprocess.Popen(
        [*RAIN, "serve", "rain.toml"], cwd=HERE / folder, stdout=subprocess.PIPE, text=True
    )
    output = server.stdout
    assert output is not None
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: lines.put(output.readline()), daemon=True).start()
    try:
        line = lines.get(timeout=START_TIMEOUT)
    except queue.Empty:
        line = ""
    found = re.search(r"serving \S+ on (tcp://\S+)", line)
    if found is None:
        server.kill()
        raise SystemExit(f"{folder}: the server did not start (see its messages above)")
    print(f"{folder}: {line.strip().removeprefix('rain: ')}", flush=True)
    return server, found[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--count", help="stop once each site has sent this many updates")
    args = parser.parse_args(argv)
    make_keys()
    servers: list[subprocess.Popen[str]] = []
    status = 1
    interrupted = False
    try:
        watch = [sys.executable, str(HERE.parent / "watch_many.py"), "--key", str(OPERATOR[1])]
        for folder, _, key_file, names in SITES:
            server, endpoint = start_server(folder)
            servers.append(server)
            watch += ["--server", endpoint, str(HERE / folder / (key_file + ".pub")), names]
        if args.count:
            watch += ["--count", args.count]
        client = subprocess.Popen(watch)
        try:
            status = client.wait()
        except KeyboardInterrupt:
            # Ctrl-C reached the whole process group: the client closes its sessions and
            # the servers shut down on their own; wait for them rather than kill anything.
            interrupted = True
            status = client.wait(timeout=30)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        for server in servers:
            if server.poll() is None and not interrupted:
                server.send_signal(signal.SIGINT)
        for server in servers:
            try:
                code = server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                code = server.wait()
            if code != 0:
                print(f"a server exited with status {code}", file=sys.stderr)
                status = 1
    print(f"both servers stopped; the client exited {status}", flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
