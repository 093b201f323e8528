"""`edge-trgl train --backend ort` end to end on the built-in synthetic data, through the CLI:
preparation child, torch-free orchestrator, trainer children; killed mid-module (a power cut in
the trainer) and resumed; and the error without the [ort] extra."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edge_trgl.killpoints import ENV
from helpers import cli_child

# resnet8 = 4 blocks -> 2 modules of 2; 200 synthetic train images -> 180 train + 20 val, so an
# epoch of module 0's trainer hands out 6 train batches + 1 val batch ("batch" events 1-7).
ARGS = ["--backend", "ort", "--model", "resnet8", "--width", "0.5", "--modules", "2",
        "--epochs", "2", "--synthetic-train", "200", "--synthetic-test", "60",
        "--batch-size", "32", "--threads", "1", "--quiet"]


def train_cli(*args: str, kill: str | None = None):
    return cli_child("train", *args, kill=kill)


@pytest.mark.slow
def test_train_crash_resume_and_the_run_directory(ort_available, tmp_path):
    out = tmp_path / "run"
    # SIGKILL inside module 0's trainer, in its second epoch (after epoch 1's checkpoint)
    crashed = train_cli(*ARGS, "--out", str(out), kill="batch:10")
    assert crashed.returncode != 0
    progress = json.loads((out / "manifest.json").read_text())["progress"]
    assert progress == {**progress, "module": 0, "phase": "train", "epoch_done": 1}

    done = train_cli("--resume", str(out), "--quiet")
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete" and summary["backend"] == "ort"

    # every epoch logged exactly once, across the crash
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(m["module"], m["epoch"]) for m in metrics] == [(0, 1), (0, 2), (1, 1), (1, 2)]
    assert all(m["backend"] == "ort" for m in metrics)

    # blocks, heads, optimizer state in the store, listed with checksums; caches of module 0 gone
    for rel in ["blocks/block_000.safetensors", "blocks/block_003.safetensors",
                "heads/head_00.safetensors", "heads/head_01.safetensors",
                "optim/module_00.safetensors", "optim/module_01.safetensors"]:
        assert (out / rel).is_file() and rel in manifest["files"], rel

    # torch stayed out of the orchestrator and of every trainer; the figures are there
    ort = summary["ort"]
    assert ort["torch_in_orchestrator"] is False
    assert {(w["module"], w["phase"]) for w in ort["workers"]} == {
        (0, "train"), (0, "features"), (1, "train"), (1, "features")}
    assert all(w["torch_imported"] is False and w["peak_rss_bytes"] > 0 for w in ort["workers"])
    assert ort["preparation"]["peak_rss_bytes"] > ort["max_worker_peak_rss_bytes"] > 0
    assert summary["peak_rss_bytes"] == ort["orchestrator_peak_rss_bytes"] + ort["max_worker_peak_rss_bytes"]
    for row in summary["modules"]:
        assert row["val_acc"] is not None and row["test_acc"] is not None
        assert row["worker_train_peak_bytes"] > 0 and row["worker_features_peak_bytes"] > 0

    # the two backends share the store: torch loads the ORT-trained module 0 (strict state_dict
    # names) and, on the same test images, reaches the accuracy the ORT trainer recorded
    torch = pytest.importorskip("torch")
    from edge_trgl.backends.torch_backend import evaluate
    from edge_trgl.config import TrainConfig
    from edge_trgl.modules import load_module
    from edge_trgl.run import Run
    from edge_trgl.sources import RawSource
    from edge_trgl.rundata import open_run_data
    run = Run(out, manifest)
    cfg = TrainConfig.from_json(json.loads((out / "config.json").read_text()))
    data = open_run_data(run, rebuild=False)   # the run's own copy of its data (RUN/data)
    blocks, head = load_module(run, cfg, data.in_shape, data.num_classes, 0, 2, 0, torch.device("cpu"))
    test = RawSource(data.test.images, data.test.labels, data.mean, data.std)
    acc = evaluate(blocks, head, test, 64, torch.device("cpu"), cfg)
    row0 = summary["modules"][0]
    assert abs(acc - row0["test_acc"]) <= 1.0 / len(data.test.labels) + 1e-9


def start_until_first_epoch(out: Path, epochs: int, capture: bool = True):
    """`edge-trgl train` (ORT) as a child, returned once module 0's first epoch is logged."""
    import time
    args = list(ARGS)
    args[args.index("--epochs") + 1] = str(epochs)
    env = {k: v for k, v in os.environ.items() if k != ENV}
    pipe = subprocess.PIPE if capture else subprocess.DEVNULL
    proc = subprocess.Popen([sys.executable, "-m", "edge_trgl.cli.main", "train", *args,
                             "--out", str(out)], env=env, stdout=pipe, stderr=pipe, text=True)
    metrics = out / "metrics.jsonl"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if metrics.is_file() and metrics.read_text().count("\n") >= 1:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before its first epoch was logged"
    return proc


@pytest.mark.slow
def test_sigterm_to_the_orchestrator_alone_stops_the_trainer_at_its_epoch_end(ort_available, tmp_path):
    """A service manager's SIGTERM reaches only the orchestrator (the trainer runs in its own
    process group); it is forwarded, so the trainer stops after its current epoch instead of
    finishing the whole module first, and the run resumes from that checkpoint."""
    import signal
    out = tmp_path / "run"
    proc = start_until_first_epoch(out, 4)
    metrics = out / "metrics.jsonl"
    os.kill(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 130, err[-3000:]
    assert "safe point" in err and "Traceback" not in err
    progress = json.loads((out / "manifest.json").read_text())["progress"]
    assert (progress["module"], progress["phase"]) == (0, "train"), progress
    assert 1 <= progress["epoch_done"] < 4   # stopped inside module 0, not at its end

    done = train_cli("--resume", str(out), "--quiet")
    assert done.returncode == 0, done.stderr[-3000:]
    logged = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [(m["module"], m["epoch"]) for m in logged] == [(k, e) for k in (0, 1) for e in range(1, 5)]


@pytest.mark.slow
def test_a_second_stop_request_stops_at_once_without_a_traceback(ort_available, tmp_path):
    """Ctrl-C twice (here: two SIGTERMs to edge-trgl): stop now. Neither the orchestrator nor
    the trainer prints a traceback, and the run resumes from its last checkpoint."""
    import signal
    import time
    out = tmp_path / "run"
    proc = start_until_first_epoch(out, 30)
    metrics = out / "metrics.jsonl"
    os.kill(proc.pid, signal.SIGTERM)
    time.sleep(0.1)
    os.kill(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    # 130 (stopped or interrupted); or, when the second signal lands after the run has put the
    # default handlers back on its way out, killed by that SIGTERM: a stop either way
    assert proc.returncode in (130, -signal.SIGTERM), err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    assert err.count("stopping at the next safe point") == 1  # the trainer says nothing itself
    progress = json.loads((out / "manifest.json").read_text())["progress"]
    assert (progress["module"], progress["phase"]) == (0, "train")
    time.sleep(0.5)  # the trainer went down with the orchestrator (PR_SET_PDEATHSIG)
    resumed = train_cli("--resume", str(out), "--quiet")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    logged = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [(m["module"], m["epoch"]) for m in logged] == [(k, e) for k in (0, 1)
                                                          for e in range(1, 31)]


@pytest.mark.slow
def test_a_killed_orchestrator_takes_its_trainer_with_it(ort_available, tmp_path):
    """The trainer runs in its own process group; if `edge-trgl` itself is killed (SIGKILL, OOM
    killer) the trainer must not live on writing the run while the user resumes it."""
    import signal
    import time
    out = tmp_path / "run"
    proc = start_until_first_epoch(out, 30, capture=False)
    trainers = [int(p) for p in subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True,
                                               text=True).stdout.split()]
    assert trainers, "no trainer child found"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)

    def alive():
        living = []
        for p in trainers:
            try:
                state = Path(f"/proc/{p}/stat").read_text().split(")")[-1].split()[0]
            except OSError:
                continue
            if state != "Z":  # a zombie waits for init to reap it: it is dead
                living.append(p)
        return living
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline and alive():
        time.sleep(0.02)
    left = alive()
    for p in left:  # do not leave it running if the assertion fails
        os.kill(p, signal.SIGKILL)
    assert not left, f"trainer(s) {left} outlived the orchestrator"
    progress = json.loads((out / "manifest.json").read_text())["progress"]
    assert (progress["module"], progress["phase"]) == (0, "train")
    assert progress["epoch_done"] < 30  # it was stopped mid-module, not left to finish


def test_without_the_extra_the_error_says_how_to_install(monkeypatch, tmp_path):
    import importlib.util

    from edge_trgl.config import TrainConfig
    from edge_trgl.errors import UserError
    from edge_trgl.train import train
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name.split(".")[0] == "onnxruntime" else real(name, *a))
    out = tmp_path / "never"
    with pytest.raises(UserError) as exc:
        train(TrainConfig(backend="ort", synthetic_train=100, synthetic_test=20, out=str(out),
                          progress=False))
    text = str(exc.value)
    assert 'pip install -e ".[ort]"' in text and "onnxruntime-training-cpu==1.19.2" in text
    assert "onnx==1.17.0" in text and not out.exists()


def test_schemes_that_need_every_module_resident_are_refused(ort_available):
    from edge_trgl.config import TrainConfig
    from edge_trgl.errors import UserError
    from edge_trgl.targets import validate
    with pytest.raises(UserError, match="sequential and multilap"):
        validate(TrainConfig(backend="ort", scheme="parallel"))


@pytest.mark.slow
def test_a_schedule_reaches_the_numpy_optimizer_and_resumes_exactly(ort_available, tmp_path):
    """The ORT trainer takes its rate from the same schedule as torch (loop.py -> set_lr on the
    numpy optimizer): a cosine run with warm-up trains differently from a constant one, and one
    killed in module 0's second epoch and resumed ends with exactly the weights and losses of an
    uninterrupted run."""
    from safetensors.numpy import load_file

    def weights(run: Path) -> dict:
        return {f"{p.parent.name}/{p.name}/{k}": v.tobytes()
                for folder in ("blocks", "heads") for p in sorted((run / folder).glob("*"))
                for k, v in load_file(str(p)).items()}

    def losses(run: Path) -> list:
        lines = (run / "metrics.jsonl").read_text().splitlines()
        return [(m["module"], m["epoch"], m["train_loss"], m["val_acc"])
                for m in map(json.loads, lines)]

    cosine = [*ARGS, "--lr-schedule", "cosine", "--warmup-epochs", "1"]
    whole, crashed, constant = tmp_path / "whole", tmp_path / "crashed", tmp_path / "constant"
    flat = [*ARGS, "--lr-schedule", "constant", "--warmup-epochs", "0"]
    for args, out in ((cosine, whole), (flat, constant)):
        done = train_cli(*args, "--out", str(out))
        assert done.returncode == 0, done.stderr[-3000:]
    assert train_cli(*cosine, "--out", str(crashed), kill="batch:10").returncode != 0
    resumed = train_cli("--resume", str(crashed), "--quiet")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert weights(crashed) == weights(whole)
    assert losses(crashed) == losses(whole)
    assert losses(whole)[0][2] != losses(constant)[0][2]   # warm-up: a different first epoch
