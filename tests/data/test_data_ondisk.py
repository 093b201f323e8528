"""The data store (data/ondisk.py, data/stream.py, rundata.py): the one-time conversion of a
dataset into a run's on-disk arrays, streamed; its checksums; the run-level open / rebuild.

Every dataset is built on the fly (fake CIFAR-10 and MNIST files, a Pillow image folder, the
synthetic generator); the two tests of a few seconds are marked slow."""

from __future__ import annotations

import gzip
import json
import tracemalloc
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from edge_trgl.config import TrainConfig
from edge_trgl.data import load_dataset_for
from edge_trgl.data.idx import write_idx
from edge_trgl.data.ondisk import StoreDamaged, StoreMissing, build_store, open_store
from edge_trgl.data.stream import PLANNED_PREFIX, scan_for, stream_for
from edge_trgl.errors import UserError
from helpers import write_fake_cifar

SPLITS = ("train", "val", "test")


def cfg_for(kind: str, data_dir=None, **extra) -> TrainConfig:
    base = {"data": kind, "data_dir": None if data_dir is None else str(data_dir), "seed": 3}
    if kind == "synthetic":
        base.update(synthetic_train=300, synthetic_test=60)
    return TrainConfig(**{**base, **extra})


def write_fake_mnist(folder: Path, n: int = 120, test: int = 40) -> Path:
    rng = np.random.default_rng(1)
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, count, gz in (("train", n, True), ("t10k", test, False)):
        suffix = ".gz" if gz else ""
        write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}",
                  rng.integers(0, 256, (count, 28, 28), dtype=np.uint8))
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}",
                  (np.arange(count) % 10).astype(np.uint8))
    return folder


def write_folder(root: Path, per_class: int, size: int = 40) -> Path:
    Image = pytest.importorskip("PIL.Image", reason="Pillow (the `folder` extra) is not installed")
    rng = np.random.default_rng(2)
    for c, cls in enumerate(("ant", "bee", "cow")):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            w = size + int(rng.integers(0, 9))
            arr = np.clip(rng.integers(0, 60, (size, w, 3)) + 60 * c, 0, 255).astype(np.uint8)
            img = Image.fromarray(arr)
            (img.convert("L") if i == 0 else img).save(root / cls / f"{i:03d}.png")
    return root


@pytest.fixture(params=["synthetic", "cifar10", "mnist", "folder"])
def any_cfg(request, tmp_path):
    kind = request.param
    if kind == "cifar10":
        return cfg_for(kind, write_fake_cifar(tmp_path / "cifar", 30, test=40),
                       train_fraction=0.8, test_fraction=0.5)
    if kind == "mnist":
        return cfg_for(kind, write_fake_mnist(tmp_path / "mnist"))
    if kind == "folder":
        return cfg_for(kind, write_folder(tmp_path / "imgs", 8), image_size=16)
    return cfg_for(kind, val_fraction=0.0)          # (an empty val split)


def test_the_store_holds_exactly_what_load_dataset_loads(any_cfg, tmp_path):
    """Same images, labels, statistics and fingerprint as the in-memory loader, split by split;
    the planner's scan (labels only) agrees with it too."""
    memory = load_dataset_for(any_cfg)
    store = build_store(stream_for(any_cfg), tmp_path / "store")
    assert store.fingerprint() == memory.fingerprint()
    assert (store.name, store.num_classes, store.class_names, store.mean, store.std,
            store.hflip, store.in_shape) == (memory.name, memory.num_classes, memory.class_names,
                                             memory.mean, memory.std, memory.hflip,
                                             memory.in_shape)
    scan = scan_for(any_cfg)
    for split in SPLITS:
        want, got = getattr(memory, split), getattr(store, split)
        assert np.array_equal(got.labels, want.labels)
        assert got.images.shape == want.images.shape == getattr(scan, split).images.shape
        idx = np.random.default_rng(0).permutation(len(want.labels))
        assert np.array_equal(got.images[idx], want.images[idx])   # pread, any order
        assert np.array_equal(getattr(scan, split).labels, want.labels)
        assert got.images.nbytes == 0 and got.images.disk_bytes == want.images.nbytes
    assert scan.fingerprint().startswith(PLANNED_PREFIX)
    store.close()


def _peak_during(fn) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_converting_a_folder_never_holds_it(tmp_path, monkeypatch):
    """The folder's decoded images (162 x 3 x 96 x 96 = 4.5 MB) are never in memory together:
    the conversion's peak (traced by tracemalloc, which sees numpy's buffers) stays near a few
    chunks of 8 images, far below the whole."""
    import edge_trgl.data.folder as folder
    monkeypatch.setattr(folder, "CHUNK_IMAGES", 8)
    cfg = cfg_for("folder", write_folder(tmp_path / "imgs", 54, size=96), image_size=96)
    sel = stream_for(cfg)
    whole = sum(int(np.prod(sel.shape(s))) for s in SPLITS)
    assert whole > 4_000_000
    peak = _peak_during(lambda: build_store(sel, tmp_path / "store").close())
    assert peak < whole / 4, (peak, whole)


def test_mnist_stream_refuses_a_truncated_image_file(tmp_path):
    folder = write_fake_mnist(tmp_path / "mnist")
    path = folder / "train-images-idx3-ubyte.gz"
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[:-100]))
    with pytest.raises(UserError, match="ends after 119 of the 120 images"):
        build_store(stream_for(cfg_for("mnist", folder)), tmp_path / "store")
    assert not (tmp_path / "store").exists()
    assert not list(tmp_path.glob(".store.building-*"))    # nothing half-written is left


def test_damage_is_detected_when_the_store_is_opened(tmp_path):
    root = tmp_path / "store"
    build_store(stream_for(cfg_for("synthetic")), root).close()
    with pytest.raises(StoreMissing):
        open_store(tmp_path / "nowhere")
    shard = sorted((root / "arrays").glob("train_images-*.npy"))[0]
    data = bytearray(shard.read_bytes())
    data[-5] ^= 0xFF                                       # one flipped bit of one pixel
    shard.write_bytes(bytes(data))
    with pytest.raises(StoreDamaged, match="train images .* sha256"):
        open_store(root)
    open_store(root, images=False).close()                 # the labels alone are intact
    (root / "index.json").write_text("{not json")
    with pytest.raises(StoreDamaged, match="index.json cannot be read"):
        open_store(root)


def fake_run(root: Path, fingerprint: str):
    manifest = {"data_fingerprint": fingerprint, "files": {}}
    return SimpleNamespace(root=root, manifest=manifest,
                           checksum=lambda rel: manifest["files"].get(rel))


@pytest.mark.slow   # five conversions and loads of the synthetic set: ~3 s
def test_a_runs_damaged_copy_is_rebuilt_from_the_source_or_refused(tmp_path):
    """open_run_data: an intact copy opens; a damaged one is rebuilt from the source when the
    source still holds the run's data, refused (copy left as it was) when it does not, and
    refused with a clear message where rebuilding is not allowed (a worker)."""
    from edge_trgl.rundata import materialize_run_data, open_run_data
    cfg = cfg_for("synthetic")
    run = fake_run(tmp_path / "run", PLANNED_PREFIX + "x")
    with pytest.raises(UserError, match="changed while the run was being planned"):
        materialize_run_data(run, cfg)
    run.manifest["data_fingerprint"] = scan_for(cfg).fingerprint()
    store = materialize_run_data(run, cfg)
    fingerprint = store.fingerprint()
    assert run.manifest["data_fingerprint"] == fingerprint == load_dataset_for(cfg).fingerprint()
    store.close()
    shard = sorted((tmp_path / "run" / "data" / "arrays").glob("test_images-*.npy"))[0]
    damaged = shard.read_bytes()[:-10]
    shard.write_bytes(damaged)
    with pytest.raises(UserError, match="is damaged .* where the run's data source is available"):
        open_run_data(run, cfg, rebuild=False)
    other = cfg_for("synthetic", synthetic_test=61)
    with pytest.raises(UserError, match="fingerprint changed"):
        open_run_data(run, other)
    assert shard.read_bytes() == damaged                # a refused rebuild changed nothing
    again = open_run_data(run, cfg)
    assert again.fingerprint() == fingerprint
    assert np.array_equal(again.test.images[np.arange(3)],
                          load_dataset_for(cfg).test.images[:3])
    again.close()
    index = json.loads((tmp_path / "run" / "data" / "index.json").read_text())
    assert index["fingerprint"] == fingerprint


@pytest.mark.slow   # a whole `edge-trgl train` up to its conversion: ~3 s with torch's import
def test_a_full_disk_while_converting_is_a_clear_error_and_leaves_no_run(capsys, tmp_path,
                                                                          monkeypatch):
    """Every shard file of the data store refuses writes with ENOSPC after 64 kB: exit 2, one
    paragraph saying what filled up, and neither a run directory nor a half-built store."""
    from edge_trgl import cache
    from helpers import TINY, assert_clean_error, cli, fill_disk_after
    fill_disk_after(monkeypatch, cache, 64_000)
    rc, _, err = cli(capsys, "train", *TINY, "--out", str(tmp_path / "run"))
    assert_clean_error(rc, err, "The disk filled up while writing the run's copy of its dataset")
    assert list(tmp_path.iterdir()) == []


def test_a_labels_only_open_can_still_check_and_rebuild_the_images(tmp_path):
    """What a resuming ONNX Runtime orchestrator does: it keeps only the labels, but checks the
    image shards its workers will read, and rebuilds them when damaged."""
    from edge_trgl.rundata import materialize_run_data, open_run_data
    cfg = cfg_for("synthetic")
    run = fake_run(tmp_path / "run", "pending")
    materialize_run_data(run, cfg).close()
    shard = sorted((tmp_path / "run" / "data" / "arrays").glob("train_images-*.npy"))[0]
    good = shard.read_bytes()
    shard.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    open_run_data(run, cfg, images=False).close()             # labels alone: not noticed
    labels_only = open_run_data(run, cfg, images=False, verify_images=True)
    assert labels_only.train.images.reader is None
    assert np.array_equal(labels_only.train.labels, load_dataset_for(cfg).train.labels)
    assert shard.read_bytes() == good                          # rebuilt, byte for byte
