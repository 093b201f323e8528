"""Train views taken from training (--aug-policy training; not the default): the next module's
augmented views of the train set are module k's own outputs during its last epochs of training,
not a separate eval-mode pass after it (--aug-policy views, the default).

Why: that pass pushes every view of the train set through the trained module once more, most of
the time a module-wise run spent between modules (ResNet-56, batch 128, K=4: 78 s of a 233 s run,
when end-to-end training took 173 s in all). The outputs of the training forward pass are free.
During the epochs that write views the module's BatchNorm layers use their running statistics
(torch_backend.TorchEngine; its weights still train), so a view is close to what the trained
module hands on at test time; only the last epochs' small weight updates separate them. View v
of module k's cache is its output in epoch `E - H + v`, over that epoch's input (module 0: the
raw images with that epoch's crop and flip; later modules: the view they read).

Why not the default: the recipe suite (ResNet-20, K=4, 8 epochs, 2 seeds) measured the last
module's validation accuracy at 56.3 % with the eval pass, 54.4 % with views from training and
53.4 % when BatchNorm used batch statistics in those epochs (test: 52.1, 51.6, 51.4 %), for about
a fifth less wall time. It is there for a user who would rather have the time.

How many: H = min(V, E // 2) views for a module trained E epochs with V planned views, so no view
comes from the first half of a module's training (its warm-up included), and none at all when a
module trains fewer than MIN_EPOCHS epochs (an eval pass makes its views): with BatchNorm held at
running statistics while the learning rate is still near its peak, ResNet-56 (K=4, batch 128,
2 epochs a module) diverged to NaN in module 1's second epoch.

Crash safety: each view is written in place into preallocated `.npy` shards (temp names),
fsynced and renamed at the end of its epoch, then listed in the manifest as part of module k's
unfinished cache entry before that epoch's checkpoint is committed. A run resumed at an epoch
checkpoint redoes only the views of the epochs after it; the cache phase uses the listed views
that still match their checksums and makes any other view with an eval-mode pass (as
--aug-policy views does). numpy-only."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np

from .atomic import commit_file, sha256_file
from .cache import (DTYPES, SHARD_BYTES, Shard, _disk_full, cache_dir, samples_per_shard,
                    shard_header, shard_paths)


MIN_EPOCHS = 4


def harvested_views(cfg, epochs: int, views: int) -> int:
    """How many of a module's `views` its last training epochs provide (0: none; an eval pass
    makes them all)."""
    if views < 1 or not cfg.augment or cfg.aug_policy != "training" or epochs < MIN_EPOCHS:
        return 0
    return min(views, epochs // 2)


class HarvestWriter:
    """One view of the train set, written sample by sample at each sample's index."""

    def __init__(self, root: Path, k: int, view: int, total: int, sample_shape: tuple[int, ...],
                 dtype: str, shard_bytes: int = SHARD_BYTES):
        self.root, self.rel_dir = Path(root), cache_dir(k)
        self.name = f"train-v{view}"
        self.total, self.sample_shape = total, tuple(sample_shape)
        self.dtype = np.dtype(DTYPES[dtype])
        self.sample_bytes = int(np.prod(self.sample_shape)) * self.dtype.itemsize
        self.per_shard = samples_per_shard(self.sample_bytes, shard_bytes)
        self.seen = np.zeros(total, dtype=bool)
        self._files = []  # (fd, tmp path, final path, data offset, count)
        (self.root / self.rel_dir).mkdir(parents=True, exist_ok=True)
        try:
            for index, start in enumerate(range(0, total, self.per_shard)):
                count = min(self.per_shard, total - start)
                final, tmp = shard_paths(self.root, self.rel_dir, self.name, index)
                header = shard_header(self.dtype, count, self.sample_shape)
                fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
                self._files.append((fd, tmp, final, len(header), count))
                os.pwrite(fd, header, 0)
                os.ftruncate(fd, len(header) + count * self.sample_bytes)
        except OSError as exc:
            self._fail(exc)

    def _fail(self, exc: OSError):
        self.abort()
        if exc.errno == errno.ENOSPC:
            raise _disk_full(self.root, self.rel_dir) from None
        raise exc

    def write(self, indices: np.ndarray, features: np.ndarray) -> None:
        features = np.ascontiguousarray(features, dtype=self.dtype)
        if features.shape[1:] != self.sample_shape:
            raise ValueError(f"{self.name}: got {features.shape[1:]}, expected {self.sample_shape}")
        flat = features.reshape(len(features), -1).view(np.uint8)
        try:
            for row, idx in enumerate(np.asarray(indices, dtype=np.int64).tolist()):
                fd, _, _, offset, _ = self._files[idx // self.per_shard]
                os.pwrite(fd, flat[row], offset + (idx % self.per_shard) * self.sample_bytes)
                self.seen[idx] = True
        except OSError as exc:
            self._fail(exc)

    def missing(self) -> np.ndarray:
        """Indices no training batch covered (a dropped final batch of one sample)."""
        return np.flatnonzero(~self.seen)

    def finish(self) -> list[Shard]:
        if not self.seen.all():
            raise ValueError(f"{self.name}: {int((~self.seen).sum())} of {self.total} samples unwritten")
        shards = []
        try:
            for fd, tmp, final, _, count in self._files:
                os.close(fd)
                commit_file(tmp, final)
                shards.append(Shard(f"{self.rel_dir}/{final.name}", count, sha256_file(final)))
        except OSError as exc:
            self._fail(exc)
        self._files = []
        return shards

    def abort(self) -> None:
        for fd, tmp, _, _, _ in self._files:
            try:
                os.close(fd)
            except OSError:
                pass
            tmp.unlink(missing_ok=True)
        self._files = []


def begin(run, task) -> None:
    """Before module k's first harvested epoch: a cache k left from an earlier lap (--keep-cache)
    goes, and an unfinished entry for this lap is started (kept if a resume finds one)."""
    entry = run.manifest["caches"].get(str(task.k))
    if entry and entry.get("lap") == task.lap and not entry.get("complete"):
        return
    if entry is not None or (run.root / cache_dir(task.k)).exists():
        run.drop_cache(task.k)
    run.manifest["caches"][str(task.k)] = {"lap": task.lap, "complete": False, "splits": {}}


def record(run, task, name: str, shards: list[Shard]) -> None:
    """List a finished view in module k's unfinished cache entry (saved with the epoch's
    checkpoint, which the caller commits next)."""
    run.manifest["caches"][str(task.k)]["splits"][name] = [s.to_json() for s in shards]
    for s in shards:
        run.record_file(s.file, s.sha256)


def intact_views(run, task) -> dict[str, list[dict]]:
    """The views module k's training left for this lap whose shards match their checksums."""
    entry = run.manifest["caches"].get(str(task.k))
    if not entry or entry.get("lap") != task.lap or entry.get("complete"):
        return {}
    kept = {}
    for name, shards in entry["splits"].items():
        if name.startswith("train-v") and all(
                (run.root / s["file"]).is_file() and sha256_file(run.root / s["file"]) == s["sha256"]
                for s in shards):
            kept[name] = shards
    return kept
