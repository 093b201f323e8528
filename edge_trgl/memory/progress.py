"""What a budgeted command shows while the planner measures (on stderr; `--quiet` shows nothing).

A first run probes every distinct block, then every chosen module, each in a fresh child process
(10-40 s apiece on a small CPU): minutes in which nothing else would be printed. On a terminal one
line is redrawn in place (``planning: probing 6 blocks [###...] 3/6, 41 s``); where stderr is not
a terminal (a log file, CI, a pipe) each finished measurement is one plain line, so nothing is
garbled by carriage returns. A measurement read back from the probe cache (the same command
planned before on this machine) takes no time and prints no line of its own.

Deliberately not tqdm: this runs in the torch-free orchestrator, whose resident memory the plan
counts against the budget (measured by describe.orchestrator_bytes without it); importing tqdm
there adds ~2 MB that the measurement would not see. Writing a line costs nothing.
"""

from __future__ import annotations

import sys
import time

# A measurement that took less than this came from the probe cache: a probe child alone takes
# seconds (a fresh interpreter importing torch).
CACHED_SECONDS = 1.0
BAR_WIDTH = 20


class PlanningProgress:
    """Called by the planner: `progress(done, total)` as the block probes advance (BlockCosts),
    `progress.module(k, count, lo, hi, batch)` before each chosen module is measured and
    `progress.module(None, ...)` after the last, `progress.finish()` at the end."""

    def __init__(self, stream=None, tty: bool | None = None, clock=time.monotonic):
        self.stream = stream if stream is not None else sys.stderr
        if tty is None:
            isatty = getattr(self.stream, "isatty", None)
            try:
                tty = bool(isatty and isatty())
            except ValueError:  # a closed stream
                tty = False
        self.tty = tty
        self.clock = clock
        self.started = clock()
        self.step_started = self.started
        self.width = 0          # the length of the line drawn in place (tty)
        self.cached = 0
        self.total = 0
        self.current: str | None = None   # the measurement under way (its label)
        self.finished = False

    # --- the block probes (BlockCosts) ---------------------------------------------------------
    def __call__(self, done: int, total: int) -> None:
        now = self.clock()
        if done == 0:
            self.total = total
            self.step_started = now
            if not self.tty and total:
                self._line(f"planning: probing {total} block{'s' if total != 1 else ''} (each "
                           f"distinct block in a fresh process; measurements are cached for the "
                           f"next run)")
        else:
            self._step_done(f"block probe {done}/{total}", now)
        if self.tty and total:
            filled = BAR_WIDTH * done // total
            self._draw(f"planning: probing {total} block{'s' if total != 1 else ''} "
                       f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {done}/{total}, "
                       f"{now - self.started:.0f} s")
        if done == total and total and not self.tty and self.cached:
            self._line(f"planning: {self.cached} of {total} block{'s' if total != 1 else ''} "
                       f"from the probe cache")

    # --- the chosen modules (budgeted.py: verify) ------------------------------------------------
    def module(self, k: int | None, count: int, lo: int = 0, hi: int = 0, batch: int = 0) -> None:
        """Module k of `count` (blocks lo..hi-1) is about to be measured at `batch`; k None: the
        previous one was the last."""
        from ..summary import block_range
        now = self.clock()
        if self.current is not None:
            self._step_done(self.current, now)
            self.current = None
        if k is None:
            return
        # numbered from 0, as in the plan's table and the summary
        self.current = (f"module {k} (blocks {block_range(lo, hi)}, {k + 1} of {count}) at "
                        f"batch {batch}")
        self.step_started = now
        if self.tty:
            self._draw(f"planning: measuring {self.current}, {now - self.started:.0f} s")

    def finish(self, ok: bool = True) -> None:
        """Planning is over: end the line drawn in place and say how long it took (`ok` False:
        it failed, and its error follows on a line of its own)."""
        if self.finished:
            return
        self.finished = True
        now = self.clock()
        if not ok:
            if self.tty and self.width:
                self.stream.write("\n")
                self.stream.flush()
                self.width = 0
            return
        if self.current is not None:
            self._step_done(self.current, now)
            self.current = None
        seconds = now - self.started
        if self.tty:
            self._draw(f"planning: done in {seconds:.0f} s")
            self.stream.write("\n")
            self.stream.flush()
            self.width = 0
        elif seconds >= CACHED_SECONDS:
            self._line(f"planning: done in {seconds:.0f} s")

    # --- output --------------------------------------------------------------------------------
    def _step_done(self, label: str, now: float) -> None:
        seconds = now - self.step_started
        self.step_started = now
        if seconds < CACHED_SECONDS:
            self.cached += label.startswith("block")
            return
        if not self.tty:
            self._line(f"planning: {label} measured in {seconds:.0f} s")

    def _line(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()

    def _draw(self, text: str) -> None:
        pad = max(0, self.width - len(text))
        self.stream.write("\r" + text + " " * pad)
        self.stream.flush()
        self.width = len(text)
