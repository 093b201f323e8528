"""Export to the device: `edge-trgl export` writes ONNX + a state dict and verifies them; the ONNX
model then runs with onnxruntime alone (no torch in the process) via `edge-trgl evaluate` /
`edge-trgl predict` / the standalone deploy_runtime.py, and matches the run's test accuracy."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge_trgl.cli.main import main
from helpers import cli

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

pytestmark = pytest.mark.slow   # every test reads one trained and exported run (~4 s to make)

TRAIN = ["train", "--synthetic-train", "600", "--synthetic-test", "300", "--model", "resnet8",
         "--width", "0.5", "--modules", "2", "--epochs", "2", "--batch-size", "64",
         "--threads", "1", "--seed", "1", "--quiet",
         "--test-modules", "all"]  # every module has a test accuracy to compare an export with


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A finished tiny run and its default export (best module)."""
    base = tmp_path_factory.mktemp("export")
    run = base / "run"
    assert main([*TRAIN, "--out", str(run)]) == 0
    assert main(["export", str(run)]) == 0
    return run, run / "export"


def test_export_writes_verified_onnx_and_state_dict(exported):
    run, out = exported
    summary = json.loads((run / "summary.json").read_text())
    report = json.loads((out / "export.json").read_text())
    desc = json.loads((out / "model.json").read_text())
    best = summary["best_module"]
    assert report["module"] == best and report["selected_by"] == "best validation accuracy"
    lo, hi = json.loads((run / "plan.json").read_text())["splits"][best]
    assert report["blocks"] == [0, hi] and desc["blocks"] == [0, hi]
    for name in ("model.onnx", "model.safetensors", "model.pt", "model.json"):
        assert (out / name).stat().st_size == report["files"][name]["bytes"] > 0
    # outputs checked against the modules, in fp32 and as training computed them (fp16 cache)
    parity = report["parity"]
    assert parity["batch"] == 256
    assert parity["max_abs_diff_vs_torch_fp32"] < 1e-4
    assert parity["max_abs_diff_vs_training_modules"] < 5e-2
    assert parity["training_modules_rounding"] == ("fp16" if best > 0 else "none")
    # accuracy of the ONNX model (onnxruntime) vs what the run reported for that module
    assert report["test_images"] == 300
    assert report["test_acc_run"] == summary["best_test_acc"]
    assert abs(report["test_acc_onnx"] - report["test_acc_run"]) <= 0.005
    assert desc["input"]["shape"] == ["batch", 3, 32, 32]
    assert len(desc["class_names"]) == desc["num_classes"] == 10

    import onnx
    proto = onnx.load(str(out / "model.onnx"))
    onnx.checker.check_model(proto)
    assert proto.opset_import[0].version == 17
    assert [i.name for i in proto.graph.input] == ["images"]
    assert [o.name for o in proto.graph.output] == ["logits"]
    batch_dim = proto.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param == "batch"                         # dynamic batch


def test_state_dict_rebuilds_the_same_model(exported):
    import torch

    from edge_trgl.deploy_runtime import OrtModel
    from edge_trgl.export import load_exported
    _, out = exported
    state = torch.load(out / "model.pt", weights_only=True)
    model = load_exported(out)
    assert set(state) == set(model.state_dict())
    images = np.random.default_rng(0).integers(0, 256, (5, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        torch_logits = model(torch.from_numpy(images)).numpy()
    assert np.abs(OrtModel(out / "model.onnx").logits(images) - torch_logits).max() < 1e-4


# The device install: numpy + onnxruntime (+ pillow) and edge-trgl with --no-deps. Blocking a
# module in sys.modules makes any import of it fail loudly.
TORCH_FREE = r"""
import json, sys
for name in ("torch", "safetensors", "psutil", "tqdm", "onnx"):
    sys.modules[name] = None
from edge_trgl.cli.main import main
rc = main(sys.argv[1:])
assert not [m for m in sys.modules if m == "torch" or m.startswith("torch.")
            if sys.modules[m] is not None], "torch was imported"
sys.exit(rc)
"""


def test_onnx_model_runs_without_torch_and_matches_the_run(exported, tmp_path):
    from PIL import Image

    from edge_trgl.data import load_dataset
    run, out = exported
    report = json.loads((out / "export.json").read_text())
    proc = subprocess.run([sys.executable, "-c", TORCH_FREE, "evaluate",
                           str(out / "model.onnx"), "--json"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["test_images"] == 300
    assert result["test_acc"] == report["test_acc_onnx"]
    # ONNX and torch fp32 may break a near-tie differently on another CPU's kernels: a few of
    # 300 images, never more (a wrong export is tens of points off)
    assert abs(result["test_acc"] - result["test_acc_run"]) <= 0.02

    test = load_dataset("synthetic", seed=1, synthetic_train=600, synthetic_test=300).test
    np.save(tmp_path / "a.npy", test.images[0].transpose(1, 2, 0))     # (H, W, C) uint8
    Image.fromarray(test.images[1].transpose(1, 2, 0)).save(tmp_path / "b.png")
    Image.fromarray(test.images[2].transpose(1, 2, 0)).resize((64, 64)).save(tmp_path / "c.jpg")
    files = [str(tmp_path / n) for n in ("a.npy", "b.png", "c.jpg")]
    proc = subprocess.run([sys.executable, "-c", TORCH_FREE, "predict", str(out), *files,
                           "--json", "--top", "3"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    preds = json.loads(proc.stdout)
    names = json.loads((out / "model.json").read_text())["class_names"]
    assert [p["class"] for p in preds] == [names[p["index"]] for p in preds]
    assert len(preds[0]["top"]) == 3 and preds[2]["note"] == "resized and centre-cropped from 64x64 to 32x32"
    # the same predictions as the ONNX model on the same pixels (PNG is lossless)
    from edge_trgl.deploy_runtime import OrtModel
    direct = OrtModel(out).logits(test.images[:2]).argmax(1)
    assert [preds[0]["index"], preds[1]["index"]] == direct.tolist()

    # deploy_runtime.py on its own, as copied to a device (no edge_trgl, no torch)
    script = Path(sys.modules["edge_trgl.deploy_runtime"].__file__)
    alone = (f"import sys, runpy; sys.modules['torch'] = None; sys.modules['edge_trgl'] = None; "
             f"sys.argv = ['deploy_runtime.py', {str(out / 'model.onnx')!r}, {files[0]!r}]; "
             f"runpy.run_path({str(script)!r}, run_name='__main__')")
    proc = subprocess.run([sys.executable, "-c", alone], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"{files[0]}: {preds[0]['class']} (")


def test_export_of_a_chosen_module_and_evaluate_run_dir(exported, capsys, tmp_path):
    run, _ = exported
    out = tmp_path / "m0"
    rc, stdout, err = cli(capsys, "export", str(run), "--module", "0", "--out", str(out), "--json")
    assert rc == 0, err
    report = json.loads(stdout)
    assert report["module"] == 0 and report["selected_by"] == "--module"
    summary = json.loads((run / "summary.json").read_text())
    assert abs(report["test_acc_onnx"] - summary["modules"][0]["test_acc"]) <= 0.02  # near-ties
    rc, stdout, err = cli(capsys, "evaluate", str(run), "--module", "0", "--json")
    assert rc == 0, err
    assert json.loads(stdout)["test_acc"] == report["test_acc_onnx"]   # fp32 torch == ONNX


def test_bad_export_and_deploy_inputs(exported, capsys, tmp_path, monkeypatch):
    run, out = exported

    def error(*argv, phrase):
        rc, _, err = cli(capsys, *argv)
        assert rc == 2 and "Traceback" not in err, err
        assert phrase in " ".join(err.split()), err

    error("export", str(tmp_path), phrase="is not an edge-trgl run directory")
    error("export", str(run), "--module", "7", phrase="--module 7 cannot be exported")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "thesis.tex").write_text("x")
    error("export", str(run), "--out", str(tmp_path / "busy"), phrase="already holds other files")
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"not a model")
    error("evaluate", str(bad), "--data", "synthetic", phrase="ONNX Runtime cannot load")
    error("predict", str(out), str(tmp_path / "missing.png"), phrase="does not exist")
    np.save(tmp_path / "wrong.npy", np.zeros((28, 28), np.uint8))
    error("predict", str(out), str(tmp_path / "wrong.npy"), phrase="has shape (28, 28)")
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    error("predict", str(out), str(tmp_path / "objects.npy"), phrase="not a readable .npy")
    error("evaluate", str(out), "--data", "mnist", "--data-dir", str(tmp_path),
          phrase="MNIST")
    monkeypatch.setitem(sys.modules, "PIL", None)        # Pillow not installed
    (tmp_path / "x.png").write_bytes(b"\x89PNG")
    error("predict", str(out), str(tmp_path / "x.png"), phrase="needs Pillow")
