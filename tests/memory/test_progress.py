"""memory/progress.py: what a budgeted command prints while the planner probes."""

from __future__ import annotations

import io

from edge_trgl.memory.progress import PlanningProgress


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def run_planning(tty: bool, block_seconds=(12, 9, 0, 15), module_seconds=(20, 18)):
    """Drive a PlanningProgress as the planner does: block probes, then the chosen modules."""
    out, clock = io.StringIO(), Clock()
    progress = PlanningProgress(out, tty=tty, clock=clock)
    total = len(block_seconds)
    progress(0, total)
    for done, seconds in enumerate(block_seconds, 1):
        clock.now += seconds
        progress(done, total)
    splits = [(0, 2), (2, 4)]
    for k, ((lo, hi), seconds) in enumerate(zip(splits, module_seconds)):
        progress.module(k, len(splits), lo, hi, 64)
        clock.now += seconds
    progress.module(None, len(splits))
    progress.finish()
    return out.getvalue()


def test_without_a_terminal_each_measurement_is_one_plain_line():
    text = run_planning(tty=False)
    assert "\r" not in text
    lines = text.splitlines()
    assert lines[0].startswith("planning: probing 4 blocks")
    assert "planning: block probe 1/4 measured in 12 s" in lines
    assert "planning: block probe 4/4 measured in 15 s" in lines
    assert not any("probe 3/4" in line for line in lines)   # from the cache: no line of its own
    assert "planning: 1 of 4 blocks from the probe cache" in lines
    assert "planning: module 0 (blocks 0-1, 1 of 2) at batch 64 measured in 20 s" in lines
    assert "planning: module 1 (blocks 2-3, 2 of 2) at batch 64 measured in 18 s" in lines
    assert lines[-1] == "planning: done in 74 s"


def test_on_a_terminal_one_line_is_redrawn_and_ended():
    text = run_planning(tty=True)
    assert text.count("\n") == 1 and text.endswith("\n")
    frames = [f.rstrip() for f in text.rstrip("\n").split("\r") if f]
    assert frames[0] == "planning: probing 4 blocks [....................] 0/4, 0 s"
    assert "planning: probing 4 blocks [##########..........] 2/4, 21 s" in frames
    assert "planning: measuring module 1 (blocks 2-3, 2 of 2) at batch 64, 56 s" in frames
    assert frames[-1] == "planning: done in 74 s"
    # a shorter frame blanks out what is left of a longer one
    raw = text.rstrip("\n").split("\r")[1:]
    assert len(raw[-1].rstrip()) < len(raw[-2].rstrip())
    for before, after in zip(raw, raw[1:]):
        assert len(after) >= len(before.rstrip())


def test_a_plan_read_from_the_cache_prints_two_lines():
    text = run_planning(tty=False, block_seconds=(0.1, 0.1), module_seconds=(0.1, 0.1))
    assert text.splitlines() == [
        "planning: probing 2 blocks (each distinct block in a fresh process; measurements are "
        "cached for the next run)",
        "planning: 2 of 2 blocks from the probe cache"]


def test_a_failed_plan_ends_the_terminal_line_and_claims_nothing():
    out, clock = io.StringIO(), Clock()
    progress = PlanningProgress(out, tty=True, clock=clock)
    progress(0, 3)
    clock.now += 5
    progress(1, 3)
    progress.finish(ok=False)
    progress.finish()  # once only
    assert out.getvalue().endswith("\n") and "done" not in out.getvalue()


def test_a_closed_or_plain_stream_counts_as_no_terminal():
    assert PlanningProgress(io.StringIO()).tty is False
