"""A first `edge-trgl train`: the plan is printed (on stderr) before the first epoch, with the
planner's progress while it probes; --quiet prints neither; block ranges read the same in the
plan and in the table at the end."""

from __future__ import annotations

import json

import pytest

from helpers import TINY, cli, cli_child

LOUD = [a for a in TINY if a != "--quiet"]


def test_the_plan_comes_before_the_first_epoch_and_the_table_agrees(tmp_path, capsys):
    rc, out, err = cli(capsys, "train", *LOUD, "--out", tmp_path / "run")
    assert rc == 0, err
    lines = err.splitlines()
    head = lines.index("plan: 2 modules at batch size 32, cache fp16, 1 augmented view(s)")
    assert lines[head + 1].startswith("why: no memory budget: 2 modules from --modules 2 and the "
                                      "requested batch size 32, as given")
    first_epoch = next(i for i, line in enumerate(lines) if "epoch 1:" in line)
    assert head < first_epoch
    shown = [line for line in lines[head:first_epoch] if line.startswith("module ")]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    halves = [row["blocks"] for row in summary["modules"]]        # [first, end): half-open
    assert halves == [[0, 2], [2, 4]]
    assert shown == ["module 0: blocks 0-1", "module 1: blocks 2-3"]
    table = out.splitlines()
    assert table[1].split()[:2] == ["0", "0-1"] and table[2].split()[:2] == ["1", "2-3"]


def test_quiet_prints_no_plan_and_no_progress(tmp_path, capsys):
    rc, out, err = cli(capsys, "train", *TINY, "--out", tmp_path / "run")
    assert rc == 0, err
    assert "plan:" not in err and "planning:" not in err and "epoch" not in err
    assert "best module" in out


@pytest.mark.slow
def test_a_budgeted_first_run_shows_its_probes_then_the_plan(tmp_path, monkeypatch):
    """With an empty probe cache: one line per probe (stderr is not a terminal here), then the
    plan with its estimate against the budget, before the first epoch."""
    monkeypatch.setenv("EDGE_TRGL_CACHE", str(tmp_path / "probes"))
    # a fresh process: the command's torch-free orchestrator is what the budget is planned for
    done = cli_child("train", *LOUD, "--mem-budget", "512MB", "--out", tmp_path / "run")
    err = done.stderr
    assert done.returncode == 0, err[-3000:]
    assert "\r" not in err
    lines = err.splitlines()
    probing = lines.index("planning: probing 4 blocks (each distinct block in a fresh process; "
                          "measurements are cached for the next run)")
    assert any(line.startswith("planning: block probe 4/4 measured in ") for line in lines)
    assert any(line.startswith("planning: module 1 (blocks 2-3, 2 of 2) at batch 32 measured in ")
               for line in lines)
    head = next(i for i, line in enumerate(lines) if line.startswith("plan: 2 modules at batch "))
    assert "of the 512 MB budget" in lines[head] and lines[head + 1].startswith("why: 2 modules "
                                                                                "from --modules 2")
    first_epoch = next(i for i, line in enumerate(lines) if "epoch 1:" in line)
    assert probing < head < first_epoch
