"""Property-based tests (hypothesis): whatever is done to a run's JSON files (summary.json,
config.json, plan.json, manifest.json), to an export's model.json / export.json, or to the bytes
of model.onnx (flipped, truncated, extended; with the checksums fixed up behind the edit or not;
as a bare .onnx file or in its folder), `export`, `evaluate` and `predict` either succeed or give
the one-paragraph error with exit status 2: never a traceback, and never a lost or changed file.

One tiny run and its export are built once; every example works on a fresh copy."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from edge_trgl.cli.main import main  # noqa: E402
from helpers import TINY, run_cli  # noqa: E402

RUN = [*TINY, "--seed", "5"]
EXPORT_FILES = ["export.json", "model.json", "model.onnx", "model.pt", "model.safetensors"]
FUZZ = settings(max_examples=25, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=12),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids,
                                                               max_size=4),
    max_leaves=10)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    run = root / "run"
    with quiet():
        assert main(["train", *RUN, "--out", str(run)]) == 0
        assert main(["export", str(run)]) == 0
    np.save(root / "img.npy", np.full((32, 32, 3), 100, np.uint8))
    return root


@contextlib.contextmanager
def quiet():
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        yield


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): ("dir" if p.is_dir()
                                       else hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(root.rglob("*"))}


def assert_success_or_clean_error(rc: int, err: str) -> None:
    assert "Traceback" not in err, err
    assert rc in (0, 2), (rc, err)
    if rc == 2:
        lines = [line for line in err.strip().splitlines() if "error:" in line]
        assert len(lines) == 1, err                     # one message ...
        assert "\n\n" not in err.strip(), err           # ... of one paragraph
        assert len(" ".join(err.split())) > 60, err     # that says something


@st.composite
def mutated(draw, original: bytes):
    """`original` (a JSON document) changed: a value replaced (at the top or one level down), a
    key removed or added, the whole document replaced, cut short, or not UTF-8 at all."""
    doc = json.loads(original)
    kind = draw(st.sampled_from(["replace", "replace-nested", "remove", "add", "document",
                                 "truncate", "bytes"]))
    if kind in ("replace", "replace-nested", "remove", "add") and isinstance(doc, dict) and doc:
        key = draw(st.sampled_from(sorted(doc)))
        if kind == "replace":
            doc[key] = draw(JSON)
        elif kind == "remove":
            del doc[key]
        elif kind == "add":
            doc[draw(st.text(max_size=8))] = draw(JSON)
        else:
            nested = [k for k in sorted(doc) if isinstance(doc[k], dict) and doc[k]]
            if nested:
                outer = draw(st.sampled_from(nested))
                inner = draw(st.sampled_from(sorted(doc[outer])))
                doc[outer][inner] = draw(JSON)
            else:
                doc[key] = draw(JSON)
        return json.dumps(doc).encode()
    if kind == "truncate":
        return original[:draw(st.integers(0, len(original) - 1))]
    if kind == "bytes":
        return draw(st.binary(max_size=64))
    return json.dumps(draw(JSON)).encode()


def fresh_copy(base: Path, tmp: Path) -> tuple[Path, Path, Path]:
    run = tmp / "run"
    shutil.copytree(base / "run", run)
    shutil.copy(base / "img.npy", tmp / "img.npy")
    return run, run / "export", tmp / "img.npy"


# --- the run's JSON files ------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("rel", ["summary.json", "config.json", "plan.json", "manifest.json"])
@FUZZ
@given(data=st.data())
def test_fuzzed_run_json(base, rel, data):
    original = (base / "run" / rel).read_bytes()
    new = data.draw(mutated(original), label=rel)
    fix_checksum = rel != "manifest.json" and data.draw(st.booleans(), label="fix checksum")
    command = data.draw(st.sampled_from(["export", "evaluate", "predict"]), label="command")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        run, _, img = fresh_copy(base, tmp)
        (run / rel).write_bytes(new)
        if fix_checksum:
            manifest = json.loads((run / "manifest.json").read_text())
            manifest["files"][rel] = hashlib.sha256(new).hexdigest()
            (run / "manifest.json").write_text(json.dumps(manifest))
        before = snapshot(run)
        argv = {"export": ["export", run, "--out", tmp / "out"], "evaluate": ["evaluate", run],
                "predict": ["predict", run, img]}[command]
        rc, err = run_cli(*argv)
        assert_success_or_clean_error(rc, err)
        assert snapshot(run) == before                      # nothing in the run changed
        if command == "export":
            if rc == 0:
                assert sorted(p.name for p in (tmp / "out").iterdir()) == EXPORT_FILES
            else:
                assert not (tmp / "out").exists()
            assert not [p for p in tmp.iterdir() if p.name.startswith(".")]  # no staging left


# --- the export folder's JSON files --------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("name", ["model.json", "export.json"])
@FUZZ
@given(data=st.data())
def test_fuzzed_export_json(base, name, data):
    original = (base / "run" / "export" / name).read_bytes()
    new = data.draw(mutated(original), label=name)
    fix_checksum = name == "model.json" and data.draw(st.booleans(), label="fix checksum")
    command = data.draw(st.sampled_from(["evaluate", "predict", "export", "load_exported"]),
                        label="command")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        run, export, img = fresh_copy(base, tmp)
        (export / name).write_bytes(new)
        if fix_checksum:
            report = json.loads((export / "export.json").read_text())
            report["files"]["model.json"] = {"bytes": len(new),
                                             "sha256": hashlib.sha256(new).hexdigest()}
            (export / "export.json").write_text(json.dumps(report))
        before = snapshot(run)
        if command == "load_exported":
            from edge_trgl.errors import UserError
            from edge_trgl.export import load_exported
            try:
                model = load_exported(export)
            except UserError as exc:
                assert len(str(exc)) > 60
            else:
                assert sum(p.numel() for p in model.parameters()) > 0
        else:
            argv = {"evaluate": ["evaluate", export], "predict": ["predict", export, img],
                    "export": ["export", run]}[command]     # an export is there: refused
            rc, err = run_cli(*argv)
            assert_success_or_clean_error(rc, err)
            if command == "export":
                assert rc == 2 and "already holds an export" in " ".join(err.split()), err
        assert snapshot(run) == before                      # the export folder is kept


# --- the bytes of model.onnx ---------------------------------------------------------------------

@st.composite
def damaged_bytes(draw, original: bytes) -> bytes:
    kind = draw(st.sampled_from(["flip", "truncate", "append"]))
    if kind == "truncate":
        return original[:draw(st.integers(0, len(original) - 1))]
    if kind == "append":
        return original + draw(st.binary(min_size=1, max_size=64))
    raw = bytearray(original)
    positions = draw(st.lists(st.integers(0, len(raw) - 1), min_size=1, max_size=4, unique=True))
    for i in positions:   # (distinct positions: two flips of one byte could cancel out)
        raw[i] ^= draw(st.integers(1, 255))
    return bytes(raw)


@pytest.mark.slow
@FUZZ
@given(data=st.data())
def test_damaged_onnx_bytes(base, data):
    original = (base / "run" / "export" / "model.onnx").read_bytes()
    new = data.draw(damaged_bytes(original), label="model.onnx")
    where = data.draw(st.sampled_from(["export folder", "checksum fixed", "bare file"]),
                      label="where")
    command = data.draw(st.sampled_from(["evaluate", "predict", "export --force"]),
                        label="command")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        run, export, img = fresh_copy(base, tmp)
        (export / "model.onnx").write_bytes(new)
        if where == "checksum fixed":
            report = json.loads((export / "export.json").read_text())
            report["files"]["model.onnx"] = {"bytes": len(new),
                                             "sha256": hashlib.sha256(new).hexdigest()}
            (export / "export.json").write_text(json.dumps(report))
        target = export
        if where == "bare file":
            target = tmp / "bare" / "model.onnx"
            target.parent.mkdir()
            shutil.copy(export / "model.onnx", target)
        before = snapshot(tmp)
        if command == "export --force":
            rc, err = run_cli("export", run, "--force")
            assert rc == 0, err                           # a damaged export is replaced ...
            rc, err = run_cli("evaluate", export)
            assert rc == 0, err                           # ... by a whole one
            return
        argv = (["evaluate", target] + (["--data", "synthetic"] if where == "bare file" else [])
                if command == "evaluate" else ["predict", target, img])
        rc, err = run_cli(*argv)
        assert_success_or_clean_error(rc, err)
        if where == "export folder":
            assert rc == 2, err                           # never run unvouched-for bytes
        assert snapshot(tmp) == before


def test_an_accuracy_is_never_nan_in_a_report(base):
    """The export the fuzz tests start from is itself sound (guards the fixture)."""
    report = json.loads((base / "run" / "export" / "export.json").read_text())
    assert math.isfinite(report["test_acc_onnx"]) and 0 <= report["test_acc_onnx"] <= 1
    rc, err = run_cli("evaluate", base / "run" / "export")
    assert rc == 0, err
