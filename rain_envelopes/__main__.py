"""``python -m rain_envelopes`` runs the ``rain`` command (same as the console script)."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
