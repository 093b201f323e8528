"""The whole-command accounting (memory/cgroup.py): counters parsed right, a group that limits
and measures what runs in it, and an OOM kill that is counted. Needs a writable memory cgroup
(root with cgroup v1, or a delegated cgroup v2): skipped with the reason elsewhere."""

from __future__ import annotations

import sys

import pytest

from edge_trgl.memory import cgroup
from edge_trgl.memory.cgroup import CommandCgroup, run_in_new_cgroup

MB = 1_000_000


def test_stat_parsing(tmp_path):
    f = tmp_path / "memory.stat"
    f.write_text("cache 4096\nrss 1000\nmapped_file 24\ntotal_rss 5000\ntotal_mapped_file 100\n"
                 "hierarchical_memory_limit 9223372036854771712\nbroken line here\n")
    stat = cgroup._stat(f)
    assert stat["total_rss"] == 5000 and stat["cache"] == 4096 and "broken" not in stat
    group = CommandCgroup("v1", tmp_path, tmp_path.parent, 10 * MB)
    assert group.resident_bytes() == 5100   # total_rss + total_mapped_file: hierarchical
    (tmp_path / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 3\n")
    group.oom_kills_at_start = 1
    assert group.new_oom_kills() == 2


def test_stat_parsing_v2(tmp_path):
    (tmp_path / "memory.stat").write_text("anon 7000\nfile 90000\nfile_mapped 300\n")
    (tmp_path / "memory.events").write_text("low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\n")
    group = CommandCgroup("v2", tmp_path, tmp_path.parent, 10 * MB)
    assert group.resident_bytes() == 7300 and group.oom_kills() == 1


def test_no_cgroup_when_disabled(monkeypatch):
    monkeypatch.setenv("EDGE_TRGL_NO_CGROUP", "1")
    assert CommandCgroup.create(100 * MB) is None


def _allocate(mb: int) -> list[str]:
    # touch every page, hold it a moment so the 20 ms sampler sees it
    return [sys.executable, "-c",
            f"import time; b = bytearray({mb} * 1000 * 1000); b[::4096] = b'x' * len(b[::4096]); "
            f"time.sleep(0.3)"]


@pytest.fixture
def writable_cgroup():
    probe = CommandCgroup.create(1 << 40, name="edge-trgl-test-probe")
    if probe is None:
        pytest.skip("no memory cgroup can be created here (needs root with cgroup v1 at "
                    "/sys/fs/cgroup/memory, or a delegated cgroup v2)")
    probe.close()


def test_group_measures_what_runs_inside(writable_cgroup):
    status, report = run_in_new_cgroup(_allocate(120), 400 * MB, capture_output=True)
    assert status == 0, report["stderr"]
    assert report["oom_kills"] == 0
    # 120 MB touched by the child, plus its interpreter; far below the limit
    assert 120 * MB <= report["peak_resident_bytes"] < 400 * MB


def test_group_limit_is_enforced_and_the_kill_counted(writable_cgroup):
    status, report = run_in_new_cgroup(_allocate(300), 150 * MB, capture_output=True)
    assert status == -9                      # SIGKILL from the kernel's OOM killer
    assert report["oom_kills"] >= 1
    assert report["peak_resident_bytes"] <= 150 * MB
