"""The plan's disk-side choices (memory/plan.py): how many augmented train views the cache holds
by default, and how that default yields to the disk."""

import shutil
from collections import namedtuple

import pytest

from edge_trgl.config import TrainConfig
from edge_trgl.data import load_dataset
from edge_trgl.memory.plan import cache_disk_bytes, default_views, fit_disk
from edge_trgl.modules import architecture


@pytest.mark.parametrize("epochs, views", [(1, 1), (2, 2), (8, 2), (16, 2), (17, 3), (40, 5),
                                           (120, 15), (128, 16), (400, 16)])
def test_default_views_grow_one_per_8_epochs_from_2_up_to_16(epochs, views):
    assert default_views(TrainConfig(epochs=epochs)) == views


def test_multilap_counts_one_laps_epochs_and_an_explicit_count_wins():
    assert default_views(TrainConfig(epochs=120, scheme="multilap", laps=5)) == 3   # 24 a lap
    assert default_views(TrainConfig(epochs=120, aug_views=4)) == 4
    assert default_views(TrainConfig(epochs=120, augment=False)) == 1


Usage = namedtuple("Usage", "total used free")


def _data():
    return load_dataset("synthetic", seed=0, synthetic_train=200, synthetic_test=50)


def _fit(monkeypatch, free_bytes, **kw):
    data = _data()
    cfg = TrainConfig(model="resnet8", epochs=120, **kw)
    arch = architecture(cfg, data.in_shape, data.num_classes)
    monkeypatch.setattr(shutil, "disk_usage", lambda where: Usage(free_bytes, 0, free_bytes))
    notes = []
    splits = [(0, 1), (1, 2), (2, len(arch))]
    views, _, _ = fit_disk(cfg, data, arch, splits, notes)
    return views, notes


def test_the_default_views_take_at_most_half_the_free_disk(monkeypatch):
    views, notes = _fit(monkeypatch, 10**12)
    assert views == 15 and not any("to fit" in n for n in notes)
    # free space where 15 views need more than half of it
    sample = 16 * 32 * 32 * 2        # resnet8's first block's outputs, fp16
    free = 2 * 2 * cache_disk_bytes(_data(), sample, 5)
    views, notes = _fit(monkeypatch, free)
    assert 2 <= views < 15, views
    assert any(f"{views} cached view(s), not 15, to fit the free disk" in n for n in notes), notes


def test_asked_for_views_and_a_disk_budget_may_use_it_all(monkeypatch):
    free = 4 * cache_disk_bytes(_data(), 16 * 32 * 32 * 2, 15)
    asked, _ = _fit(monkeypatch, free, aug_views=15)
    default, _ = _fit(monkeypatch, free)
    assert asked == 15 and default < 15
