"""The one training loop (loop.py): the learning rate comes from schedule.lr_at at every step of
every module and reaches the optimizer, on the module-wise and the resident schemes."""

from __future__ import annotations

import numpy as np
import pytest

from edge_trgl import loop, resident
from edge_trgl.config import TrainConfig
from edge_trgl.schedule import lr_at
from edge_trgl.store import block_path, load_tensors
from edge_trgl.train import train

TINY = dict(synthetic_train=200, synthetic_test=100, model="resnet8", width=0.25, modules=2,
            batch_size=32, threads=1, progress=False)


def record_lr(monkeypatch, module_obj, value=None):
    calls = []

    def fake(cfg, *, module, epoch, step, epochs, steps_per_epoch, lap=0):
        calls.append((module, epoch, step, epochs, steps_per_epoch))
        return cfg.lr if value is None else value
    monkeypatch.setattr(module_obj, "lr_at", fake)
    return calls


def test_constant_schedule_is_the_configured_rate():
    cfg = TrainConfig(lr=0.07, lr_schedule="constant", warmup_epochs=0)
    assert lr_at(cfg, module=3, epoch=2, step=11, epochs=5, steps_per_epoch=20) == 0.07


def test_every_step_of_every_module_asks_the_schedule(monkeypatch, tmp_path):
    calls = record_lr(monkeypatch, loop)
    train(TrainConfig(**TINY, epochs=2, out=str(tmp_path / "run")))
    # 200 images less the validation tenth: 180 train images, batches of 32 -> 6 steps an epoch
    assert {(m, e) for m, e, *_ in calls} == {(0, 0), (0, 1), (1, 0), (1, 1)}
    for module in (0, 1):
        for epoch in (0, 1):
            steps = [s for m, e, s, *_ in calls if (m, e) == (module, epoch)]
            assert steps == list(range(len(steps))) and len(steps) == 6
    assert {(epochs, per) for *_, epochs, per in calls} == {(2, 6)}


def test_the_rate_reaches_the_optimizer(monkeypatch, tmp_path):
    """With the schedule at 0 nothing is learned: every trained parameter is still its initial
    value (a prepared run holds the initial weights of the same seed); at the configured rate
    they move."""
    prepared = train(TrainConfig(**TINY, epochs=1, out=str(tmp_path / "init")), prepare_only=True)
    record_lr(monkeypatch, loop, value=0.0)
    train(TrainConfig(**TINY, epochs=1, out=str(tmp_path / "still")))
    monkeypatch.undo()
    train(TrainConfig(**TINY, epochs=1, out=str(tmp_path / "moved")))

    def params(run_dir, i):
        tensors, _ = load_tensors(run_dir, block_path(i), None)
        # BatchNorm's running statistics follow the data whatever the rate: parameters only
        return {k: np.asarray(v) for k, v in tensors.items()
                if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))}
    init, still, moved = (params(tmp_path / name, 0) for name in ("init", "still", "moved"))
    assert prepared["run_dir"] == str(tmp_path / "init") and init
    assert all(np.array_equal(init[k], still[k]) for k in init)
    assert any(not np.array_equal(init[k], moved[k]) for k in init)


@pytest.mark.slow
@pytest.mark.parametrize("scheme", ["e2e", "parallel"])
def test_resident_schemes_ask_the_schedule_too(monkeypatch, tmp_path, scheme):
    calls = record_lr(monkeypatch, resident)
    train(TrainConfig(**TINY, epochs=2, scheme=scheme, out=str(tmp_path / "run")))
    assert {(m, e) for m, e, *_ in calls} == {(0, 0), (0, 1)}
    assert [s for m, e, s, *_ in calls if e == 1] == list(range(6))
