"""Private temporary folders for a child process's job and result files, and the child's tie to
the process that started it.

Each is named `edge-trgl-<what>-<pid>-<random>` after the process that made it, and removed when
the child is done. A command killed outright (SIGKILL, a power cut) cannot remove its own, so
every new one first removes those whose process is gone.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from pathlib import Path

# Exit status of a child whose starting process was gone before it began.
EXIT_ORPHANED = 77

_NAME = re.compile(r"^edge-trgl-[a-z-]+?-(\d+)-")


def remove_dead_folders(parent: Path, prefix: str) -> None:
    """Delete the folders `parent/<prefix><pid>` whose process <pid> is gone (killed while it
    built them); a live one (another process at work now) is left alone."""
    for path in Path(parent).glob(f"{prefix}*"):
        pid = path.name[len(prefix):]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except PermissionError:
            pass


def remove_dead_job_dirs() -> None:
    for path in Path(tempfile.gettempdir()).glob("edge-trgl-*"):
        match = _NAME.match(path.name)
        if not match or not path.is_dir():
            continue
        pid = int(match.group(1))
        if pid == os.getpid():
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except PermissionError:
            pass


@contextlib.contextmanager
def job_dir(what: str):
    """A new private folder for one child's files; removed afterwards."""
    remove_dead_job_dirs()
    path = Path(tempfile.mkdtemp(prefix=f"edge-trgl-{what}-{os.getpid()}-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def die_with_parent(parent_pid: int | None) -> None:
    """Be killed (SIGKILL) when the process that started this one dies. A trainer runs in its
    own process group, so nothing else would stop it: an orphaned trainer would go on writing the
    run while a resumed `edge-trgl train --resume` trains the same module. Dying is safe: every
    write is atomic and the resume starts from the last recorded checkpoint, as after a power
    cut. Linux only (prctl); elsewhere a no-op."""
    if parent_pid is None:
        return
    import ctypes
    import signal
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent_pid:  # it died before the request took effect
        os._exit(EXIT_ORPHANED)
