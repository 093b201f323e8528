"""--test-modules best (the default): a module-wise run scores the test set once, after training,
on the module chosen on validation and the last one (final_test.py); `all` scores every module as
it finishes. The scored modules get the same accuracies either way, no test features are cached,
and a run killed during the final pass finishes it on resume."""

import json

import pytest

from helpers import cli, cli_child, run_weights

# 4 one-block modules so that the chosen module and the last one differ from the middle ones
ARGS = ("--synthetic-train", "300", "--synthetic-test", "100", "--model", "resnet8", "--width",
        "0.25", "--module-size", "1", "--batch-size", "32", "--epochs", "1", "--threads", "1",
        "--quiet", "--keep-cache")


def _modules(run):
    return json.loads((run / "manifest.json").read_text())["modules"]


def test_best_scores_the_chosen_and_last_module_as_all_does(capsys, tmp_path):
    best, every = tmp_path / "best", tmp_path / "all"
    assert cli(capsys, "train", *ARGS, "--out", best)[0] == 0
    assert cli(capsys, "train", *ARGS, "--test-modules", "all", "--out", every)[0] == 0
    b, a = _modules(best), _modules(every)
    chosen = json.loads((best / "summary.json").read_text())["best_module"]
    scored = {str(chosen), "3"}
    assert {k for k, rec in b.items() if rec.get("test_acc") is not None} == scored
    assert all(a[k]["test_acc"] is not None for k in a)
    for k in scored:
        assert b[k]["test_acc"] == a[k]["test_acc"]        # the same network, the same images
    for k in b:
        assert b[k]["val_acc"] == a[k]["val_acc"]
    assert run_weights(best) == run_weights(every)            # training did not change
    assert not list((best / "cache").rglob("test-*"))         # no test features between modules
    assert list((every / "cache").rglob("test-*"))


def test_other_options_keep_the_per_module_passes(capsys, tmp_path):
    # no validation split: the module is chosen on test, so every head is scored
    run = tmp_path / "noval"
    assert cli(capsys, "train", *ARGS, "--val-fraction", "0", "--out", run)[0] == 0
    assert all(rec["test_acc"] is not None for rec in _modules(run).values())


def test_a_bad_value_is_refused(capsys, tmp_path):
    rc, _, err = cli(capsys, "train", *ARGS, "--test-modules", "some", "--out", tmp_path / "r")
    assert rc == 2 and "--test-modules" in err and "Traceback" not in err


@pytest.mark.slow
def test_killed_during_the_final_pass_it_finishes_on_resume(capsys, tmp_path):
    reference = tmp_path / "reference"
    assert cli(capsys, "train", *ARGS, "--out", reference)[0] == 0
    run = tmp_path / "run"
    # 270 train / 30 val at batch 32: module k trains 9 batches + 1 val; modules 0-2 then cache
    # one train view (9) + val (1), module 3 val (1): 20 x 3 + 11 = 71 batches; then the final
    # pass reads the 100 test images in 4 batches (72-75)
    proc = cli_child("train", *ARGS, "--out", run, kill="batch:73")
    assert proc.returncode != 0
    modules = _modules(run)
    assert all("lap" in rec for rec in modules.values())         # every module trained
    assert all(rec.get("test_acc") is None for rec in modules.values())
    proc = cli_child("train", "--resume", run)
    assert proc.returncode == 0, proc.stderr
    done, ref = _modules(run), _modules(reference)
    assert {k: (r.get("val_acc"), r.get("test_acc")) for k, r in done.items()} == \
        {k: (r.get("val_acc"), r.get("test_acc")) for k, r in ref.items()}
    assert run_weights(run) == run_weights(reference)
