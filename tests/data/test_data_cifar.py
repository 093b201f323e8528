"""CIFAR-10 loading with the restricted unpickler, on fake files and (when present) the real data."""

import os
import pickle
import shlex
from pathlib import Path

import numpy as np
import pytest

from edge_trgl.data import load_dataset
from edge_trgl.data.cifar import CIFAR10_FILES, load_cifar10, restricted_loads
from edge_trgl.errors import UserError
from helpers import CIFAR_CLASSES, SHARED_DATA, write_cifar_files

REAL_CIFAR = SHARED_DATA / "cifar-10-batches-py"


class _ShellPayload:
    """Pickles to ``os.system('touch MARKER')``: runs a shell command when plainly unpickled."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(self.marker)}",))


class _ExecPayload:
    """Pickles to ``builtins.exec(...)`` that writes MARKER."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def _batch(n, seed, labels=None):
    rng = np.random.default_rng(seed)
    if labels is None:
        labels = [i % 10 for i in range(n)]
    return {
        b"batch_label": b"fake batch",
        b"labels": list(labels),
        b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
        b"filenames": [f"img_{i}.png".encode() for i in range(n)],
    }


def _write_fake_cifar(folder: Path, n_per_batch=20):
    """Every field of the original files (helpers.write_fake_cifar writes only what the loader
    reads), each batch from its own seed; returns the batches written."""
    batches = {f"data_batch_{i}": _batch(n_per_batch, i) for i in range(1, 6)}
    batches["test_batch"] = _batch(n_per_batch, 99)
    meta = {b"num_cases_per_batch": n_per_batch, b"label_names": list(CIFAR_CLASSES),
            b"num_vis": 3072}
    write_cifar_files(folder, batches, meta)
    return batches


def test_fake_cifar_round_trip(tmp_path):
    batches = _write_fake_cifar(tmp_path / "cifar-10-batches-py")
    # Both the folder itself and its parent are accepted.
    for d in (tmp_path, tmp_path / "cifar-10-batches-py"):
        train, test, names = load_cifar10(d)
        assert train.images.shape == (100, 3, 32, 32) and test.images.shape == (20, 3, 32, 32)
        assert train.images.dtype == np.uint8 and train.labels.dtype == np.int64
        assert names[0] == "airplane" and names[9] == "truck"
        expected = batches["data_batch_2"][b"data"][3].reshape(3, 32, 32)
        assert np.array_equal(train.images[20 + 3], expected)
        assert np.array_equal(test.labels, np.array(batches["test_batch"][b"labels"]))


def test_restricted_unpickler_refuses_os_system_payload(tmp_path):
    marker = tmp_path / "marker_system"
    blob = pickle.dumps({b"data": _ShellPayload(marker), b"labels": [0]}, protocol=2)
    assert b"system" in blob  # the payload really references os.system / posix.system
    with pytest.raises(UserError) as info:
        restricted_loads(blob, source="evil_batch")
    msg = str(info.value)
    assert "evil_batch" in msg and "forbidden global" in msg and "system" in msg
    assert not marker.exists()


def test_crafted_batch_file_in_dataset_dir_does_not_execute(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    _write_fake_cifar(folder)
    marker = tmp_path / "marker_exec"
    evil = {b"labels": [0], b"data": _ExecPayload(marker)}
    (folder / "data_batch_3").write_bytes(pickle.dumps(evil, protocol=2))
    with pytest.raises(UserError) as info:
        load_dataset("cifar10", tmp_path)
    assert "data_batch_3" in str(info.value) and "exec" in str(info.value)
    assert not marker.exists()


def test_payload_is_live_with_plain_pickle(tmp_path):
    """Control: the same kind of payload does execute under plain pickle, so the tests above are real."""
    marker = tmp_path / "marker_control"
    pickle.loads(pickle.dumps(_ExecPayload(marker), protocol=2))
    assert marker.read_text() == "pwned"


@pytest.mark.parametrize("keep", [0.5, 0.99, 0.01])
def test_truncated_batch_file_raises_user_error_naming_it(tmp_path, keep):
    folder = tmp_path / "cifar-10-batches-py"
    _write_fake_cifar(folder)
    path = folder / "data_batch_4"
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(UserError) as info:
        load_cifar10(tmp_path)
    assert "data_batch_4" in str(info.value)


def test_corrupted_batch_file_raises_user_error(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    _write_fake_cifar(folder)
    (folder / "test_batch").write_bytes(b"\x80\x02this is not a pickle at all" * 10)
    with pytest.raises(UserError) as info:
        load_cifar10(folder)
    assert "test_batch" in str(info.value)


@pytest.mark.parametrize(
    "batch,problem",
    [
        (lambda: {**_batch(10, 0), b"labels": [0] * 9 + [10]}, "0..9"),
        (lambda: {**_batch(10, 0), b"labels": [0] * 9}, "labels"),
        (lambda: {**_batch(10, 0), b"data": np.zeros((10, 3000), np.uint8)}, "shape"),
        (lambda: {**_batch(10, 0), b"data": np.zeros((10, 3072), np.float32)}, "uint8"),
        (lambda: {b"labels": [0]}, "data"),
        (lambda: [1, 2, 3], "dict"),
    ],
)
def test_invalid_batch_contents_raise_user_error(tmp_path, batch, problem):
    folder = tmp_path / "c"
    _write_fake_cifar(folder)
    (folder / "data_batch_1").write_bytes(pickle.dumps(batch(), protocol=2))
    with pytest.raises(UserError) as info:
        load_cifar10(folder)
    assert "data_batch_1" in str(info.value) and problem in str(info.value)


def test_missing_directory_names_path_and_layout(tmp_path):
    missing = tmp_path / "no_such_dir"
    with pytest.raises(UserError) as info:
        load_dataset("cifar10", missing)
    msg = str(info.value)
    assert str(missing) in msg
    assert all(name in msg for name in CIFAR10_FILES)
    assert "--data-dir" in msg


def test_missing_file_is_named(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    _write_fake_cifar(folder)
    (folder / "data_batch_5").unlink()
    with pytest.raises(UserError) as info:
        load_cifar10(tmp_path)
    assert "missing data_batch_5" in str(info.value) and str(folder) in str(info.value)


def test_fake_cifar_through_load_dataset_subsets(tmp_path):
    _write_fake_cifar(tmp_path / "cifar-10-batches-py")
    ds = load_dataset("cifar10", tmp_path, seed=3, train_fraction=0.5, val_fraction=0.2)
    # 10 per class in the fake train set -> 5 per class kept -> 1 val + 4 train per class.
    assert np.bincount(ds.train.labels).tolist() == [4] * 10
    assert np.bincount(ds.val.labels).tolist() == [1] * 10
    assert len(ds.test) == 20 and ds.in_shape == (3, 32, 32)
    assert ds.mean == (0.4914, 0.4822, 0.4465) and ds.std == (0.2470, 0.2435, 0.2616)


# ---------------------------------------------------------------- real data (skips when absent)

requires_real = pytest.mark.skipif(
    not (REAL_CIFAR / "data_batch_1").is_file(),
    reason=f"real CIFAR-10 not found at {REAL_CIFAR} (a fresh clone has no ../shared/data)",
)


@requires_real
def test_real_cifar_ten_percent_subset():
    ds = load_dataset("cifar10", SHARED_DATA, seed=0, train_fraction=0.1, val_fraction=0.0)
    assert ds.train.images.shape == (5000, 3, 32, 32) and ds.train.images.dtype == np.uint8
    assert np.bincount(ds.train.labels, minlength=10).tolist() == [500] * 10
    assert len(ds.val) == 0 and ds.val.images.shape == (0, 3, 32, 32)
    assert ds.test.images.shape == (10000, 3, 32, 32)
    assert np.bincount(ds.test.labels, minlength=10).tolist() == [1000] * 10
    assert ds.class_names[:3] == ["airplane", "automobile", "bird"] and ds.num_classes == 10
    # Statistics of the real train set agree with the published constants.
    sub = ds.train.images.astype(np.float64) / 255
    np.testing.assert_allclose(sub.mean(axis=(0, 2, 3)), ds.mean, atol=0.01)
    # With the default val split: 450 train + 50 val per class, disjoint.
    ds2 = load_dataset("cifar10", REAL_CIFAR, seed=0, train_fraction=0.1)
    assert np.bincount(ds2.train.labels).tolist() == [450] * 10
    assert np.bincount(ds2.val.labels).tolist() == [50] * 10
    # ... and together they are exactly the 10% subset drawn with the same seed.
    rows = lambda a: sorted(r.tobytes() for r in a)  # noqa: E731
    assert rows(np.concatenate([ds2.train.images, ds2.val.images])) == rows(ds.train.images)


@requires_real
def test_real_cifar_truncated_copy_raises(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in CIFAR10_FILES:
        if name in ("batches.meta", "data_batch_1", "data_batch_2"):
            src = (REAL_CIFAR / name).read_bytes()
            (folder / name).write_bytes(src[: len(src) // 3] if name == "data_batch_2" else src)
        else:  # never reached: loading stops at the truncated data_batch_2
            (folder / name).write_bytes(b"")
    with pytest.raises(UserError) as info:
        load_cifar10(folder)
    assert "data_batch_2" in str(info.value)
