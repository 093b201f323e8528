"""A dataset as a stream: its labels in memory, its images decoded a chunk at a time.

This is what the one-time conversion into a run's on-disk arrays reads (data/ondisk.py), and
what the planner needs of a dataset without any image decoded (`scan`): the train / val / test
selection (data.split_indices) depends on the labels only, so the images of each split are
picked as they stream past, in the order load_dataset keeps them. No process of a run holds the
dataset's images in memory any more: the orchestrator plans from the labels and shapes, the
process that sets a run up converts it, every trainer reads batches from disk with pread.

Each built-in loader module has a `*_stream` function (registered in data/registry.py); a dataset
registered with only an in-memory loader is wrapped (`_from_raw`), holding the whole dataset
while it converts. numpy only: this package must never import torch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np

__all__ = ["RawStream", "Selection", "StreamedImages", "stream_for", "scan_for", "SPLITS",
           "PLANNED_PREFIX"]

SPLITS = ("train", "val", "test")
# A staged run's data fingerprint before its data are converted: the planner's digest of the
# labels and shapes it planned for (see Selection.digest)
PLANNED_PREFIX = "planned:"


@dataclass
class RawStream:
    """The dataset's original train and test sets (before any subset), as a stream.

    ``chunks(split)`` ("train" / "test") yields ``(images, labels)`` in order: uint8
    (n, C, H, W) images and their int labels, a few MB at a time. ``mean`` / ``std`` None: they
    are measured on the train images while converting (``zero_std_to_one``: a constant
    channel's std becomes 1, nothing to scale)."""

    train_labels: np.ndarray
    test_labels: np.ndarray
    image_shape: tuple[int, int, int]
    class_names: list[str]
    chunks: Callable[[str], Iterator[tuple[np.ndarray, np.ndarray]]]
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    hflip: bool = True
    zero_std_to_one: bool = False


class StreamedImages:
    """The images of one split as the planner and the trainers hold them: a shape, no pixels.
    ``nbytes`` is what a process holds of them in memory (0: they are read from disk a batch at a
    time), so every memory model that sums the dataset's ``nbytes`` counts the labels only;
    ``disk_bytes`` is their size on disk. With a ``reader`` (data/ondisk.py) rows are read with
    pread: ``images[idx]`` for an index array, as numpy would."""

    dtype = np.dtype(np.uint8)
    ndim = 4
    nbytes = 0

    def __init__(self, shape, reader=None):
        self.shape = tuple(int(n) for n in shape)
        self.reader = reader

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def disk_bytes(self) -> int:
        return int(np.prod(self.shape))

    def __getitem__(self, idx) -> np.ndarray:
        if self.reader is None:
            raise RuntimeError("these images are a shape only (the planner's view of the data)")
        if isinstance(idx, slice):
            idx = np.arange(*idx.indices(self.shape[0]))
        idx = np.asarray(idx, dtype=np.int64)
        if idx.ndim == 0:
            return self[idx.reshape(1)][0]
        out = np.empty((len(idx), *self.shape[1:]), np.uint8)
        return self.reader.read(idx, out=out) if len(idx) else out


@dataclass
class Selection:
    """Which original images each split keeps (sorted indices: train/val into the original
    train set, test into the test set) and the stream they come from."""

    name: str
    stream: RawStream
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray

    def labels(self, split: str) -> np.ndarray:
        raw = self.stream.test_labels if split == "test" else self.stream.train_labels
        return np.asarray(raw, dtype=np.int64)[getattr(self, split)]

    def shape(self, split: str) -> tuple[int, ...]:
        return (len(getattr(self, split)), *self.stream.image_shape)

    def digest(self) -> str:
        """What the planner planned for: name, classes, shapes and every split's labels (the
        images are not decoded yet). The conversion checks it, so data changed between planning
        and training are refused like before."""
        h = hashlib.sha256(f"{self.name}|{list(self.stream.class_names)!r}|"
                           f"{tuple(self.stream.image_shape)}".encode())
        for split in SPLITS:
            h.update(f"|{split}:{len(getattr(self, split))}|".encode())
            h.update(self.labels(split).tobytes())
        return PLANNED_PREFIX + h.hexdigest()


def stream_for(cfg) -> Selection:
    """The dataset a TrainConfig names as a stream, with its split selection (no image decoded
    except where a dataset has no streaming loader)."""
    from . import check_options, split_indices
    entry, seed, fractions = check_options(cfg.data, cfg.data_dir, cfg.seed, cfg.train_fraction,
                                           cfg.val_fraction, cfg.test_fraction)
    options = {} if cfg.image_size is None else {"image_size": cfg.image_size}
    sizes = {"seed": seed, "synthetic_train": cfg.synthetic_train,
             "synthetic_test": cfg.synthetic_test}
    if entry.stream is not None:
        stream = entry.resolve("stream")(cfg.data_dir, **sizes, **options)
    else:
        stream = _from_raw(entry.load(cfg.data_dir, **sizes, **options))
    train, val, test = split_indices(stream.train_labels, stream.test_labels, seed, *fractions)
    return Selection(entry.name, stream, train, val, test)


def scan_for(cfg):
    """What the planning process needs of the data: names, shapes and labels, with stand-ins
    for the images that hold no memory (StreamedImages); `fingerprint()` is the digest of what
    was planned (Selection.digest). Mean/std are None where the conversion measures them."""
    sel = stream_for(cfg)
    splits = {split: SimpleNamespace(images=StreamedImages(sel.shape(split)),
                                     labels=sel.labels(split)) for split in SPLITS}
    digest = sel.digest()
    stream = sel.stream
    return SimpleNamespace(name=sel.name, num_classes=len(stream.class_names),
                           class_names=list(stream.class_names), mean=stream.mean,
                           std=stream.std, hflip=bool(stream.hflip),
                           in_shape=tuple(stream.image_shape), fingerprint=lambda: digest,
                           **splits)


def _from_raw(raw) -> RawStream:
    """A registered dataset without a streaming loader: its in-memory arrays, chunked."""
    def chunks(split, step: int = 1024):
        arrays = raw.train if split == "train" else raw.test
        for start in range(0, len(arrays.labels), step):
            yield arrays.images[start:start + step], arrays.labels[start:start + step]
    return RawStream(raw.train.labels, raw.test.labels, tuple(raw.train.images.shape[1:]),
                     list(raw.class_names), chunks, tuple(raw.mean), tuple(raw.std),
                     bool(raw.hflip))
