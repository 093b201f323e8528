"""export / evaluate / predict refuse what they cannot trust, with one paragraph and exit 2:
damaged or edited run files (manifest, config.json, plan.json, summary.json, weights), damaged or
mixed export folders (model.json, export.json, model.onnx), foreign ONNX models, bad image inputs
and unusable --out paths. A refused command changes no file (every file is hashed before and
after). Export is atomic as a whole: a killed export leaves no model.onnx that evaluate accepts,
and an existing export is replaced only with --force."""

from __future__ import annotations

import errno
import hashlib
import json
import shlex
import shutil
import signal
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pytest

from edge_trgl.cli.main import main
from helpers import TINY, assert_clean_error, cli

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

RUN = [*TINY, "--seed", "3"]


def snapshot(*roots: Path) -> dict[str, str]:
    """sha256 of every file (hidden ones too) under the roots, and every folder, by path."""
    found = {}
    for root in roots:
        if not root.exists():
            continue
        for path in sorted(root.rglob("*")):
            key = str(path)
            found[key] = ("dir" if path.is_dir()
                          else hashlib.sha256(path.read_bytes()).hexdigest())
    return found


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """One finished tiny run with its default export, copied by each test that changes it."""
    root = tmp_path_factory.mktemp("validation")
    run = root / "run"
    assert main(["train", *RUN, "--out", str(run)]) == 0
    assert main(["export", str(run)]) == 0
    np.save(root / "img.npy", np.full((32, 32, 3), 128, np.uint8))
    return root


@pytest.fixture
def work(base, tmp_path):
    """A private copy of the run (with its export) and an image: (run, export, image)."""
    run = tmp_path / "run"
    shutil.copytree(base / "run", run)
    shutil.copy(base / "img.npy", tmp_path / "img.npy")
    return run, run / "export", tmp_path / "img.npy"


def relist(run: Path, rel: str) -> None:
    """Record rel's current sha256 in the manifest (an edit that also fixed the checksum)."""
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["files"][rel] = sha(run / rel)
    (run / "manifest.json").write_text(json.dumps(manifest))


def edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


# --- run files -----------------------------------------------------------------------------------

def test_edited_config_is_refused_by_export_evaluate_and_predict(work, capsys, tmp_path):
    run, export, img = work
    edit_json(run / "config.json", lambda c: c.update(width=0.5))   # a state-dict size mismatch
    before = snapshot(run)
    for argv in (["export", run, "--out", tmp_path / "out"], ["evaluate", run],
                 ["predict", run, img]):
        rc, _, err = cli(capsys, *argv)
        assert_clean_error(rc, err, f"The config.json of the run in {run} was changed after the "
                           "run was trained", "Restore the original config.json", "--data-dir")
        assert snapshot(run) == before
    assert not (tmp_path / "out").exists()


def test_config_edit_behind_the_checksum_is_caught_by_the_hash_and_then_the_weights(
        work, capsys, tmp_path):
    from edge_trgl.config import TrainConfig
    run, _, _ = work
    edit_json(run / "config.json", lambda c: c.update(width=0.5))
    relist(run, "config.json")                    # the manifest's checksum edited to match
    before = snapshot(run)
    rc, _, err = cli(capsys, "export", run, "--out", tmp_path / "out")
    assert_clean_error(rc, err, "does not match the config hash its manifest recorded")
    # ... and the hash too: the weights themselves do not fit (was a state-dict traceback)
    config = json.loads((run / "config.json").read_text())
    edit_json(run / "manifest.json", lambda m: m.update(
        config_hash=TrainConfig.from_json(config).identity_hash()))
    before = snapshot(run)
    for argv in (["export", run, "--out", tmp_path / "out"], ["evaluate", run]):
        rc, _, err = cli(capsys, *argv)
        assert_clean_error(rc, err, f"The weights of the run in {run} do not fit the network",
                           "size mismatch")
        assert snapshot(run) == before
    assert not (tmp_path / "out").exists()
    assert not list(run.parent.glob(".out.export-*"))   # the staging folder was removed


@pytest.mark.parametrize("damage,phrases", [
    (lambda m: b"\xff\xfe not utf-8", ["manifest.json is not valid JSON"]),
    (lambda m: [1, 2], ["manifest.json of the run", "the manifest is a JSON list, not an object"]),
    (lambda m: {**m, "files": []}, ["the 'files' table is a JSON list, not an object"]),
    (lambda m: {**m, "files": {}}, ["records no checksum for config.json"]),
    (lambda m: {**m, "files": {**m["files"], "plan.json": 7}},
     ["files['plan.json'] is 7, not a sha256 checksum"]),
    (lambda m: {**m, "modules": {"x": {}}},
     ["the 'modules' table has the key \"x\", which is not a module number"]),
    (lambda m: {**m, "modules": {"9": {"val_acc": 0.5}}},
     ["modules['9'] names module 9, but the plan (plan.json) has 2 modules (0..1)"]),
    (lambda m: {**m, "modules": {"0": {"val_acc": "high"}}},
     ["modules['0'].val_acc is \"high\", not a finite number >= 0 and <= 1"]),
    (lambda m: {**m, "modules": {"0": {"val_acc": float("nan")}}},
     ["modules['0'].val_acc is NaN, not a finite number"]),
    (lambda m: {**m, "caches": {"5": {}}},
     ["caches['5'] names module 5, but the plan (plan.json) has 2 modules"]),
    (lambda m: {k: v for k, v in m.items() if k != "status"},
     ["manifest.json of the run", "the key 'status' is missing"]),
    (lambda m: {**m, "status": "paused"},
     ["status is \"paused\", not one of new, running, complete"]),
    (lambda m: {**m, "status": "running"}, ["has not finished", "--resume"]),
    (lambda m: {**m, "format": 99}, ["incompatible edge-trgl version",
                                     "manifest format 99, expected 1"]),
    (lambda m: {**m, "format": "1"}, ["manifest.json of the run", "format is \"1\", not 1"]),
    (lambda m: {k: v for k, v in m.items() if k != "config_hash"},
     ["the key 'config_hash' is missing"]),
    (lambda m: {**m, "files": {k: v for k, v in m["files"].items()
                               if k != "blocks/block_001.safetensors"}},
     ["records no checksum for blocks/block_001.safetensors"]),
])
def test_damaged_manifest(work, capsys, tmp_path, damage, phrases):
    run, _, img = work
    manifest = json.loads((run / "manifest.json").read_text())
    damaged = damage(manifest)
    (run / "manifest.json").write_bytes(damaged if isinstance(damaged, bytes)
                                        else json.dumps(damaged).encode())
    before = snapshot(run)
    for argv in (["export", run, "--out", tmp_path / "out"], ["predict", run, img]):
        rc, _, err = cli(capsys, *argv)
        assert_clean_error(rc, err, *phrases)
        assert snapshot(run) == before
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("rel,change,relisted,phrases", [
    ("summary.json", lambda s: s.update(best_module=7), False,
     ["summary.json does not match the checksum recorded in the run manifest"]),
    ("summary.json", lambda s: s.update(best_module=7), True,
     ["best_module 7 is not a module the manifest records as trained"]),
    ("summary.json", lambda s: s.update(best_module="0"), True,
     ["summary.json best_module is \"0\", not a whole number"]),
    ("plan.json", lambda p: p.update(splits=[[0, 2], [3, 4]]), True,
     ["plan.json of the run", "splits[1] is [3, 4], not the block range [2, end > 2] of module 1"]),
    ("plan.json", lambda p: p.update(batch_size=-1), True, ["batch_size is -1"]),
    ("plan.json", lambda p: p.update(splits=[[0, 1], [1, 4]]), True,
     ["manifest.json of the run", "modules['0'] has blocks lo=0, hi=2 (hi excluded), but the "
      "plan gives module 0 lo=0, hi=1"]),
])
def test_damaged_summary_and_plan(work, capsys, tmp_path, rel, change, relisted, phrases):
    run, _, _ = work
    edit_json(run / rel, change)
    if relisted:
        relist(run, rel)
    before = snapshot(run)
    for argv in (["export", run, "--out", tmp_path / "out"], ["evaluate", run]):
        rc, _, err = cli(capsys, *argv)
        assert_clean_error(rc, err, *phrases)
        assert snapshot(run) == before


def test_damaged_weights_and_config_schema(work, capsys, tmp_path):
    run, _, _ = work
    block = run / "blocks" / "block_000.safetensors"
    block.write_bytes(block.read_bytes()[:100])
    rc, _, err = cli(capsys, "export", run, "--out", tmp_path / "out")
    assert_clean_error(rc, err, "block_000.safetensors does not match the checksum")
    relist(run, "blocks/block_000.safetensors")
    rc, _, err = cli(capsys, "export", run, "--out", tmp_path / "out")
    assert_clean_error(rc, err, "is not a valid safetensors weight file")
    # a config whose checksum and hash were both fixed up, but of the wrong types
    edit_json(run / "config.json", lambda c: c.update(epochs="three"))
    relist(run, "config.json")
    rc, _, err = cli(capsys, "evaluate", run)
    assert_clean_error(rc, err, "config.json of the run", "epochs is \"three\", not a whole number")
    (run / "config.json").write_text("[]")
    relist(run, "config.json")
    rc, _, err = cli(capsys, "evaluate", run)
    assert_clean_error(rc, err, "config.json of the run",
                       "config.json holds a JSON list, not an object of settings")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("rel,data,phrases", [
    ("config.json", None, ["config.json has unknown keys ['colour']"]),
    ("plan.json", [], ["plan.json of the run", "plan.json is a JSON list, not an object"]),
    ("summary.json", "done", ["summary.json of the run",
                              "summary.json is a JSON string, not an object"]),
])
def test_run_file_of_the_wrong_shape_behind_its_checksum(work, capsys, tmp_path, rel, data,
                                                         phrases):
    """The checks run_schema defines (as resume uses them), with export's paragraph."""
    run, _, _ = work
    if data is None:
        edit_json(run / rel, lambda c: c.update(colour="red"))
    else:
        (run / rel).write_text(json.dumps(data))
    relist(run, rel)
    before = snapshot(run)
    for argv in (["export", run, "--out", tmp_path / "out"], ["evaluate", run]):
        rc, _, err = cli(capsys, *argv)
        assert_clean_error(rc, err, *phrases, "The run is damaged (or was edited)")
        assert snapshot(run) == before
    assert not (tmp_path / "out").exists()


# --- paths ---------------------------------------------------------------------------------------

def test_read_only_run_directory_gets_a_clear_error_and_out_writes_elsewhere(
        work, capsys, tmp_path, monkeypatch):
    """The tests run as root, for whom chmod does not make a folder read-only: a read-only run
    directory is simulated by refusing to create anything in it (EROFS, as a read-only mount
    does). The real mount is the next test, where the machine allows one."""
    run, export, _ = work
    shutil.rmtree(export)
    real_mkdir = Path.mkdir

    def read_only_mkdir(self, *args, **kwargs):
        if Path(self).absolute().is_relative_to(run.absolute()) and not self.exists():
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real_mkdir(self, *args, **kwargs)
    monkeypatch.setattr(Path, "mkdir", read_only_mkdir)
    before = snapshot(run)
    rc, _, err = cli(capsys, "export", run)
    assert_clean_error(rc, err, f"Cannot write the export into the run directory {run}",
                       "Read-only file system", "Give --out DIR on a writable disk")
    assert snapshot(run) == before
    rc, _, err = cli(capsys, "export", run, "--out", tmp_path / "elsewhere")
    assert rc == 0, err
    assert snapshot(run) == before
    rc, _, err = cli(capsys, "evaluate", tmp_path / "elsewhere")
    assert rc == 0, err


@pytest.mark.slow
def test_really_read_only_run_directory(base, tmp_path):
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        pytest.skip("needs unshare and mount")
    run = tmp_path / "run"
    shutil.copytree(base / "run", run)
    shutil.rmtree(run / "export")
    q = shlex.quote
    probe = subprocess.run(["unshare", "-rm", "sh", "-c",
                            f"mount --bind {q(str(run))} {q(str(run))} && "
                            f"mount -o remount,bind,ro {q(str(run))}"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("cannot make a read-only bind mount here (no user namespaces)")
    cli_cmd = f"{q(sys.executable)} -m edge_trgl.cli.main"
    cmd = (f"mount --bind {q(str(run))} {q(str(run))} && mount -o remount,bind,ro {q(str(run))} "
           f"&& {cli_cmd} export {q(str(run))}; echo rc=$?; "
           f"{cli_cmd} export {q(str(run))} --out {q(str(tmp_path / 'out'))} > /dev/null; "
           f"echo rc=$?")
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", cmd], capture_output=True, text=True,
                          timeout=300)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.stdout.split() == ["rc=2", "rc=0"], proc.stdout + proc.stderr
    assert "Cannot write the export into the run directory" in " ".join(proc.stderr.split())
    assert (tmp_path / "out" / "export.json").is_file()


def test_unusable_out_paths_are_refused_before_any_work(work, capsys, tmp_path):
    run, export, _ = work
    before = snapshot(run)
    a_file = tmp_path / "notes.txt"
    a_file.write_text("x")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "thesis.tex").write_text("mine")
    for out, phrase in ((a_file / "export", "Cannot create the folder"),
                        (a_file, "exists and is not a folder"),
                        ("", "--out is empty"),
                        ("  ", "--out is empty"),
                        (busy, "already holds other files (thesis.tex)"),
                        (run, "is a run directory")):
        rc, _, err = cli(capsys, "export", run, "--out", out)
        assert_clean_error(rc, err, phrase)
    assert a_file.read_text() == "x" and (busy / "thesis.tex").read_text() == "mine"
    assert sorted(p.name for p in busy.iterdir()) == ["thesis.tex"]
    assert snapshot(run) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]   # no staging left


def test_existing_export_is_kept_unless_force(work, capsys):
    run, export, _ = work
    before = snapshot(run)
    rc, _, err = cli(capsys, "export", run)
    assert_clean_error(rc, err, f"{export} already holds an export (module", "I keep it",
                       "Add --force to replace it")
    assert snapshot(run) == before
    old_report = json.loads((export / "export.json").read_text())
    rc, _, err = cli(capsys, "export", run, "--force", "--json")
    assert rc == 0, err
    new_report = json.loads((export / "export.json").read_text())
    assert new_report["seconds"] != old_report["seconds"]           # really written again
    for name in ("model.onnx", "model.safetensors", "model.pt"):    # and deterministic
        assert new_report["files"][name] == old_report["files"][name]
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".")) == [".lock"]
    assert sorted(p.name for p in export.iterdir()) == sorted(
        ["export.json", "model.json", "model.onnx", "model.pt", "model.safetensors"])
    rc, _, err = cli(capsys, "evaluate", export)
    assert rc == 0, err


# --- atomic export -------------------------------------------------------------------------------

KILLED_EXPORT = textwrap.dedent("""
    import os, signal, sys
    import importlib; export = importlib.import_module("edge_trgl.export")
    where = sys.argv[1]
    if where == "publish":          # everything written, not yet renamed into place
        export.publish_export = lambda staging, out: os.kill(os.getpid(), signal.SIGKILL)
    elif where == "export.json":    # killed while writing the last file
        real = export.write_file
        def write(path, data):
            if path.name == "export.json":
                os.kill(os.getpid(), signal.SIGKILL)
            real(path, data)
        export.write_file = write
    elif where == "swap":           # --force: between moving the old export aside and the new in
        real_rename, calls = os.rename, []
        def rename(a, b):
            calls.append(a)
            if len(calls) == 2:
                os.kill(os.getpid(), signal.SIGKILL)
            real_rename(a, b)
        export.os.rename = rename
    from edge_trgl.cli.main import main
    sys.exit(main(sys.argv[2:]))
""")


def killed_export(where: str, *argv) -> None:
    proc = subprocess.run([sys.executable, "-c", KILLED_EXPORT, where, "export",
                           *map(str, argv)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr


@pytest.mark.slow
def test_killed_export_leaves_no_model_that_evaluate_accepts(work, capsys, tmp_path):
    run, _, img = work
    out = tmp_path / "model"
    for where in ("publish", "export.json"):
        killed_export(where, run, "--out", out)
        assert not out.exists()
        staging = list(tmp_path.glob(".model.export-*"))
        assert len(staging) == 1 and (staging[0] / "model.onnx").is_file()
        rc, _, err = cli(capsys, "evaluate", out)
        assert_clean_error(rc, err, "does not exist")
        if where == "export.json":   # the staging folder is no export either
            rc, _, err = cli(capsys, "predict", staging[0], img)
            assert_clean_error(rc, err, "but no export.json", "the export was interrupted")
    rc, _, err = cli(capsys, "export", run, "--out", out)        # cleans the dead staging
    assert rc == 0, err
    assert not list(tmp_path.glob(".model.*"))
    rc, _, err = cli(capsys, "evaluate", out)
    assert rc == 0, err


@pytest.mark.slow
def test_killed_forced_export_keeps_the_old_one(work, capsys, tmp_path):
    run, export, img = work
    before = snapshot(export)
    killed_export("export.json", run, "--force")
    assert snapshot(export) == before                            # the old export, untouched
    rc, _, err = cli(capsys, "evaluate", export)
    assert rc == 0, err
    # killed between the two renames: the old export is beside its place, and is put back
    killed_export("swap", run, "--force")
    assert not export.exists() and len(list(run.glob(".export.old-*"))) == 1
    rc, _, err = cli(capsys, "export", run)                        # no --force: refused ...
    assert_clean_error(rc, err, "already holds an export")
    assert snapshot(export) == before                            # ... after restoring it
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".")) == [".lock"]


def test_partial_export_folder_is_refused(work, capsys, tmp_path):
    """model.onnx + model.json without export.json: what an interrupted export of an earlier
    version left, or a folder copied in part."""
    _, export, img = work
    partial = tmp_path / "partial"
    partial.mkdir()
    for name in ("model.onnx", "model.json"):
        shutil.copy(export / name, partial / name)
    for argv in (["evaluate", partial], ["predict", partial / "model.onnx", img]):
        rc, _, err = cli(capsys, *argv)
        assert_clean_error(rc, err, "holds model.onnx and model.json but no export.json",
                           "copy the whole export folder again")


# --- the export folder ---------------------------------------------------------------------------

def rewrite_listed(export: Path, name: str, data: bytes) -> None:
    """Replace an export file and record its new checksum in export.json."""
    (export / name).write_bytes(data)
    report = json.loads((export / "export.json").read_text())
    report["files"][name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (export / "export.json").write_text(json.dumps(report))


@pytest.mark.parametrize("change,phrases", [
    (lambda d: d.update(in_shape=[3, 32]), ["in_shape must be [channels, height, width]"]),
    (lambda d: d.update(num_classes="10"), ["num_classes must be a positive integer"]),
    (lambda d: d.update(class_names=["a"]), ["class_names must be a list of 10 strings"]),
    (lambda d: d.update(format="other"), ["its format is 'other'"]),
    (lambda d: d.update(format_version=2), ["has format version 2", "Update edge-trgl"]),
    (lambda d: d["dataset"].update(seed=-1), ["dataset.seed must be a non-negative integer"]),
    (lambda d: d.update(input={"name": "x"}), ["does not match the model description",
                                               "its input is named 'images', not 'x'"]),
    (lambda d: d.update(in_shape=[1, 28, 28]), ["its input takes (C, H, W) = (3, 32, 32), not "
                                                "(1, 28, 28)"]),
    (lambda d: d.update(num_classes=3, class_names=["a", "b", "c"]),
     ["it outputs 10 classes, not 3"]),
])
def test_damaged_model_json(work, capsys, change, phrases):
    _, export, img = work
    desc = json.loads((export / "model.json").read_text())
    change(desc)
    (export / "model.json").write_text(json.dumps(desc))
    before = snapshot(export)
    rc, _, err = cli(capsys, "predict", export, img)
    assert_clean_error(rc, err, "model.json does not match the checksum")    # edited: caught
    rewrite_listed(export, "model.json", json.dumps(desc).encode())          # ... and behind it
    before = snapshot(export)
    for argv in (["predict", export, img], ["evaluate", export]):
        rc, _, err = cli(capsys, *argv)
        assert_clean_error(rc, err, *phrases)
        assert snapshot(export) == before


def test_damaged_export_json_and_model_onnx(work, capsys):
    from edge_trgl.export import load_exported
    from edge_trgl.errors import UserError
    _, export, img = work
    good = (export / "export.json").read_bytes()
    for data, phrase in ((good[:40], "export.json is not valid JSON"),
                         (b"[]", "expected a JSON object, found list"),
                         (json.dumps({"files": {}}).encode(), "no sha256 for model.onnx"),
                         (json.dumps({**json.loads(good), "test_acc_run": 7}).encode(),
                          "test_acc_run must be an accuracy")):
        (export / "export.json").write_bytes(data)
        rc, _, err = cli(capsys, "evaluate", export)
        assert_clean_error(rc, err, phrase)
        with pytest.raises(UserError, match="export"):
            load_exported(export)
    (export / "export.json").write_bytes(good)
    onnx_bytes = (export / "model.onnx").read_bytes()
    (export / "model.onnx").write_bytes(onnx_bytes[: len(onnx_bytes) // 2])
    rc, _, err = cli(capsys, "predict", export, img)
    assert_clean_error(rc, err, "model.onnx does not match the checksum")
    rewrite_listed(export, "model.onnx", onnx_bytes[: len(onnx_bytes) // 2])
    rc, _, err = cli(capsys, "predict", export, img)
    assert_clean_error(rc, err, "ONNX Runtime cannot load")
    assert "EP Error" not in capsys.readouterr().out


# --- foreign models ------------------------------------------------------------------------------

def make_onnx(path: Path, *, inputs=(("images", 1, ["batch", 3, 32, 32]),),
              output=("logits", ["batch", 10]), nan: bool = False) -> Path:
    """A small ONNX model: Cast, Flatten, MatMul, Reshape to the output shape (NaN weights if
    `nan`)."""
    import onnx
    from onnx import TensorProto, helper
    ins = [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs]
    name, shape = output
    size = int(np.prod([d for d in inputs[0][2][1:] if isinstance(d, int)]))
    classes = int(np.prod([d for d in shape[1:] if isinstance(d, int)]))
    weight = np.full((size, classes), np.nan if nan else 0.01, np.float32)
    nodes = [helper.make_node("Cast", [inputs[0][0]], ["as_float"], to=TensorProto.FLOAT),
             helper.make_node("Flatten", ["as_float"], ["flat"]),
             helper.make_node("MatMul", ["flat", "w"], ["mm"]),
             helper.make_node("Reshape", ["mm", "shape"], [name])]
    target = np.array([-1, *[d for d in shape[1:]]], np.int64)
    graph = helper.make_graph(nodes, "foreign", ins,
                              [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)],
                              initializer=[onnx.numpy_helper.from_array(weight, "w"),
                                           onnx.numpy_helper.from_array(target, "shape")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_foreign_onnx_models_are_refused(work, capsys, tmp_path):
    from onnx import TensorProto
    _, export, img = work
    f = TensorProto.FLOAT
    cases = [
        (dict(inputs=(("x", f, ["n", 3, 32, 32]),)), "its input is named 'x', not 'images'"),
        (dict(inputs=(("images", TensorProto.INT64, ["n", 3, 32, 32]),)),
         "its input 'images' is tensor(int64), not tensor(float)"),
        (dict(inputs=(("images", f, ["n", 3072]),)), "has shape ['n', 3072], not (batch, C, H, W)"),
        (dict(inputs=(("images", f, ["n", 3, 32, 32]), ("extra", f, [1]))),
         "it has 2 inputs (images, extra), not one"),
        (dict(output=("logits", ["n", 2, 5])), "has shape ['n', 2, 5], not (batch, classes)"),
        (dict(output=("probs", ["n", 10])), "its output is named 'probs', not 'logits'"),
        (dict(inputs=(("images", f, ["n", 3, "h", "w"]),)), "has no fixed input size"),
        (dict(inputs=(("images", f, ["n", 5, 8, 8]),)), "has 5 channels"),
    ]
    for i, (kwargs, phrase) in enumerate(cases):
        model = make_onnx(tmp_path / f"foreign{i}.onnx", **kwargs)
        rc, _, err = cli(capsys, "predict", model, img)
        assert_clean_error(rc, err, phrase)
    # a bare classifier of the right shape runs (class indices for names) ...
    model = make_onnx(tmp_path / "plain.onnx")
    rc, out, err = cli(capsys, "predict", model, img, "--json")
    assert rc == 0, err
    assert json.loads(out)[0]["class"] == str(json.loads(out)[0]["index"])
    # ... unless its outputs are NaN
    model = make_onnx(tmp_path / "nan.onnx", nan=True)
    rc, _, err = cli(capsys, "predict", model, img)
    assert_clean_error(rc, err, "produced NaN or infinite outputs")
    rc, _, err = cli(capsys, "evaluate", model, "--data", "synthetic")
    assert_clean_error(rc, err, "produced NaN or infinite outputs")
    # a foreign model put into an export folder is caught by the checksums, and behind them by
    # the description
    rewrite_listed(export, "model.onnx", make_onnx(tmp_path / "m.onnx", output=(
        "logits", ["batch", 7])).read_bytes())
    rc, _, err = cli(capsys, "predict", export, img)
    assert_clean_error(rc, err, "does not match the model description", "outputs 7 classes")


# --- inputs --------------------------------------------------------------------------------------

def png_header(path: Path, width: int, height: int) -> Path:
    """A PNG that claims width x height pixels but holds almost no data (a decompression bomb's
    header: the size is read before any pixel is)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    path.write_bytes(b"\x89PNG\r\n\x1a\n"
                     + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))
    return path


def test_bad_images_are_refused(work, capsys, tmp_path):
    pytest.importorskip("PIL")
    _, export, img = work
    t = tmp_path
    np.save(t / "nan.npy", np.full((32, 32, 3), np.nan, np.float32))
    np.save(t / "inf.npy", np.full((3, 32, 32), np.inf))
    np.save(t / "big.npy", np.full((32, 32, 3), 1000.0))
    np.save(t / "neg.npy", np.full((32, 32, 3), -1, np.int16))
    np.savez(t / "arch.npz", a=np.zeros(3))
    shutil.move(t / "arch.npz", t / "arch.npy")
    (t / "trunc.npy").write_bytes(img.read_bytes()[:200])
    (t / "folder").mkdir()
    (t / "junk.png").write_bytes(b"\x89PNG not really")
    cases = [(t / "nan.npy", "holds NaN or infinite values"),
             (t / "inf.npy", "holds NaN or infinite values"),
             (t / "big.npy", "holds values from 1000 to 1000", "Rescale the array to 0..255"),
             (t / "neg.npy", "holds values from -1 to -1"),
             (t / "arch.npy", "it is an .npz archive"),
             (t / "trunc.npy", "is not a readable .npy array"),
             (t / "folder", f"{t / 'folder'} is a folder, not an image file"),
             (png_header(t / "bomb.png", 100_000, 100_000), "is too large",
              "decompression-bomb", "Resize it first"),
             (png_header(t / "huge.png", 9000, 9000), "is 9000x9000 pixels (81 megapixels)",
              "up to 67 megapixels"),
             (t / "junk.png", "is not a readable image")]
    for path, *phrases in cases:
        rc, _, err = cli(capsys, "predict", export, path)
        text = assert_clean_error(rc, err, *phrases)
        assert "does not exist" not in text
    # an image scaled to 0..1 is read, with a note
    np.save(t / "unit.npy", np.full((32, 32, 3), 0.5, np.float32))
    rc, out, err = cli(capsys, "predict", export, t / "unit.npy", "--json")
    assert rc == 0, err
    note = json.loads(out)[0]["note"]
    assert note == "its values lie in 0..1; the model takes pixel values 0..255"


def test_model_argument_that_is_neither_export_nor_run(work, capsys, tmp_path):
    _, export, img = work
    empty = tmp_path / "empty"
    empty.mkdir()
    for command in ("predict", "evaluate"):
        argv = [command, empty] + ([img] if command == "predict" else [])
        rc, _, err = cli(capsys, *argv)
        text = assert_clean_error(rc, err, "is neither an export folder", "nor a run directory")
        assert "does not exist" not in text
    rc, _, err = cli(capsys, "predict", img, img)
    assert_clean_error(rc, err, "is not an .onnx file")
    rc, _, err = cli(capsys, "predict", export, img, "--module", "0")
    assert_clean_error(rc, err, "--module applies to run directories")
    # a missing image is found before the (slow) run model is loaded
    rc, _, err = cli(capsys, "predict", export.parent, tmp_path / "missing.png")
    assert_clean_error(rc, err, "The image", "missing.png does not exist")
