"""Private temporary folders for a child process's job and result files.

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

_NAME = re.compile(r"^edge-trgl-[a-z-]+?-(\d+)-")


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
