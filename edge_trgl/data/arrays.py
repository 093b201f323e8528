"""In-memory dataset containers (numpy only; this package must never import torch)."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field

import numpy as np

__all__ = ["ArraySet", "Dataset", "per_channel_stats", "channel_histograms",
           "stats_from_histograms", "fingerprint_header", "array_tag"]


def channel_histograms(images: np.ndarray) -> np.ndarray:
    """(C, 256) int64 counts of each pixel value per channel of uint8 (N, C, H, W) ``images``:
    summed over chunks, they give the statistics of a dataset streamed a chunk at a time."""
    return np.stack([np.bincount(images[:, ch].reshape(-1), minlength=256)
                     for ch in range(images.shape[1])]).astype(np.int64)


def stats_from_histograms(counts: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean/std of ``images / 255`` from channel_histograms, rounded to 4 decimals."""
    values = np.arange(256, dtype=np.float64) / 255.0
    means, stds = [], []
    for row in np.asarray(counts):
        row = row.astype(np.float64)
        total = row.sum()
        m = float(row @ values / total)
        var = float(row @ (values - m) ** 2 / total)
        means.append(round(m, 4))
        stds.append(round(math.sqrt(var), 4))
    return tuple(means), tuple(stds)


def per_channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Exact per-channel mean/std of ``images / 255`` (via a histogram, so no float copies),
    rounded to 4 decimals. ``images`` is uint8 (N, C, H, W)."""
    return stats_from_histograms(channel_histograms(images))


def fingerprint_header(name, num_classes, mean, std, class_names) -> bytes:
    """What Dataset.fingerprint hashes first (the data store, data/ondisk.py, hashes the same
    bytes from disk, so a streamed dataset and an in-memory one have the same fingerprint)."""
    return (f"edge_trgl.Dataset/v1|name={name}|num_classes={num_classes}"
            f"|mean={tuple(float(m) for m in mean)!r}|std={tuple(float(s) for s in std)!r}"
            f"|classes={list(class_names)!r}").encode("utf-8")


def array_tag(split: str, name: str, dtype, shape) -> bytes:
    """What Dataset.fingerprint hashes before each array's bytes."""
    return f"|{split}.{name}:{np.dtype(dtype).str}:{tuple(int(n) for n in shape)}|".encode("utf-8")


@dataclass
class ArraySet:
    """One split: ``images`` uint8 (N, C, H, W) C-contiguous, ``labels`` int64 (N,)."""

    images: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        images = np.ascontiguousarray(self.images)
        labels = np.ascontiguousarray(self.labels)
        if images.dtype != np.uint8 or images.ndim != 4:
            raise ValueError(
                f"ArraySet.images must be uint8 with shape (N, C, H, W), got dtype {images.dtype} "
                f"and shape {images.shape}"
            )
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(
                f"ArraySet.labels must be a 1-D integer array, got dtype {labels.dtype} and shape "
                f"{labels.shape}"
            )
        if labels.shape[0] != images.shape[0]:
            raise ValueError(
                f"ArraySet has {images.shape[0]} images but {labels.shape[0]} labels"
            )
        self.images = images
        self.labels = labels.astype(np.int64, copy=False)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, indices: np.ndarray) -> "ArraySet":
        """A new ArraySet holding copies of the rows at ``indices``."""
        idx = np.asarray(indices, dtype=np.int64)
        return ArraySet(images=self.images[idx], labels=self.labels[idx])

    def class_counts(self, num_classes: int) -> np.ndarray:
        """Number of examples per class, length ``num_classes``."""
        return np.bincount(self.labels, minlength=num_classes)


@dataclass
class Dataset:
    """A named dataset with train/val/test splits and per-channel normalisation statistics.

    ``mean`` and ``std`` are per channel in [0, 1] pixel units (i.e. of ``images / 255``).
    ``hflip`` says whether a horizontal flip is a valid augmentation for these images (True for
    natural and synthetic images, False for MNIST digits, whose mirror images are not digits).
    It is not part of ``fingerprint()``: it describes how to augment, not what the data holds.
    """

    name: str
    train: ArraySet
    val: ArraySet
    test: ArraySet
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: list[str] = field(default_factory=list)
    hflip: bool = True

    @property
    def in_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        _, c, h, w = self.train.images.shape
        return (int(c), int(h), int(w))

    def fingerprint(self) -> str:
        """SHA-256 hex digest over the metadata and the raw bytes of every array.

        Two Datasets have the same fingerprint exactly when they hold the same images, labels,
        splits, class names and statistics, so a resumed run can detect changed data.
        """
        h = hashlib.sha256()
        h.update(fingerprint_header(self.name, self.num_classes, self.mean, self.std,
                                    self.class_names))
        for split_name in ("train", "val", "test"):
            split: ArraySet = getattr(self, split_name)
            for arr_name, arr in (("images", split.images), ("labels", split.labels)):
                arr = np.ascontiguousarray(arr)
                h.update(array_tag(split_name, arr_name, arr.dtype, arr.shape))
                h.update(arr.reshape(-1).view(np.uint8))
        return h.hexdigest()
