"""The data store: a run's dataset converted once into on-disk arrays, read a batch at a time.

Layout (a folder, normally RUN/data; see rundata.py for where and when it is made):

    index.json                        name, classes, mean/std, hflip, image shape, the dataset's
                                      fingerprint, and every split's shards with their sha256
    arrays/{split}_images-NNNNN.npy   uint8 (n, C, H, W) rows, ~32 MB a shard
    arrays/{split}_labels-NNNNN.npy   int64 (n,)

The shards are plain .npy files (no pickle) written and read by the feature cache's own
CacheWriter / CacheReader (cache.py): written as a stream while the source is decoded, fsynced
and renamed when full, checksummed while written; read with os.pread of single rows after every
shard's sha256 is verified. pread, not mmap: mmapped pages a process touches count in its RSS,
so one epoch over a mapped dataset would grow the measured peak by the dataset's size.

Conversion (`build_store`) streams: one source chunk (a CIFAR batch file, 2,048 MNIST rows, 64
decoded images, 1,000 synthetic images) is in memory at a time, each of its rows appended to the
split the selection puts it in. It is built in a hidden sibling folder (`.data.building-PID`) and
renamed into place only once index.json is written, so a store that exists is complete; a build
killed half-way leaves only that folder, which the next build of the same store removes.

The store's fingerprint is Dataset.fingerprint() of the same data, computed from the files, so a
streamed run and an in-memory one of the same data are recognised as the same.

numpy only: the torch-free ONNX Runtime worker reads it too.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np

from ..atomic import atomic_write_json, fsync_dir
from ..cache import SHARD_BYTES, CacheReader, CacheWriter, Shard
from ..errors import UserError
from .arrays import array_tag, channel_histograms, fingerprint_header, stats_from_histograms
from .stream import SPLITS, Selection, StreamedImages

__all__ = ["STORE_FORMAT", "INDEX", "StoreMissing", "StoreDamaged", "StoredDataset",
           "build_store", "open_store"]

STORE_FORMAT = 1
INDEX = "index.json"
ARRAYS = "arrays"
WRITE_ROWS = 256


class StoreMissing(Exception):
    """There is no store (index.json) in the folder."""


class StoreDamaged(Exception):
    """The store exists but cannot be trusted; the message says why."""


class _RowWriter(CacheWriter):
    """CacheWriter for rows of any numpy dtype (the cache's own dtypes are fp16/fp32); its
    writes are the "convert" kill point, so a test can stop a conversion half-way."""

    kill_event = "convert"

    def __init__(self, root: Path, name: str, total: int, sample_shape, dtype):
        super().__init__(root, ARRAYS, name, total, tuple(sample_shape), "fp32")
        self.dtype = np.dtype(dtype)
        sample_bytes = int(np.prod(self.sample_shape)) * self.dtype.itemsize
        self.per_shard = max(1, SHARD_BYTES // max(1, sample_bytes))


class StoredSplit:
    def __init__(self, images, labels: np.ndarray):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return int(self.labels.shape[0])


class StoredDataset:
    """A Dataset whose images stay on disk: the same attributes (name, train/val/test with
    .images and .labels, num_classes, mean, std, class_names, hflip, in_shape, fingerprint());
    each split's .images is a StreamedImages that reads rows with pread. Labels are in memory
    (8 bytes an image)."""

    def __init__(self, root: Path, index: dict, splits: dict):
        self.root, self.index = Path(root), index
        self.name = index["name"]
        self.num_classes = int(index["num_classes"])
        self.class_names = list(index["class_names"])
        self.mean, self.std = tuple(index["mean"]), tuple(index["std"])
        self.hflip = bool(index["hflip"])
        self.in_shape = tuple(int(n) for n in index["in_shape"])
        self.train, self.val, self.test = (splits[s] for s in SPLITS)

    def fingerprint(self) -> str:
        return self.index["fingerprint"]

    @property
    def disk_bytes(self) -> int:
        return sum(split.images.disk_bytes + split.labels.nbytes
                   for split in (self.train, self.val, self.test))

    def close(self) -> None:
        for split in (self.train, self.val, self.test):
            if split.images.reader is not None:
                split.images.reader.close()


# --- building -----------------------------------------------------------------------------------

def build_store(sel: Selection, dest: Path, *, expect: str | None = None,
                refuse: str = "") -> StoredDataset:
    """Convert the selected data into a store at `dest` (replacing one that is there) and open
    it. With `expect`, a store whose fingerprint differs is not put in place: UserError(refuse)."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    _remove_dead_builds(dest)
    work = dest.with_name(f".{dest.name}.building-{os.getpid()}")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    try:
        index = _convert(sel, work)
        if expect is not None and index["fingerprint"] != expect:
            raise UserError(refuse)
        atomic_write_json(work / INDEX, index)
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(work, dest)
        fsync_dir(dest.parent)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return open_store(dest, verify=False)  # every shard was hashed as it was written


def _convert(sel: Selection, work: Path) -> dict:
    stream = sel.stream
    shape = tuple(int(n) for n in stream.image_shape)
    # where each original image goes: 0 nowhere, else the split's position in SPLITS + 1
    route = {"train": np.zeros(len(stream.train_labels), np.int8),
             "test": np.zeros(len(stream.test_labels), np.int8)}
    route["train"][sel.train], route["train"][sel.val], route["test"][sel.test] = 1, 2, 3
    writers = {split: (_RowWriter(work, f"{split}_images", len(getattr(sel, split)), shape,
                                  np.uint8),
                       _RowWriter(work, f"{split}_labels", len(getattr(sel, split)), (), np.int64))
               for split in SPLITS}
    hist = np.zeros((shape[0], 256), np.int64) if stream.mean is None else None
    try:
        for raw_split in ("train", "test"):
            expected = np.asarray(stream.train_labels if raw_split == "train"
                                  else stream.test_labels, np.int64)
            done = 0
            for images, labels in stream.chunks(raw_split):
                images, labels = np.asarray(images), np.asarray(labels, np.int64)
                n = len(images)
                if (images.dtype != np.uint8 or images.shape[1:] != shape
                        or not np.array_equal(labels, expected[done:done + n])):
                    raise _changed(sel.name)
                if hist is not None and raw_split == "train":
                    hist += channel_histograms(images)
                where = route[raw_split][done:done + n]
                for code, split in enumerate(SPLITS, 1):
                    rows = np.flatnonzero(where == code)
                    # a few hundred rows at a time: the copies made to write them stay small
                    # beside the chunk, whatever its size (a CIFAR batch file is 10,000 images)
                    for at in range(0, len(rows), WRITE_ROWS):
                        part = rows[at:at + WRITE_ROWS]
                        writers[split][0].write(images[part])
                        writers[split][1].write(labels[part])
                done += n
                del images
            if done != len(expected):
                raise _changed(sel.name)
        shards = {split: {"count": len(getattr(sel, split)),
                          "images": [s.to_json() for s in pair[0].finish()],
                          "labels": [s.to_json() for s in pair[1].finish()]}
                  for split, pair in writers.items()}
    except UserError as exc:
        for pair in writers.values():
            for writer in pair:
                writer.abort()
        if str(exc).startswith("The disk filled up"):  # the cache's words do not fit here
            raise UserError(f"The disk filled up while writing the run's copy of its dataset at "
                            f"{work.parent}. Nothing was kept; free some space (it needs about "
                            f"{_store_bytes(sel) / 1e6:.0f} MB) and run the command again.") from None
        raise
    except BaseException:
        for pair in writers.values():
            for writer in pair:
                writer.abort()
        raise
    if hist is not None:
        mean, std = stats_from_histograms(hist)
        if stream.zero_std_to_one:
            std = tuple(s if s > 0 else 1.0 for s in std)
    else:
        mean, std = tuple(stream.mean), tuple(stream.std)
    index = {"format": STORE_FORMAT, "name": sel.name, "num_classes": len(stream.class_names),
             "class_names": list(stream.class_names), "mean": list(mean), "std": list(std),
             "hflip": bool(stream.hflip), "in_shape": list(shape), "splits": shards}
    index["fingerprint"] = _fingerprint(work, index)
    return index


def _changed(name: str) -> UserError:
    return UserError(f"The {name} dataset changed while it was being read (its images or labels "
                     f"differ from what was listed a moment before). Leave the data folder "
                     f"alone while a run is set up, and run the command again.")


def _store_bytes(sel: Selection) -> int:
    return sum(int(np.prod(sel.shape(split))) + 8 * len(getattr(sel, split)) for split in SPLITS)


def _fingerprint(root: Path, index: dict) -> str:
    """Dataset.fingerprint() of the stored data, hashed from the shards' bytes in order."""
    h = hashlib.sha256(fingerprint_header(index["name"], index["num_classes"], index["mean"],
                                          index["std"], index["class_names"]))
    shape = tuple(index["in_shape"])
    for split in SPLITS:
        entry = index["splits"][split]
        for name, dtype, arr_shape in (("images", np.uint8, (entry["count"], *shape)),
                                       ("labels", np.int64, (entry["count"],))):
            h.update(array_tag(split, name, dtype, arr_shape))
            for shard in entry[name]:
                with open(root / shard["file"], "rb") as fh:
                    _skip_npy_header(fh)
                    while chunk := fh.read(1 << 18):  # 256 KB: a small, fixed buffer
                        h.update(chunk)
    return h.hexdigest()


def _skip_npy_header(fh) -> None:
    version = np.lib.format.read_magic(fh)
    (np.lib.format.read_array_header_1_0 if version == (1, 0)
     else np.lib.format.read_array_header_2_0)(fh)


def _remove_dead_builds(dest: Path) -> None:
    """Remove half-built stores of `dest` whose builder process is gone (killed)."""
    from ..jobdirs import remove_dead_folders
    remove_dead_folders(dest.parent, f".{dest.name}.building-")


# --- reading ------------------------------------------------------------------------------------

def open_store(root: Path, *, verify: bool = True, images: bool = True) -> StoredDataset:
    """Open the store at `root`: every shard it reads checked against index.json's sha256 (with
    `verify`), the labels read into memory, the images left on disk (images=False: their shape
    only, and their shards are not even opened). Raises StoreMissing / StoreDamaged."""
    root = Path(root)
    try:
        index = json.loads((root / INDEX).read_text())
    except FileNotFoundError:
        raise StoreMissing(str(root)) from None
    except (OSError, ValueError, RecursionError) as exc:
        raise StoreDamaged(f"its {INDEX} cannot be read ({type(exc).__name__})") from None
    readers = []
    try:
        if not isinstance(index, dict) or index.get("format") != STORE_FORMAT:
            raise StoreDamaged(f"its {INDEX} is not a data store of format {STORE_FORMAT}")
        shape = tuple(int(n) for n in index["in_shape"])
        splits = {}
        for split in SPLITS:
            entry = index["splits"][split]
            count = int(entry["count"])
            with _reader(root, entry["labels"], verify, split, "labels") as labels_reader:
                if labels_reader.count != count:
                    raise StoreDamaged(f"its {split} labels hold {labels_reader.count} rows, not "
                                       f"{count}")
                labels = (labels_reader.read(np.arange(count), out=np.empty(count, np.int64))
                          if count else np.zeros(0, np.int64))  # (an empty val split)
            image_reader = None
            if images:
                image_reader = _reader(root, entry["images"], verify, split, "images")
                readers.append(image_reader)
                if image_reader.count != count or (count and image_reader.sample_shape != shape):
                    raise StoreDamaged(f"its {split} images are not {count} rows of {shape}")
            splits[split] = StoredSplit(StreamedImages((count, *shape), image_reader), labels)
        return StoredDataset(root, index, splits)
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        for reader in readers:
            reader.close()
        raise StoreDamaged(f"its {INDEX} lacks or misstates {exc}") from None
    except BaseException:
        for reader in readers:
            reader.close()
        raise


def _reader(root: Path, shards: list, verify: bool, split: str, what: str) -> CacheReader:
    try:
        return CacheReader(root, [Shard.from_json(s) for s in shards], verify=verify)
    except UserError:  # the cache's words: a shard missing or not matching its checksum
        raise StoreDamaged(f"a shard of its {split} {what} is missing or does not match its "
                           f"sha256") from None
    except OSError as exc:
        raise StoreDamaged(f"a shard of its {split} {what} cannot be read "
                           f"({exc.strerror or exc})") from None
