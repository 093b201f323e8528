"""Train views taken from training (harvest.py, --aug-policy training): the writer, the rule for
how many views, and what a run does with them."""
from __future__ import annotations

import errno
import json
from pathlib import Path

import numpy as np
import pytest

from edge_trgl import harvest
from edge_trgl.cache import CacheReader
from edge_trgl.config import TrainConfig
from edge_trgl.errors import UserError

from helpers import TINY, cli


def test_views_come_only_from_the_second_half_of_a_modules_epochs():
    assert TrainConfig().aug_policy == "views"   # the eval pass stays the default (recipe suite)
    cfg = TrainConfig(aug_policy="training")
    # none below harvest.MIN_EPOCHS: the late epochs of a short module run at a high learning
    # rate, where BatchNorm held at running statistics diverged (see harvest.py)
    assert [harvest.harvested_views(cfg, e, 2) for e in (1, 2, 3, 4, 5, 8, 16)] == [0, 0, 0, 2, 2,
                                                                                 2, 2]
    assert [harvest.harvested_views(cfg, e, 3) for e in (4, 6, 16)] == [2, 3, 3]
    assert harvest.harvested_views(cfg, 8, 0) == 0          # the last module caches nothing
    assert harvest.harvested_views(TrainConfig(aug_policy="views"), 8, 2) == 0
    assert harvest.harvested_views(TrainConfig(aug_policy="training", augment=False), 8, 1) == 0


def test_writer_places_samples_at_their_indices_across_shards(tmp_path):
    x = np.random.default_rng(0).standard_normal((50, 2, 3, 3)).astype(np.float32)
    w = harvest.HarvestWriter(tmp_path, 0, 1, 50, (2, 3, 3), "fp32", shard_bytes=500)
    order = np.random.default_rng(1).permutation(50)
    for start in range(0, 49, 8):           # a shuffled epoch that drops its last sample
        idx = order[start:min(start + 8, 49)]
        w.write(idx, x[idx])
    assert w.missing().tolist() == [order[49]]
    with pytest.raises(ValueError, match="unwritten"):
        w.finish()
    w.write(w.missing(), x[w.missing()])
    shards = w.finish()
    assert len(shards) > 3 and all(s.file.startswith("cache/module_00/train-v1-") for s in shards)
    assert not list(tmp_path.rglob("*.tmp"))
    reader = CacheReader(tmp_path, shards)   # checksums verified
    assert np.array_equal(reader.read(np.arange(50)), x)
    assert np.load(tmp_path / shards[0].file, allow_pickle=False).shape[1:] == (2, 3, 3)


def test_writer_abort_and_full_disk_leave_nothing(tmp_path, monkeypatch):
    w = harvest.HarvestWriter(tmp_path, 0, 0, 10, (4,), "fp16")
    w.write(np.arange(5), np.ones((5, 4), np.float32))
    w.abort()
    assert not list(tmp_path.rglob("*.npy*"))

    class FullDisk:  # harvest's os, with writes refused as on a full disk
        def __getattr__(self, name):
            import os
            return getattr(os, name)

        @staticmethod
        def pwrite(fd, data, offset):
            raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(harvest, "os", FullDisk())
    with pytest.raises(UserError, match="disk filled up"):
        harvest.HarvestWriter(tmp_path, 0, 0, 10, (4,), "fp16")
    assert not list(tmp_path.rglob("*.npy*"))


def _batches(monkeypatch) -> list[int]:
    """Count the batches every data source yields (train, cache passes, validation)."""
    from edge_trgl import sources
    seen = [0]
    real = sources.kill_point

    def count(event):
        if event == "batch":
            seen[0] += 1
        real(event)
    monkeypatch.setattr(sources, "kill_point", count)
    return seen


@pytest.mark.parametrize("epochs", ["2", "4"])
def test_a_run_reads_its_views_from_training_without_a_pass_over_the_train_set(
        tmp_path, capsys, monkeypatch, epochs):
    args = [a if a != "1" or i == 0 or TINY[i - 1] != "--epochs" else epochs
            for i, a in enumerate(TINY)]
    counts = {}
    for policy in ("training", "views"):
        seen = _batches(monkeypatch)
        out = tmp_path / policy
        rc, _, err = cli(capsys, "train", *args, "--aug-policy", policy, "--aug-views", "2",
                         "--keep-cache", "--out", str(out))
        assert rc == 0, err
        counts[policy] = seen[0]
        monkeypatch.undo()
        entry = json.loads((out / "manifest.json").read_text())["caches"]["0"]
        assert entry["complete"]
        views = sorted(n for n in entry["splits"] if n.startswith("train-v"))
        assert views == ["train-v0", "train-v1"]   # harvested or made by an eval pass
        metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        module1 = [m for m in metrics if m.get("module") == 1 and "train_acc" in m]
        assert len(module1) == int(epochs)
    # 200 synthetic images: 180 train / 20 val at batch 32 -> 6 train batches a view; 2 epochs
    # are too few to take views from training (harvest.MIN_EPOCHS): both runs make the same passes
    harvested = harvest.harvested_views(TrainConfig(aug_policy="training"), int(epochs), 2)
    assert counts["views"] - counts["training"] == harvested * 6 == {"2": 0, "4": 12}[epochs]


@pytest.mark.parametrize("policy", ["training", "views"])
def test_batchnorm_statistics_stay_fixed_while_a_module_writes_its_views(
        tmp_path, capsys, monkeypatch, policy):
    """The views from training are the module's outputs with its running BatchNorm statistics
    (what it hands on at test time): during the epoch that writes them, the blocks' statistics
    do not move (the head's still do); with the eval-pass policy they train in every epoch."""
    from edge_trgl import loop
    seen = []
    real = loop.save_checkpoint

    def spy(run, cfg, task, epoch_done, engine, adaptive):
        if task.k == 0:
            seen.append({k: v.copy() for k, v in engine.checkpoint_tensors(task)[0].items()
                         if k.startswith("block") and k.endswith("running_mean")})
        real(run, cfg, task, epoch_done, engine, adaptive)
    monkeypatch.setattr(loop, "save_checkpoint", spy)
    args = [a if not (i and TINY[i - 1] == "--epochs") else "4" for i, a in enumerate(TINY)]
    rc, _, err = cli(capsys, "train", *args, "--aug-policy", policy, "--aug-views", "1",
                     "--out", str(tmp_path / "r"))
    assert rc == 0, err
    # module 0 after epochs 3 and 4 (its one view is epoch 4's)
    first, second = seen[2], seen[3]
    assert first.keys() == second.keys() and first
    same = all(np.array_equal(first[k], second[k]) for k in first)
    assert same == (policy == "training")
