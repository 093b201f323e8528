"""End-to-end CLI runs on tiny settings: the built-in synthetic data where a run's files are the
point, an easily learnable CIFAR-format dataset where "it learns" is.

"It learns" is asserted with a margin far above float noise. A tiny run's epoch-to-epoch loss
trend is not such a signal: the same run on another CPU (other kernels, so other rounding) once
went from 3.0309 to 3.0353 where this machine saw a decrease, and over seeds (a fair proxy for
how far such rounding differences grow over a run) the last module of a 2-module multilap or
parallel run ends near or above its first epoch's loss in some seeds. On the easy data below
every scheme and family tested here reaches a final-epoch train accuracy of 0.47-0.97 (measured
over 9 runs each: seeds 0-4 with --threads 1, seeds 0, 1, 5, 6 with --threads 2; chance is 0.10,
and an untrained network's accuracy over 300 samples has a standard deviation of about 0.02), so
"at least 0.30" holds with a wide margin both ways.
"""

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from edge_trgl.cli.main import SUBCOMMANDS, build_parser, main
from edge_trgl.memory.measure import run_measured
from helpers import CIFAR_BATCHES, SYNTHETIC_300, write_cifar_files

TINY = [*SYNTHETIC_300, "--batch-size", "32"]


LEARNS = 0.30        # final-epoch train accuracy that shows learning (chance 0.10; see above)


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def easy_data(tmp_path_factory) -> list[str]:
    """--data options for 300 train / 100 test images in the CIFAR-10 file format whose class is
    the image's colour (one of ten distinct colours, +-40 uniform noise per pixel): learnable in
    a few epochs by every model family, so that learning is a large effect."""
    folder = tmp_path_factory.mktemp("easy") / "cifar-10-batches-py"
    rng = np.random.default_rng(0)
    palette = np.array([[230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200],
                        [245, 130, 48], [145, 30, 180], [70, 240, 240], [240, 50, 230],
                        [250, 190, 212], [0, 128, 128]])

    def batch(n: int) -> dict:
        labels = rng.permutation(np.arange(n) % 10)
        images = palette[labels][:, :, None, None] + rng.integers(-40, 41, (n, 3, 32, 32))
        return {b"labels": labels.tolist(),
                b"data": np.clip(images, 0, 255).astype(np.uint8).reshape(n, 3072)}
    batches = {name: batch(100 if name == "test_batch" else 60) for name in CIFAR_BATCHES}
    names = [f"colour{i}".encode() for i in range(10)]
    write_cifar_files(folder, batches, {b"label_names": names})
    return ["--data", "cifar10", "--data-dir", str(folder)]


def final_train_accuracy(run_dir: Path, module: int) -> float:
    rows = [r for r in metrics(run_dir) if r["module"] == module]
    assert rows, f"no epochs logged for module {module}"
    return rows[-1]["train_acc"]


def test_help_of_every_subcommand(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "train" in out and "plan" in out
    sub = build_parser()._subparsers._group_actions[0].choices
    for name in sub:
        assert name in SUBCOMMANDS
        with pytest.raises(SystemExit) as exc:
            main([name, "--help"])
        assert exc.value.code == 0
    assert "--mem-budget" in sub["train"].format_help()


@pytest.mark.slow
def test_sequential_run_writes_a_complete_run_and_learns(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", *TINY, "--model", "resnet8", "--modules", "2", "--epochs", "4",
                 "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "best module" in printed
    for rel in ("config.json", "plan.json", "manifest.json", "metrics.jsonl", "summary.json",
                "blocks/block_000.safetensors", "blocks/block_003.safetensors",
                "heads/head_00.safetensors", "heads/head_01.safetensors"):
        assert (out / rel).exists(), rel
    rows = metrics(out)
    first = [r for r in rows if r["module"] == 0]
    # module 0 on the synthetic data: the loss falls by 1.1-1.2 over the 4 epochs (seeds 0-2)
    assert len(first) == 4 and first[-1]["train_loss"] < first[0]["train_loss"] - 0.3
    summary = json.loads((out / "summary.json").read_text())
    assert [m["module"] for m in summary["modules"]] == [0, 1]
    assert all(0.0 <= m["test_acc"] <= 1.0 for m in summary["modules"])
    assert summary["best_module"] in (0, 1)
    # the cache of the earlier module is gone, the manifest says the run is complete
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete" and not (out / "cache/module_00").exists()


@pytest.mark.slow
@pytest.mark.parametrize("scheme", ["multilap", "parallel", "e2e"])
def test_other_schemes_learn(tmp_path, easy_data, scheme):
    """The last module (for e2e the whole network's head) learns; measured final-epoch train
    accuracy over the 9 runs named above: multilap 0.79-0.97, parallel 0.66-0.85, e2e 0.74-0.88."""
    out = tmp_path / scheme
    extra = ["--laps", "2", "--epochs", "4"] if scheme == "multilap" else ["--epochs", "3"]
    if scheme == "e2e":  # backprop through the whole net diverges at the module-wise default lr
        extra += ["--lr", "0.01"]
    assert main(["train", *TINY, *easy_data, "--model", "resnet8", "--modules", "2",
                 "--scheme", scheme, *extra, "--out", str(out)]) == 0
    last_module = max(r["module"] for r in metrics(out))
    assert last_module == 1
    assert final_train_accuracy(out, last_module) >= LEARNS
    assert json.loads((out / "summary.json").read_text())["scheme"] == scheme


@pytest.mark.slow
@pytest.mark.parametrize("model,width", [("vgg8", "0.25"), ("vit2", "0.5")])
def test_other_families_learn(tmp_path, easy_data, model, width):
    """Module 0 learns; measured final-epoch train accuracy over the 9 runs named above: vgg8
    0.84-0.97, vit2 0.47-0.62 (on the synthetic data vit2's loss moved by only 0.01 in 3 epochs,
    and its accuracy stayed near chance)."""
    out = tmp_path / model
    assert main(["train", *TINY, *easy_data, "--model", model, "--width", width, "--modules",
                 "2", "--epochs", "3", "--out", str(out)]) == 0
    assert final_train_accuracy(out, 0) >= LEARNS


@pytest.mark.slow
def test_budgeted_run_stays_under_budget_measured_from_outside(tmp_path):
    out = tmp_path / "budget"
    # The framework's own footprint differs between machines and environments (measured here
    # ~230 MB, ~310 MB in a fresh CI venv), so the budget is that baseline plus room to train.
    code, baseline_bytes, _ = run_measured(
        [sys.executable, "-c", "import torch, edge_trgl.train; torch.zeros(1).sum()"])
    assert code == 0
    budget_bytes = baseline_bytes + 220_000_000
    env = dict(os.environ, EDGE_TRGL_CACHE=str(tmp_path / "probe-cache"))
    code, peak_bytes, _ = run_measured(
        [sys.executable, "-m", "edge_trgl.cli.main", "train", *TINY, "--model", "resnet8",
         "--epochs", "1", "--batch-size", "64", "--mem-budget", str(budget_bytes),
         "--out", str(out)], env=env)
    assert code == 0
    assert peak_bytes < budget_bytes
    summary = json.loads((out / "summary.json").read_text())
    assert summary["budget_bytes"] == budget_bytes and not summary["over_budget"]
    plan = json.loads((out / "plan.json").read_text())
    assert all(e["estimated_peak_bytes"] <= budget_bytes for e in plan["module_estimates"])


def test_too_small_budget_is_refused_before_anything_is_written(tmp_path, capsys):
    out = tmp_path / "nope"
    assert main(["train", *TINY, "--mem-budget", "50MB", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "50 MB" in err and "Traceback" not in err
    assert not out.exists()
    assert not any(p.name.startswith(".nope") for p in tmp_path.iterdir())


def test_disk_budget_is_honoured_without_a_memory_budget(tmp_path, capsys):
    out = tmp_path / "tiny-disk"
    assert main(["train", *TINY, "--disk-budget", "1KB", "--out", str(out)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "disk budget (--disk-budget) is 1 kB" in err or "disk budget (--disk-budget) is 1 KB" in err, err
    assert "Nothing was written" in err and "Traceback" not in err
    assert not out.exists() and not any(p.name.startswith(".tiny-disk") for p in tmp_path.iterdir())
