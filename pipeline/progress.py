"""Progress of long work with an ETA: ``[label] 300/2000 steps (15%), 1m20s, ETA 7m33s``; and of a fleet
command over many sites, ``[site run] 120/500 sites, 2 failed, 380 in flight, 4m10s, ETA 13m52s``.

Where the caller owns the terminal (nothing else prints meanwhile) the line is rewritten in place;
elsewhere (logs, CI, beside Ray's forwarded worker output) each update is a plain line. The ETA is
the mean rate since the start, projected over what is left.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Callable, TextIO

Say = Callable[[str], None]  # where a progress line goes: ``print``, a log, a relay to the driver


def duration(seconds: float) -> str:
    """``45s``, ``7m33s``, ``2h05m``."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def status(done: int, total: int, elapsed: float, unit: str = "") -> str:
    """``300/2000 steps (15%), 1m20s, ETA 7m33s``: the ETA from the mean rate so far (none before the first)."""
    share = done / total if total else 1.0
    eta = "" if done <= 0 or done >= total else f", ETA {duration(elapsed * (total - done) / done)}"
    return f"{done}/{total}{' ' + unit if unit else ''} ({share:.0%}), {duration(elapsed)}{eta}"


class Progress:
    """``update(done, note)`` as the work goes: a plain line per update through ``say``; with ``live`` and
    ``stream`` a terminal, one line rewritten in place instead (at most ``min_interval`` apart, and
    always the last)."""

    def __init__(self, label: str, total: int, unit: str = "", say: Say = print,
                 live: bool = False, stream: TextIO | None = None, min_interval: float = 0.2,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.label, self.total, self.unit, self.say, self.clock = label, total, unit, say, clock
        self.stream = stream or sys.stdout
        self.live = live and bool(getattr(self.stream, "isatty", lambda: False)())
        self.min_interval, self.started, self.shown = min_interval, clock(), -math.inf

    def line(self, done: int, note: str, now: float) -> str:
        line = f"[{self.label}] {status(done, self.total, now - self.started, self.unit)}"
        return f"{line}  {note}" if note else line

    def update(self, done: int, note: str = "") -> None:
        now = self.clock()
        if not self.live:
            self.say(self.line(done, note, now))
            return
        if done < self.total and now - self.shown < self.min_interval:
            return
        self.stream.write("\r\x1b[K" + self.line(done, note, now) + ("\n" if done >= self.total else ""))
        self.stream.flush()
        self.shown = now


class FleetProgress:
    """One progress line for a fleet command: ``[site run] 12/48 sites, 2 failed, 8 in flight, 1m20s, ETA 4m``,
    rewritten in place on a terminal (with ``live``, where the caller owns it), else printed each time another
    tenth of the fleet finished; ``finished(line)`` prints one line per finished site (above it)."""

    def __init__(self, label: str, total: int, say: Say = print, live: bool = False,
                 stream: TextIO | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.label, self.total, self.say, self.clock = label, total, say, clock
        stream = stream or sys.stdout
        self.live = live and bool(getattr(stream, "isatty", lambda: False)())
        self.stream, self.started, self.done, self.failed, self.shown = stream, clock(), 0, 0, 0

    def line(self) -> str:
        finished, elapsed = self.done + self.failed, self.clock() - self.started
        eta = f", ETA {duration(elapsed * (self.total - finished) / finished)}" if 0 < finished < self.total else ""
        failed = f", {self.failed} failed" if self.failed else ""
        return (f"[{self.label}] {finished}/{self.total} sites{failed}, {self.total - finished} in flight, "
                f"{duration(elapsed)}{eta}")

    def finished(self, line: str, failed: bool = False) -> None:
        self.failed += failed
        self.done += not failed
        if self.live:
            self.stream.write(f"\r\x1b[K{line}\n{self.line()}" + ("\n" if self.done + self.failed == self.total
                                                                 else ""))
            self.stream.flush()
            return
        self.say(line)
        finished = self.done + self.failed
        if finished == self.total or finished * 10 // self.total > self.shown * 10 // self.total:
            self.shown = finished
            self.say(self.line())
