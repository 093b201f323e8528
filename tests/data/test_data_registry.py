"""The registry of dataset loaders behind load_dataset, and Dataset.hflip."""

from pathlib import Path

import numpy as np
import pytest

import edge_trgl.data as data
from edge_trgl.data import DATASETS, ArraySet, RawData, load_dataset
from edge_trgl.data.idx import MNIST_MEAN, MNIST_STD, write_idx
from edge_trgl.data.registry import (dataset_entry, dataset_names, register_dataset,
                                     unregister_dataset)
from edge_trgl.errors import UserError
from helpers import python_child


@pytest.fixture
def fake_dataset():
    """Registers 'fake' (read from disk, 2 classes of 1x4x4 images) and removes it afterwards;
    yields the list of calls the loader received."""
    calls = []

    def fake_raw(data_dir, **kwargs):
        calls.append((data_dir, kwargs))
        rng = np.random.default_rng(7)
        train = ArraySet(images=rng.integers(0, 256, (40, 1, 4, 4), dtype=np.uint8),
                         labels=np.arange(40) % 2)
        test = ArraySet(images=rng.integers(0, 256, (10, 1, 4, 4), dtype=np.uint8),
                        labels=np.arange(10) % 2)
        return RawData(train, test, ["even", "odd"], (0.5,), (0.25,), hflip=False)

    register_dataset("fake", fake_raw, folder="fake-images")
    try:
        yield calls
    finally:
        unregister_dataset("fake")
    assert "fake" not in dataset_names()


def _write_tiny_mnist(folder: Path, n_train: int = 40, n_test: int = 10) -> None:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(folder / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", (np.arange(n) % 10).astype(np.uint8))


def test_registry_lists_the_built_in_datasets_in_order():
    assert dataset_names()[:3] == ("synthetic", "cifar10", "mnist")
    assert DATASETS == ("synthetic", "cifar10", "mnist", "folder")
    assert "RawData" in data.__all__ and "register_dataset" in data.__all__
    assert dataset_entry("synthetic").needs_data_dir is False
    assert dataset_entry("cifar10").needs_data_dir and dataset_entry("cifar10").folder == "cifar-10-batches-py"
    assert dataset_entry("mnist").needs_data_dir and dataset_entry("mnist").folder == "mnist"
    assert dataset_entry("imagenet") is None


def test_a_registered_loader_is_loaded_by_name(fake_dataset, tmp_path):
    assert dataset_names()[-1] == "fake"
    ds = load_dataset("FAKE", tmp_path, seed=3, val_fraction=0.2, synthetic_train=11, synthetic_test=5)
    assert fake_dataset == [(tmp_path, {"seed": 3, "synthetic_train": 11, "synthetic_test": 5})]
    assert ds.name == "fake" and ds.num_classes == 2 and ds.class_names == ["even", "odd"]
    assert ds.mean == (0.5,) and ds.std == (0.25,) and ds.in_shape == (1, 4, 4)
    assert ds.hflip is False
    # the common split logic applies: 20% of each class of the 40 train images goes to val
    assert len(ds.train) == 32 and len(ds.val) == 8 and len(ds.test) == 10
    assert np.bincount(ds.val.labels).tolist() == [4, 4]
    # the unknown-name message lists it while it is registered
    with pytest.raises(UserError) as info:
        load_dataset("imagenet")
    assert "synthetic, cifar10, mnist, folder, fake" in str(info.value)


def test_a_registered_disk_dataset_needs_a_data_dir(fake_dataset):
    with pytest.raises(UserError) as info:
        load_dataset("fake")
    msg = str(info.value)
    assert msg.startswith("The fake dataset is read from disk, but no data directory was given.")
    assert "the original 'fake-images' files" in msg
    assert fake_dataset == []  # refused before the loader ran


def test_register_refuses_duplicates_and_bad_names(fake_dataset):
    with pytest.raises(ValueError, match="already registered"):
        register_dataset("mnist", lambda data_dir, **_: None)
    with pytest.raises(ValueError, match="lower-case"):
        register_dataset("Fake2", lambda data_dir, **_: None)
    with pytest.raises(ValueError, match="module:function"):
        register_dataset("fake2", "edge_trgl.data.idx")
    assert dataset_names()[:3] == ("synthetic", "cifar10", "mnist") and "fake2" not in dataset_names()


def test_a_string_loader_is_imported_when_used(tmp_path):
    register_dataset("mnist-copy", "edge_trgl.data.idx:mnist_raw", folder="mnist")
    try:
        _write_tiny_mnist(tmp_path / "mnist")
        a = load_dataset("mnist-copy", tmp_path, val_fraction=0.0)
        b = load_dataset("mnist", tmp_path, val_fraction=0.0)
    finally:
        unregister_dataset("mnist-copy")
    assert np.array_equal(a.train.images, b.train.images) and a.hflip is False


def test_hflip_is_false_for_mnist_and_true_for_synthetic(tmp_path):
    _write_tiny_mnist(tmp_path / "mnist")
    mnist = load_dataset("mnist", tmp_path, val_fraction=0.1)
    assert mnist.hflip is False
    assert mnist.mean == MNIST_MEAN and mnist.std == MNIST_STD and mnist.in_shape == (1, 28, 28)
    synthetic = load_dataset("synthetic", synthetic_train=100, synthetic_test=20)
    assert synthetic.hflip is True


def test_hflip_is_true_for_cifar10(tmp_path):
    from helpers import write_fake_cifar

    write_fake_cifar(tmp_path)
    assert load_dataset("cifar10", tmp_path, val_fraction=0.0).hflip is True


def test_hflip_is_not_part_of_the_fingerprint():
    ds = load_dataset("synthetic", synthetic_train=100, synthetic_test=20)
    before = ds.fingerprint()
    ds.hflip = False
    assert ds.fingerprint() == before


def test_fingerprint_is_unchanged_by_the_registry(tmp_path):
    # computed by the load_dataset from before the registry and Dataset.hflip: existing runs'
    # data fingerprints must still match (integer-only data, so the same on every platform)
    _write_tiny_mnist(tmp_path / "mnist")
    ds = load_dataset("mnist", tmp_path, seed=1, train_fraction=0.5, val_fraction=0.2, test_fraction=0.5)
    assert ds.fingerprint() == "2bc14a28518c9fbc41917996c1d71d050c0e2480eb67cbe4cbd3125958ca8702"


def test_loading_one_dataset_imports_no_other_parser():
    code = (
        "import sys\n"
        "import edge_trgl.data\n"
        "edge_trgl.data.load_dataset('synthetic', synthetic_train=10, synthetic_test=10)\n"
        "print('LOADED', sorted(m for m in ('edge_trgl.data.cifar', 'edge_trgl.data.idx', "
        "'edge_trgl.data.synthetic') if m in sys.modules))\n"
    )
    out = python_child(code)
    assert out.returncode == 0, out.stderr
    assert "LOADED ['edge_trgl.data.synthetic']" in out.stdout

