"""Progress of long commands on stderr: a bar with the share done and the time left on a terminal,
plain lines in a log (every 10 % of the work, or every ``log_every_s``), nothing when quiet.

    with Progress(len(chips), "evaluate: chips", quiet=args.quiet) as bar:
        for chip in chips:
            ...
            bar.update(note=f"acc {acc:.3f}")

The time left is the elapsed time per finished item times the items left.
"""
from __future__ import annotations

import sys
import time
from typing import Callable, TextIO


def format_seconds(s: float) -> str:
    """``75`` -> ``1m15s``; ``3700`` -> ``1h01m``; below a minute ``12.3s``."""
    if s < 60:
        return f"{s:.1f}s"
    if s < 3600:
        return f"{int(s // 60)}m{int(s % 60):02d}s"
    return f"{int(s // 3600)}h{int(s % 3600 // 60):02d}m"


class Progress:
    """Progress of ``total`` items of work named ``label`` (see the module doc).

    ``stream`` (default stderr) is a terminal when ``tty`` says so (default: ``stream.isatty()``);
    ``clock`` returns seconds (tests pass a fake one).
    """

    def __init__(self, total: int, label: str, quiet: bool = False, stream: TextIO | None = None,
                 tty: bool | None = None, clock: Callable[[], float] = time.monotonic, width: int = 24,
                 log_every_s: float = 30.0, redraw_every_s: float = 0.2):
        self.total, self.label, self.quiet = max(int(total), 0), label, quiet
        self.stream = sys.stderr if stream is None else stream
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)()) if tty is None else tty
        self.clock, self.width = clock, width
        self.log_every_s, self.redraw_every_s = log_every_s, redraw_every_s
        self.done = 0
        self.t0 = clock()
        self._last_line_t = self.t0
        self._last_tenth = 0
        self._last_draw = -1e300
        self._closed = False

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def eta_s(self) -> float | None:
        """Seconds left at the current pace (``None`` before the first item)."""
        if self.done == 0:
            return None
        return (self.clock() - self.t0) / self.done * max(self.total - self.done, 0)

    def left(self) -> str:
        """``"about 1m10s left"`` at the current pace, ``""`` before the first item or when done."""
        eta = self.eta_s()
        return "" if eta is None or self.done >= self.total else f"about {format_seconds(eta)} left"

    def _status(self, note: str) -> str:
        elapsed = self.clock() - self.t0
        pct = 100.0 * self.done / self.total if self.total else 100.0
        left = f", {self.left()}" if self.left() else ""
        return (f"{self.done}/{self.total} ({pct:.0f} %), {format_seconds(elapsed)} elapsed{left}"
                + (f"; {note}" if note else ""))

    def update(self, n: int = 1, note: str = "") -> None:
        """``n`` more items done; ``note`` (short) shown with the status."""
        self.done += n
        if self.quiet:
            return
        now = self.clock()
        if self.tty:
            if now - self._last_draw >= self.redraw_every_s or self.done >= self.total:
                frac = self.done / self.total if self.total else 1.0
                fill = int(round(self.width * min(frac, 1.0)))
                bar = "#" * fill + "-" * (self.width - fill)
                self.stream.write(f"\r{self.label} [{bar}] {self._status(note)}\033[K")
                self.stream.flush()
                self._last_draw = now
            return
        tenth = int(10 * self.done / self.total) if self.total else 10
        if tenth > self._last_tenth or now - self._last_line_t >= self.log_every_s or self.done >= self.total:
            self.stream.write(f"{self.label}: {self._status(note)}\n")
            self.stream.flush()
            self._last_tenth, self._last_line_t = tenth, now

    def close(self, note: str = "") -> None:
        """End the bar (a newline on a terminal); a final line when work was left undone."""
        if self._closed:
            return
        self._closed = True
        if self.quiet:
            return
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()
        elif note:
            self.stream.write(f"{self.label}: {note}\n")
            self.stream.flush()
