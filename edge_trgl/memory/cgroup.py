"""The whole command under one kernel memory limit, measured the way the kernel counts it.

A budget is a promise about everything `edge-trgl train` / `plan` runs at once: the lean
orchestrator and its one torch (or ONNX Runtime) child of the moment. Summing the processes' RSS
double-counts shared library pages; a memory cgroup counts every page once.

Where the OS lets us create one, the orchestrator creates a memory cgroup below its own and
starts every child inside it (`child_preexec`); before each child starts, the group's limit is
set to the budget less what the orchestrator holds at that moment, so the kernel enforces the
budget for the command as a whole (`enforcement = "cgroup-v1"` / `"cgroup-v2"`). The
orchestrator itself stays outside the group: it is small, it must survive to report what
happened, and moving a process between groups leaves its old pages charged where they were.
Where no cgroup can be created (not root, no delegation, no memory controller) the command runs
under the per-process RSS watchdogs (`enforcement = "watchdog"`).

The sampler (every 20 ms) reads, at the same moment, the group's own counters and the
orchestrator's RSS:
- whole-command resident = orchestrator RSS + the group's anonymous memory and mapped file pages
  (cgroup v1 `total_rss + total_mapped_file`; v2 `anon + file_mapped`): what the command's
  processes use, each page charged to the group once. A page the kernel charged elsewhere
  first (a shared library already in the page cache when the child mapped it) is not charged
  again; that is the kernel's rule, and the reason the processes' summed peaks are reported too.
- a guard: when the group's anonymous memory comes within GUARD_MARGIN_BYTES of its limit, the
  orchestrator stops the child itself (SIGKILL) and records why, so a child that would not fit
  ends as a clear "over budget" refusal rather than a kernel OOM kill;
- `oom_kills`: the kernel's count of OOM kills inside the group (v1 `memory.oom_control`,
  v2 `memory.events`); zero when the guard did its job.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

V1_ROOT = Path("/sys/fs/cgroup/memory")
V2_ROOTS = (Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup"))


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _stat(path: Path) -> dict[str, int]:
    out = {}
    for line in _read(path).splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("-").isdigit():
            out[parts[0]] = int(parts[1])
    return out


def own_cgroup_dirs() -> list[tuple[str, Path]]:
    """(version, directory) of this process's memory cgroup, v1 first, where they exist."""
    found = []
    for line in _read(Path("/proc/self/cgroup")).splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, rel = parts
        rel = rel.lstrip("/")
        if "memory" in controllers.split(","):
            d = V1_ROOT / rel
            if (d / "memory.limit_in_bytes").exists():
                found.append(("v1", d))
        elif controllers == "":
            for root in V2_ROOTS:
                d = root / rel
                if "memory" in _read(d / "cgroup.controllers").split() and d.is_dir():
                    found.append(("v2", d))
                    break
    found.sort(key=lambda item: item[0] != "v1")
    return found


def enclosing_limit_bytes() -> int | None:
    """The tightest memory limit already imposed on this process by its cgroup and its ancestors
    (a container, systemd's MemoryMax, a test harness), or None."""
    limits = []
    for version, d in own_cgroup_dirs():
        root = V1_ROOT if version == "v1" else d
        node = d
        while True:
            raw = _read(node / ("memory.limit_in_bytes" if version == "v1" else "memory.max")).strip()
            if raw.isdigit() and int(raw) < 1 << 60:
                limits.append(int(raw))
            if node == root or node.parent == node or version == "v2":
                break
            node = node.parent
    return min(limits) if limits else None


def _remove_dead_groups(parent: Path) -> None:
    """Remove empty groups that earlier commands left (killed before they could clean up):
    named edge-trgl-[outer-]PID-..., their PID gone."""
    try:
        entries = list(parent.glob("edge-trgl-*"))
    except OSError:
        return
    for path in entries:
        parts = path.name.split("-")
        pid = parts[3] if len(parts) > 3 and parts[2] == "outer" else parts[2] if len(parts) > 2 else ""
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
            continue  # that command is still running
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        try:
            path.rmdir()  # fails, harmlessly, while a process is still inside
        except OSError:
            pass


GUARD_MARGIN_BYTES = 16 * 1000 * 1000
UNLIMITED = 1 << 62

# The group the orchestrator's children are started in (one command per process at a time).
ACTIVE: dict = {"group": None}


def child_preexec():
    """A `preexec_fn` that puts a new child into the active command group (None if none). The
    group's limit is set first to the budget less what this process holds now."""
    group = ACTIVE["group"]
    if group is None:
        return None
    if group.budget_bytes is not None:
        from .procfs import rss_bytes
        try:
            group.set_limit(group.budget_bytes - rss_bytes())
        except OSError:  # v1 refuses a limit below the current usage: keep the old one
            pass
    procs = str(group.path / "cgroup.procs")

    def enter():  # runs in the child between fork and exec
        with open(procs, "w") as fh:
            fh.write(str(os.getpid()))
    return enter


def watch_child(pid: int | None) -> None:
    """Tell the active group's guard which child to stop if it would not fit."""
    group = ACTIVE["group"]
    if group is not None:
        group.guard_killed_bytes = None if pid is not None else group.guard_killed_bytes
        group.child_pid = pid


def killed_by_guard() -> int | None:
    """The anonymous bytes at which the guard stopped the last child, or None."""
    group = ACTIVE["group"]
    return None if group is None else group.guard_killed_bytes


class CommandCgroup:
    """A memory cgroup for the children of this process, limited to what the budget leaves."""

    def __init__(self, version: str, path: Path, parent: Path, limit_bytes: int):
        self.version, self.path, self.parent, self.limit_bytes = version, path, parent, limit_bytes
        self.budget_bytes: int | None = None
        self.peak_resident_bytes = 0
        self.peak_group_bytes = 0
        self.child_pid: int | None = None
        self.guard_killed_bytes: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.oom_kills_at_start = 0

    # --- creation ----------------------------------------------------------------------------
    @classmethod
    def create(cls, limit_bytes: int, name: str | None = None) -> "CommandCgroup | None":
        """Create the group below this process's own; None where the OS does not let us (then
        the caller falls back to the RSS watchdogs)."""
        if os.environ.get("EDGE_TRGL_NO_CGROUP"):
            return None
        name = name or f"edge-trgl-{os.getpid()}-{time.time_ns() % 10**9}"
        for version, parent in own_cgroup_dirs():
            _remove_dead_groups(parent)
            path = parent / name
            try:
                path.mkdir(exist_ok=True)
                group = cls(version, path, parent, int(limit_bytes))
                group.set_limit(limit_bytes)
                group.oom_kills_at_start = group.oom_kills()
            except OSError:
                try:
                    path.rmdir()
                except OSError:
                    pass
                continue
            return group
        return None

    def set_limit(self, limit_bytes: int) -> None:
        self.limit_bytes = int(max(limit_bytes, 4 << 20))
        name = "memory.limit_in_bytes" if self.version == "v1" else "memory.max"
        (self.path / name).write_text(str(self.limit_bytes))

    @property
    def enforcement(self) -> str:
        return f"cgroup-{self.version}"

    # --- readings ----------------------------------------------------------------------------
    def _stat(self) -> dict[str, int]:
        return _stat(self.path / "memory.stat")

    def resident_bytes(self, stat: dict | None = None) -> int:
        stat = self._stat() if stat is None else stat
        if self.version == "v1":
            return stat.get("total_rss", stat.get("rss", 0)) + stat.get(
                "total_mapped_file", stat.get("mapped_file", 0))
        return stat.get("anon", 0) + stat.get("file_mapped", 0)

    def anon_bytes(self, stat: dict | None = None) -> int:
        stat = self._stat() if stat is None else stat
        if self.version == "v1":
            return stat.get("total_rss", stat.get("rss", 0))
        return stat.get("anon", 0)

    def max_usage_bytes(self) -> int | None:
        raw = _read(self.path / ("memory.max_usage_in_bytes" if self.version == "v1" else "memory.peak"))
        return int(raw) if raw.strip().isdigit() else None

    def oom_kills(self) -> int:
        name = "memory.oom_control" if self.version == "v1" else "memory.events"
        return _stat(self.path / name).get("oom_kill", 0)

    def new_oom_kills(self) -> int:
        return self.oom_kills() - self.oom_kills_at_start

    def sample(self) -> int:
        from .procfs import rss_bytes
        stat = self._stat()
        group = self.resident_bytes(stat)
        now = group + rss_bytes()  # this process, outside the group, read at the same moment
        self.peak_group_bytes = max(self.peak_group_bytes, group)
        self.peak_resident_bytes = max(self.peak_resident_bytes, now)
        anon = self.anon_bytes(stat)
        pid = self.child_pid
        if (pid is not None and self.limit_bytes < UNLIMITED
                and anon > self.limit_bytes - GUARD_MARGIN_BYTES):
            try:
                os.kill(pid, 9)
                self.guard_killed_bytes = anon
            except ProcessLookupError:
                pass
            self.child_pid = None
        return now

    # --- the sampler -------------------------------------------------------------------------
    def start_sampling(self, interval_s: float = 0.02) -> None:
        def loop():
            while not self._stop.wait(interval_s):
                self.sample()
        self.sample()
        self._thread = threading.Thread(target=loop, name="cgroup-sampler", daemon=True)
        self._thread.start()

    def report(self) -> dict:
        self.sample()
        return {"enforcement": self.enforcement, "cgroup": str(self.path),
                "limit_bytes": self.budget_bytes,
                "whole_command_peak_bytes": self.peak_resident_bytes,
                "children_group_peak_bytes": self.peak_group_bytes,
                "children_kernel_max_usage_bytes": self.max_usage_bytes(),
                "oom_kills": self.new_oom_kills(),
                "method": ("the command's children run in a memory cgroup whose limit is the "
                           "budget less what this process holds; peak = max over 20 ms samples "
                           "of (this process's RSS + the group's anonymous and mapped file "
                           "pages, from memory.stat: shared pages once); the kernel's max_usage "
                           "also counts unmapped page cache (files written or read), which it "
                           "reclaims before it kills anything")}

    def close(self) -> None:
        """Stop sampling and remove the group (its children have exited)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        for _ in range(100):  # a child that just exited may still be listed for a moment
            try:
                self.path.rmdir()
                return
            except OSError:
                time.sleep(0.02)


def watchdog_report(limit_bytes: int | None, why: str) -> dict:
    return {"enforcement": "watchdog", "limit_bytes": limit_bytes, "oom_kills": None,
            "whole_command_peak_bytes": None,
            "method": f"no memory cgroup could be created ({why}): each process's RSS is watched "
                      f"against its share of the budget; the whole-command figure is the sum of "
                      f"the processes' peaks that were alive together"}


def run_in_new_cgroup(cmd: list[str], limit_bytes: int, **popen) -> tuple[int, dict] | None:
    """Run `cmd` inside a fresh memory cgroup limited to `limit_bytes` (as a user's container or
    a small board would); return (exit status, what the kernel saw), or None where no cgroup
    can be created. For tests and benchmarks: this process stays outside the group."""
    import subprocess
    group = CommandCgroup.create(limit_bytes, name=f"edge-trgl-outer-{os.getpid()}-{time.time_ns()}")
    if group is None:
        return None
    procs = group.path / "cgroup.procs"

    def enter():  # in the child, before exec: everything it runs is inside the group
        with open(procs, "w") as fh:
            fh.write(str(os.getpid()))

    peak = {"bytes": 0}
    stop = threading.Event()

    def loop():
        while not stop.wait(0.02):
            peak["bytes"] = max(peak["bytes"], group.resident_bytes())
    sampler = threading.Thread(target=loop, daemon=True)
    sampler.start()
    try:
        proc = subprocess.run(cmd, preexec_fn=enter, **popen)
    finally:
        stop.set()
        sampler.join()
        peak["bytes"] = max(peak["bytes"], group.resident_bytes())
        report = {"limit_bytes": int(limit_bytes), "peak_resident_bytes": peak["bytes"],
                  "kernel_max_usage_bytes": group.max_usage_bytes(),
                  "oom_kills": group.new_oom_kills()}
        group.close()
    return proc.returncode, {**report, "stdout": proc.stdout, "stderr": proc.stderr}
