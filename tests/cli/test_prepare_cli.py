"""`edge-trgl prepare` (the split workflow): plan and set up a run without training it, then
train it with `--resume` (as on the device, after copying the run directory)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from helpers import SYNTHETIC_300

TINY = [*SYNTHETIC_300, "--model", "resnet8", "--epochs", "1", "--batch-size", "32",
        "--modules", "2"]


def edge_trgl(*args, env=None):
    return subprocess.run([sys.executable, "-m", "edge_trgl.cli.main", *args],
                          capture_output=True, text=True, env=env, timeout=900)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["torch", "ort"])
def test_prepare_then_train_elsewhere(tmp_path, backend, request):
    if backend == "ort":
        request.getfixturevalue("ort_available")   # skips, saying why, without the [ort] extra
    env = dict(os.environ, EDGE_TRGL_CACHE=str(tmp_path / "cache"))
    prepared = tmp_path / "big-machine" / "run"
    done = edge_trgl("prepare", *TINY, "--backend", backend, "--out", str(prepared), env=env)
    assert done.returncode == 0, done.stderr
    assert f"edge-trgl train --resume {prepared}" in done.stdout
    manifest = json.loads((prepared / "manifest.json").read_text())
    assert manifest["status"] == "running" and manifest["progress"] == {}
    assert not (prepared / "summary.json").exists()          # nothing was trained
    assert any((prepared / "blocks").iterdir())               # the initial weights are there
    device = tmp_path / "device" / "run"                      # "copied to the device"
    shutil.copytree(prepared, device)
    trained = edge_trgl("train", "--resume", str(device), "--quiet", env=env)
    assert trained.returncode == 0, trained.stderr
    summary = json.loads((device / "summary.json").read_text())
    assert summary["backend"] == backend and len(summary["modules"]) == 2
    assert all(row["test_acc"] is not None for row in summary["modules"])


@pytest.mark.slow
def test_prepare_refuses_bad_input_before_writing(tmp_path):
    out = tmp_path / "nope"
    done = edge_trgl("prepare", *TINY, "--model", "no-such-model", "--out", str(out))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert not out.exists()
