"""Crash safety: real training processes are killed with SIGKILL (a power cut, as far as the run
directory can tell) at chosen moments, resumed with `edge-trgl train --resume`, and must end with
exactly the weights, metrics and accuracies of an uninterrupted run with the same seed.

Exact equality is the right bar here: on the CPU with a fixed thread count (--threads 1) every
step is deterministic (data order and augmentation come from seeded per-epoch generators, the
optimizer state, BatchNorm statistics and adaptive weights are checkpointed, cache features are
recomputed by the same deterministic forward passes), so a resume that differs by one bit has
lost or repeated state. The kill points come from the EDGE_TRGL_TEST_KILL_AT hook
(edge_trgl/killpoints.py); the event counts below follow from the tiny settings in ARGS
(resnet8 = 4 blocks, 2 modules of 2 blocks, 180 train / 20 val / 100 test images, batch 32, so an
epoch is 6 train batches + 1 val batch). The whole file runs 10 training processes (~3 s each,
mostly `import torch`; the three references run in-process).
"""

from __future__ import annotations

import hashlib
import json
import signal
from pathlib import Path

import pytest

from helpers import cli_child, run_weights, write_fake_cifar

pytestmark = pytest.mark.slow   # 10 real training processes, ~25 s in all

# resnet8 in 2 modules on a tiny dataset in the CIFAR-10 file format (helpers.write_fake_cifar,
# learnable: 5 x 40 train and 100 test images); the fixtures below add --data-dir. Tuples, and the
# fixtures return new lists: no test changes what another one sees, in whatever order they run.
ARGS = ("--data", "cifar10", "--model", "resnet8", "--width", "0.25", "--modules", "2",
        "--batch-size", "32", "--threads", "1", "--seed", "3")
SEQ = (*ARGS, "--epochs", "2")
# (the multilap and e2e runs use learning-rate schedules: a resumed run must continue them
# exactly, across laps too)
MULTILAP = (*ARGS, "--scheme", "multilap", "--laps", "2", "--epochs", "2", "--lr-schedule",
            "cosine", "--warmup-epochs", "1")
E2E = (*ARGS, "--scheme", "e2e", "--epochs", "3", "--lr-schedule", "step")
# views from training need 4 epochs a module (harvest.MIN_EPOCHS); one view: epoch 4's
# (every head on the test set: the kill points below count its cache passes)
HARVEST = ("--aug-policy", "training", "--epochs", "4", "--aug-views", "1", "--test-modules", "all")


@pytest.fixture(scope="module")
def fake_cifar(tmp_path_factory) -> Path:
    """Every run in this file trains on one tiny fake CIFAR-10 folder (--data-dir)."""
    return write_fake_cifar(tmp_path_factory.mktemp("data") / "cifar-10-batches-py", 40, test=100,
                            learnable=True)


@pytest.fixture(scope="module")
def seq_args(fake_cifar) -> list[str]:
    return [*SEQ, "--data-dir", str(fake_cifar)]


@pytest.fixture(scope="module")
def multilap_args(fake_cifar) -> list[str]:
    return [*MULTILAP, "--data-dir", str(fake_cifar)]


@pytest.fixture(scope="module")
def e2e_args(fake_cifar) -> list[str]:
    return [*E2E, "--data-dir", str(fake_cifar)]


VOLATILE = {"time", "seconds", "samples_per_s", "rss_bytes"}  # wall-clock and memory readings


def train(*args: str, kill: str | None = None, check_rc: int | None = 0):
    proc = cli_child("train", "--quiet", *args, kill=kill)
    if check_rc is not None:
        assert proc.returncode == check_rc, (args, kill, proc.returncode, proc.stderr[-3000:])
    return proc


def train_here(*args: str) -> None:
    """An uninterrupted reference run in this process (saves the ~1.5 s of importing torch in a
    child; the computation is the same, so a resumed child must match it bit for bit)."""
    from edge_trgl.cli.main import main
    assert main(["train", "--quiet", *args]) == 0


def killed(*args: str, kill: str):
    proc = train(*args, kill=kill, check_rc=None)
    assert proc.returncode == -signal.SIGKILL, (kill, proc.returncode, proc.stderr[-3000:])
    return proc


def manifest(run: Path) -> dict:
    return json.loads((run / "manifest.json").read_text())


def assert_listed_files_intact(run: Path) -> None:
    """Every file the manifest lists exists and has the recorded sha256 (checked after each kill
    too: the manifest only ever vouches for complete files)."""
    files = manifest(run)["files"]
    assert files
    for rel, sha in files.items():
        path = run / rel
        assert path.is_file(), f"{rel} is listed but missing"
        assert hashlib.sha256(path.read_bytes()).hexdigest() == sha, f"{rel} is corrupt"




def metrics(run: Path) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in VOLATILE} for line in lines]


def accuracies(run: Path) -> list:
    summary = json.loads((run / "summary.json").read_text())
    return [(m["module"], m["val_acc"], m["test_acc"]) for m in summary["modules"]]


def assert_same_result(run: Path, reference: Path) -> None:
    assert manifest(run)["status"] == "complete"
    assert_listed_files_intact(run)
    assert run_weights(run) == run_weights(reference)           # bit-exact, every block and head
    assert accuracies(run) == accuracies(reference)
    assert metrics(run) == metrics(reference)            # every epoch once, same losses
    assert not list(run.rglob(".*.tmp*")), "temp files left behind"
    assert not list((run / "ckpt").glob("*")), "stale checkpoints left behind"


@pytest.fixture(scope="module")
def seq_reference(seq_args, tmp_path_factory):
    """An uninterrupted sequential run; its --out first suffers a set-up killed before publish,
    which must leave no run directory and must not disturb this later run."""
    from edge_trgl.cli.main import main
    base = tmp_path_factory.mktemp("seq")
    out = base / "reference"
    seq_args = [*seq_args, "--aug-policy", "views"]  # an eval pass caches the train views
    killed(*seq_args, "--out", str(out), kill="setup:1")
    assert not out.exists()
    assert list(base.glob(".reference.staging-*")), "expected the killed set-up's staging folder"
    assert main(["train", "--resume", str(out)]) == 2     # nothing to resume
    train_here(*seq_args, "--out", str(out))
    assert not list(base.glob(".reference.staging-*")), "stale staging folder not cleaned up"
    return out


def test_sequential_killed_at_many_points_resumes_to_identical_result(seq_reference, seq_args,
                                                                      tmp_path):
    run = tmp_path / "run"
    seq_args = [*seq_args, "--aug-policy", "views"]  # an eval pass caches the train views
    # set-up writes 6 files, module 0 checkpoints epochs 1 and 2 (7, 8), writes back block 0
    # (9) and block 1 (10), and is killed with head 0 half written (11)
    killed(*seq_args, "--out", str(run), kill="save:11")
    assert list((run / "heads").glob(".*.tmp*")), "expected a torn temp file of head 0"
    assert manifest(run)["progress"]["epoch_done"] == 2
    assert_listed_files_intact(run)
    # resumed from the checkpoint; killed while module 0's feature cache is written (9th batch
    # of features: inside the second augmented view)
    killed("--resume", str(run), kill="cache:9")
    assert list((run / "cache").rglob("*.npy")), "expected finished shards of the torn cache"
    assert manifest(run)["progress"]["phase"] == "cache"
    assert_listed_files_intact(run)
    # rebuilds the cache (17 batches), killed mid-epoch 1 of module 1, which reads that cache
    killed("--resume", str(run), kill="batch:20")
    assert manifest(run)["progress"] == {"lap": 0, "module": 0, "phase": "done"}
    assert_listed_files_intact(run)
    from edge_trgl.run import Run
    from edge_trgl.schemes import cache_intact
    assert cache_intact(Run.open(run, clean=False), 0, 0)   # an intact cache is reused
    # damage the cache that module 1 reads: resume must notice (checksum) and rebuild it
    shard = sorted((run / "cache" / "module_00").glob("train-v1-*.npy"))[0]
    raw = bytearray(shard.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    shard.write_bytes(bytes(raw))
    assert not cache_intact(Run.open(run, clean=False), 0, 0)
    proc = train("--resume", str(run))
    assert "rebuilding" in proc.stderr
    assert_same_result(run, seq_reference)


def test_views_from_training_survive_kills_mid_epoch_and_mid_cache(seq_args, tmp_path):
    """--aug-policy training: module 0 writes module 1's one train view during its
    fourth (last) epoch. Killed in that epoch, the view is redone from the epoch-3 checkpoint;
    killed while val/test are cached, the finished view is reused; the result is the
    uninterrupted run's, bit for bit."""
    seq_args = [*seq_args, *HARVEST]
    reference = tmp_path / "reference"
    train_here(*seq_args, "--out", str(reference))
    run = tmp_path / "run"
    # module 0: epoch e is batches 7e-6..7e (6 train + 1 val), epoch 4's train batches 22-27
    killed(*seq_args, "--out", str(run), kill="batch:25")
    assert manifest(run)["progress"]["epoch_done"] == 3
    assert list((run / "cache" / "module_00").glob(".train-v0-*.tmp")), "expected the torn view"
    assert_listed_files_intact(run)
    # resumed: epoch 2 again, then the cache pass writes val (cache event 1) and test (2-5)
    killed("--resume", str(run), kill="cache:3")
    entry = manifest(run)["caches"]["0"]
    assert not entry["complete"] and list(entry["splits"]) == ["train-v0"]
    assert_listed_files_intact(run)
    train("--resume", str(run))
    assert not list(run.rglob("*.tmp"))
    assert_same_result(run, reference)


def test_a_lost_view_from_training_is_remade_by_an_eval_pass(seq_args, tmp_path):
    seq_args = [*seq_args, *HARVEST]
    run = tmp_path / "run"
    # killed in module 1's first epoch (module 0: 28 batches of training, 5 of its cache pass)
    killed(*seq_args, "--out", str(run), "--keep-cache", kill="batch:36")
    assert manifest(run)["progress"] == {"lap": 0, "module": 0, "phase": "done"}
    shard = sorted((run / "cache" / "module_00").glob("train-v0-*.npy"))[0]
    raw = bytearray(shard.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    shard.write_bytes(bytes(raw))
    proc = train("--resume", str(run))
    assert "feature cache of module 0 is missing or damaged; rebuilding" in proc.stderr
    assert_listed_files_intact(run)
    assert manifest(run)["caches"]["0"]["complete"]


def test_multilap_killed_during_second_lap_write_back(multilap_args, tmp_path):
    reference = tmp_path / "reference"
    train_here(*multilap_args, "--out", str(reference))
    run = tmp_path / "run"
    # set-up 6 saves; lap 0: 1 checkpoint + 4 files per module; lap 1 module 0: checkpoint
    # (17), block 0 (18), block 1 half written (19)
    killed(*multilap_args, "--out", str(run), kill="save:19")
    assert manifest(run)["progress"]["lap"] == 1
    assert_listed_files_intact(run)
    train("--resume", str(run))
    assert_same_result(run, reference)


def test_e2e_ctrl_c_then_killed_during_final_write(e2e_args, tmp_path):
    reference = tmp_path / "reference"
    train_here(*e2e_args, "--out", str(reference))
    run = tmp_path / "run"
    # Ctrl-C in the middle of epoch 2 (an epoch is 6 train + 1 val batch): the epoch finishes,
    # is checkpointed, and the process exits 130 with the command that continues the run
    proc = train(*e2e_args, "--out", str(run), kill="batch:10:INT", check_rc=130)
    assert "Traceback" not in proc.stderr
    assert f"edge-trgl train --resume {run}" in " ".join(proc.stderr.split())
    assert manifest(run)["progress"]["epoch_done"] == 2
    assert_listed_files_intact(run)
    # resumed: epoch 3 checkpoint (1), blocks 0 and 1 written back (2, 3), block 2 half (4)
    killed("--resume", str(run), kill="save:4")
    assert_listed_files_intact(run)
    train("--resume", str(run))
    assert_same_result(run, reference)


def test_resume_refuses_changed_config_or_options(seq_reference, tmp_path, capsys):
    import shutil

    from edge_trgl.cli.main import main
    run = tmp_path / "copy"
    shutil.copytree(seq_reference, run)
    assert main(["train", "--resume", str(run), "--epochs", "5", "--lr", "0.1"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "--epochs 5" in err and "--lr 0.1" in err and "Traceback" not in err
    config = json.loads((run / "config.json").read_text())
    config["lr"] = 0.07
    (run / "config.json").write_text(json.dumps(config))
    assert main(["train", "--resume", str(run)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "was changed after the run started" in err


def test_resume_refuses_changed_data_but_accepts_moved_data(seq_reference, seq_args, fake_cifar,
                                                            tmp_path, capsys):
    import shutil

    from edge_trgl.cli.main import main
    moved = tmp_path / "moved"
    shutil.copytree(fake_cifar, moved)
    assert main(["train", "--resume", str(seq_reference), "--data-dir", str(moved)]) == 0
    capsys.readouterr()
    write_fake_cifar(moved, 40, test=101, learnable=True)   # other data under the same names
    # A run trains on its own copy of the data (RUN/data); only when that copy is lost does a
    # resume go back to the source, which must then be the data the run started with.
    run = tmp_path / "stopped"
    killed(*seq_args, "--out", str(run), kill="batch:3")
    shutil.rmtree(run / "data")
    assert main(["train", "--resume", str(run), "--data-dir", str(moved)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "The dataset differs" in err and "Traceback" not in err
