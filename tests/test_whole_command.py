"""The budget holds for the whole command, as the kernel counts it: `edge-trgl train` and
`edge-trgl plan` run inside a memory cgroup of exactly the budget's size (as on a device with
that much free, or under systemd's MemoryMax), with an empty probe cache, finish with zero OOM
kills, and report a whole-command peak under the budget; a budget that cannot fit is refused
before anything is written, and `plan` and `train` refuse with the same figures.

The tests that run a command inside a cgroup need a writable memory cgroup (root with cgroup v1,
as on the test machines and CI) and skip with the reason elsewhere; the watchdog and signal ones
run anywhere. These are real runs (planning probes in fresh processes), so slow.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from edge_trgl.memory.cgroup import CommandCgroup, run_in_new_cgroup
from helpers import SYNTHETIC_300

pytestmark = pytest.mark.slow

TINY = [*SYNTHETIC_300, "--model", "resnet8", "--epochs", "1"]


@pytest.fixture(scope="module")
def cgroups():
    probe = CommandCgroup.create(1 << 40, name=f"edge-trgl-test-{os.getpid()}")
    if probe is None:
        pytest.skip("no memory cgroup can be created here (needs root with cgroup v1 at "
                    "/sys/fs/cgroup/memory, or a delegated cgroup v2)")
    probe.close()


@pytest.fixture(scope="module")
def torch_budget_bytes(tmp_path_factory):
    """A budget that fits a tiny job on this machine: the measured orchestrator and torch
    trainer baselines (they differ between environments) plus room for a small module."""
    from edge_trgl.config import TrainConfig
    from edge_trgl.memory.describe import describe, orchestrator_bytes
    os.environ["EDGE_TRGL_CACHE"] = str(tmp_path_factory.mktemp("describe-cache"))
    try:
        cfg = TrainConfig(model="resnet8")
        trainer = describe(cfg, (3, 32, 32), 10, 1)["trainer_baseline_bytes"]
        orchestrator = orchestrator_bytes(1)
    finally:
        del os.environ["EDGE_TRGL_CACHE"]
    return orchestrator + trainer + 180_000_000


def edge_trgl(limit_bytes: int, args: list[str], cache) -> tuple[int, dict]:
    env = dict(os.environ, EDGE_TRGL_CACHE=str(cache))
    result = run_in_new_cgroup([sys.executable, "-m", "edge_trgl.cli.main", *args], limit_bytes,
                               capture_output=True, text=True, env=env)
    assert result is not None
    return result


def test_budgeted_train_inside_a_cgroup_of_the_budget(tmp_path, cgroups, torch_budget_bytes):
    out = tmp_path / "run"
    budget = torch_budget_bytes
    status, kernel = edge_trgl(budget, ["train", *TINY, "--batch-size", "64", "--mem-budget",
                                        str(budget), "--out", str(out)], tmp_path / "cache")
    assert status == 0, kernel["stderr"][-3000:]
    assert kernel["oom_kills"] == 0
    assert "Traceback" not in kernel["stderr"]
    summary = json.loads((out / "summary.json").read_text())
    whole = summary["whole_command"]
    assert whole["enforcement"].startswith("cgroup-")      # the command's own children group
    assert whole["oom_kills"] == 0 and not summary["over_budget"]
    assert 0 < summary["whole_command_peak_bytes"] <= budget
    # the orchestrator never imported torch; the trainer was a child
    assert whole["orchestrator_peak_rss_bytes"] < 150_000_000
    assert whole["largest_child_peak_rss_bytes"] > whole["orchestrator_peak_rss_bytes"]
    # every module's plan estimate is within 10 % of what was measured for it (trainer + us)
    for row in summary["modules"]:
        assert abs(row["estimate_error"]) < 0.10, row
    assert "whole command: peak" in kernel["stdout"]


def test_ort_train_inside_a_256mb_cgroup(tmp_path, cgroups):
    from edge_trgl.backends.ort_common import require_ort
    from edge_trgl.errors import UserError
    try:
        require_ort(need_onnx=True)
    except UserError as exc:
        pytest.skip(f"the ONNX Runtime training extra is not installed ({exc})")
    out = tmp_path / "ort"
    status, kernel = edge_trgl(256_000_000, ["train", *TINY, "--backend", "ort", "--mem-budget",
                                             "256MB", "--out", str(out)], tmp_path / "cache")
    assert status == 0, kernel["stderr"][-3000:]
    assert kernel["oom_kills"] == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["whole_command"]["oom_kills"] == 0
    assert summary["whole_command_peak_bytes"] <= 256_000_000


def test_too_small_budget_is_refused_alike_by_plan_and_train(tmp_path, cgroups,
                                                             torch_budget_bytes):
    budget = torch_budget_bytes - 150_000_000   # below the two baselines + the smallest block
    cache = tmp_path / "cache"
    out = tmp_path / "refused"
    p_status, p_kernel = edge_trgl(budget, ["plan", *TINY, "--mem-budget", str(budget)], cache)
    t_status, t_kernel = edge_trgl(budget, ["train", *TINY, "--mem-budget", str(budget),
                                            "--out", str(out)], cache)
    assert (p_status, t_status) == (2, 2), (p_kernel["stderr"], t_kernel["stderr"])
    assert p_kernel["oom_kills"] == 0 and t_kernel["oom_kills"] == 0
    p_err, t_err = (" ".join(k["stderr"].split()) for k in (p_kernel, t_kernel))
    assert "Traceback" not in p_err + t_err and "Nothing was written" in t_err
    # the same refusal, the same figures (the message is the planner's, word for word)
    assert p_err.split("error: ", 1)[1] == t_err.split("error: ", 1)[1]
    assert not out.exists() and not any(p.name.startswith(".refused") for p in tmp_path.iterdir())


def test_the_same_command_plans_the_same(tmp_path, cgroups, torch_budget_bytes):
    cache = tmp_path / "cache"
    args = ["plan", *TINY, "--batch-size", "64", "--mem-budget", str(torch_budget_bytes), "--json"]
    plans = []
    for _ in range(2):
        status, kernel = edge_trgl(torch_budget_bytes, args, cache)
        assert status == 0, kernel["stderr"][-3000:]
        plan = json.loads(kernel["stdout"])
        plan.pop("whole_command")  # how planning itself went differs (the second is cached)
        plans.append(plan)
    assert plans[0] == plans[1]


def test_a_trainer_over_its_share_is_stopped_by_the_guard_not_the_kernel(tmp_path, cgroups,
                                                                          torch_budget_bytes):
    """A trainer that suddenly needs far more than planned (a test hook makes it allocate 400 MB
    at its 3rd batch) is stopped by the command's own guard before the kernel's OOM killer acts;
    the message says so, the run is intact and resumes as planned."""
    out = tmp_path / "run"
    budget = torch_budget_bytes
    args = ["train", *TINY, "--batch-size", "64", "--mem-budget", str(budget), "--out", str(out)]
    env = dict(os.environ, EDGE_TRGL_CACHE=str(tmp_path / "cache"),
               EDGE_TRGL_TEST_BALLAST="batch:3:400")
    status, kernel = run_in_new_cgroup([sys.executable, "-m", "edge_trgl.cli.main", *args],
                                       budget, capture_output=True, text=True, env=env)
    err = " ".join(kernel["stderr"].split())
    assert status == 2, kernel["stderr"][-3000:]
    assert kernel["oom_kills"] == 0
    assert "stopped by the command's memory guard" in err and "Traceback" not in err, err
    assert f"edge-trgl train --resume {out}" in err
    status, kernel = edge_trgl(budget, ["train", "--resume", str(out), "--quiet"], tmp_path / "cache")
    assert status == 0, kernel["stderr"][-3000:]
    assert kernel["oom_kills"] == 0
    assert json.loads((out / "summary.json").read_text())["whole_command"]["oom_kills"] == 0


def test_without_a_cgroup_the_trainer_watchdog_stops_it(tmp_path, torch_budget_bytes):
    """Where no cgroup can be created (here: forbidden by EDGE_TRGL_NO_CGROUP), the trainer's
    own RSS watchdog is the enforcement: the same sudden need ends at a safe point with the
    one-paragraph error, and the summary of the resumed run says which enforcement was used."""
    out = tmp_path / "run"
    budget = torch_budget_bytes
    env = dict(os.environ, EDGE_TRGL_CACHE=str(tmp_path / "cache"), EDGE_TRGL_NO_CGROUP="1",
               EDGE_TRGL_TEST_BALLAST="batch:3:400")
    done = subprocess.run([sys.executable, "-m", "edge_trgl.cli.main", "train", *TINY,
                           "--batch-size", "64", "--mem-budget", str(budget), "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=900)
    err = " ".join(done.stderr.split())
    assert done.returncode == 2, done.stderr[-3000:]
    assert "over the budget" in err and "Traceback" not in err, err
    del env["EDGE_TRGL_TEST_BALLAST"]
    done = subprocess.run([sys.executable, "-m", "edge_trgl.cli.main", "train", "--resume",
                           str(out), "--quiet"], capture_output=True, text=True, env=env,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["memory_enforcement"] == "watchdog"


def start_training_until_first_epoch(out, env, **popen) -> subprocess.Popen:
    """A budgeted `edge-trgl train` in the background, returned once its first epoch is logged
    (its trainer child is then training)."""
    import time
    proc = subprocess.Popen([sys.executable, "-m", "edge_trgl.cli.main", "train",
                             "--synthetic-train", "1500", "--synthetic-test", "100", "--threads",
                             "1", "--quiet", "--model", "resnet8", "--epochs", "4",
                             "--mem-budget", "2GB", "--out", str(out)], env=env, **popen)
    deadline = time.time() + 600
    while not (out / "metrics.jsonl").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    return proc


def test_sigterm_to_the_budgeted_command_stops_its_trainer_at_a_safe_point(tmp_path):
    """A service manager's SIGTERM reaches only `edge-trgl`; it forwards it to its trainer child,
    which stops at its next safe point; the command exits 130 and the run resumes."""
    import signal
    out = tmp_path / "run"
    env = dict(os.environ, EDGE_TRGL_CACHE=str(tmp_path / "cache"))
    proc = start_training_until_first_epoch(out, env, stdout=subprocess.PIPE,
                                            stderr=subprocess.PIPE, text=True)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err and f"edge-trgl train --resume {out}" in " ".join(err.split())
    done = subprocess.run([sys.executable, "-m", "edge_trgl.cli.main", "train", "--resume",
                           str(out), "--quiet"], capture_output=True, text=True, env=env,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((out / "summary.json").read_text())["modules"]


def test_the_trainer_dies_with_a_killed_command(tmp_path):
    """SIGKILL of `edge-trgl` (nothing can forward that) takes its trainer child with it: an
    orphaned trainer would go on writing a run the user may be resuming."""
    import signal
    import time
    from pathlib import Path
    out = tmp_path / "run"
    env = dict(os.environ, EDGE_TRGL_CACHE=str(tmp_path / "cache"))
    proc = start_training_until_first_epoch(out, env, stdout=subprocess.DEVNULL,
                                            stderr=subprocess.DEVNULL)
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    assert children, "the trainer child should be running"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    time.sleep(1.0)
    for pid in children:
        status = Path(f"/proc/{pid}/status")
        alive = status.exists() and "State:\tZ" not in status.read_text()
        assert not alive, f"trainer {pid} outlived its command"
    env_ok = subprocess.run([sys.executable, "-m", "edge_trgl.cli.main", "train", "--resume",
                             str(out), "--quiet"], capture_output=True, text=True, env=env,
                            timeout=900)
    assert env_ok.returncode == 0, env_ok.stderr[-3000:]
