"""Datasets as numpy arrays: the built-in synthetic set, CIFAR-10, MNIST and image folders.

``load_dataset`` picks a loader by name from the registry (data/registry.py: to add a dataset,
write its module and add one ``register_dataset`` line there) and takes the seeded train / val /
test subsets, in memory (export, evaluate, tests). A run never holds them: data/stream.py reads a
dataset as a stream (labels first, images a chunk at a time) and data/ondisk.py converts it into
the run's on-disk arrays, which every trainer reads with pread (rundata.py). data/snapshot.py is
the in-memory copy that ONNX Runtime runs made before that, still read when resuming them.

This package must never import torch: it is also imported by a torch-free worker process.
"""

from __future__ import annotations

import math
import os

import numpy as np

from edge_trgl.data.arrays import ArraySet, Dataset
from edge_trgl.data.augment import augment_batch, normalize
from edge_trgl.data.registry import RawData, dataset_entry, dataset_names, register_dataset
from edge_trgl.errors import UserError

__all__ = [
    "DATASETS",
    "ArraySet",
    "Dataset",
    "RawData",
    "load_dataset",
    "register_dataset",
    "dataset_names",
    "augment_batch",
    "normalize",
    "class_balanced_split",
]

# The datasets registered at import (data/registry.py), in order; the command line offers these.
DATASETS = dataset_names()

# Independent RNG streams for the two seeded selections, so each depends only on (seed, purpose).
_SUBSET_STREAM = 0x5B5E7
_VAL_STREAM = 0x7A1
_TEST_STREAM = 0x7E57


def class_balanced_split(
    labels: np.ndarray, fraction: float, rng: np.random.Generator, *, keep_one: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into ``(chosen, rest)`` taking ``round(fraction * n_c)`` of each class c.

    Within each class the chosen indices are a uniformly random subset (drawn from ``rng``).
    With ``keep_one`` every class keeps at least one chosen index; otherwise every class keeps at
    least one index in ``rest``. Both outputs are sorted.
    """
    labels = np.asarray(labels)
    chosen, rest = [], []
    for cls in np.unique(labels):
        idx = np.flatnonzero(labels == cls)
        n = idx.size
        k = int(math.floor(fraction * n + 0.5))
        if keep_one:
            k = max(k, 1)
        else:
            k = min(k, n - 1)
        perm = rng.permutation(idx)
        chosen.append(perm[:k])
        rest.append(perm[k:])
    cat = lambda parts: np.sort(np.concatenate(parts)) if parts else np.zeros(0, np.int64)  # noqa: E731
    return cat(chosen).astype(np.int64), cat(rest).astype(np.int64)


def _check_fraction(name: str, value, lo_open: bool, hi_open: bool, option: str) -> float:
    ok = isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(value, bool)
    v = float(value) if ok else float("nan")
    if ok and math.isfinite(v):
        ok = (v > 0.0 if lo_open else v >= 0.0) and (v < 1.0 if hi_open else v <= 1.0)
    else:
        ok = False
    if not ok:
        interval = ("(" if lo_open else "[") + "0, 1" + (")" if hi_open else "]")
        raise UserError(
            f"{name} must be a number in {interval}, got {value!r}. Pass {option} with a value "
            f"such as {'0.1' if name == 'val_fraction' else '1.0 (all data) or 0.1 (10%)'}."
        )
    return v


def check_options(name, data_dir, seed, train_fraction, val_fraction, test_fraction):
    """(registry entry, seed, (train, val, test fractions)) of load_dataset's arguments, checked;
    shared with the streaming path (data/stream.py)."""
    entry = dataset_entry(name.lower()) if isinstance(name, str) else None
    if entry is None:
        raise UserError(
            f"Unknown dataset {name!r}. Choose one of: {', '.join(dataset_names())} (e.g. --data "
            "synthetic, which needs no download)."
        )
    name = entry.name
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise UserError(
            f"The data seed must be a non-negative integer, got {seed!r}. Pass e.g. --seed 0."
        )
    seed = int(seed)
    train_fraction = _check_fraction("train_fraction", train_fraction, True, False, "--train-fraction")
    val_fraction = _check_fraction("val_fraction", val_fraction, False, True, "--val-fraction")
    test_fraction = _check_fraction("test_fraction", test_fraction, True, False, "--test-fraction")

    if entry.needs_data_dir and data_dir is None:
        raise UserError(
            f"The {name} dataset is read from disk, but no data directory was given. Pass "
            f"--data-dir pointing at the folder that holds the original '{entry.folder}' files (or "
            "its parent), or use --data synthetic, which needs no download."
        )
    return entry, seed, (train_fraction, val_fraction, test_fraction)


def split_indices(train_labels, test_labels, seed: int, train_fraction: float,
                  val_fraction: float, test_fraction: float):
    """(train, val, test) indices, each sorted: train and val into the original train set, test
    into the original test set (see load_dataset for the rules). Labels are all it needs, so the
    streaming path (data/stream.py) chooses exactly the images load_dataset keeps, in the same
    order, before decoding any."""
    train_labels = np.asarray(train_labels)
    pool = np.arange(len(train_labels), dtype=np.int64)
    if train_fraction < 1.0:
        rng = np.random.default_rng([seed, _SUBSET_STREAM])
        keep, _ = class_balanced_split(train_labels, train_fraction, rng, keep_one=True)
        pool = pool[keep]
    if val_fraction > 0.0:
        rng = np.random.default_rng([seed, _VAL_STREAM])
        val_idx, train_idx = class_balanced_split(train_labels[pool], val_fraction, rng,
                                                  keep_one=False)
        train_idx, val_idx = pool[train_idx], pool[val_idx]
    else:
        train_idx, val_idx = pool, np.zeros(0, np.int64)
    test_idx = np.arange(len(test_labels), dtype=np.int64)
    if test_fraction < 1.0:
        rng = np.random.default_rng([seed, _TEST_STREAM])
        test_idx, _ = class_balanced_split(np.asarray(test_labels), test_fraction, rng,
                                           keep_one=True)
    return train_idx, val_idx, test_idx


def load_dataset(
    name: str,
    data_dir: str | os.PathLike | None = None,
    *,
    seed: int = 0,
    train_fraction: float = 1.0,
    val_fraction: float = 0.1,
    test_fraction: float = 1.0,
    synthetic_train: int = 4000,
    synthetic_test: int = 1000,
    image_size: int | None = None,
) -> Dataset:
    """Load a dataset by name and split it into train / val / test.

    ``train_fraction`` in (0, 1] keeps a seeded, class-stratified subset of the original train
    set (each class keeps ``round(fraction * its count)`` images, so 0.1 of CIFAR-10 is exactly
    500 per class). ``val_fraction`` in [0, 1) then moves a seeded, class-stratified part of that
    subset into the validation split (empty when 0). ``test_fraction`` in (0, 1] keeps a seeded,
    class-stratified subset of the test set (default: all of it; a smaller one makes quick runs
    and benchmarks cheaper, at the cost of a noisier test accuracy). The same ``seed`` always
    yields the same subsets; subsets for growing ``train_fraction`` (or ``test_fraction``) are
    nested. ``image_size`` is passed to the loader only when given (the folder dataset's
    --image-size; TrainConfig.validate refuses it for the datasets of a fixed size).
    """
    entry, seed, (train_fraction, val_fraction, test_fraction) = check_options(
        name, data_dir, seed, train_fraction, val_fraction, test_fraction)
    name = entry.name
    options = {} if image_size is None else {"image_size": image_size}
    full_train, test, class_names, mean, std, hflip = entry.load(
        data_dir, seed=seed, synthetic_train=synthetic_train, synthetic_test=synthetic_test,
        **options
    )
    class_names = list(class_names)

    num_classes = len(class_names)
    train_idx, val_idx, test_idx = split_indices(full_train.labels, test.labels, seed,
                                                 train_fraction, val_fraction, test_fraction)
    # (all of a set, in order, is the set itself: no copy)
    take = lambda arrays, idx: arrays if len(idx) == len(arrays) else arrays.subset(idx)  # noqa: E731
    train, val, test = take(full_train, train_idx), full_train.subset(val_idx), take(test, test_idx)
    return Dataset(
        name=name,
        train=train,
        val=val,
        test=test,
        num_classes=num_classes,
        mean=tuple(mean),
        std=tuple(std),
        class_names=class_names,
        hflip=bool(hflip),
    )


def load_dataset_for(cfg) -> Dataset:
    """The dataset a TrainConfig names, split as it says (every process of a run loads it so)."""
    return load_dataset(cfg.data, cfg.data_dir, seed=cfg.seed, train_fraction=cfg.train_fraction,
                        val_fraction=cfg.val_fraction, test_fraction=cfg.test_fraction,
                        synthetic_train=cfg.synthetic_train, synthetic_test=cfg.synthetic_test,
                        image_size=cfg.image_size)
