"""The feature cache: module k's outputs over the train views, val and test sets, written once
after module k is trained and read back as module k+1's inputs.

Each split is a list of `.npy` shards (plain arrays, no pickle), written as a stream (header
first, then batch after batch) to a temp file that is fsynced and renamed when full; the manifest
records each shard's sha256 and the reader verifies it before use.

Reading uses `os.pread` of single samples rather than `np.memmap`: pages of a memory-mapped file
that a process touches count in its RSS (as file-backed pages) and stay there until the kernel
needs them, so one epoch over a memory-mapped cache would grow the measured peak by the cache's
whole size. pread goes through the page cache, which the kernel owns and reclaims, and costs the
process only the batch buffer. numpy-only, so the torch-free ORT worker uses it too.
"""

from __future__ import annotations

import errno
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .atomic import commit_file, sha256_file
from .errors import UserError
from .killpoints import kill_point

SHARD_BYTES = 32 * 1024 * 1024
DTYPES = {"fp16": np.float16, "fp32": np.float32}


def cache_dir(k: int) -> str:
    return f"cache/module_{k:02d}"


@dataclass
class Shard:
    file: str       # relative to the run root
    count: int
    sha256: str

    def to_json(self) -> dict:
        return {"file": self.file, "count": self.count, "sha256": self.sha256}

    @classmethod
    def from_json(cls, d: dict) -> "Shard":
        return cls(d["file"], int(d["count"]), d["sha256"])


def _disk_full(root: Path, rel_dir: str) -> UserError:
    return UserError(
        f"The disk filled up while writing the feature cache at {root / rel_dir}. Nothing already "
        f"saved was lost (the unfinished shard was removed). Free some space (or move the run "
        f"directory to a larger disk) and continue with `edge-trgl train --resume {root}`; or start "
        f"a new run with a smaller cache (--cache-dtype fp16, fewer --aug-views, a smaller "
        f"--train-fraction, or a --disk-budget).")


def samples_per_shard(sample_bytes: int, shard_bytes: int = SHARD_BYTES) -> int:
    return max(1, shard_bytes // max(1, sample_bytes))


def shard_paths(root: Path, rel_dir: str, name: str, index: int) -> tuple[Path, Path]:
    """(final path, temp path) of shard `index` of split `name`: written under the temp name,
    renamed when complete, so a listed shard is never a torn one."""
    final = Path(root) / rel_dir / f"{name}-{index:05d}.npy"
    return final, final.with_name(f".{final.name}.tmp")


def shard_header(dtype: np.dtype, count: int, sample_shape: tuple[int, ...]) -> bytes:
    """The `.npy` header of a shard of `count` samples (a plain array file, no pickle)."""
    import io
    buf = io.BytesIO()
    np.lib.format.write_array_header_2_0(buf, {"descr": np.lib.format.dtype_to_descr(dtype),
                                               "fortran_order": False,
                                               "shape": (count, *sample_shape)})
    return buf.getvalue()


class CacheWriter:
    """Streams `total` samples of shape `sample_shape` into shards under root/rel_dir."""

    kill_event = "cache"  # (the data store's writer, data/ondisk.py, counts as "convert")

    def __init__(self, root: Path, rel_dir: str, name: str, total: int,
                 sample_shape: tuple[int, ...], dtype: str, shard_bytes: int = SHARD_BYTES):
        self.root, self.rel_dir, self.name = Path(root), rel_dir, name
        self.total, self.sample_shape = total, tuple(sample_shape)
        self.dtype = np.dtype(DTYPES[dtype])
        sample_bytes = int(np.prod(self.sample_shape)) * self.dtype.itemsize
        self.per_shard = samples_per_shard(sample_bytes, shard_bytes)
        self.shards: list[Shard] = []
        self.written = 0
        self._fh = None
        self._tmp: Path | None = None
        self._digest = None
        self._in_shard = 0
        self._shard_count = 0
        (self.root / rel_dir).mkdir(parents=True, exist_ok=True)

    def _open_shard(self) -> None:
        index = len(self.shards)
        self._shard_count = min(self.per_shard, self.total - self.written)
        _, self._tmp = shard_paths(self.root, self.rel_dir, self.name, index)
        self._fh = open(self._tmp, "wb")
        self._digest = hashlib.sha256()
        self._write_raw(shard_header(self.dtype, self._shard_count, self.sample_shape))
        self._in_shard = 0

    def _write_raw(self, data: bytes) -> None:
        try:
            self._fh.write(data)
        except OSError as exc:
            self.abort()
            if exc.errno == errno.ENOSPC:
                raise _disk_full(self.root, self.rel_dir) from None
            raise
        self._digest.update(data)

    def _close_shard(self) -> None:
        try:
            self._fh.flush()
            self._fh.close()
            final = self._tmp.with_name(self._tmp.name[1:-len(".tmp")])
            commit_file(self._tmp, final)
        except OSError as exc:
            self.abort()
            if exc.errno == errno.ENOSPC:
                raise _disk_full(self.root, self.rel_dir) from None
            raise
        rel = f"{self.rel_dir}/{final.name}"
        self.shards.append(Shard(rel, self._shard_count, self._digest.hexdigest()))
        self._fh = None

    def write(self, batch: np.ndarray) -> None:
        batch = np.ascontiguousarray(batch, dtype=self.dtype)
        if batch.shape[1:] != self.sample_shape:
            raise ValueError(f"cache {self.name}: got {batch.shape[1:]}, expected {self.sample_shape}")
        start = 0
        while start < len(batch):
            if self._fh is None:
                if self.written >= self.total:
                    raise ValueError(f"cache {self.name}: more than {self.total} samples written")
                self._open_shard()
            take = min(len(batch) - start, self._shard_count - self._in_shard)
            self._write_raw(batch[start:start + take].tobytes())
            kill_point(self.kill_event)
            start += take
            self._in_shard += take
            self.written += take
            if self._in_shard == self._shard_count:
                self._close_shard()

    def finish(self) -> list[Shard]:
        if self.written != self.total or self._fh is not None:
            raise ValueError(f"cache {self.name}: wrote {self.written} of {self.total} samples")
        return self.shards

    def abort(self) -> None:
        if self._fh is not None:
            try:
                self._fh.close()
            except OSError:
                pass
            self._fh = None
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)


class CacheReader:
    """Random access to the samples of one cached split, verified against the manifest."""

    def __init__(self, root: Path, shards: list[Shard], verify: bool = True):
        self.root = Path(root)
        self._files = []
        self._starts = []
        total = 0
        shape = dtype = None
        for shard in shards:
            path = self.root / shard.file
            if verify:
                if not path.exists() or sha256_file(path) != shard.sha256:
                    raise UserError(
                        f"The feature-cache shard {path} is missing or does not match the checksum "
                        f"in the run manifest (corrupted or half-written). Continue with "
                        f"`edge-trgl train --resume {self.root}`: resume checks the cache and "
                        f"rebuilds it from the saved module weights.")
            fh = open(path, "rb")
            version = np.lib.format.read_magic(fh)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shard_shape, _, shard_dtype = read_header(fh)
            self._files.append((fh.fileno(), fh, fh.tell(), shard_shape[0]))
            self._starts.append(total)
            total += shard_shape[0]
            shape, dtype = shard_shape[1:], shard_dtype
        self.count = total
        self.sample_shape = tuple(shape) if shape is not None else ()
        self.dtype = np.dtype(dtype) if dtype is not None else np.dtype(np.float32)
        self.sample_bytes = int(np.prod(self.sample_shape)) * self.dtype.itemsize
        self._starts_arr = np.asarray(self._starts, dtype=np.int64)

    def read(self, indices: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Samples at `indices` (any order), as float32, shape (len(indices), *sample_shape)."""
        indices = np.asarray(indices, dtype=np.int64)
        raw = np.empty((len(indices), *self.sample_shape), dtype=self.dtype)
        flat = raw.reshape(len(indices), -1).view(np.uint8)
        shard_of = np.searchsorted(self._starts_arr, indices, side="right") - 1
        for row, (idx, s) in enumerate(zip(indices.tolist(), shard_of.tolist())):
            fd, _, offset, _ = self._files[s]
            local = idx - self._starts[s]
            got = os.preadv(fd, [flat[row]], offset + local * self.sample_bytes)
            if got != self.sample_bytes:
                raise UserError(f"A feature-cache shard under {self.root} is truncated. Continue "
                                f"with `edge-trgl train --resume {self.root}`, which rebuilds it.")
        if out is not None:
            out[...] = raw
            return out
        return raw.astype(np.float32, copy=False)

    def close(self) -> None:
        for _, fh, _, _ in self._files:
            fh.close()
        self._files = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def write_module_cache(ctx, task, out_shape, batches, predict, check_budget,
                       kept: dict | None = None) -> dict:
    """Module k's pass over every split it feeds forward: write its outputs as module k+1's cache
    (not for the last module) and count its head's val/test accuracy. Shared by the torch backend
    and the torch-free ORT worker, so it stays numpy-only: `batches(source, aug_rng)` yields host
    (x, y) batches (closed here however the pass ends, which stops a read-ahead thread),
    `predict(x, scored)` returns (features, logits) as numpy arrays (logits may be None
    when not `scored`), `check_budget(ctx)` stops a run over
    its budget. `kept`: train views module k's training already wrote (harvest.py), which
    this pass does not redo. Records the shards in the manifest and, once every split is
    written, marks module k's cache complete and its progress done (one save)."""
    run, cfg = ctx.run, ctx.cfg
    rel_dir = cache_dir(task.k)
    kept = dict(kept or {}) if not task.is_last else {}
    run.drop_cache(task.k, keep=kept)
    entry = {"dtype": cfg.cache_dtype, "shape": list(out_shape), "views": task.views,
             "lap": task.lap, "complete": False, "splits": dict(kept)}
    jobs = [(f"train-v{v}", ctx.cache_input(task.k, "train", v)) for v in range(task.views)
            if f"train-v{v}" not in kept]
    jobs.append(("val", ctx.cache_input(task.k, "val")))
    from .final_test import deferred
    if not deferred(ctx):  # else the test set is scored once, after training (final_test.py)
        jobs.append(("test", ctx.cache_input(task.k, "test")))
    accuracy = {}
    write = not task.is_last
    for name, (source, aug_rng) in jobs:
        if source is None:
            continue
        writer = CacheWriter(run.root, rel_dir, name, source.count, out_shape,
                             cfg.cache_dtype) if write else None
        correct = 0
        # nothing reads a train view's accuracy: its pass skips the head (a block-wise head costs
        # about half a block)
        scored = name in ("val", "test")
        split_batches = batches(source, aug_rng)
        try:
            for x, y in ctx.progress_bar(split_batches,
                                         total=-(-source.count // ctx.eval_batch_size),
                                         desc=f"module {task.k} features {name}"):
                feats, logits = predict(x, scored)
                if scored:
                    correct += int((logits.argmax(1) == y).sum())
                if writer is not None:
                    writer.write(feats)
                check_budget(ctx)
        except BaseException:
            if writer is not None:
                writer.abort()
            raise
        finally:
            close = getattr(split_batches, "close", None)
            if close is not None:
                close()
        if writer is not None:
            shards = writer.finish()
            entry["splits"][name] = [s.to_json() for s in shards]
            for s in shards:
                run.record_file(s.file, s.sha256)
        if name in ("val", "test"):
            accuracy[f"{name}_acc"] = correct / source.count if source.count else None
    entry["complete"] = True
    run.manifest["caches"][str(task.k)] = entry
    progress = run.manifest["progress"]
    # A resumed run may rebuild an earlier module's cache (schemes.restore_input_cache); that
    # must not move the resume point backwards.
    if (progress.get("lap", -1), progress.get("module", -1)) <= (task.lap, task.k):
        run.manifest["progress"] = {"lap": task.lap, "module": task.k, "phase": "done"}
    run.save()
    return accuracy
