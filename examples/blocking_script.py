"""Read, change and watch the weather station from a plain script: no asyncio, no callbacks.

Run it from ``examples/weather_station`` while ``rain serve rain.toml`` runs there (see
docs/tutorial/weather-station.md), with the keys the tutorial made::

    python ../blocking_script.py                       # tcp://127.0.0.1:4505, keys/alice.key
    python ../blocking_script.py tcp://station.example:4505 --key alice.key \\
        --server-key station.key.pub --interval 0.5 --updates 5

It lists the parameters it may use, reads two of them (by name and by URI), optionally sets
the sampling interval, prints the next few temperatures, and exits. ``RAIN_KEY`` and
``RAIN_SERVER_KEY`` are used when the options are not given. Exit status: 0 done, 1 the
server refused a request, 3 the server could not be reached or did not answer in time,
4 a key is missing or refused (as for the ``rain`` command).

Everything goes through :mod:`rain_envelopes.sync`, the blocking API: one reconnecting client
runs in a background thread, every call has a timeout, and errors are the async API's own.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys

from rain_envelopes import ClientClosed, CommandFailed, KeyFileError, NotDone, sync


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("endpoint", nargs="?", default="tcp://127.0.0.1:4505")
    parser.add_argument("--key", default=os.environ.get("RAIN_KEY", "keys/alice.key"),
                        help="your secret key file (default: $RAIN_KEY or keys/alice.key)")
    parser.add_argument("--server-key",
                        default=os.environ.get("RAIN_SERVER_KEY", "keys/station.key.pub"),
                        help="the server's public key file or 'ed25519:...' key")
    parser.add_argument("--interval", type=float, help="set sampling_interval (seconds)")
    parser.add_argument("--updates", type=int, default=3, help="temperatures to print")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per call")
    args = parser.parse_args(argv)

    try:
        with sync.connect(args.endpoint, key=args.key, server_key=args.server_key,
                          timeout=args.timeout) as station:
            for item in station.list():
                unit, about = item.get("unit") or "", item.get("description") or ""
                print(f"{item['name']:18} {unit:4} {about}")
            print("temperature:", station.get("temperature"))  # a name means /params/NAME
            print("pressure:", station.get("/params/pressure"))
            if args.interval is not None:
                print("sampling_interval:", station.set("sampling_interval", args.interval))
            # The first update is the current value; the monitor unsubscribes when closed.
            with station.monitor("temperature") as monitor:
                for update in itertools.islice(monitor, args.updates):
                    notes = []
                    if update.dropped:
                        notes.append(f"{update.dropped} dropped")
                    if update.restarted:
                        notes.append("the server restarted")
                    print(update.sample["timestamp"], update.value, *notes)
    except CommandFailed as error:
        print(f"refused: {error}", file=sys.stderr)
        return 1
    except ClientClosed as error:  # gave up: a refused key, or the wrong server key
        print(f"gave up: {error} ({error.cause})", file=sys.stderr)
        return 4
    except NotDone as error:  # Disconnected, ResponseTimeout
        print(f"not done: {error}", file=sys.stderr)
        return 3
    except KeyFileError as error:
        print(f"keys: {error}", file=sys.stderr)
        return 4
    return 0


if __name__ == "__main__":
    sys.exit(main())
