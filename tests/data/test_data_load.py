"""load_dataset: names, fractions, seeded class-balanced subsets, Dataset.fingerprint, no torch."""

import numpy as np
import pytest

import edge_trgl.data as data
from edge_trgl.data import DATASETS, ArraySet, Dataset, load_dataset
from edge_trgl.errors import UserError
from helpers import python_child

SMALL = dict(synthetic_train=1000, synthetic_test=100)


def _rows(images):
    return sorted(r.tobytes() for r in images)


def test_public_api():
    assert DATASETS == ("synthetic", "cifar10", "mnist", "folder")
    for name in ("ArraySet", "Dataset", "load_dataset", "augment_batch", "normalize", "DATASETS"):
        assert name in data.__all__ and hasattr(data, name)


def test_unknown_name_lists_choices():
    with pytest.raises(UserError) as info:
        load_dataset("imagenet")
    msg = str(info.value)
    assert "'imagenet'" in msg and all(n in msg for n in DATASETS)


@pytest.mark.parametrize("name", ["cifar10", "mnist"])
def test_disk_datasets_need_data_dir(name):
    with pytest.raises(UserError, match="--data-dir"):
        load_dataset(name)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(train_fraction=0.0),
        dict(train_fraction=-0.5),
        dict(train_fraction=1.01),
        dict(train_fraction=float("nan")),
        dict(train_fraction="0.5"),
        dict(train_fraction=True),
        dict(val_fraction=1.0),
        dict(val_fraction=-0.1),
        dict(val_fraction=float("inf")),
        dict(test_fraction=0.0),
        dict(test_fraction=1.5),
        dict(seed=-1),
        dict(seed=2.5),
    ],
)
def test_invalid_arguments_raise_user_error(kwargs):
    with pytest.raises(UserError) as info:
        load_dataset("synthetic", **SMALL, **kwargs)
    key = next(iter(kwargs))
    assert key.split("_")[0] in str(info.value)


def test_synthetic_default_split():
    ds = load_dataset("synthetic", seed=0)
    assert isinstance(ds, Dataset) and ds.name == "synthetic"
    assert ds.in_shape == (3, 32, 32) and ds.num_classes == 10 and len(ds.class_names) == 10
    assert np.bincount(ds.train.labels).tolist() == [360] * 10
    assert np.bincount(ds.val.labels).tolist() == [40] * 10
    assert len(ds.test) == 1000
    assert len(ds.mean) == 3 and all(0.3 < m < 0.7 for m in ds.mean)
    assert all(0.1 < s < 0.35 for s in ds.std)
    # Statistics are those of the generated train images.
    full = np.concatenate([ds.train.images, ds.val.images]).astype(np.float64) / 255
    np.testing.assert_allclose(full.mean(axis=(0, 2, 3)), ds.mean, atol=1e-4)
    np.testing.assert_allclose(full.std(axis=(0, 2, 3)), ds.std, atol=1e-4)


def test_test_fraction_is_a_seeded_class_balanced_nested_subset_of_the_test_set():
    full = load_dataset("synthetic", seed=0, **SMALL)
    half = load_dataset("synthetic", seed=0, test_fraction=0.5, **SMALL)
    fifth = load_dataset("synthetic", seed=0, test_fraction=0.2, **SMALL)
    per_class = np.bincount(full.test.labels, minlength=10)
    for part, fraction in ((half, 0.5), (fifth, 0.2)):
        expected = [max(1, int(np.floor(fraction * n + 0.5))) for n in per_class]
        assert np.bincount(part.test.labels, minlength=10).tolist() == expected
    assert set(_rows(fifth.test.images)) <= set(_rows(half.test.images)) <= set(_rows(full.test.images))
    # the train and val splits do not depend on the test fraction
    assert _rows(half.train.images) == _rows(full.train.images)
    assert _rows(half.val.images) == _rows(full.val.images)
    again = load_dataset("synthetic", seed=0, test_fraction=0.5, **SMALL)
    assert _rows(again.test.images) == _rows(half.test.images)
    assert half.fingerprint() != full.fingerprint()


def test_subset_is_class_balanced_and_split_is_disjoint():
    ds = load_dataset("synthetic", seed=5, train_fraction=0.5, val_fraction=0.2, **SMALL)
    # 100 per class -> 50 kept -> 10 val + 40 train per class.
    assert np.bincount(ds.train.labels).tolist() == [40] * 10
    assert np.bincount(ds.val.labels).tolist() == [10] * 10
    assert not set(_rows(ds.train.images)) & set(_rows(ds.val.images))
    full = load_dataset("synthetic", seed=5, val_fraction=0.0, **SMALL)
    assert set(_rows(ds.train.images)) | set(_rows(ds.val.images)) <= set(_rows(full.train.images))


def test_same_seed_same_subsets_different_seed_different():
    kw = dict(train_fraction=0.3, val_fraction=0.25, **SMALL)
    a = load_dataset("synthetic", seed=1, **kw)
    b = load_dataset("synthetic", seed=1, **kw)
    assert np.array_equal(a.train.images, b.train.images) and np.array_equal(a.val.labels, b.val.labels)
    assert a.fingerprint() == b.fingerprint()
    # A different seed changes the data (and the subsets; see the next test for fixed data).
    c = load_dataset("synthetic", seed=2, **kw)
    assert a.fingerprint() != c.fingerprint()


def test_subset_choice_depends_on_seed_on_fixed_data(tmp_path):
    from edge_trgl.data.idx import write_idx

    rng = np.random.default_rng(0)
    folder = tmp_path / "mnist"
    folder.mkdir()
    for prefix, n in (("train", 200), ("t10k", 20)):
        write_idx(folder / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", (np.arange(n) % 10).astype(np.uint8))
    a = load_dataset("mnist", tmp_path, seed=0, train_fraction=0.5, val_fraction=0.0)
    b = load_dataset("mnist", tmp_path, seed=0, train_fraction=0.5, val_fraction=0.0)
    c = load_dataset("mnist", tmp_path, seed=1, train_fraction=0.5, val_fraction=0.0)
    assert np.bincount(a.train.labels).tolist() == [10] * 10
    assert np.array_equal(a.train.images, b.train.images)
    assert not np.array_equal(a.train.images, c.train.images)
    # Subsets for a growing fraction are nested.
    big = load_dataset("mnist", tmp_path, seed=0, train_fraction=0.8, val_fraction=0.0)
    assert set(_rows(a.train.images)) < set(_rows(big.train.images))


def test_val_fraction_zero_gives_empty_val_with_right_shape():
    ds = load_dataset("synthetic", val_fraction=0.0, **SMALL)
    assert len(ds.train) == 1000 and len(ds.val) == 0
    assert ds.val.images.shape == (0, 3, 32, 32) and ds.val.labels.dtype == np.int64


def test_tiny_fraction_keeps_every_class_in_train():
    ds = load_dataset("synthetic", train_fraction=0.001, val_fraction=0.9, **SMALL)
    # round(0.1) would be 0: each class keeps one image, and it stays in train.
    assert np.bincount(ds.train.labels).tolist() == [1] * 10 and len(ds.val) == 0


def test_fingerprint_detects_any_change():
    ds = load_dataset("synthetic", **SMALL)
    fp = ds.fingerprint()
    assert len(fp) == 64 and int(fp, 16) >= 0
    ds.train.images[7, 1, 2, 3] ^= 1
    assert ds.fingerprint() != fp
    ds.train.images[7, 1, 2, 3] ^= 1
    assert ds.fingerprint() == fp
    ds.test.labels[0] = (ds.test.labels[0] + 1) % 10
    assert ds.fingerprint() != fp


def test_arrayset_validates_and_converts():
    s = ArraySet(images=np.zeros((2, 1, 3, 3), np.uint8), labels=np.array([1, 2], np.int32))
    assert s.labels.dtype == np.int64 and len(s) == 2
    with pytest.raises(ValueError):
        ArraySet(images=np.zeros((2, 1, 3, 3), np.float32), labels=np.zeros(2, np.int64))
    with pytest.raises(ValueError):
        ArraySet(images=np.zeros((2, 1, 3, 3), np.uint8), labels=np.zeros(3, np.int64))


def test_data_package_does_not_import_torch():
    code = (
        "import sys, numpy as np\n"
        "import edge_trgl.data, edge_trgl.data.cifar, edge_trgl.data.idx, edge_trgl.data.synthetic\n"
        "edge_trgl.data.load_dataset('synthetic', synthetic_train=10, synthetic_test=10)\n"
        "edge_trgl.data.augment_batch(np.zeros((1, 1, 4, 4), np.uint8), np.random.default_rng(0))\n"
        "bad = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))\n"
        "print('TORCH_MODULES', bad)\n"
    )
    out = python_child(code)
    assert out.returncode == 0, out.stderr
    assert "TORCH_MODULES []" in out.stdout
