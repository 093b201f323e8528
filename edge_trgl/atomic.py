"""Crash-safe file writes: temp file in the same directory, fsync, rename, fsync the directory.
A reader (or a resumed run) sees either the old file or the complete new one, never a torn one."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
from pathlib import Path

from .errors import UserError
from .killpoints import armed, kill_point


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def directory_lock(path: str | os.PathLike):
    """Exclusive flock on a directory, held while a read-modify-write of a file in it runs, so two
    processes updating the same file one after the other never lose each other's update. Locking
    the directory itself leaves no lock file behind."""
    import fcntl
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, event: str | None = None) -> None:
    """`event` names this write for the crash-test hook (killpoints.py), which can kill the
    process when the temp file holds only half of `data`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            if event is not None and armed(event):
                half = len(data) // 2
                fh.write(data[:half])
                fh.flush()
                kill_point(event)
                data = data[half:]
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise disk_full(path) from None
        raise
    fsync_dir(path.parent)


def disk_full(path: Path) -> UserError:
    return UserError(
        f"The disk filled up while writing {path}. The write was abandoned and every file written "
        f"before it is intact; free some space (or use a larger disk), then continue a training "
        f"run with `edge-trgl train --resume RUN_DIR`.")


def atomic_write_json(path: str | os.PathLike, obj, event: str | None = None) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode(), event)


def commit_file(tmp: Path, path: Path) -> None:
    """Finish an atomic write whose temp file the caller filled itself (e.g. a streamed shard)."""
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def sha256_file(path: str | os.PathLike, chunk_bytes: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def append_line(path: str | os.PathLike, line: str) -> None:
    """Append one JSON line and fsync; a torn last line is dropped on resume (see run.py)."""
    try:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(line.rstrip("\n") + "\n")
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise disk_full(Path(path)) from None
        raise
