"""A simulated three-axis fluxgate magnetometer: site A of examples/two_sites.

``field_nT`` is the total field in nanotesla, read and published every second;
``components_nT`` the north, east and down components, published with it.
"""

from __future__ import annotations

import math
import random
import time

from rain_envelopes.server import Parameter, parameter

_STARTED = time.monotonic()

components_nT = Parameter(
    "components_nT",
    value={"north": 0.0, "east": 0.0, "down": 0.0},
    unit="nT",
    description="North, east and down components of the field",
)


@parameter(unit="nT", interval=1.0)
def field_nT() -> float:
    """Total magnetic field."""
    minutes = (time.monotonic() - _STARTED) / 60
    north = 11_500 + 40 * math.sin(minutes) + random.gauss(0, 0.5)
    east = 1_200 + random.gauss(0, 0.5)
    down = 51_800 + random.gauss(0, 0.5)
    components_nT.publish({"north": round(north, 1), "east": round(east, 1),
                           "down": round(down, 1)})
    return round(math.sqrt(north**2 + east**2 + down**2), 1)
