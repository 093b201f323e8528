"""The built-in synthetic dataset: determinism, balance, format, speed."""


import numpy as np
import pytest

from edge_trgl.data.synthetic import SYNTHETIC_CLASS_NAMES, make_synthetic
from edge_trgl.errors import UserError


@pytest.fixture(scope="module")
def default_pair():
    return make_synthetic(0)


def test_same_seed_gives_byte_identical_arrays(default_pair):
    train, test = default_pair
    train2, test2 = make_synthetic(0)
    assert train.images.tobytes() == train2.images.tobytes()
    assert np.array_equal(train.labels, train2.labels)
    assert test.images.tobytes() == test2.images.tobytes()
    assert np.array_equal(test.labels, test2.labels)


def test_different_seed_gives_different_images(default_pair):
    train, _ = default_pair
    other, _ = make_synthetic(1, n_train=1000, n_test=10)
    assert not np.array_equal(train.images[:1000], other.images)


def test_format_and_class_balance(default_pair):
    train, test = default_pair
    assert train.images.shape == (4000, 3, 32, 32) and test.images.shape == (1000, 3, 32, 32)
    assert train.images.dtype == np.uint8 and train.labels.dtype == np.int64
    assert train.images.flags["C_CONTIGUOUS"]
    assert np.bincount(train.labels, minlength=10).tolist() == [400] * 10
    assert np.bincount(test.labels, minlength=10).tolist() == [100] * 10
    assert len(SYNTHETIC_CLASS_NAMES) == 10 and len(set(SYNTHETIC_CLASS_NAMES)) == 10
    # Uses the dynamic range and is not a constant image.
    assert train.images.min() == 0 and train.images.max() == 255
    assert train.images.std() > 30


def test_train_and_test_differ_and_prefix_is_stable(default_pair):
    train, test = default_pair
    assert not np.array_equal(train.images[:1000], test.images)
    # Asking for fewer images yields a prefix of the same stream.
    small, _ = make_synthetic(0, n_train=1500, n_test=10)
    assert np.array_equal(small.images, train.images[:1500])
    assert np.array_equal(small.labels, train.labels[:1500])


def test_class_means_differ_but_classes_are_not_constant(default_pair):
    train, _ = default_pair
    x = train.images.astype(np.float32)
    means = np.stack([x[train.labels == c].mean(0) for c in range(10)])
    # Distinct class-conditional means (colour/shape cues exist) ...
    dist = np.sqrt(((means[:, None] - means[None]) ** 2).mean(axis=(2, 3, 4)))
    assert dist[~np.eye(10, dtype=bool)].min() > 1.0
    # ... but large within-class variation (random pose, clutter, noise).
    assert all(x[train.labels == c].std(axis=0).mean() > 25 for c in range(10))


def test_nearest_class_mean_on_pixels_is_above_chance_but_far_from_perfect(default_pair):
    train, test = default_pair
    xtr = train.images.reshape(len(train), -1).astype(np.float32) / 255
    xte = test.images.reshape(len(test), -1).astype(np.float32) / 255
    means = np.stack([xtr[train.labels == c].mean(0) for c in range(10)])
    d = (xte**2).sum(1)[:, None] - 2 * xte @ means.T + (means**2).sum(1)[None]
    acc = float((d.argmin(1) == test.labels).mean())
    assert 0.15 < acc < 0.6, acc


@pytest.mark.parametrize("kwargs", [dict(seed=-1), dict(seed=1.5), dict(seed=0, n_train=0), dict(seed=0, n_test=-3)])
def test_bad_arguments_raise_user_error(kwargs):
    with pytest.raises(UserError):
        make_synthetic(**kwargs)
