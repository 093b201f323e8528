"""edge_trgl.data.snapshot: a run's on-disk copy of its split arrays (ort/data/...)."""

import json
from pathlib import Path

import numpy as np
import pytest

from edge_trgl.atomic import sha256_file
from edge_trgl.data import ArraySet, Dataset, load_dataset
from edge_trgl.data.snapshot import (SNAPSHOT_DIR, load_snapshot, save_snapshot, snapshot_files,
                                     snapshot_info)
from edge_trgl.errors import UserError
from helpers import python_child


class FakeRun:
    """What the snapshot needs of edge_trgl.run.Run: a root and the manifest's checksums."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.files: dict[str, str] = {}

    def record_file(self, rel: str, sha256: str) -> None:
        self.files[rel] = sha256

    def checksum(self, rel: str):
        return self.files.get(rel)


def _tiny_dataset(name: str, hflip: bool) -> Dataset:
    rng = np.random.default_rng(1)

    def split(n):
        return ArraySet(images=rng.integers(0, 256, (n, 1, 5, 5), dtype=np.uint8),
                        labels=np.arange(n) % 3)

    return Dataset(name=name, train=split(12), val=split(3), test=split(6), num_classes=3,
                   mean=(0.25,), std=(0.5,), class_names=["a", "b", "c"], hflip=hflip)


def _assert_same_data(a: Dataset, b: Dataset) -> None:
    for split in ("train", "val", "test"):
        x, y = getattr(a, split), getattr(b, split)
        assert np.array_equal(x.images, y.images) and x.images.dtype == y.images.dtype == np.uint8
        assert np.array_equal(x.labels, y.labels) and y.labels.dtype == np.int64


def test_snapshot_keeps_its_historical_paths():
    assert SNAPSHOT_DIR == "ort/data"
    assert snapshot_files() == [
        "ort/data/info.json",
        "ort/data/train_images.npy", "ort/data/train_labels.npy",
        "ort/data/val_images.npy", "ort/data/val_labels.npy",
        "ort/data/test_images.npy", "ort/data/test_labels.npy",
    ]


def test_round_trip_keeps_arrays_hflip_and_fingerprint(tmp_path):
    ds = load_dataset("synthetic", seed=2, val_fraction=0.2, synthetic_train=60, synthetic_test=20)
    run = FakeRun(tmp_path)
    save_snapshot(run, ds)
    assert sorted(run.files) == sorted(snapshot_files())
    for rel, sha in run.files.items():
        assert (tmp_path / rel).is_file() and sha256_file(tmp_path / rel) == sha
    info = snapshot_info(run)
    assert info["hflip"] is True and info["fingerprint"] == ds.fingerprint()
    assert info["in_shape"] == [3, 32, 32] and info["name"] == "synthetic"

    back = load_snapshot(run)
    _assert_same_data(ds, back)
    assert back.hflip is True and back.fingerprint() == ds.fingerprint()
    assert (back.name, back.num_classes, back.mean, back.std, back.class_names) == (
        ds.name, ds.num_classes, ds.mean, ds.std, ds.class_names)


def test_round_trip_keeps_hflip_false(tmp_path):
    ds = _tiny_dataset("digits", hflip=False)  # not named mnist: hflip comes from info.json
    run = FakeRun(tmp_path)
    save_snapshot(run, ds)
    back = load_snapshot(run)
    assert back.hflip is False and back.fingerprint() == ds.fingerprint()
    _assert_same_data(ds, back)


def test_labels_only_load(tmp_path):
    ds = _tiny_dataset("mnist", hflip=False)
    run = FakeRun(tmp_path)
    save_snapshot(run, ds)
    (tmp_path / SNAPSHOT_DIR / "train_images.npy").unlink()  # not read without images
    back = load_snapshot(run, images=False)
    assert back.hflip is False and back.in_shape == (1, 5, 5)
    for split in ("train", "val", "test"):
        want = getattr(ds, split)
        got = getattr(back, split)
        assert np.array_equal(got.labels, want.labels) and got.images.shape == want.images.shape
        assert not got.images.any()


@pytest.mark.parametrize("name, expected", [("mnist", False), ("synthetic", True), ("cifar10", True)])
def test_old_snapshot_without_hflip_defaults_by_name(tmp_path, name, expected):
    ds = _tiny_dataset(name, hflip=not expected)  # the saved value is dropped below
    run = FakeRun(tmp_path)
    save_snapshot(run, ds)
    rel = f"{SNAPSHOT_DIR}/info.json"
    info = json.loads((tmp_path / rel).read_text())
    del info["hflip"]  # as written before Dataset.hflip existed
    (tmp_path / rel).write_text(json.dumps(info))
    run.record_file(rel, sha256_file(tmp_path / rel))
    back = load_snapshot(run)
    assert back.hflip is expected
    assert back.fingerprint() == ds.fingerprint()


def test_damaged_snapshot_is_a_user_error(tmp_path):
    run = FakeRun(tmp_path)
    save_snapshot(run, _tiny_dataset("synthetic", hflip=True))
    labels = tmp_path / SNAPSHOT_DIR / "val_labels.npy"
    labels.write_bytes(labels.read_bytes() + b"\0")
    with pytest.raises(UserError) as info:
        load_snapshot(run)
    assert str(info.value) == (
        f"The run in {tmp_path} is missing ort/data/val_labels.npy or it does not match the "
        "checksum in the run manifest (the ONNX Runtime backend's copy of the data splits). The "
        "run directory is damaged; start a new run.")
    run.files.pop(f"{SNAPSHOT_DIR}/info.json")
    with pytest.raises(UserError, match="missing ort/data/info.json"):
        snapshot_info(run)


def test_snapshot_works_with_torch_blocked(tmp_path):
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from pathlib import Path\n"
        "from edge_trgl.data import load_dataset\n"
        "from edge_trgl.data.snapshot import load_snapshot, save_snapshot\n"
        "class R:\n"
        "    root = Path(sys.argv[1]); files = {}\n"
        "    def record_file(self, rel, sha): self.files[rel] = sha\n"
        "    def checksum(self, rel): return self.files.get(rel)\n"
        "ds = load_dataset('synthetic', synthetic_train=20, synthetic_test=10)\n"
        "save_snapshot(R(), ds)\n"
        "print('SAME', load_snapshot(R()).fingerprint() == ds.fingerprint())\n"
    )
    out = python_child(code, str(tmp_path))
    assert out.returncode == 0, out.stderr
    assert "SAME True" in out.stdout
