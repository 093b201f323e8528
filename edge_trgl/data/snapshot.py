"""A run's on-disk copy of its dataset splits as ONNX Runtime runs made it before the data store
(data/ondisk.py, rundata.py) replaced it: new runs no longer write it; runs that have one keep
reading it (loaded into memory) when resumed. numpy only; must never import torch: a torch-free
ONNX Runtime worker, started with ``sys.modules['torch'] = None``, imports it.

The trainer processes read the run's exact split arrays from plain .npy files instead of
re-parsing the dataset: loading CIFAR-10 from its pickled batches peaks far above the arrays it
keeps (every batch file is decoded before the subset is taken), and that transient would land
in every worker. A later module's worker reads only the labels.

Files, relative to the run directory (each listed in the run manifest with its sha256):

    ort/data/{train,val,test}_{images,labels}.npy   the split arrays
    ort/data/info.json                              name, classes, statistics, shape, hflip,
                                                    the dataset's fingerprint

(The folder keeps its historical name: the ONNX Runtime backend introduced the snapshot, and
existing runs must keep loading.) ``run`` is any object with ``root``,
``record_file(rel, sha256)`` and ``checksum(rel)`` (edge_trgl.run.Run).
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from edge_trgl.errors import UserError

__all__ = ["SNAPSHOT_DIR", "SPLITS", "snapshot_files", "save_snapshot", "snapshot_info",
           "load_snapshot"]

SNAPSHOT_DIR = "ort/data"
SPLITS = ("train", "val", "test")


def snapshot_files() -> list[str]:
    files = [f"{SNAPSHOT_DIR}/info.json"]
    for split in SPLITS:
        files += [f"{SNAPSHOT_DIR}/{split}_images.npy", f"{SNAPSHOT_DIR}/{split}_labels.npy"]
    return files


def save_snapshot(run, dataset) -> None:
    """Write the dataset's splits into the run (atomically) and record their checksums."""
    import io

    from edge_trgl.atomic import atomic_write_bytes, atomic_write_json, sha256_file
    root = Path(run.root)
    for split in SPLITS:
        arrays = getattr(dataset, split)
        for name, array in (("images", arrays.images), ("labels", arrays.labels)):
            rel = f"{SNAPSHOT_DIR}/{split}_{name}.npy"
            buf = io.BytesIO()
            np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
            atomic_write_bytes(root / rel, buf.getvalue())
            run.record_file(rel, sha256_file(root / rel))
    info = {"name": dataset.name, "num_classes": int(dataset.num_classes),
            "mean": list(dataset.mean), "std": list(dataset.std),
            "class_names": list(dataset.class_names), "in_shape": list(dataset.in_shape),
            "hflip": bool(dataset.hflip), "fingerprint": dataset.fingerprint()}
    rel = f"{SNAPSHOT_DIR}/info.json"
    atomic_write_json(root / rel, info)
    run.record_file(rel, sha256_file(root / rel))


def snapshot_info(run) -> dict:
    return json.loads(_verified(run, f"{SNAPSHOT_DIR}/info.json").read_text())


def load_snapshot(run, *, images: bool = True):
    """The run's Dataset from its snapshot (checksums verified). With images=False the image
    arrays are empty placeholders of the right shape: a later module only needs the labels."""
    from edge_trgl.data.arrays import ArraySet, Dataset
    info = snapshot_info(run)
    c, h, w = info["in_shape"]
    splits = {}
    for split in SPLITS:
        labels = np.load(_verified(run, f"{SNAPSHOT_DIR}/{split}_labels.npy"), allow_pickle=False)
        if images:
            imgs = np.load(_verified(run, f"{SNAPSHOT_DIR}/{split}_images.npy"), allow_pickle=False)
            splits[split] = ArraySet(images=imgs, labels=labels)
        else:
            # a zero-stride view of the right shape (in_shape, len) that holds no memory
            imgs = np.broadcast_to(np.zeros((1, c, h, w), np.uint8), (len(labels), c, h, w))
            splits[split] = SimpleNamespace(images=imgs, labels=labels.astype(np.int64, copy=False))
    # snapshots written before Dataset.hflip existed: only MNIST was trained without flips
    hflip = bool(info["hflip"]) if "hflip" in info else info["name"] != "mnist"
    return Dataset(name=info["name"], train=splits["train"], val=splits["val"],
                   test=splits["test"], num_classes=int(info["num_classes"]),
                   mean=tuple(info["mean"]), std=tuple(info["std"]),
                   class_names=list(info["class_names"]), hflip=hflip)


def _verified(run, rel: str) -> Path:
    from edge_trgl.atomic import sha256_file
    path = Path(run.root) / rel
    expected = run.checksum(rel)
    if expected is None or not path.is_file() or sha256_file(path) != expected:
        raise UserError(f"The run in {run.root} is missing {rel} or it does not match the checksum "
                        f"in the run manifest (the ONNX Runtime backend's copy of the data splits). "
                        f"The run directory is damaged; start a new run.")
    return path
