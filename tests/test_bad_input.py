"""Bad input matrix: every case runs the real CLI (in-process through edge_trgl.cli.main.main, or
as a subprocess where a separate process is the point) and must give exit status 2, a one-paragraph
message that names the problem, no traceback, and no run directory (or half-written one) behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import TINY, assert_clean_error, cli, fill_disk_after, write_fake_cifar


def assert_no_run(out: Path) -> None:
    assert not out.exists(), f"{out} was created"
    assert not list(out.parent.glob(f".{out.name}.staging-*")), "a staging folder was left"


def assert_listed_files_intact(run: Path) -> None:
    manifest = json.loads((run / "manifest.json").read_text())
    for rel, sha in manifest["files"].items():
        assert hashlib.sha256((run / rel).read_bytes()).hexdigest() == sha, rel
    assert not list(run.rglob(".*.tmp*")), "temp files left behind"


# --- options ---------------------------------------------------------------------------------

@pytest.mark.parametrize("argv,phrases", [
    (["--mem-budget", "abc"], ["memory budget 'abc' is not a size I can read", "512MB"]),
    (["--mem-budget", "0"], ["must be larger than zero bytes"]),
    (["--mem-budget", "10MB"], ["10 MB", "Give a larger --mem-budget"]),
    (["--profile", "no-such-device"], ["Unknown device profile 'no-such-device'", "rpi4-4gb"]),
    (["--model", "resnet7"], ["Unknown or invalid model 'resnet7'", "6n+2"]),
    (["--model", "mobilenet"], ["Unknown or invalid model 'mobilenet'", "resnet20"]),
    (["--data", "imagenet"], ["Unknown dataset 'imagenet'", "cifar10"]),
    (["--head", "deep"], ["Unknown auxiliary head 'deep'"]),
    (["--epochs", "0"], ["--epochs must be at least 1"]),
    (["--modules", "9"], ["--modules 9 is more than the 4 blocks of resnet8"]),
])
def test_bad_options(capsys, tmp_path, argv, phrases):
    out = tmp_path / "run"
    rc, _, err = cli(capsys, "train", *TINY, *argv, "--out", str(out))
    assert_clean_error(rc, err, *phrases)
    assert_no_run(out)


def test_unknown_option_names_it_and_suggests_the_right_one(capsys, tmp_path):
    out = tmp_path / "run"
    rc, _, err = cli(capsys, "train", *TINY, "--mem-budgt", "512MB", "--out", str(out))
    text = assert_clean_error(rc, err, "unrecognized argument(s): --mem-budgt 512MB",
                              "did you mean --mem-budget?", "edge-trgl train --help")
    assert text.startswith("edge-trgl train: error:")
    assert_no_run(out)
    rc, _, err = cli(capsys, "train", "--scheme", "zigzag", "--out", str(out))
    assert_clean_error(rc, err, "argument --scheme: invalid choice: 'zigzag'", "sequential")
    assert_no_run(out)


# --- data --------------------------------------------------------------------------------------

def test_missing_dataset_dir(capsys, tmp_path):
    out = tmp_path / "run"
    rc, _, err = cli(capsys, "train", *TINY, "--data", "cifar10", "--data-dir",
                  str(tmp_path / "nowhere"), "--out", str(out))
    assert_clean_error(rc, err, "does not exist", "cifar-10-python.tar.gz")
    assert_no_run(out)
    rc, _, err = cli(capsys, "train", *TINY, "--data", "mnist", "--out", str(out))
    assert_clean_error(rc, err, "no data directory was given", "--data-dir")
    assert_no_run(out)


def test_dataset_in_the_wrong_format(capsys, tmp_path):
    out = tmp_path / "run"
    mnist = tmp_path / "mnist"
    mnist.mkdir()
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (mnist / name).write_bytes(b"\0\0\x08\x03" + bytes(12))
    rc, _, err = cli(capsys, "train", *TINY, "--data", "cifar10", "--data-dir", str(mnist),
                  "--out", str(out))
    assert_clean_error(rc, err, "is missing data_batch_1", "CIFAR-10 'python version'")
    assert_no_run(out)
    cifar = write_fake_cifar(tmp_path / "cifar-10-batches-py")
    rc, _, err = cli(capsys, "train", *TINY, "--data", "mnist", "--data-dir", str(cifar),
                  "--out", str(out))
    assert_clean_error(rc, err, "MNIST IDX files")
    assert_no_run(out)


@pytest.mark.parametrize("damage,phrases", [
    ("truncate", ["data_batch_3", "truncated or corrupted"]),
    ("garbage", ["data_batch_3", "truncated or corrupted"]),
    ("wrong-shape", ["data_batch_3", "is not a valid batch", "(N, 3072)"]),
])
def test_damaged_cifar_batch(capsys, tmp_path, damage, phrases):
    cifar = write_fake_cifar(tmp_path / "cifar-10-batches-py")
    path = cifar / "data_batch_3"
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "garbage":
        path.write_bytes(os.urandom(5000))
    else:
        path.write_bytes(pickle.dumps({b"labels": [0] * 4,
                                       b"data": np.zeros((4, 100), np.uint8)}, protocol=2))
    out = tmp_path / "run"
    rc, _, err = cli(capsys, "train", *TINY, "--data", "cifar10", "--data-dir", str(cifar),
                  "--out", str(out))
    assert_clean_error(rc, err, *phrases)
    assert_no_run(out)


class _Payload:
    """Unpickled by plain pickle.load, this runs a shell command that creates MARKER."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


def test_pickle_crafted_to_run_code_is_not_executed(capsys, tmp_path):
    cifar = write_fake_cifar(tmp_path / "cifar-10-batches-py")
    marker = tmp_path / "pwned"
    (cifar / "data_batch_1").write_bytes(pickle.dumps({b"data": _Payload(marker)}, protocol=2))
    out = tmp_path / "run"
    rc, _, err = cli(capsys, "train", *TINY, "--data", "cifar10", "--data-dir", str(cifar),
                  "--out", str(out))
    assert_clean_error(rc, err, "data_batch_1", "forbidden global 'posix.system'",
                       "nothing in it was executed")
    assert not marker.exists(), "the crafted pickle ran its payload"
    assert_no_run(out)


@pytest.mark.parametrize("protocol,labels,global_name", [
    (5, list(range(10)) * 2, "numpy._core.numeric._frombuffer"),        # Python 3's default
    (2, [np.int64(i % 10) for i in range(20)], "numpy._core.multiarray.scalar"),
])
def test_cifar_batch_written_by_python3_is_unsupported_not_crafted(tmp_path, protocol, labels,
                                                                    global_name):
    """A valid batch re-saved by Python 3 (protocol 5, or numpy ints as labels) uses numpy
    reconstructors the restricted reader does not admit: refused as harmless-but-unsupported,
    with how to re-save it, never as "crafted to run code"."""
    from edge_trgl.data import load_dataset
    from edge_trgl.errors import UserError
    cifar = write_fake_cifar(tmp_path / "cifar-10-batches-py")
    batch = {b"labels": labels, b"data": np.zeros((20, 3072), np.uint8)}
    (cifar / "data_batch_2").write_bytes(pickle.dumps(batch, protocol=protocol))
    if global_name.startswith("numpy._core") and not hasattr(np, "_core"):
        global_name = global_name.replace("numpy._core", "numpy.core")   # numpy 1.x
    with pytest.raises(UserError) as exc:
        load_dataset("cifar10", str(cifar))
    text = " ".join(str(exc.value).split())
    assert "data_batch_2" in text and f"'{global_name}'" in text, text
    assert "harmless" in text and "protocol=2" in text, text
    assert "crafted" not in text and "forbidden" not in text, text


# --- output directory ----------------------------------------------------------------------------

def test_output_directory_that_is_not_a_run(capsys, tmp_path):
    out = tmp_path / "photos"
    out.mkdir()
    (out / "holiday.jpg").write_bytes(b"not ours")
    rc, _, err = cli(capsys, "train", *TINY, "--out", str(out))
    assert_clean_error(rc, err, f"The output directory {out} exists and is not an edge-trgl run")
    assert sorted(p.name for p in out.iterdir()) == ["holiday.jpg"]
    assert (out / "holiday.jpg").read_bytes() == b"not ours"
    assert not list(tmp_path.glob(".photos.staging-*"))
    a_file = tmp_path / "notes.txt"
    a_file.write_text("x")
    rc, _, err = cli(capsys, "train", *TINY, "--out", str(a_file))
    assert_clean_error(rc, err, "exists and is not an edge-trgl run")
    assert a_file.read_text() == "x"
    rc, _, err = cli(capsys, "train", "--resume", str(out))
    assert_clean_error(rc, err, "is not an edge-trgl run directory")


# --- damaged runs ------------------------------------------------------------------------------

@pytest.fixture
def interrupted_run(tmp_path, capsys, monkeypatch):
    """A run stopped (Ctrl-C, in-process) during module 1's epoch: module 0 is finished and its
    feature cache is complete. Batches: module 0's epoch 7 (6 train + 1 val), its cache 11 (one
    train view for one epoch, val, test), then module 1."""
    import signal

    from edge_trgl import killpoints
    monkeypatch.setattr(killpoints, "_TARGET", ("batch", 21, signal.SIGINT))
    monkeypatch.setattr(killpoints, "_seen", 0)
    run = tmp_path / "run"
    rc, _, err = cli(capsys, "train", *TINY, "--out", str(run))
    assert rc == 130, err
    monkeypatch.setattr(killpoints, "_TARGET", None)
    progress = json.loads((run / "manifest.json").read_text())["progress"]
    assert (progress["module"], progress["phase"]) == (1, "train")
    return run


def test_corrupted_block_weight_is_refused_and_corrupted_cache_rebuilt(capsys, interrupted_run):
    from edge_trgl.run import Run
    holder = Run.open(interrupted_run, clean=False)
    holder.lock()                      # as if another process were training this run now
    rc, _, err = cli(capsys, "train", "--resume", str(interrupted_run))
    assert_clean_error(rc, err, "Another edge-trgl process is training the run")
    holder._lock_fh.close()
    block = interrupted_run / "blocks" / "block_000.safetensors"
    good = block.read_bytes()
    raw = bytearray(good)
    raw[-3] ^= 0x01     # one bit in the last weight
    block.write_bytes(bytes(raw))
    rc, _, err = cli(capsys, "train", "--resume", str(interrupted_run))
    assert_clean_error(rc, err, "blocks/block_000.safetensors (checksum mismatch)",
                       "restore them from a backup")
    block.write_bytes(good)                                  # restored from the backup
    # A damaged feature-cache shard is not fatal: the saved weights of module 0 rebuild it.
    shard = sorted((interrupted_run / "cache" / "module_00").glob("val-*.npy"))[0]
    raw = bytearray(shard.read_bytes())
    raw[-1] ^= 0xFF
    shard.write_bytes(bytes(raw))
    rc, _, err = cli(capsys, "train", "--resume", str(interrupted_run))
    assert rc == 0, err
    assert "feature cache of module 0 is missing or damaged; rebuilding" in err
    assert_listed_files_intact(interrupted_run)


def test_disk_full_while_caching(capsys, tmp_path, monkeypatch):
    """Simulated in-process: every file the feature cache opens refuses writes with ENOSPC once
    64 kB have gone to the cache (the other files of the run are written normally), which is what
    a full disk does to the first writer that needs space. The real thing, on a tiny tmpfs, is the
    next test (where the machine allows mounting one)."""
    from edge_trgl import cache
    # (the feature cache's files only: the run's copy of its data is written with the same
    # writer before training, tests/data/test_data_ondisk.py fills the disk there)
    fill_disk_after(monkeypatch, cache, 64_000, only="/cache/")
    run = tmp_path / "run"
    rc, _, err = cli(capsys, "train", *TINY, "--out", str(run))
    assert_clean_error(rc, err, "The disk filled up while writing the feature cache",
                       f"edge-trgl train --resume {run}")
    # the run is not half-written: what the manifest lists is intact, nothing torn is left
    assert_listed_files_intact(run)
    # (with --aug-policy training, a view module 0's training wrote would stay, listed in an
    # unfinished cache entry: every shard left must be listed, none complete)
    manifest = json.loads((run / "manifest.json").read_text())
    assert all(p.relative_to(run).as_posix() in manifest["files"]
               for p in (run / "cache").rglob("*.npy"))
    assert not list((run / "cache").rglob("*.tmp"))
    assert not any(entry.get("complete") for entry in manifest["caches"].values())
    monkeypatch.undo()  # space freed
    rc, _, err = cli(capsys, "train", "--resume", str(run))
    assert rc == 0, err
    assert_listed_files_intact(run)


def _tiny_tmpfs(tmp_path):
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        pytest.skip("needs unshare and mount")
    mnt = tmp_path / "small-disk"
    mnt.mkdir()
    probe = subprocess.run(["unshare", "-rm", "sh", "-c",
                            f"mount -t tmpfs -o size=1500k tmpfs {shlex.quote(str(mnt))}"],
                           capture_output=True)
    if probe.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (no user namespaces)")
    return mnt


def test_too_little_free_disk_is_refused_before_anything_is_written(tmp_path):
    """Without --disk-budget the planner plans against the free space: 600 kB cannot hold the
    run's weights and feature caches, so it refuses before writing anything."""
    mnt = _tiny_tmpfs(tmp_path)
    run = mnt / "run"
    cmd = (f"mount -t tmpfs -o size=1500k tmpfs {shlex.quote(str(mnt))} && "
           f"{shlex.quote(sys.executable)} -m edge_trgl.cli.main train "
           f"{' '.join(TINY)} --out {shlex.quote(str(run))}; rc=$?; ls -a {shlex.quote(str(mnt))}; "
           f"exit $rc")
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", cmd], capture_output=True, text=True,
                          timeout=300)
    assert_clean_error(proc.returncode, proc.stderr, "free disk space", "Nothing was written")
    assert proc.stdout.split() == [".", ".."]     # the tiny disk is still empty


@pytest.mark.slow
def test_disk_full_on_a_real_tiny_filesystem(tmp_path):
    """A 1.5 MB tmpfs holds the run's set-up (its copy of the data included, 0.9 MB) but not
    module 0's feature cache (~3 MB). The
    planner is told a larger --disk-budget (as when another process fills the disk meanwhile),
    so the run starts and the disk fills while the cache is written."""
    mnt = _tiny_tmpfs(tmp_path)
    run = mnt / "run"
    cmd = (f"mount -t tmpfs -o size=1500k tmpfs {shlex.quote(str(mnt))} && "
           f"{shlex.quote(sys.executable)} -m edge_trgl.cli.main train "
           f"{' '.join(TINY)} --disk-budget 1GB --out {shlex.quote(str(run))}; rc=$?; "
           f"test -f {shlex.quote(str(run))}/manifest.json && echo PUBLISHED; "
           f"ls -a {shlex.quote(str(run))}/cache/module_00; exit $rc")
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", cmd], capture_output=True, text=True,
                          timeout=300)
    assert_clean_error(proc.returncode, proc.stderr,
                       "The disk filled up while writing the feature cache",
                       f"edge-trgl train --resume {run}")
    assert "PUBLISHED" in proc.stdout          # the run itself is intact and resumable
    assert ".tmp" not in proc.stdout           # the torn shard was removed
