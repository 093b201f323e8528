"""Resumable benchmark rows (edge_trgl/bench/resumable.py): a row stopped part-way is kept in
WORK_DIR/<row id> and the next invocation continues it to the result an uninterrupted row gets."""

from __future__ import annotations

import json
import shutil
import signal
import sys
from pathlib import Path

import pytest

from edge_trgl import bench
from edge_trgl.bench import resumable, runner
from edge_trgl.cli.main import main
from edge_trgl.errors import UserError
from edge_trgl.killpoints import ENV as KILL_ENV

from helpers import TINY_MATRIX_DEFAULTS, assert_one_paragraph_error, write_fake_cifar

ROW = """
name = "resume"
description = "one tiny module-wise row"
timeout_s = 300

""" + TINY_MATRIX_DEFAULTS + """epochs = 2
scheme = "sequential"
module-size = 1
tau = 1.0

[[rows]]
id = "{model}-seq"
"""


def _row(tmp_path: Path, text: str = ROW):
    (tmp_path / "m.toml").write_text(text)
    return bench.load_matrix(str(tmp_path / "m.toml")).rows[0]


def _on_cifar(data_dir) -> str:
    """The tiny row on CIFAR-10-format data in `data_dir`."""
    return ROW.replace('data = "synthetic"', f'data = "cifar10"\ndata-dir = "{data_dir}"')


# --- asking the child to stop --------------------------------------------------------------------

_STOPS_ON_TERM = """
import signal, sys, time
signal.signal(signal.SIGTERM, lambda *a: sys.exit(130))
print("ready", flush=True)
time.sleep(60)
"""

_IGNORES_TERM = """
import signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("ready", flush=True)
time.sleep(60)
"""


def test_past_the_limit_the_child_is_asked_to_stop_and_killed_only_after_the_grace(tmp_path):
    log = open(tmp_path / "log", "wb")
    asked = runner._run_watched([sys.executable, "-c", _STOPS_ON_TERM], stdout=log,
                                timeout_s=1.0, grace_s=30.0)
    assert asked["timed_out"] and asked["status"] == 130     # it exited by itself, on SIGTERM
    assert asked["wall_s"] < 20
    deaf = runner._run_watched([sys.executable, "-c", _IGNORES_TERM], stdout=log,
                               timeout_s=1.0, grace_s=1.0)
    assert deaf["timed_out"] and deaf["status"] == -signal.SIGKILL
    assert deaf["wall_s"] < 20
    killed = runner._run_watched([sys.executable, "-c", _STOPS_ON_TERM], stdout=log, timeout_s=1.0)
    assert killed["status"] == -signal.SIGKILL               # without a grace: killed at once


def test_how_a_segment_ended_and_whether_it_is_worth_continuing():
    assert resumable.how_it_ended(130, True).startswith("time limit: stopped")
    assert resumable.how_it_ended(-9, True).startswith("time limit: killed")
    assert resumable.how_it_ended(-9, False) == "killed by SIGKILL"
    assert resumable.how_it_ended(130, False).startswith("asked to stop")
    assert resumable.worth_resuming(130, True) and resumable.worth_resuming(-9, False)
    assert not resumable.worth_resuming(0, True)   # finished during the grace: a result
    assert not resumable.worth_resuming(2, False)  # an error exit would fail the same way again


# --- refusals ------------------------------------------------------------------------------------

def test_a_resumable_row_needs_a_work_dir_and_the_same_options(tmp_path):
    row = _row(tmp_path)
    with pytest.raises(UserError, match="--resumable needs --work-dir"):
        resumable.resumable_row_dir(None, row)
    work = tmp_path / "work"
    root = resumable.resumable_row_dir(str(work), row)
    assert root == work / row.row_id and root.is_dir()
    resumable.add_segment(root, row, {"wall_s": 1.0})
    assert resumable.resumable_row_dir(str(work), row) == root  # the same row: continue it
    changed = _row(tmp_path, ROW.replace("epochs = 2", "epochs = 3"))
    with pytest.raises(UserError, match="other train options"):
        resumable.resumable_row_dir(str(work), changed)
    assert json.loads((root / resumable.SEGMENTS_FILE).read_text())["segments"] == [{"wall_s": 1.0}]


def test_a_stopped_row_continues_where_its_data_lie_on_this_machine(tmp_path):
    # the matrix's relative data-dir is another absolute path in another checkout; the same row
    row = _row(tmp_path, _on_cifar("/a/cifar"))
    root = resumable.resumable_row_dir(str(tmp_path / "work"), row)
    resumable.add_segment(root, row, {"wall_s": 1.0})
    moved = _row(tmp_path, _on_cifar("/b/cifar"))
    assert resumable.resumable_row_dir(str(tmp_path / "work"), moved) == root
    cmd = resumable.resume_command(["py", "-m", "x"], root / "run", moved)
    assert cmd[cmd.index("--data-dir") + 1] == "/b/cifar" and "--resume" in cmd
    assert "--data-dir" not in resumable.resume_command(["py"], root / "run", _row(tmp_path))


def test_the_cli_refuses_resumable_without_a_work_dir(tmp_path, capsys):
    (tmp_path / "m.toml").write_text(ROW)
    rc = main(["bench", "run", str(tmp_path / "m.toml"), "--results", str(tmp_path / "res"),
               "--resumable", "--no-report"])
    assert_one_paragraph_error(rc, capsys.readouterr().err, "--resumable needs --work-dir")
    assert not (tmp_path / "res").exists()  # refused before any work


# --- a real row, killed and continued ------------------------------------------------------------

@pytest.mark.slow
def test_a_killed_resumable_row_continues_to_the_uninterrupted_result(tmp_path, monkeypatch):
    row = _row(tmp_path)
    work = tmp_path / "work"
    whole = runner.run_row(row, work_dir=str(tmp_path), timeout_s=300)
    assert whole["status"] == "ok" and "segments" not in whole["measurements"]

    monkeypatch.setenv(KILL_ENV, "batch:9")  # part-way through module 1 or 2 (of 4)
    assert runner.run_row(row, work_dir=str(work), timeout_s=300, resumable=True) is None
    kept = work / row.row_id
    assert (kept / "run").is_dir()
    [first] = resumable.previous_segments(kept)
    assert first["ended"] == "killed by SIGKILL" and first["wall_s"] > 0

    monkeypatch.delenv(KILL_ENV)
    done = runner.run_row(row, work_dir=str(work), timeout_s=300, resumable=True)
    assert done["status"] == "ok", done["log_tail"]
    assert not kept.exists()                                  # finished: the run is not kept
    m = done["measurements"]
    assert m["segments"] == 2 and [s["ended"] for s in done["segments"]] == [
        "killed by SIGKILL", "finished"]
    assert "--resume" in done["segments"][1]["command_line"]
    assert "--resume" not in done["command_line"]              # the row's recipe, as a fresh run
    assert m["wall_s"] == pytest.approx(sum(s["wall_s"] for s in done["segments"]))
    assert m["peak_rss_bytes"] >= max(s["vmhwm_polled_bytes"] for s in done["segments"])
    # resuming repeats nothing and loses nothing: the accuracies are the uninterrupted run's
    for key in ("val_acc_by_module", "test_acc_by_module", "best_module", "best_test_acc"):
        assert m[key] == whole["measurements"][key], key
    assert m["network_epochs"] == pytest.approx(whole["measurements"]["network_epochs"])


@pytest.mark.slow
def test_a_row_stopped_in_one_checkout_finishes_in_another_with_the_data_elsewhere(tmp_path,
                                                                                    monkeypatch):
    here = write_fake_cifar(tmp_path / "here" / "cifar-10-batches-py", 40, test=64, learnable=True)
    row, work = _row(tmp_path, _on_cifar(here)), tmp_path / "work"
    monkeypatch.setenv(KILL_ENV, "batch:9:INT")
    assert runner.run_row(row, work_dir=str(work), timeout_s=300, resumable=True) is None
    monkeypatch.delenv(KILL_ENV)
    kept = work / row.row_id
    # what a commit of benchmarks/partial carries: neither the run's copy of the data nor its cache
    for ignored in ("data", "cache"):
        shutil.rmtree(kept / "run" / ignored, ignore_errors=True)
    there = tmp_path / "there" / "cifar-10-batches-py"
    shutil.move(str(here), str(there))
    done = runner.run_row(_row(tmp_path, _on_cifar(there)), work_dir=str(work), timeout_s=300,
                          resumable=True)
    assert done["status"] == "ok", done["log_tail"]
    assert done["measurements"]["segments"] == 2
    assert f"--data-dir {there}" in done["segments"][1]["command_line"]


@pytest.mark.slow
def test_a_suite_keeps_a_row_stopped_at_a_safe_point_and_the_next_invocation_finishes_it(
        tmp_path, monkeypatch):
    (tmp_path / "m.toml").write_text(ROW)
    results, work, said = tmp_path / "results", tmp_path / "work", []
    # Ctrl-C of the trainer at a known batch: it stops at the end of that epoch (exit 130), as it
    # does on the SIGTERM the time limit sends
    monkeypatch.setenv(KILL_ENV, "batch:9:INT")
    inv = bench.run_suite(bench.load_matrix(str(tmp_path / "m.toml")), results,
                          work_dir=str(work), resumable=True, echo=said.append,
                          baseline_repeats=1)
    assert inv["rows_stopped"] == ["resnet8-seq-s0"] and not inv["rows_run"]
    assert not (results / "resume" / "resnet8-seq-s0.json").exists()  # no result for half a row
    assert "kept in" in said[-1] and "stopped (asked to stop" in said[-1]
    monkeypatch.delenv(KILL_ENV)
    inv = bench.run_suite(bench.load_matrix(str(tmp_path / "m.toml")), results,
                          work_dir=str(work), resumable=True, echo=said.append,
                          baseline_repeats=1)
    assert inv["rows_run"] == ["resnet8-seq-s0"] and not inv["rows_failed"]
    done = json.loads((results / "resume" / "resnet8-seq-s0.json").read_text())
    assert done["status"] == "ok" and done["measurements"]["segments"] == 2
    assert done["measurements"]["best_test_acc"] is not None
    assert not (work / "resnet8-seq-s0").exists()


# --- tools/bench_queue.sh ------------------------------------------------------------------------

def test_the_queue_starts_a_resumable_row_only_with_time_left_to_save_it(tmp_path):
    import datetime
    import os
    import subprocess
    repo = Path(__file__).resolve().parent.parent
    soon = (datetime.datetime.now() + datetime.timedelta(minutes=5)).strftime("%H:%M")
    env = {**os.environ, "PYTHONPATH": str(repo)}

    def queue(*args):
        subprocess.run(["bash", str(repo / "tools" / "bench_queue.sh"), "--log",
                        str(tmp_path / "log"), "--until", soon, *args],
                       env=env, check=True, capture_output=True, text=True, timeout=120)
        return (tmp_path / "log").read_text().splitlines()[-1]

    assert "skip r1 (under 10 minutes before" in queue("--resumable", "small-data", "r1:60")
    assert "skip r2 (100000 s would end after" in queue("small-data", "r2:100000")
