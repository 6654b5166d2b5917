"""A simulated weather station: the example plugin of the RAIN tutorial.

It declares four parameters:

- ``temperature`` and ``pressure``: read from the (simulated) sensors and published every
  ``sampling_interval`` seconds;
- ``sampling_interval``: settable, checked against a JSON schema before the setter runs;
- ``storm_alert``: published by plugin code when the pressure falls fast (a triggered
  publication), and settable ``simulate_storm`` to make that happen on demand.

The getters are plain functions: the server runs them in worker threads, so a sensor that takes
a while to answer never stalls other clients. ``storm_alert.publish`` is safe from any thread.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections import deque

from rain_envelopes.server import InvalidValue, Parameter, parameter

INITIAL_INTERVAL = 2.0
#: A fall of this many hPa over the last readings raises the alert.
STORM_DROP_HPA = 3.0


class _Station:
    """The pretend hardware. A real plugin would talk to a serial port or a data logger."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.started = time.monotonic()
        self.pressure = 1013.0
        self.storm = False
        self.recent: deque[float] = deque(maxlen=4)
        self.alerting = False

    def read_temperature(self) -> float:
        minutes = (time.monotonic() - self.started) / 60
        return round(14.0 + 4.0 * math.sin(minutes / 10) + random.gauss(0, 0.1), 2)

    def read_pressure(self) -> float:
        with self.lock:
            step = -1.5 if self.storm else random.gauss(0, 0.2)
            self.pressure = min(max(self.pressure + step, 940.0), 1060.0)
            self.recent.append(self.pressure)
            return round(self.pressure, 1)

    def pressure_drop(self) -> float:
        with self.lock:
            return self.recent[0] - self.recent[-1] if len(self.recent) > 1 else 0.0


station = _Station()


@parameter(unit="degC", interval=INITIAL_INTERVAL)
def temperature() -> float:
    """Air temperature at 2 m."""
    return station.read_temperature()


@parameter(unit="hPa", interval=INITIAL_INTERVAL)
def pressure() -> float:
    """Air pressure at station height."""
    value = station.read_pressure()
    drop = station.pressure_drop()
    storming = drop >= STORM_DROP_HPA
    if storming != station.alerting:
        station.alerting = storming
        storm_alert.publish(
            {"level": "warning", "drop_hpa": round(drop, 1), "pressure_hpa": value}
            if storming
            else {"level": "none"}
        )
    return value


sampling_interval = Parameter(
    "sampling_interval",
    value=INITIAL_INTERVAL,
    unit="s",
    description="Seconds between temperature and pressure readings",
    schema={"type": "number", "minimum": 0.05, "maximum": 3600},
)


@sampling_interval.setter
def sampling_interval(value: float) -> float:  # type: ignore[no-redef]
    # The schema already guarantees a number in range; plugins may still refuse with a reason.
    if value > 600 and value % 60:
        raise InvalidValue("intervals over 10 minutes must be whole minutes")
    temperature.interval = value
    pressure.interval = value
    return float(value)


storm_alert = Parameter(
    "storm_alert",
    value={"level": "none"},
    description="Published when the pressure falls fast",
)

simulate_storm = Parameter(
    "simulate_storm",
    value=False,
    description="Make the simulated pressure fall (to try the storm alert)",
    schema={"type": "boolean"},
)


@simulate_storm.setter
def simulate_storm(value: bool) -> None:  # type: ignore[no-redef]
    with station.lock:
        station.storm = value
