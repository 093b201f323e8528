"""A run whose weights become NaN/inf stops with a clear message (exit 3) before saving them,
whatever the scheme, backend or process layout; before, it trained every later module on NaN and
reported chance accuracy as a result."""

import json

import pytest

from helpers import TINY, cli, cli_child

from edge_trgl.errors import Diverged, Stopped, UserError, error_record, recorded_error

HUGE_LR = ("--lr", "1e6", "--epochs", "2")


def _assert_diverged(rc: int, err: str, run) -> None:
    assert rc == 3, err
    assert "Traceback" not in err, err
    text = " ".join(err.split())
    assert "Training diverged" in text and "--lr 500000" in text, text
    # nothing non-finite was saved: no epoch checkpoint and no module marked done
    manifest = json.loads((run / "manifest.json").read_text())
    assert not manifest["progress"].get("ckpt"), manifest["progress"]
    assert not any("lap" in rec for rec in manifest["modules"].values()), manifest["modules"]


@pytest.mark.parametrize("scheme", [("--modules", "2"), ("--scheme", "e2e")], ids=["modulewise", "e2e"])
def test_divergence_stops_the_run(capsys, tmp_path, scheme):
    run = tmp_path / "run"
    rc, _, err = cli(capsys, "train", *TINY, *HUGE_LR, *scheme, "--out", run)
    _assert_diverged(rc, err, run)


def test_a_normal_run_is_not_flagged(capsys, tmp_path):
    rc, _, err = cli(capsys, "train", *TINY, "--out", tmp_path / "run")
    assert rc == 0, err


def test_child_errors_keep_their_kind():
    for exc, code in ((Diverged("d"), 3), (Stopped("s"), 130), (UserError("u"), 2)):
        record = error_record(exc)
        assert record["exit_code"] == code
        again = recorded_error(json.loads(json.dumps(record)))
        assert type(again) is type(exc) and str(again) == str(exc)
    assert type(recorded_error({"error": "old record without a code"})) is UserError


@pytest.mark.slow
def test_divergence_in_the_ort_worker(tmp_path, ort_available):
    """ORT runs are always driven: the worker's error passes through two parents (ort_backend,
    then the driver) and keeps its exit status."""
    run = tmp_path / "run"
    proc = cli_child("train", *TINY, *HUGE_LR, "--backend", "ort", "--out", run)
    _assert_diverged(proc.returncode, proc.stderr, run)
    assert "RuntimeWarning" not in proc.stderr, proc.stderr
