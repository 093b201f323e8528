"""Honest memory readings on Linux.

- `peak_rss_bytes()` is VmHWM, the kernel's high-water mark of this process's resident set.
- `reset_peak()` writes 5 to /proc/self/clear_refs, which resets VmHWM, for per-phase peaks.
- `run_measured()` runs a command as a child and polls the child's own VmHWM from outside
  (os.wait4's ru_maxrss also covers the child's own waited-for children, so it is kept only as
  the process tree's figure).
- `RssWatchdog` samples VmRSS on a thread so a run notices when it crosses its budget.
tracemalloc cannot see torch tensors, so none of this uses it.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import threading
import time

from .procfs import peak_rss_bytes, rss_bytes, status_field  # noqa: F401  (re-exported)


def reset_peak() -> bool:
    """Reset VmHWM to the current RSS; False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def release_memory() -> None:
    """Hand freed heap pages back to the OS (glibc keeps them otherwise), and on CUDA the caching
    allocator's unused blocks back to the driver: on a unified-memory device that is system RAM.
    The pinned-host allocator's cached blocks too: it keeps one power-of-two block per batch
    shape it has seen (images, then each module's feature maps) for the life of the process."""
    import gc
    import sys
    gc.collect()
    torch = sys.modules.get("torch")  # never imported for this (the ORT worker is torch-free)
    if torch is not None and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
        accelerator = getattr(torch, "accelerator", None)
        if accelerator is not None and hasattr(accelerator, "empty_host_cache"):
            accelerator.empty_host_cache()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def run_measured(cmd: list[str], *, env: dict | None = None, cwd: str | None = None,
                 stdout=None, stderr=None, timeout_s: float | None = None,
                 detail: dict | None = None, start_new_session: bool = False,
                 on_start=None, poll=None) -> tuple[int, int, float]:
    """Run `cmd` as a fresh child; return (exit status, the child's own peak RSS bytes, wall s).

    The peak is the child's VmHWM read from outside (/proc/<pid>/status) every 20 ms while it
    runs; VmHWM is a high-water mark, so polling loses nothing but a rise in the child's last
    20 ms. It is NOT wait4's ru_maxrss: on Linux that is the max over the child and every
    descendant it waited for (the planner's probe processes, ORT workers), which would charge a
    short-lived helper process's memory to the trainer. Both are put in `detail` when given.
    `on_start(proc)` is called once the child exists; `start_new_session` puts it in its own
    process group (a terminal's Ctrl-C then reaches only this process, which forwards it).
    `poll(proc)` is called on every 20 ms tick while the child is still running (before the
    timeout check), e.g. to sample the child's process tree; it may stop the child itself.
    """
    from .cgroup import child_preexec, watch_child
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=stdout, stderr=stderr,
                            start_new_session=start_new_session, preexec_fn=child_preexec())
    watch_child(proc.pid)  # the command's memory guard stops it if it would not fit
    if on_start is not None:
        on_start(proc)
    deadline = None if timeout_s is None else start + timeout_s
    self_peak = 0
    killed = False
    try:
        while True:
            self_peak = max(self_peak, status_field("VmHWM", proc.pid))
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid == proc.pid:
                break
            if poll is not None:
                poll(proc)
            if deadline is not None and time.perf_counter() > deadline and not killed:
                os.kill(proc.pid, 9)  # once; not Popen.kill, which may reap what wait4 reads
                killed = True
            time.sleep(0.02)
    finally:
        watch_child(None)
    proc.returncode = os.waitstatus_to_exitcode(status)
    tree_peak = usage.ru_maxrss * 1024
    if self_peak == 0:  # exited before the first poll (or not Linux): only the tree figure exists
        self_peak = tree_peak
    if detail is not None:
        detail.update({"self_peak_rss_bytes": self_peak, "tree_peak_rss_bytes": tree_peak,
                       # CPU seconds of the child and every descendant it waited for: on a
                       # shared machine, the work a run did, which other jobs' load hardly changes
                       "cpu_s": usage.ru_utime + usage.ru_stime,
                       "method": "child's VmHWM polled every 20 ms from /proc/<pid>/status; "
                                 "tree = wait4 ru_maxrss (child + waited descendants)"})
    return proc.returncode, self_peak, time.perf_counter() - start


class RssWatchdog:
    """Samples this process's RSS every `interval_s`; remembers the maximum it saw and whether it
    ever crossed `limit_bytes`. VmHWM stays the authoritative peak: the sampler can miss a spike
    shorter than its interval, the kernel's high-water mark cannot."""

    def __init__(self, limit_bytes: int | None = None, interval_s: float = 0.02):
        self.limit_bytes = limit_bytes
        self.interval_s = interval_s
        self.max_seen_bytes = 0
        self.phase_max_bytes = 0
        self.exceeded_bytes: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss-watchdog", daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def sample(self) -> int:
        now = rss_bytes()
        self.max_seen_bytes = max(self.max_seen_bytes, now)
        self.phase_max_bytes = max(self.phase_max_bytes, now)
        if self.limit_bytes is not None and now > self.limit_bytes and self.exceeded_bytes is None:
            self.exceeded_bytes = now
        return now

    def start_phase(self) -> None:
        self.phase_max_bytes = 0
        self.sample()

    def __enter__(self):
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.sample()
