"""The Python API: `from edge_trgl import TrainConfig, train, plan, export, predict` (api.py),
a cheap torch-free `import edge_trgl`, and the README's "Python API" example, run as written."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import edge_trgl
from edge_trgl.config import TrainConfig
from edge_trgl.errors import UserError
from helpers import assert_one_paragraph_error, cli

REPO = Path(__file__).resolve().parents[1]
API = ("TrainConfig", "train", "plan", "export", "predict")
TINY_CFG = dict(synthetic_train=200, synthetic_test=100, model="resnet8", width=0.25, modules=2,
                epochs=1, batch_size=32, threads=1, progress=False)


def child(code: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, cwd=cwd)


def test_import_edge_trgl_is_torch_free_and_lazy():
    proc = child("import sys, edge_trgl\n"
                 "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('edge_trgl')))\n"
                 "from edge_trgl import TrainConfig, train, plan, export, predict\n"
                 "print('torch' in sys.modules)")
    assert proc.returncode == 0, proc.stderr
    first, second = proc.stdout.splitlines()
    assert first == "['edge_trgl']"        # nothing but the package itself, and no torch
    assert second == "False"               # the API's names resolve without torch too


@pytest.mark.slow
def test_the_api_names_are_the_functions_whatever_was_imported_first():
    """train and export are also submodules (train.py, export.py): importing those, before or
    after the names are first used, leaves the package attributes the API functions."""
    code = ("import edge_trgl, edge_trgl.export, edge_trgl.train, sys\n"
            "from edge_trgl import export, train\n"
            "from edge_trgl.api import export as api_export\n"
            "assert export is api_export and edge_trgl.export is api_export\n"
            "assert train is sys.modules['edge_trgl.api'].train is edge_trgl.train\n"
            "from edge_trgl.export import export_run\n"
            "import edge_trgl.cli.main, edge_trgl.cli.export\n"
            "assert edge_trgl.export is api_export and callable(edge_trgl.train)\n"
            "print('ok')")
    for order in (code, code.replace("import edge_trgl, edge_trgl.export, edge_trgl.train, sys",
                                     "import edge_trgl, sys; edge_trgl.export; edge_trgl.train\n"
                                     "import edge_trgl.export, edge_trgl.train")):
        proc = child(order)
        assert proc.returncode == 0 and proc.stdout == "ok\n", proc.stderr


def test_all_lists_what_resolves():
    for name in API:
        assert name in edge_trgl.__all__ and name in dir(edge_trgl)
    assert edge_trgl.TrainConfig is TrainConfig
    assert edge_trgl.plan is sys.modules["edge_trgl.api"].plan
    assert edge_trgl.predict.__doc__ and "probability" in edge_trgl.predict.__doc__
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        edge_trgl.nothing_here  # noqa: B018


def test_docstrings_document_the_return_values():
    from edge_trgl import api
    for key in ("run_dir", "best_module", "best_val_acc", "best_test_acc", "modules",
                "peak_rss_bytes", "whole_command_peak_bytes"):
        assert f"``{key}``" in api.train.__doc__
    for key in ("splits", "batch_size", "whole_command"):
        assert key in api.plan.__doc__
    for key in ("out", "test_acc_onnx", "class_names"):
        assert key in api.export.__doc__
    for key in ("file", "class", "probability", "top", "note"):
        assert f"``{key}``" in api.predict.__doc__


@pytest.mark.slow
def test_plan_is_the_cli_plan_and_leaves_the_config_alone(capsys):
    from edge_trgl import plan
    cfg = TrainConfig(**TINY_CFG)
    before = cfg.to_json()
    result = plan(cfg)
    assert cfg.to_json() == before                      # no default --out, no profile applied
    assert result["splits"] == [[0, 2], [2, 4]] and result["batch_size"] == 32
    assert result["whole_command"]["whole_command_peak_bytes"] > 0
    rc, out, err = cli(capsys, "plan", "--json", "--synthetic-train", "200", "--synthetic-test",
                       "100", "--model", "resnet8", "--width", "0.25", "--modules", "2",
                       "--epochs", "1", "--batch-size", "32", "--threads", "1", "--quiet")
    assert rc == 0, err
    shown = json.loads(out)
    assert set(shown) == set(result)
    assert {k: shown[k] for k in ("splits", "batch_size", "views")} == \
        {k: result[k] for k in ("splits", "batch_size", "views")}


def test_bad_input_is_a_user_error(tmp_path, monkeypatch):
    from edge_trgl import export, plan, predict
    with pytest.raises(UserError, match="Expected a TrainConfig"):
        plan({"model": "resnet8"})
    with pytest.raises(UserError, match="--epochs must be at least 1"):
        plan(TrainConfig(epochs=0))
    with pytest.raises(UserError, match="does not exist"):
        predict(tmp_path / "nowhere", ["a.png"])
    (tmp_path / "model.onnx").write_bytes(b"")
    with pytest.raises(UserError, match="No images were given"):
        predict(tmp_path / "model.onnx", [])
    with pytest.raises(UserError, match="--top must be at least 1"):
        predict(tmp_path / "model.onnx", ["a.png"], top=0)
    with pytest.raises(UserError, match="The image .*a.png does not exist"):
        predict(tmp_path / "model.onnx", str(tmp_path / "a.png"))
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(UserError, match="Exporting needs the onnx and onnxruntime packages"):
        export(tmp_path)


def test_the_cli_predict_and_export_report_api_errors_as_one_paragraph(capsys, tmp_path):
    rc, _, err = cli(capsys, "predict", tmp_path / "nowhere", "a.png")
    assert_one_paragraph_error(rc, err, "does not exist")
    (tmp_path / "model.onnx").write_bytes(b"")
    rc, _, err = cli(capsys, "predict", tmp_path / "model.onnx", "a.png", "--top", "0")
    assert_one_paragraph_error(rc, err, "--top must be at least 1")


# --- the README example ------------------------------------------------------------------------------

def readme_example() -> str:
    """The one ```python block of the README's "Python API" section."""
    text = (REPO / "README.md").read_text()
    section = re.search(r"^## Python API\n(.*?)(?=^## )", text, re.S | re.M)
    assert section, "README.md has no '## Python API' section"
    blocks = re.findall(r"^```python\n(.*?)^```", section.group(1), re.S | re.M)
    assert len(blocks) == 1, f"expected one python block in 'Python API', found {len(blocks)}"
    return blocks[0]


def test_the_readme_example_uses_the_api_it_documents():
    code = readme_example()
    assert "from edge_trgl import TrainConfig, export, plan, predict, train" in code
    compile(code, "README.md", "exec")


@pytest.mark.slow
def test_the_readme_example_runs_as_written(tmp_path):
    pytest.importorskip("onnx", reason="the example exports: needs onnx (the ort extra)")
    pytest.importorskip("onnxruntime", reason="the example exports: needs onnxruntime")
    proc = child(readme_example(), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "[[0, 2], [2, 4]]"
    assert lines[1].startswith("best module ") and " MB" in lines[1]
    assert [line.split()[0] for line in lines[2:4]] == ["0", "1"]
    export_dir = tmp_path / "runs" / "api-demo" / "export"
    assert Path(lines[4].split()[0]).resolve() == export_dir.resolve()
    names = json.loads((export_dir / "model.json").read_text())["class_names"]
    predicted, _, _, true = lines[5].split()
    assert predicted in names and true in names
    # predicting from an export needs no torch (the device side of the API): with torch made
    # unimportable (onnxruntime itself tries it, optionally) the prediction is the same
    proc = child("import sys\nsys.modules['torch'] = None\nfrom edge_trgl import predict\n"
                 f"print(predict({str(export_dir)!r}, ['image.npy'])[0]['class'])", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [predicted]
