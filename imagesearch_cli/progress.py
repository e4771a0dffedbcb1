"""A one-line progress bar on stderr, redrawn in place (and silent off a terminal)."""

from __future__ import annotations

import sys
import time
from typing import TextIO

_WIDTH = 28
_REDRAW_S = 0.1


def _clock(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


class Progress:
    """Counts items done out of a total; shows rate and time left.

    Off a terminal (a log file, a pipe) it draws nothing: a line per redraw would
    bury the summary, which says everything the bar did.
    """

    def __init__(self, total: int, label: str, *, stream: TextIO | None = None) -> None:
        self.total = total
        self.done = 0
        self.label = label
        self.started = time.monotonic()
        self._stream = stream or sys.stderr
        self._enabled = self._stream.isatty() and total > 0
        self._drawn_at = 0.0

    def advance(self, count: int = 1) -> None:
        self.done += count
        now = time.monotonic()
        if self._enabled and (now - self._drawn_at >= _REDRAW_S or self.done >= self.total):
            self._drawn_at = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        fraction = min(1.0, self.done / self.total)
        filled = round(fraction * _WIDTH)
        elapsed = now - self.started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        left = (self.total - self.done) / rate if rate > 0 else 0.0
        self._stream.write(
            f"\r{self.label} [{'#' * filled}{'.' * (_WIDTH - filled)}] "
            f"{self.done}/{self.total} {fraction:4.0%} {rate:6.1f}/s left {_clock(left)} "
        )
        self._stream.flush()

    def close(self) -> None:
        if self._enabled:
            self._stream.write("\n")
            self._stream.flush()
