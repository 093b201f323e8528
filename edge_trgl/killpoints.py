"""Crash-test hook: make the process kill itself (SIGKILL, like a power cut) at a chosen moment.

Set ``EDGE_TRGL_TEST_KILL_AT="EVENT:N"`` and the process sends itself SIGKILL at the N-th
occurrence (counting from 1, per process) of EVENT; ``"EVENT:N:INT"`` sends SIGINT instead (a
Ctrl-C at an exactly known moment). Without the variable every call is a no-op. It exists for
tests/test_resume.py, which kills real training runs and resumes them.

Events (each named where it fires):
  batch     a mini-batch is about to be handed out by a data source (sources.py): train, eval and
            cache-writing batches all count, so this lands in the middle of a module's epochs
  cache     a batch of features was written into a feature-cache shard's temp file (cache.py)
  save      a weight file (block, head, optimizer state, checkpoint) is half written: its temp
            file holds the first half of the bytes (store.py -> atomic.py)
  manifest  the run manifest is half written (run.py -> atomic.py)
  setup     the run directory is staged but not yet published (train.py)
"""

from __future__ import annotations

import os
import signal

ENV = "EDGE_TRGL_TEST_KILL_AT"
EVENTS = ("batch", "cache", "save", "manifest", "setup")


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


def kill_point(event: str) -> None:
    """Count one occurrence of `event`; signal this process if it is the chosen one."""
    global _seen
    if _TARGET is None or _TARGET[0] != event:
        return
    _seen += 1
    if _seen == _TARGET[1]:
        os.kill(os.getpid(), _TARGET[2])
