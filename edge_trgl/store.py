"""The block store: every block, every auxiliary head and every module's optimizer state is its
own safetensors file in the run directory. numpy-only (no torch import), so the torch-free ONNX
Runtime worker reads and writes the same files.

Files are written atomically and their sha256 is recorded in the run manifest by the caller;
`load` verifies the checksum, so a corrupted or half-written file is detected, not trained on.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from .atomic import atomic_write_bytes
from .errors import UserError


def block_path(i: int) -> str:
    return f"blocks/block_{i:03d}.safetensors"


def head_path(k: int) -> str:
    return f"heads/head_{k:02d}.safetensors"


def optim_path(k: int) -> str:
    return f"optim/module_{k:02d}.safetensors"


def checkpoint_path(k: int, lap: int, epoch: int) -> str:
    return f"ckpt/module_{k:02d}-lap{lap}-epoch{epoch:03d}.safetensors"


def save_tensors(root: Path, rel: str, tensors: dict[str, np.ndarray],
                 metadata: dict | None = None) -> str:
    """Write `tensors` to root/rel atomically; return the sha256 of the bytes written."""
    arrays = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    meta = {"edge_trgl": json.dumps(metadata or {})}
    data = st_save(arrays, metadata=meta)
    atomic_write_bytes(root / rel, data, event="save")
    return hashlib.sha256(data).hexdigest()


def load_tensors(root: Path, rel: str, sha256: str | None) -> tuple[dict[str, np.ndarray], dict]:
    """Read root/rel, verify it against the manifest's checksum; return (tensors, metadata)."""
    path = root / rel
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"The run directory {root} is missing {rel}, which its manifest lists as "
                        f"complete. The run is damaged; start a new run or restore the file.") from None
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise UserError(f"The file {path} does not match the checksum recorded in the run "
                        f"manifest: it is corrupted or was changed after it was written. Restore it "
                        f"from a backup, or delete the run directory and train again.")
    try:
        tensors = st_load(data)
        header_len = int.from_bytes(data[:8], "little")
        header = json.loads(data[8:8 + header_len])
        meta = json.loads(header.get("__metadata__", {}).get("edge_trgl", "{}"))
    except Exception as exc:  # safetensors raises its own error types for malformed files
        raise UserError(f"The file {path} is not a valid safetensors weight file ({exc}). "
                        f"Restore it, or start a new run.") from None
    return tensors, meta


def prefixed(tensors: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    return {f"{prefix}{k}": v for k, v in tensors.items()}


def unprefixed(tensors: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def module_files(task) -> list[str]:
    """The store files of a trained module: its blocks, its head and its optimizer state."""
    return ([block_path(i) for i in range(task.lo, task.hi)]
            + [head_path(task.k), optim_path(task.k)])
