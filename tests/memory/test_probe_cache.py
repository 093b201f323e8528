"""The probe cache's keys: what a stored measurement is found again by, and what makes it stale."""

from __future__ import annotations

from edge_trgl.config import TrainConfig
from edge_trgl.memory import estimate
from edge_trgl.memory.probe_cache import machine_key

SIGNATURES = ["basic:16->16:s1", "basic:16->32:s2"]


def _block_key(cfg=None, threads=1):
    return estimate.probe_key(cfg or TrainConfig(), (3, 32, 32), 10, SIGNATURES, (8, 32), threads)


def test_the_same_question_on_the_same_machine_finds_the_same_key():
    assert _block_key() == _block_key()
    assert machine_key({"what": "x"}, 1) == machine_key({"what": "x"}, 1)


def test_a_key_changes_with_the_thread_count_and_what_was_asked():
    assert _block_key(threads=1) != _block_key(threads=2)
    assert machine_key({"what": "x"}, 1) != machine_key({"what": "y"}, 1)
    assert _block_key(TrainConfig(optimizer="adamw")) != _block_key()


def test_bumping_the_block_probe_format_makes_stored_measurements_stale(monkeypatch):
    # The format once sat under the same name as machine_identity's own "probe_format", which
    # overrode it: a bump changed no key and old measurements kept being reused.
    before = _block_key()
    monkeypatch.setattr(estimate, "BLOCK_PROBE_FORMAT", estimate.BLOCK_PROBE_FORMAT + 1)
    assert _block_key() != before
