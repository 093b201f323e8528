"""Where a module's input batches come from: the raw images (module 0, augmented on the fly) or
the feature cache of the module before it. numpy-only, shared by the torch trainer and the
torch-free ONNX Runtime worker.

Augmentation policy for modules after the first ("views"): the cache of module k holds V
augmented views of the train set; view v of module 0's cache is module 0 applied to the raw train
images augmented with the seed of view v, and view v of module k's cache is module k applied to
view v of module k-1's cache, so every view is one consistent augmented copy of the data pushed
through the trained prefix. Epoch e of a later module reads view e mod V. With policy "none" (or
augmentation off) the cache holds one un-augmented view: cheaper, and later modules see no
augmentation at all -- the planner says so when it picks it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from .cache import CacheReader
from .data import augment_batch, normalize
from .killpoints import kill_point


def epoch_rng(seed: int, *parts: int) -> np.random.Generator:
    return np.random.default_rng([seed, *parts])


def view_rng(seed: int, view: int) -> np.random.Generator:
    # Distinct stream from the epoch streams (which are keyed by lap/module/epoch).
    return np.random.default_rng([seed, 7919, view])


def _usable(count: int, batch_size: int, min_batch: int) -> int:
    """How many samples to iterate so that no batch is smaller than `min_batch`: training drops
    a final batch of one sample, which BatchNorm cannot normalise (a shuffled order means every
    sample is still seen over the epochs)."""
    tail = count % batch_size
    return count - tail if 0 < tail < min_batch else count


@dataclass
class RawSource:
    """Raw uint8 images; normalised (and optionally augmented) per batch. `images` is the run's
    on-disk copy (data/stream.py StreamedImages: `images[idx]` reads those rows with pread, so
    a process holds one batch, never the dataset) or an in-memory array (export, tests): both
    give the same bytes, so training is the same to the bit."""
    images: np.ndarray
    labels: np.ndarray
    mean: tuple[float, ...]
    std: tuple[float, ...]
    flip: bool = True

    @property
    def count(self) -> int:
        return len(self.labels)

    def batches(self, batch_size: int, order_rng: np.random.Generator | None = None,
                aug_rng: np.random.Generator | None = None, min_batch: int = 1,
                with_index: bool = False) -> Iterator[tuple[np.ndarray, ...]]:
        """(x, y) batches, or (x, y, sample indices) with `with_index`."""
        order = order_rng.permutation(self.count) if order_rng is not None else np.arange(self.count)
        for start in range(0, _usable(self.count, batch_size, min_batch), batch_size):
            idx = np.sort(order[start:start + batch_size]) if order_rng is None else order[start:start + batch_size]
            images = self.images[idx]
            if aug_rng is not None:
                images = augment_batch(images, aug_rng, pad=4, flip=self.flip)
            kill_point("batch")
            x = normalize(images, self.mean, self.std)
            yield (x, self.labels[idx], idx) if with_index else (x, self.labels[idx])

    def take(self, idx: np.ndarray) -> np.ndarray:
        """The samples at `idx`, un-augmented."""
        return normalize(self.images[idx], self.mean, self.std)


@dataclass
class CachedSource:
    """Samples of one cached split, read with pread (see cache.py)."""
    reader: CacheReader
    labels: np.ndarray

    @property
    def count(self) -> int:
        return self.reader.count

    def batches(self, batch_size: int, order_rng: np.random.Generator | None = None,
                aug_rng: np.random.Generator | None = None, min_batch: int = 1,
                with_index: bool = False) -> Iterator[tuple[np.ndarray, ...]]:
        order = order_rng.permutation(self.count) if order_rng is not None else np.arange(self.count)
        for start in range(0, _usable(self.count, batch_size, min_batch), batch_size):
            idx = order[start:start + batch_size]
            kill_point("batch")
            x = self.reader.read(idx)
            yield (x, self.labels[idx], idx) if with_index else (x, self.labels[idx])

    def take(self, idx: np.ndarray) -> np.ndarray:
        return self.reader.read(idx)
