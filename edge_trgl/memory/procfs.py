"""This process's (or another's) memory as Linux reports it in /proc: the few readers every part
of the package uses (the measuring code in measure.py, the cgroup sampler in cgroup.py)."""

from __future__ import annotations


def status_field(field: str, pid: int | str = "self") -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def rss_bytes(pid: int | str = "self") -> int:
    return status_field("VmRSS", pid)


def peak_rss_bytes(pid: int | str = "self") -> int:
    peak = status_field("VmHWM", pid)
    if peak == 0:  # not Linux: ru_maxrss is KiB on Linux/BSD, bytes on macOS
        import resource
        import sys
        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak = maxrss if sys.platform == "darwin" else maxrss * 1024
    return peak
