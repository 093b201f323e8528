"""Where a run's detector lives, and which network it belongs to (imports nothing heavy, and not
export.py, which imports export_outputs.py, which needs these)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path


def detector_path(run_dir) -> Path:
    from ..detect_runtime import DETECTOR_FILE
    return Path(run_dir) / DETECTOR_FILE


def model_fingerprint(fin, k: int) -> str:
    """sha256 over the checksums of the weights the cut network is made of (blocks 0..end of
    module k, head k; `fin` is an export.FinishedRun): a detector is refused for any other
    network."""
    from ..store import block_path, head_path
    _, hi = fin.blocks_of(k)
    files = fin.run.manifest["files"]
    names = [block_path(i) for i in range(hi)] + [head_path(k)]
    return hashlib.sha256(json.dumps({n: files[n] for n in names}, sort_keys=True).encode()
                          ).hexdigest()
