"""Crash-test hook: make the process kill itself (SIGKILL, like a power cut) at a chosen moment.

Set ``EDGE_TRGL_TEST_KILL_AT="EVENT:N"`` and the process sends itself SIGKILL at the N-th
occurrence (counting from 1, per process) of EVENT; ``"EVENT:N:INT"`` sends SIGINT instead (a
Ctrl-C at an exactly known moment). Without the variable every call is a no-op. It exists for
tests/test_resume.py, which kills real training runs and resumes them.

``EDGE_TRGL_TEST_BALLAST="batch:N:MB"`` instead makes the process allocate (and touch) MB
megabytes at the N-th mini-batch and keep them: a trainer that suddenly needs more than its plan,
for the tests of the command's memory guard (driver.py, memory/cgroup.py).

Events (each named where it fires):
  batch     a mini-batch is about to be handed out by a data source (sources.py): train, eval and
            cache-writing batches all count, so this lands in the middle of a module's epochs
  cache     a batch of features was written into a feature-cache shard's temp file (cache.py)
  save      a weight file (block, head, optimizer state, checkpoint) is half written: its temp
            file holds the first half of the bytes (store.py -> atomic.py)
  manifest  the run manifest is half written (run.py -> atomic.py)
  setup     the run directory is staged but not yet published (train.py)
  convert   rows of the dataset were written into a data-store shard's temp file (data/ondisk.py)
"""

from __future__ import annotations

import os
import signal

ENV = "EDGE_TRGL_TEST_KILL_AT"
EVENTS = ("batch", "cache", "save", "manifest", "setup", "convert")


def _parse(text: str | None) -> tuple[str, int, int] | None:
    if not text:
        return None
    parts = text.split(":")
    event, count = parts[0], parts[1] if len(parts) > 1 else ""
    signum = {2: signal.SIGKILL, 3: signal.SIGINT if parts[-1] == "INT" else None}.get(len(parts))
    if event not in EVENTS or not count.isdigit() or int(count) < 1 or signum is None:
        raise ValueError(f"{ENV}={text!r}: expected EVENT:N or EVENT:N:INT with EVENT in "
                         f"{EVENTS} and N >= 1")
    return event, int(count), signum


_TARGET = _parse(os.environ.get(ENV))
_seen = 0


def armed(event: str) -> bool:
    return _TARGET is not None and _TARGET[0] == event


BALLAST_ENV = "EDGE_TRGL_TEST_BALLAST"
_BALLAST = os.environ.get(BALLAST_ENV, "").split(":")
_ballast_seen = 0
_held: list = []


def _ballast(event: str) -> None:
    global _ballast_seen
    if len(_BALLAST) != 3 or _BALLAST[0] != event:
        return
    _ballast_seen += 1
    if _ballast_seen == int(_BALLAST[1]):
        import time
        for _ in range(int(_BALLAST[2]) // 2):  # grows like a leak, 2 MB every 5 ms
            block = bytearray(2_000_000)
            block[::4096] = b"x" * len(block[::4096])  # touch every page: resident, anonymous
            _held.append(block)
            time.sleep(0.005)


def kill_point(event: str) -> None:
    """Count one occurrence of `event`; signal this process if it is the chosen one."""
    global _seen
    if _BALLAST[0]:
        _ballast(event)
    if _TARGET is None or _TARGET[0] != event:
        return
    _seen += 1
    if _seen == _TARGET[1]:
        os.kill(os.getpid(), _TARGET[2])
