"""Training from the run's on-disk copy of its data (rundata.py, data/ondisk.py): bit-identical
to the in-memory path it replaced, and crash-safe while the copy is being made.

Exact equality is the bar, as in tests/test_resume.py: with --threads 1 every step on the CPU is
deterministic, so streaming batches from disk instead of indexing an in-memory array must not
change one bit of the weights, metrics or accuracies. Kills use the EDGE_TRGL_TEST_KILL_AT hook
("convert": a write into a data-store shard). Each run is ~3 s (tiny fake CIFAR-10: 5 x 40
train and 100 test images, resnet8 at width 0.25 in 2 modules)."""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
from pathlib import Path

import pytest

from helpers import cli_child, run_weights, write_fake_cifar

pytestmark = pytest.mark.slow

ARGS = ("--data", "cifar10", "--model", "resnet8", "--width", "0.25", "--modules", "2",
        "--batch-size", "32", "--threads", "1", "--seed", "3", "--epochs", "2")
VOLATILE = {"time", "seconds", "samples_per_s", "rss_bytes"}


@pytest.fixture(scope="module")
def fake_cifar(tmp_path_factory) -> Path:
    return write_fake_cifar(tmp_path_factory.mktemp("data") / "cifar-10-batches-py", 40,
                            test=100, learnable=True)


def train_here(*args) -> None:
    from edge_trgl.cli.main import main
    assert main(["train", "--quiet", *map(str, args)]) == 0




def metrics(run: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k not in VOLATILE}
            for line in (run / "metrics.jsonl").read_text().splitlines()]


def accuracies(run: Path) -> list:
    summary = json.loads((run / "summary.json").read_text())
    return [(m["module"], m["val_acc"], m["test_acc"]) for m in summary["modules"]]


def assert_same_training(a: Path, b: Path) -> None:
    assert run_weights(a) == run_weights(b)
    assert metrics(a) == metrics(b)
    assert accuracies(a) == accuracies(b)


@pytest.mark.parametrize("scheme", ["sequential", "parallel"])
def test_streamed_training_is_bit_identical_to_the_in_memory_path(tmp_path, monkeypatch,
                                                                   fake_cifar, scheme):
    """The same run twice: streamed from RUN/data (now the only path), and with the previous
    path put back (every split loaded into memory by load_dataset_for, indexed in RAM). Module 0
    (augmented), the feature caches, the evaluations and the resident parallel scheme all read
    the data; every weight, metric and accuracy must be equal to the bit."""
    import edge_trgl.rundata as rundata
    from edge_trgl.data import load_dataset_for
    args = (*ARGS, "--data-dir", fake_cifar, "--scheme", scheme)
    train_here(*args, "--out", tmp_path / "streamed")

    def in_memory(run, cfg):
        dataset = load_dataset_for(cfg)
        run.manifest["data_fingerprint"] = dataset.fingerprint()
        return dataset
    monkeypatch.setattr(rundata, "materialize_run_data", in_memory)
    train_here(*args, "--out", tmp_path / "memory")
    assert (tmp_path / "streamed" / "data" / "index.json").is_file()
    assert not (tmp_path / "memory" / "data").exists()
    assert_same_training(tmp_path / "streamed", tmp_path / "memory")
    fingerprints = {json.loads((tmp_path / r / "manifest.json").read_text())["data_fingerprint"]
                    for r in ("streamed", "memory")}
    assert len(fingerprints) == 1


def _killed(*args, kill: str):
    proc = cli_child("train", "--quiet", *map(str, args), kill=kill)
    assert proc.returncode == -signal.SIGKILL, (kill, proc.returncode, proc.stderr[-3000:])


def _train(*args):
    proc = cli_child("train", "--quiet", *map(str, args))
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_a_kill_while_converting_a_new_run_leaves_nothing_and_the_rerun_trains_identically(
        tmp_path, fake_cifar):
    """SIGKILL in the middle of the conversion of a new run: no run directory appears (the
    staging folder is hidden), and the same command then trains exactly the reference run."""
    args = (*ARGS, "--data-dir", fake_cifar)
    train_here(*args, "--out", tmp_path / "ref")
    out = tmp_path / "run"
    _killed(*args, "--out", out, kill="convert:3")
    assert not out.exists()
    _train(*args, "--out", out)
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert_same_training(tmp_path / "ref", out)


def test_resume_rebuilds_a_lost_copy_even_after_a_kill_while_rebuilding(tmp_path, fake_cifar):
    """A run is killed mid-training and its data copy is lost; the resume that rebuilds it is
    killed half-way through the rebuild; the next resume rebuilds it again and finishes with
    exactly the reference run's weights, metrics and accuracies."""
    args = (*ARGS, "--data-dir", fake_cifar)
    train_here(*args, "--out", tmp_path / "ref")
    out = tmp_path / "run"
    _killed(*args, "--out", out, kill="batch:9")           # module 0, epoch 2
    shutil.rmtree(out / "data")
    _killed("--resume", out, "--data-dir", fake_cifar, kill="convert:4")
    assert not (out / "data").exists()                     # only a hidden, half-built copy
    manifest = json.loads((out / "manifest.json").read_text())
    for rel, sha in manifest["files"].items():             # nothing the run lists was touched
        assert hashlib.sha256((out / rel).read_bytes()).hexdigest() == sha, rel
    _train("--resume", out, "--data-dir", fake_cifar)
    assert not list(out.glob(".data.building-*"))
    assert_same_training(tmp_path / "ref", out)
