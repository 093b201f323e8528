"""--distributed (distributed.py, pipeline.py): the parallel scheme across the ranks of a
torch.distributed job, here 2 or 3 local processes on 127.0.0.1 (gloo over loopback TCP).

The parallel scheme's module k sees the same inputs in the same order whether module k-1 runs in
its process or in another one, so with fp32 on the wire a distributed run must train bit for bit
what the one-process parallel scheme trains (same seed, one thread per process)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edge_trgl.config import TrainConfig
from edge_trgl.distributed import assign_modules, block_work, rank_env
from edge_trgl.errors import UserError
from edge_trgl.memory.describe import BlockInfo
from edge_trgl.killpoints import ENV as KILL_ENV
from helpers import assert_one_paragraph_error, cli, run_weights

# ResNet-8 at width 0.25, 160 synthetic images, 3 modules: a few seconds a rank.
RUN = ("--data", "synthetic", "--synthetic-train", "160", "--synthetic-test", "64",
       "--model", "resnet8", "--width", "0.25", "--scheme", "parallel", "--modules", "3",
       "--batch-size", "32", "--threads", "1", "--seed", "5", "--quiet")
LIMIT_S = 240  # a hung rank fails the test instead of hanging it


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(world: int, *argv, kill: dict | None = None, extra: dict | None = None,
           timeout_s: float = LIMIT_S) -> list[subprocess.CompletedProcess]:
    """Every rank of a job as its own `edge-trgl` process, as torchrun would start them; `kill`
    gives a rank a kill point (killpoints.py), `extra` a rank its own extra options."""
    port = str(free_port())
    procs = []
    for rank in range(world):
        env = {k: v for k, v in os.environ.items() if k != KILL_ENV}
        env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, WORLD_SIZE=str(world),
                   RANK=str(rank))
        if kill and rank in kill:
            env[KILL_ENV] = kill[rank]
        args = [*map(str, argv), *((extra or {}).get(rank, ()))]
        procs.append(subprocess.Popen([sys.executable, "-m", "edge_trgl.cli.main", *args],
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
    deadline = time.monotonic() + timeout_s
    done = []
    for p in procs:
        try:
            out, err = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail(f"a rank did not finish within {timeout_s} s (a hang)")
        done.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    return done


def accuracies(run: Path) -> dict:
    modules = json.loads((run / "manifest.json").read_text())["modules"]
    return {k: (m["val_acc"], m["test_acc"]) for k, m in modules.items()}


# --- the torch-free half ------------------------------------------------------------------------

def Block(params: int, out_shape) -> BlockInfo:
    return BlockInfo(sig="b", param_bytes=4 * params, in_shape=(), out_shape=out_shape)


def test_shares_are_contiguous_and_balance_the_work():
    # work = params x output positions: 100x64, 100x64, 400x16, 400x16, 50x4
    arch = [Block(100, (8, 8, 8)), Block(100, (8, 8, 8)), Block(400, (16, 4, 4)),
            Block(400, (16, 4, 4)), Block(50, (32, 2, 2))]
    splits = [(i, i + 1) for i in range(5)]
    assert [block_work(b) for b in arch] == [6400, 6400, 6400, 6400, 200]
    assert assign_modules(splits, arch, 2) == [[0, 1], [2, 3, 4]]
    assert assign_modules(splits, arch, 1) == [[0, 1, 2, 3, 4]]
    shares = assign_modules(splits, arch, 3)
    assert [k for share in shares for k in share] == list(range(5)) and all(shares)
    with pytest.raises(UserError, match="at least 6 modules"):
        assign_modules(splits, arch, 6)


def test_the_environment_is_required_and_checked(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(UserError, match="torchrun"):
        rank_env()
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29500")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(UserError, match="RANK must be from 0"):
        rank_env()
    monkeypatch.setenv("RANK", "1")
    assert rank_env() == (1, 2)


@pytest.mark.parametrize("options, phrase", [
    (("--scheme", "sequential"), "trains the parallel scheme"),
    (("--backend", "ort"), "torch backend"),
])
def test_unsupported_combinations_are_refused_before_anything_is_written(tmp_path, capsys,
                                                                        monkeypatch, options,
                                                                        phrase):
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("RANK", "0")
    out = tmp_path / "job"
    rc, _, err = cli(capsys, "train", *RUN, "--epochs", "1", "--distributed", "--out", out,
                     *options)
    assert_one_paragraph_error(rc, err, phrase)
    assert not out.exists()


def test_out_is_required(capsys, monkeypatch):
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("RANK", "0")
    rc, _, err = cli(capsys, "train", *RUN, "--epochs", "1", "--distributed")
    assert_one_paragraph_error(rc, err, "--distributed needs --out")


def test_rank_specific_options_stay_out_of_the_shared_identity():
    from edge_trgl.distributed import identity
    plan = {"splits": [[0, 2], [2, 4]], "batch_size": 32, "distributed": {"rank_modules": [[0], [1]]}}
    a = TrainConfig(scheme="parallel", out="x/rank0", mem_budget="512MB", threads=1)
    b = TrainConfig(scheme="parallel", out="y/rank1", mem_budget="1GB", threads=4)
    assert identity(a, plan) == identity(b, plan)
    assert identity(a, plan) != identity(TrainConfig(scheme="parallel", lr=0.1), plan)


# --- real jobs on loopback ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """The one-process parallel scheme the distributed runs must reproduce (2 epochs)."""
    from helpers import run_cli
    out = tmp_path_factory.mktemp("single") / "run"
    rc, err = run_cli("train", *RUN, "--epochs", "2", "--out", out)
    assert rc == 0, err
    return out


@pytest.mark.slow
@pytest.mark.parametrize("world", [2, 3])
def test_ranks_train_bit_for_bit_what_one_process_trains(tmp_path, one_process, world):
    job = tmp_path / "job"
    results = launch(world, "train", *RUN, "--epochs", "2", "--distributed", "--out", job)
    for rank, r in enumerate(results):
        assert r.returncode == 0, (rank, r.stderr)
    want_weights, want_acc = run_weights(one_process), accuracies(one_process)
    for rank in range(world):
        run = job / f"rank{rank}"
        # every rank ends with the whole trained network and every module's accuracies
        assert run_weights(run) == want_weights
        assert accuracies(run) == want_acc
        summary = json.loads((run / "summary.json").read_text())
        assert summary["distributed"]["world_size"] == world
        assert summary["distributed"]["rank"] == rank
    sent = [json.loads((job / f"rank{r}" / "summary.json").read_text())["distributed"]["sent_bytes"]
            for r in range(world)]
    assert sent[-1] == 0 and all(s > 0 for s in sent[:-1])


@pytest.mark.slow
def test_fp16_on_the_wire_halves_the_bytes_and_still_learns(tmp_path, one_process):
    job = tmp_path / "job"
    results = launch(2, "train", *RUN, "--epochs", "2", "--distributed", "--out", job,
                     "--wire-dtype", "fp16")
    assert all(r.returncode == 0 for r in results), [r.stderr for r in results]
    fp16 = json.loads((job / "rank0" / "summary.json").read_text())["distributed"]["sent_bytes"]
    # module 0 never reads the wire: bit-identical; the later modules trained on inputs rounded
    # to fp16 (~1e-3 relative), so their weights differ but their training tracks fp32's
    got, want = accuracies(job / "rank1"), accuracies(one_process)
    assert got["0"] == want["0"]
    weights, reference = run_weights(job / "rank1"), run_weights(one_process)
    first = [key for key in reference if key.startswith("blocks/block_000/")]
    assert first and all(weights[key] == reference[key] for key in first)
    assert weights != reference

    def last_loss(run):
        return json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["train_loss"]
    assert abs(last_loss(job / "rank1") - last_loss(one_process)) < 0.02 * last_loss(one_process)
    job32 = tmp_path / "job32"
    launch(2, "train", *RUN, "--epochs", "1", "--distributed", "--out", job32)
    fp32_per_epoch = json.loads((job32 / "rank0" / "summary.json").read_text())["distributed"][
        "sent_bytes"]
    # per training epoch plus the evaluation passes: fp16 sends about half of fp32's bytes
    assert fp16 < 2 * fp32_per_epoch * 0.75


@pytest.mark.slow
def test_ranks_with_different_options_refuse_to_train(tmp_path):
    job = tmp_path / "job"
    results = launch(2, "train", *RUN, "--epochs", "1", "--distributed", "--out", job,
                     extra={1: ("--lr", "0.2")}, timeout_s=120)
    for r in results:
        assert r.returncode == 2, r.stderr
        assert "differ from those of rank" in " ".join(r.stderr.split())


@pytest.mark.slow
@pytest.mark.parametrize("killed", [0, 1])
def test_a_killed_rank_stops_the_others_and_the_job_resumes_to_the_same_network(tmp_path,
                                                                               one_process,
                                                                               killed):
    job = tmp_path / "job"
    if killed == 1:
        # rank 1 dies (SIGKILL) half-way through writing its epoch-2 checkpoint: its weight
        # files so far are the initial store's (one per block and head) and epoch 1's checkpoint
        initial = sum(1 for d in ("blocks", "heads")
                      for _ in (one_process / d).glob("*.safetensors"))
        kill = f"save:{initial + 2}"
    else:
        kill = "batch:7"  # rank 0, in its second epoch (5 train batches an epoch + evaluation)
    first = launch(2, "train", *RUN, "--epochs", "2", "--distributed", "--out", job,
                   "--dist-timeout", "60", kill={killed: kill})
    survivor = first[1 - killed]
    assert first[killed].returncode == -signal.SIGKILL
    assert survivor.returncode == 4, survivor.stderr  # stopped, not hung
    message = " ".join(survivor.stderr.split())
    assert "Lost the other ranks" in message and "--resume" in message
    assert "Traceback" not in survivor.stderr
    second = launch(2, "train", "--resume", job, "--quiet")
    for rank, r in enumerate(second):
        assert r.returncode == 0, (rank, r.stderr)
    for rank in range(2):
        assert run_weights(job / f"rank{rank}") == run_weights(one_process)
        assert accuracies(job / f"rank{rank}") == accuracies(one_process)
        assert not list((job / f"rank{rank}" / "ckpt").glob("*.safetensors"))


@pytest.mark.slow
def test_a_rank_that_never_comes_times_out(tmp_path):
    job = tmp_path / "job"
    port = str(free_port())
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "WORLD_SIZE": "2",
           "RANK": "0"}
    started = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "edge_trgl.cli.main", "train", *RUN, "--epochs",
                        "1", "--distributed", "--out", str(job), "--dist-timeout", "5"],
                       env=env, capture_output=True, text=True, timeout=LIMIT_S)
    assert r.returncode == 4, r.stderr
    assert "Traceback" not in r.stderr and "joining the job" in r.stderr
    assert time.monotonic() - started < 120


@pytest.mark.slow
def test_torchrun_launches_a_job(tmp_path, one_process):
    """The standard launcher: `torchrun --nproc-per-node 2 -m edge_trgl.cli.main train ...`."""
    job = tmp_path / "job"
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", KILL_ENV)}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                        "--master-port", str(free_port()), "-m", "edge_trgl.cli.main", "train",
                        *RUN, "--epochs", "2", "--distributed", "--out", str(job)],
                       env=env, capture_output=True, text=True, timeout=LIMIT_S)
    assert r.returncode == 0, r.stderr[-3000:]
    for rank in range(2):
        assert run_weights(job / f"rank{rank}") == run_weights(one_process)
