"""Learning-rate schedules (schedule.py): their shape, what they span for each scheme, and
configurations written before they existed."""

from __future__ import annotations

import json

import pytest

from edge_trgl.config import LATER_FIELDS, TrainConfig
from edge_trgl.errors import UserError
from edge_trgl.schedule import lr_at


def rates(cfg, epochs=4, steps=10, laps=1):
    return [lr_at(cfg, module=0, lap=lap, epoch=e, step=s, epochs=epochs, steps_per_epoch=steps)
            for lap in range(laps) for e in range(epochs) for s in range(steps)]


def test_constant_is_the_configured_rate_exactly():
    assert set(rates(TrainConfig(lr=0.05, lr_schedule="constant", warmup_epochs=0))) == {0.05}


def test_the_default_is_cosine_with_one_warmup_epoch_where_there_is_more_than_one():
    r = rates(TrainConfig(lr=0.1))                                    # 4 epochs of 10 steps
    assert r[:10] == [pytest.approx(0.01 * (i + 1)) for i in range(10)] and r[-1] < 0.001
    single = rates(TrainConfig(lr=0.1, epochs=1), epochs=1)           # no room for a warm-up
    assert single[0] == pytest.approx(0.1) and single[-1] < 0.01


def test_cosine_falls_from_the_peak_towards_zero():
    r = rates(TrainConfig(lr=0.1, lr_schedule="cosine", warmup_epochs=0))
    assert r[0] == pytest.approx(0.1)
    assert all(a > b for a, b in zip(r, r[1:]))
    assert r[len(r) // 2] == pytest.approx(0.05, rel=0.05)
    assert 0 < r[-1] < 0.001


def test_step_divides_by_ten_at_half_and_three_quarters():
    r = rates(TrainConfig(lr=0.1, lr_schedule="step", warmup_epochs=0))          # 40 steps
    assert r[:20] == [pytest.approx(0.1)] * 20
    assert r[20:30] == [pytest.approx(0.01)] * 10
    assert r[30:] == [pytest.approx(0.001)] * 10


def test_warmup_ramps_linearly_then_the_schedule_starts_at_the_peak():
    r = rates(TrainConfig(lr=0.1, lr_schedule="cosine", warmup_epochs=1))
    assert r[:10] == [pytest.approx(0.01 * (i + 1)) for i in range(10)]
    assert r[10] == pytest.approx(0.1) and r[-1] < 0.001
    assert rates(TrainConfig(lr=0.1, lr_schedule="constant", warmup_epochs=0.5))[4:6] == \
        [pytest.approx(0.1)] * 2


def test_multilap_continues_the_schedule_across_laps():
    cfg = TrainConfig(lr=0.1, lr_schedule="cosine", scheme="multilap", laps=3, warmup_epochs=0)
    r = rates(cfg, epochs=2, laps=3)                      # 3 laps x 2 epochs x 10 steps
    assert all(a > b for a, b in zip(r, r[1:]))           # no restart at a new lap
    assert r[0] == pytest.approx(0.1) and r[-1] < 0.001
    # the same position in sequential (one lap of 6 epochs) has the same rate
    seq = rates(TrainConfig(lr=0.1, lr_schedule="cosine", warmup_epochs=0), epochs=6)
    assert r == pytest.approx(seq)


def test_schedule_options_are_checked():
    with pytest.raises(UserError, match="--lr-schedule"):
        TrainConfig(lr_schedule="linear").validate()
    with pytest.raises(UserError, match="--warmup-epochs"):
        TrainConfig(epochs=3, warmup_epochs=3).validate()
    with pytest.raises(UserError, match="--warmup-epochs"):
        TrainConfig(warmup_epochs=-1).validate()


def test_a_config_from_before_schedules_reads_and_hashes_as_it_did():
    """A run directory written before these options existed has no lr_schedule/warmup_epochs in
    its config.json: it trains with a constant rate, and its identity hash (which --resume and
    export compare with the manifest's) is what that version computed."""
    old = TrainConfig().to_json()
    for key in LATER_FIELDS:  # lr_schedule, warmup_epochs, checkpoint_segments, ...
        old.pop(key)
    import hashlib
    kept = {k: v for k, v in old.items()
            if k not in ("out", "progress", "keep_cache", "threads", "module_peaks")}
    that_version = hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()
    cfg = TrainConfig.from_json(old)
    assert (cfg.lr_schedule, cfg.warmup_epochs, cfg.checkpoint_segments) == ("constant", 0.0, None)
    assert TrainConfig().lr_schedule == "cosine"   # what a new run gets
    assert cfg.identity_hash() == that_version
    changed = TrainConfig.from_json({**old, "lr_schedule": "cosine"})
    assert changed.identity_hash() != that_version
