"""The cache of what the planner measured, and the measuring children that fill it.

Every measurement the planner makes in a child process -- block and module probes, the model's
description, the baselines of the orchestrator and of the trainers -- is kept in one JSON file,
`~/.cache/edge-trgl/probes.json` (or `$EDGE_TRGL_CACHE/probes.json`), keyed by what it depends
on: the model structure and batch sizes, and this machine (`machine_identity`: host, machine
type, CPU model, Python, torch and edge-trgl versions, thread count), so another machine or
version never reuses an entry. Writers merge their entries into the file under an exclusive
lock and replace it atomically, so concurrent commands share it safely. With it in place the
same command on the same machine plans the same.

A measuring child prints one JSON line; one that went over the memory it was given (its own
check, or the command's guard in memory/cgroup.py) becomes ProbeOverBudget.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path


def cache_file() -> Path:
    root = Path(os.environ.get("EDGE_TRGL_CACHE", Path.home() / ".cache" / "edge-trgl"))
    root.mkdir(parents=True, exist_ok=True)
    return root / "probes.json"


class ProbeOverBudget(Exception):
    """A probe child stopped itself (or was stopped) because it went over the memory it was
    given: what it measures does not fit in the budget."""

    def __init__(self, what: str, bytes_seen: int | None):
        super().__init__(what)
        self.what, self.bytes_seen = what, bytes_seen


def load_cache() -> dict:
    try:
        data = json.loads(cache_file().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def store_cache(cache: dict) -> None:
    """Merge `cache` into the file under an exclusive lock, so that two commands planning at the
    same time never lose each other's entries; the file itself is replaced atomically."""
    from ..atomic import atomic_write_json, directory_lock
    path = cache_file()
    with directory_lock(path.parent):
        merged = load_cache()
        merged.update(cache)
        atomic_write_json(path, merged)


# What the probes measure changed, so entries measured before are not reused: 2 = the CPU
# trained in channels_last, 3 = contiguous again (modules.CPU_MEMORY_FORMAT), 4 = checkpointed
# segments no longer import torch._dynamo (modules._Checkpointed).
PROBE_FORMAT = 4


def machine_identity(threads: int) -> dict:
    """What a measurement depends on besides the model: this machine, its Python and torch, the
    thread count. A cache copied to another machine, or kept across an upgrade, is not reused."""
    import platform

    from ..envinfo import dist_version
    from .. import __version__
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"host": platform.node(), "machine": platform.machine(), "cpu": cpu,
            "python": platform.python_version(), "torch": dist_version("torch"),
            "edge_trgl": __version__, "threads": int(threads), "probe_format": PROBE_FORMAT}


def machine_key(ident: dict, threads: int) -> str:
    """The cache key of what `ident` names, measured on this machine at `threads` threads."""
    return hashlib.sha256(json.dumps({**ident, **machine_identity(threads)},
                                     sort_keys=True).encode()).hexdigest()[:24]


def cached_child_result(ident: dict, threads: int, cmd: list[str], what: str) -> dict:
    """The JSON result of a measuring child `cmd`, cached under `ident` + this machine."""
    key = machine_key(ident, threads)
    cache = load_cache()
    if key in cache:
        return cache[key]
    result = run_json_child(cmd, threads, what)
    store_cache({key: result})
    return result


def run_json_child(cmd: list[str], threads: int, what: str) -> dict:
    from ..errors import UserError
    from .cgroup import child_preexec, killed_by_guard, watch_child
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MALLOC_ARENA_MAX="2")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, preexec_fn=child_preexec())
    watch_child(proc.pid)  # the command's memory guard stops it if it would not fit
    try:
        stdout, stderr = proc.communicate()
    finally:
        watch_child(None)
    proc.stdout, proc.stderr = stdout, stderr
    lines = stdout.strip().splitlines()
    result = None
    if lines:
        try:
            result = json.loads(lines[-1])
        except ValueError:
            result = None
    if isinstance(result, dict) and "error" in result:
        raise UserError(result["error"])
    if isinstance(result, dict) and "over_limit_bytes" in result:
        raise ProbeOverBudget(what, result["over_limit_bytes"])
    if proc.returncode == -9:  # SIGKILL: the command's memory guard, or the kernel's OOM killer
        raise ProbeOverBudget(what, killed_by_guard())
    if proc.returncode != 0 or not isinstance(result, dict):
        raise RuntimeError(f"{what} failed (exit status {proc.returncode}): {proc.stderr[-2000:]}")
    return result


# What one child may hold (the budget less the orchestrator), set by the planner for its probes.
PROBE_LIMIT: dict = {"bytes": None}
