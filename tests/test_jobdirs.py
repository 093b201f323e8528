"""Job folders of a killed command are removed by the next one (jobdirs.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from edge_trgl.jobdirs import job_dir


def test_job_dirs_of_dead_processes_are_removed_and_live_ones_kept():
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    root = Path(tempfile.gettempdir())
    dead = root / f"edge-trgl-ort-trainer-{gone}-abc"
    dead.mkdir()
    (dead / "job.json").write_text("{}")
    alive = root / f"edge-trgl-trainer-{os.getppid()}-xyz"   # our parent is alive
    alive.mkdir(exist_ok=True)
    try:
        with job_dir("trainer") as mine:
            assert mine.is_dir() and f"-{os.getpid()}-" in mine.name
            assert not dead.exists()
            assert alive.exists()
        assert not mine.exists()
    finally:
        alive.rmdir()
