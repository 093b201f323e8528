"""In-memory dataset containers (numpy only; this package must never import torch)."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field

import numpy as np

__all__ = ["ArraySet", "Dataset", "per_channel_stats"]


def per_channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Exact per-channel mean/std of ``images / 255`` (via a histogram, so no float copies),
    rounded to 4 decimals. ``images`` is uint8 (N, C, H, W)."""
    values = np.arange(256, dtype=np.float64) / 255.0
    means, stds = [], []
    for ch in range(images.shape[1]):
        counts = np.bincount(images[:, ch].reshape(-1), minlength=256).astype(np.float64)
        total = counts.sum()
        m = float(counts @ values / total)
        var = float(counts @ (values - m) ** 2 / total)
        means.append(round(m, 4))
        stds.append(round(math.sqrt(var), 4))
    return tuple(means), tuple(stds)


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
        header = (
            f"edge_trgl.Dataset/v1|name={self.name}|num_classes={self.num_classes}"
            f"|mean={tuple(float(m) for m in self.mean)!r}|std={tuple(float(s) for s in self.std)!r}"
            f"|classes={list(self.class_names)!r}"
        )
        h.update(header.encode("utf-8"))
        for split_name in ("train", "val", "test"):
            split: ArraySet = getattr(self, split_name)
            for arr_name, arr in (("images", split.images), ("labels", split.labels)):
                arr = np.ascontiguousarray(arr)
                h.update(
                    f"|{split_name}.{arr_name}:{arr.dtype.str}:{tuple(arr.shape)}|".encode("utf-8")
                )
                h.update(arr.reshape(-1).view(np.uint8))
        return h.hexdigest()
