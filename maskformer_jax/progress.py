"""Progress of a long loop (training steps, evaluated images): rates, ETA and a bar on a terminal.

Only process 0 reports; elsewhere every method is silent.
"""

import sys
import time

import jax


class Progress:
    """`done` of `total` items. `rate()` is items per second since the previous call (since the start
    on the first), leaving out the seconds passed to `exclude` (compilation)."""

    def __init__(self, total: int, done: int = 0, log=print):
        self.total, self.done, self.log = total, done, log
        self.active = jax.process_index() == 0
        self.tty = self.active and log is print and sys.stdout.isatty()
        self.started = self.mark = time.time()
        self.started_done = self.marked_done = done

    def advance(self, count: int = 1):
        self.done += count

    def exclude(self, seconds: float):
        self.started += seconds
        self.mark += seconds

    def rate(self, since_start: bool = False) -> float:
        now = time.time()
        since, done = (self.started, self.started_done) if since_start else (self.mark, self.marked_done)
        rate = (self.done - done) / max(now - since, 1e-9)
        if not since_start:
            self.mark, self.marked_done = now, self.done
        return rate

    def eta(self, rate: float) -> str:
        """Time left at `rate` items per second, H:MM:SS."""
        return time.strftime("%H:%M:%S", time.gmtime((self.total - self.done) / rate)) if rate > 0 else "-"

    def bar(self):
        """Redraw "[####......] done/total" in place (terminal only)."""
        if self.tty:
            filled = int(30 * self.done / self.total)
            print(f"\r[{'#' * filled}{'.' * (30 - filled)}] {self.done}/{self.total}", end="", flush=True)

    def report(self, line: str, keep: bool = True):
        """Print a line over the bar; on a terminal a line with `keep=False` is overwritten by the next."""
        if not self.active:
            return
        if self.tty:
            print("\r" + line, end="\n" if keep else "", flush=True)
        else:
            self.log(line)
