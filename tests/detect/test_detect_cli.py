"""`edge-trgl detect fit|score` on a finished tiny run, `export --detect`, and the device path:
the exported model's scores under onnxruntime equal PyTorch's, with no torch in the process."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from edge_trgl.cli.main import main
from helpers import REPO, assert_one_paragraph_error, cli

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

# 180 of 600 synthetic images held out for validation, so a weak 2-epoch network still classifies
# a few dozen correctly (the clean class); module 1 has three residual blocks
TRAIN = ["train", "--synthetic-train", "600", "--synthetic-test", "200", "--val-fraction", "0.3",
         "--model", "resnet8", "--width", "0.5", "--modules", "2", "--epochs", "2",
         "--batch-size", "64", "--threads", "1", "--seed", "1", "--quiet"]
FIT = ["--module", "1", "--eps", "0.1", "--steps", "2", "--eval-images", "60", "--threads", "1"]


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """A finished tiny run with a fitted detector, and its export with detection outputs."""
    run = tmp_path_factory.mktemp("detect") / "run"
    assert main([*TRAIN, "--out", str(run)]) == 0
    assert main(["detect", "fit", str(run), *FIT, "--json"]) == 0
    assert main(["export", str(run), "--module", "1", "--detect"]) == 0
    return run


@pytest.mark.slow
def test_fit_saves_a_json_detector_that_reloads(fitted):
    from edge_trgl.detect_runtime import read_detector
    path = fitted / "detector.json"
    spec = json.loads(path.read_text())
    det = read_detector(path)
    # --features auto: chosen on the validation split, with the scores that chose it
    selection = spec["feature_selection"]
    assert spec["features"] == selection["chosen"] in ("norms", "transport", "field")
    assert selection["cv_auroc"][spec["features"]] == max(selection["cv_auroc"].values())
    assert spec["run"]["module"] == 1
    assert spec["columns"] == det.columns and len(det.columns) == len(det.weights) >= 3
    # (resnet8: one block a stage, so no two successive moves share a shape: no cosine)
    prefixes = {"norms": {"norm"}, "transport": {"norm", "input"},
                "field": {"norm", "input", "field"}}[spec["features"]]
    assert {c.split(":")[0] for c in det.columns} == prefixes
    fit = spec["fit"]
    assert fit["split"] == "validation" and fit["attack"] == "fgsm" and fit["eps"] == 0.1
    assert fit["clean"]["correct"] >= 10 and fit["abnormal"]["kept"] >= 10
    kinds = spec["evaluation"]["kinds"]
    assert set(kinds) == {"fgsm", "bim", "pgd", "cw", "gauss", "uniform", "ood"}
    assert kinds["ood"]["source"] == "smooth"                    # no --ood-dir: generated
    for row in kinds.values():
        for d in row.get("detectors", {}).values():
            assert 0.0 <= d["auroc"] <= 1.0 and 0.0 <= d["detection_accuracy"] <= 1.0
    # the detector reads the features the run's network gives: in-sample it separates the classes
    assert spec["fit"]["in_sample"]["field"]["auroc"] > 0.6


@pytest.mark.slow
def test_score_a_run_and_its_export_alike(fitted, capsys, tmp_path):
    from edge_trgl.data import load_dataset
    test = load_dataset("synthetic", seed=1, synthetic_train=600, synthetic_test=200).test
    np.save(tmp_path / "batch.npy", test.images[:5].astype(np.float32))
    np.save(tmp_path / "one.npy", test.images[5].transpose(1, 2, 0))
    inputs = [tmp_path / "batch.npy", tmp_path / "one.npy"]
    rc, out, err = cli(capsys, "detect", "score", fitted, "--images", *inputs, "--json")
    assert rc == 0, err
    torch_scores = json.loads(out)
    rc, out, err = cli(capsys, "detect", "score", fitted / "export", "--images", *inputs, "--json")
    assert rc == 0, err
    onnx_scores = json.loads(out)
    assert [r["input"] for r in torch_scores][-1].endswith("one.npy") and len(torch_scores) == 6
    for a, b in zip(torch_scores, onnx_scores):
        assert a["index"] == b["index"] and abs(a["score"] - b["score"]) < 1e-4
        assert a["flagged"] == (a["score"] >= json.loads(
            (fitted / "detector.json").read_text())["threshold"])
    report = json.loads((fitted / "export" / "export.json").read_text())
    assert report["detection"]["max_abs_score_diff_vs_torch"] < 1e-4
    assert "detector.json" in report["files"]


# the device install: numpy + onnxruntime and edge-trgl with --no-deps; blocking a module in
# sys.modules makes any import of it fail loudly
TORCH_FREE = r"""
import sys
for name in ("torch", "safetensors", "onnx"):
    sys.modules[name] = None
from edge_trgl.cli.main import main
rc = main(sys.argv[1:])
assert not [m for m in sys.modules if m == "torch" or m.startswith("torch.")
            if sys.modules[m] is not None], "torch was imported"
sys.exit(rc)
"""


@pytest.mark.slow
def test_predict_and_evaluate_report_scores_without_torch(fitted, tmp_path):
    from edge_trgl.data import load_dataset
    test = load_dataset("synthetic", seed=1, synthetic_train=600, synthetic_test=200).test
    np.save(tmp_path / "a.npy", test.images[0])
    export = fitted / "export"
    proc = subprocess.run([sys.executable, "-c", TORCH_FREE, "predict", str(export),
                           str(tmp_path / "a.npy"), "--json"], capture_output=True, text=True,
                          timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    pred = json.loads(proc.stdout)[0]
    assert 0.0 <= pred["abnormal_score"] <= 1.0 and isinstance(pred["abnormal"], bool)
    proc = subprocess.run([sys.executable, "-c", TORCH_FREE, "evaluate", str(export), "--json"],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    det = json.loads(proc.stdout)["detection"]
    assert det["images"] == 200 and 0 <= det["flagged"] <= 200
    proc = subprocess.run([sys.executable, "-c", TORCH_FREE, "detect", "score", str(export),
                           "--images", str(tmp_path / "a.npy"), "--json"], capture_output=True,
                          text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert abs(json.loads(proc.stdout)[0]["score"] - pred["abnormal_score"]) < 1e-9
    # deploy_runtime.py + detect_runtime.py copied to a device on their own (no edge_trgl)
    device = tmp_path / "device"
    device.mkdir()
    for name in ("deploy_runtime.py", "detect_runtime.py"):
        (device / name).write_bytes((REPO / "edge_trgl" / name).read_bytes())
    env_code = ("import sys, runpy; sys.modules['torch'] = None; sys.modules['edge_trgl'] = None; "
                f"sys.path.insert(0, {str(device)!r}); "
                f"sys.argv = ['deploy_runtime.py', {str(export / 'model.onnx')!r}, "
                f"{str(tmp_path / 'a.npy')!r}]; "
                f"runpy.run_path({str(device / 'deploy_runtime.py')!r}, run_name='__main__')")
    proc = subprocess.run([sys.executable, "-c", env_code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert f"abnormal score {pred['abnormal_score']:.3f}" in proc.stdout


@pytest.mark.slow
def test_bad_input_is_one_paragraph_and_changes_nothing(fitted, capsys, tmp_path):
    before = (fitted / "detector.json").read_bytes()
    for argv, phrase in (
            (["detect", "fit", fitted, "--eps", "2"], "--eps 2"),
            (["detect", "fit", fitted, "--eval", "fgsm,nope"], "nope"),
            (["detect", "fit", fitted], "already exists"),
            (["detect", "fit", tmp_path], "not an edge-trgl run directory"),
            (["detect", "fit", fitted, "--ood", "mnist", "--ood-dir", tmp_path / "none",
              "--force"], "--ood-dir"),
            (["detect", "score", fitted, "--images", tmp_path / "missing.png"], "does not exist"),
            (["export", fitted, "--detect", "--out", tmp_path / "e0"], "module 1"),
    ):
        rc, _, err = cli(capsys, *argv)
        assert_one_paragraph_error(rc, err, phrase)
    assert (fitted / "detector.json").read_bytes() == before
    assert not (tmp_path / "e0").exists()
    bad = tmp_path / "wrong.npy"
    np.save(bad, np.zeros((2, 3, 8, 8), np.float32))
    rc, _, err = cli(capsys, "detect", "score", fitted, "--images", bad)
    assert_one_paragraph_error(rc, err, "shape")


def test_detect_help(capsys):
    for argv in (["detect", "--help"], ["detect", "fit", "--help"], ["detect", "score", "--help"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--eps" in out and "--images" in out and "transport" in out


def test_the_device_modules_import_no_torch():
    code = ("import sys\nfor n in ('torch', 'safetensors', 'onnx'):\n    sys.modules[n] = None\n"
            "import edge_trgl.deploy_runtime as d, edge_trgl.detect_runtime as r\n"
            "assert d._detect is r\n"
            "assert not [m for m in sys.modules if m.startswith('torch') and sys.modules[m]]\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
