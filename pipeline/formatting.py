"""Numbers from records, formatted for people: a metric that is missing or was not finite reads ``n/a``.

A record stores a NaN or infinite metric as ``null`` (JSON has no NaN), and records written before a
metric existed lack it; every view formats record numbers with :func:`number`, so one such record
shows ``n/a`` in its cell instead of stopping the whole view with a ``TypeError``. This module imports
nothing heavy: the registry and the command line use it.
"""

from __future__ import annotations

import math
import re

NA = "n/a"  # what a missing or non-finite number reads as
UNITS = ("B", "kB", "MB", "GB", "TB")  # decimal: 1 kB is 1000 bytes
WIDTH = re.compile(r"^(?:.?[<>=^])?[-+ ]?z?#?0?(\d*)")  # the width of a format spec ([[fill]align][sign]...)


def finite(value: object) -> bool:
    """Whether ``value`` is a real, finite number (not None, NaN, inf, a bool or a string) that a float holds:
    JSON has integers of any size, and one beyond a float's range (``1e309`` written out) cannot be formatted."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float
        return False


def number(value: object, spec: str = "g") -> str:
    """``value`` formatted with the format ``spec`` (e.g. ``.3f``, ``.1%``, ``+8.3f``), or ``n/a`` where it
    is not a finite number; a width in ``spec`` pads ``n/a`` too, so table columns stay aligned."""
    if finite(value):
        return format(value, spec)
    width = WIDTH.match(spec).group(1)
    return NA.rjust(int(width or 0))


def size(value: object) -> str:
    """A number of bytes as people read it (``512 B``, ``150.2 kB``, ``1.33 MB``: decimal units, three or four
    figures), or ``n/a`` where it is not a finite number (a record from before sizes were kept)."""
    if not finite(value):
        return NA
    scaled, step = float(value), 0
    while abs(scaled) >= 999.95 and step < len(UNITS) - 1:  # 999.96 kB would round to 1000.0 kB: say 1.00 MB
        scaled, step = scaled / 1000, step + 1
    if step == 0:
        return f"{scaled:.0f} B"
    return f"{scaled:.{1 if abs(scaled) >= 100 else 2}f} {UNITS[step]}"
