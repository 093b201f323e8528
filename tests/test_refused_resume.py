"""A refused `edge-trgl train --resume` changes nothing: every file of the run directory is hashed
before and after each refused command and must be byte-identical (issue 15). Every damaged, edited
or inconsistent run file gives the one-paragraph error (exit 2), never a traceback; clean-up runs
only on a validated run and removes only what its manifest proves torn.

Two tiny runs are made once (module fixture) and copied per case: a finished one, and one killed
(SIGKILL, a power cut) while module 1 was being written back, which leaves module 1's new blocks
unlisted, a torn temp file of head 1 and a listed checkpoint as the resume point. The last part
fuzzes the run files with hypothesis (JSON edits, with and without re-signed checksums; flipped,
truncated, extended and deleted bytes in every kind of file).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import hypothesis
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_trgl.cli.main import main
from helpers import TINY, assert_one_paragraph_error, cli_child, run_cli

CKPT = "ckpt/module_01-lap0-epoch001.safetensors"
UNLISTED = ["blocks/block_002.safetensors", "blocks/block_003.safetensors"]


# --- helpers ------------------------------------------------------------------------------------

def snapshot(root: Path) -> dict[str, str]:
    """sha256 of every file under root (hidden files included), by relative path."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink()}


def resume(run: Path, *extra: str) -> tuple[int, str]:
    """`edge-trgl train --resume RUN` in this process; (exit status, stderr)."""
    return run_cli("train", "--resume", run, "--quiet", *extra)


def read(run: Path, rel: str):
    return json.loads((run / rel).read_text())


def write(run: Path, rel: str, obj, sign: bool = False) -> None:
    """Replace a JSON file of the run; `sign` also records its new sha256 in the manifest (and,
    for config.json, its identity hash), as a careful forger would: then only the file's own
    validation stands between the edit and the training."""
    path = run / rel
    path.write_text(json.dumps(obj))
    if sign and rel != "manifest.json":
        manifest = read(run, "manifest.json")
        manifest["files"][rel] = hashlib.sha256(path.read_bytes()).hexdigest()
        if rel == "config.json":
            ident = dict(obj) if isinstance(obj, dict) else {}
            for k in ("out", "progress", "keep_cache", "threads", "module_peaks"):
                ident.pop(k, None)
            try:
                manifest["config_hash"] = hashlib.sha256(
                    json.dumps(ident, sort_keys=True).encode()).hexdigest()
            except (TypeError, ValueError):
                pass
        (run / "manifest.json").write_text(json.dumps(manifest))


def edit(rel: str, change, sign: bool = False):
    def damage(run: Path) -> None:
        obj = read(run, rel)
        obj = change(obj) or obj
        write(run, rel, obj, sign=sign)
    return damage


def flip(rel: str, at: int = -3):
    def damage(run: Path) -> None:
        raw = bytearray((run / rel).read_bytes())
        raw[at] ^= 0x01
        (run / rel).write_bytes(bytes(raw))
    return damage


def truncate(rel: str):
    def damage(run: Path) -> None:
        raw = (run / rel).read_bytes()
        (run / rel).write_bytes(raw[: len(raw) // 2])
    return damage


def delete(rel: str):
    return lambda run: (run / rel).unlink()


def assert_complete_and_intact(run: Path) -> None:
    manifest = read(run, "manifest.json")
    assert manifest["status"] == "complete"
    for rel, sha in manifest["files"].items():
        assert hashlib.sha256((run / rel).read_bytes()).hexdigest() == sha, rel
    for i in range(4):
        assert (run / f"blocks/block_{i:03d}.safetensors").is_file()
    for k in range(2):
        assert (run / f"heads/head_{k:02d}.safetensors").is_file()
    assert not list(run.rglob(".*.tmp*")), "temp files left behind"


# --- the two runs ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("runs")
    finished = base / "finished"
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["train", *TINY, "--out", str(finished)]) == 0
    killed = base / "killed"
    # set-up saves 4 blocks + 2 heads (6); module 0: checkpoint, blocks 0-1, head 0, optimizer
    # (7-11); module 1: checkpoint (12), blocks 2, 3 written back (13, 14), head 1 half written (15)
    proc = cli_child("train", *TINY, "--out", killed, kill="save:15")
    assert proc.returncode == -9, proc.stderr[-3000:]
    manifest = read(killed, "manifest.json")
    assert manifest["progress"]["ckpt"] == CKPT and manifest["progress"]["phase"] == "train"
    assert all(rel not in manifest["files"] and (killed / rel).is_file() for rel in UNLISTED)
    assert list((killed / "heads").glob(".head_01.safetensors.tmp-*"))
    return {"finished": finished, "killed": killed}


@pytest.fixture
def copy_of(runs, tmp_path):
    def make(name: str) -> Path:
        run = tmp_path / name
        shutil.copytree(runs[name], run, symlinks=True)
        return run
    return make


# --- refused commands leave the run byte-identical ------------------------------------------------

def _set(path: list, value):
    def change(obj):
        target = obj
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return change


def _pop(path: list):
    def change(obj):
        target = obj
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]
    return change


MANIFEST_CASES = {
    "not utf-8": (lambda r: (r / "manifest.json").write_bytes(
        b"\xff\xfe" + (r / "manifest.json").read_bytes()), ["is not UTF-8 text"]),
    "not json": (truncate("manifest.json"), ["is not valid JSON"]),
    "a list": (lambda r: (r / "manifest.json").write_text("[1, 2]"),
               ["is a JSON list, not an object"]),
    "null": (lambda r: (r / "manifest.json").write_text("null"), ["is a JSON null"]),
    "no files key": (edit("manifest.json", _pop(["files"])), ["the key 'files' is missing"]),
    "no progress": (edit("manifest.json", _pop(["progress"])), ["the key 'progress' is missing"]),
    "format text": (edit("manifest.json", _set(["format"], "1")), ['format is "1"']),
    "format 2": (edit("manifest.json", _set(["format"], 2)), ["incompatible edge-trgl version"]),
    "status": (edit("manifest.json", _set(["status"], "paused")), ["status is \"paused\""]),
    "module out of range": (edit("manifest.json", _set(["modules", "7"], {})),
                            ["modules['7'] names module 7", "has 2 modules"]),
    "module key": (edit("manifest.json", _set(["modules", "zero"], {})), ["not a module number"]),
    "module blocks": (edit("manifest.json", _set(["modules", "0", "hi"], 3)),
                      ["the plan gives module 0 lo=0, hi=2"]),
    "accuracy text": (edit("manifest.json", _set(["modules", "0", "val_acc"], "high")),
                      ["val_acc is \"high\""]),
    "cache out of range": (edit("manifest.json", _set(["caches", "5"], {})), ["caches['5']"]),
    "progress module": (edit("manifest.json", _set(["progress", "module"], 9)),
                        ["progress names module 9"]),
    "progress phase": (edit("manifest.json", _set(["progress", "phase"], "flying")),
                       ["progress.phase"]),
    "lap out of range": (edit("manifest.json", _set(["progress", "lap"], 3)), ["records lap 3"]),
    "file outside": (edit("manifest.json", _set(["files", "../elsewhere"], "0" * 64)),
                     ["not the path of a file inside the run"]),
    "absolute file": (edit("manifest.json", _set(["files", "/dev/zero"], "0" * 64)),
                      ["not the path of a file inside the run"]),
    "checksum not hex": (edit("manifest.json", _set(["files", "plan.json"], "xyz")),
                         ["not a sha256 checksum"]),
    "empty files table": (edit("manifest.json", _set(["files"], {})), ["lists no files at all"]),
    "block unlisted": (edit("manifest.json", _pop(["files", "blocks/block_000.safetensors"])),
                       ["does not list blocks/block_000.safetensors"]),
    "block beyond plan": (lambda r: edit("manifest.json", _set(
        ["files", "blocks/block_009.safetensors"], read(r, "manifest.json")["files"][
            "blocks/block_000.safetensors"]))(r), ["beyond the 4 blocks"]),
    "metrics_lines negative": (edit("manifest.json", _set(["metrics_lines"], -1)),
                               ["metrics_lines is -1"]),
    "no config hash": (edit("manifest.json", _pop(["config_hash"])), ["'config_hash' is missing"]),
}

OTHER_CASES = {
    "config lr": (edit("config.json", _set(["lr"], 0.07)), ["was changed after the run started"]),
    "config threads": (edit("config.json", _set(["threads"], 2)),
                       ["was edited after the run started"]),
    "config type": (edit("config.json", _set(["epochs"], "3"), sign=True),
                    ['epochs is "3", not a whole number']),
    "config value": (edit("config.json", _set(["scheme"], "zigzag"), sign=True),
                     ["Unknown --scheme 'zigzag'"]),
    "config list": (lambda r: write(r, "config.json", [1], sign=True),
                    ["is not a valid run config"]),
    "config unknown key": (edit("config.json", _set(["colour"], "red"), sign=True),
                           ["unknown keys ['colour']"]),
    "config not json": (truncate("config.json"), ["is not valid JSON"]),
    "config deleted": (delete("config.json"), ["lacks a readable config.json"]),
    "plan edited": (edit("plan.json", _set(["batch_size"], 64)),
                    ["plan.json does not match the checksum"]),
    "plan gap (signed)": (edit("plan.json", _set(["splits"], [[0, 2], [3, 4]]), sign=True),
                          ["plan.json splits[1]"]),
    "plan shorter (signed)": (edit("plan.json", _set(["splits"], [[0, 2]]), sign=True),
                              ["module 1", "but the plan (plan.json) has 1 module (0..0)"]),
    "plan longer (signed)": (edit("plan.json", _set(["splits"], [[0, 2], [2, 6]]), sign=True),
                             {"finished": ["the plan gives module 1 lo=2, hi=6"],
                              "killed": [f"{CKPT} holds blocks 2-3 of module 1", "blocks 2-5"]}),
    "plan batch (signed)": (edit("plan.json", _set(["batch_size"], 0), sign=True),
                            ["batch_size is 0"]),
    "plan deleted": (delete("plan.json"), ["lacks a readable plan.json"]),
    "block flipped": (flip("blocks/block_000.safetensors"),
                      ["block_000.safetensors (checksum mismatch)"]),
    "block truncated": (truncate("blocks/block_001.safetensors"),
                        ["block_001.safetensors (checksum"]),
    "block deleted": (delete("blocks/block_000.safetensors"), ["block_000.safetensors (missing)"]),
    "head flipped": (flip("heads/head_00.safetensors"),
                     ["head_00.safetensors (checksum mismatch)"]),
    "optimizer truncated": (truncate("optim/module_00.safetensors"),
                            ["module_00.safetensors (checksum"]),
    "metrics damaged": (flip("metrics.jsonl", at=0), ["metrics.jsonl is damaged", "line 1"]),
    "metrics line lost": (lambda r: (r / "metrics.jsonl").write_bytes(
        (r / "metrics.jsonl").read_bytes().split(b"\n", 1)[1]), ["metrics.jsonl is damaged"]),
}

KILLED_CASES = {
    "checkpoint flipped": (flip(CKPT), [f"{CKPT} (checksum mismatch)"]),
    "checkpoint deleted": (delete(CKPT), [f"{CKPT} (missing)"]),
    "checkpoint unlisted": (edit("manifest.json", _pop(["files", CKPT])),
                            [f"does not list {CKPT}"]),
}

FINISHED_CASES = {
    "summary flipped": (flip("summary.json", at=5), ["summary.json (checksum mismatch)"]),
    "summary modules (signed)": (edit("summary.json", _set(["modules"], "all"), sign=True),
                                 ["summary.json modules is a JSON string"]),
    "summary row (signed)": (edit("summary.json", _pop(["modules", 0, "blocks"]), sign=True),
                             ["summary.json modules[0].blocks"]),
    "summary unlisted": (edit("manifest.json", _pop(["files", "summary.json"])),
                         ["does not list summary.json"]),
}


def _cases():
    for name, (damage, phrases) in {**MANIFEST_CASES, **OTHER_CASES}.items():
        for base in ("finished", "killed"):
            yield pytest.param(base, damage, phrases, id=f"{base}-{name}")
    for name, (damage, phrases) in KILLED_CASES.items():
        yield pytest.param("killed", damage, phrases, id=f"killed-{name}")
    for name, (damage, phrases) in FINISHED_CASES.items():
        yield pytest.param("finished", damage, phrases, id=f"finished-{name}")


@pytest.mark.parametrize("base,damage,phrases", list(_cases()))
def test_refused_resume_leaves_the_run_byte_identical(copy_of, base, damage, phrases):
    if isinstance(phrases, dict):
        phrases = phrases[base]
    run = copy_of(base)
    damage(run)
    before = snapshot(run)
    rc, err = resume(run)
    assert_one_paragraph_error(rc, err, *phrases)
    assert snapshot(run) == before
    if base == "killed":  # the blocks the manifest does not list yet are still there
        assert all((run / rel).is_file() for rel in UNLISTED)


def test_clashing_option_and_empty_path_are_refused_unchanged(copy_of):
    run = copy_of("killed")
    before = snapshot(run)
    rc, err = resume(run, "--epochs", "4")
    assert_one_paragraph_error(rc, err, "--epochs 4 (the run has 1)")
    assert snapshot(run) == before
    err_io = io.StringIO()
    with contextlib.redirect_stderr(err_io):
        rc = main(["train", "--resume", ""])
    assert_one_paragraph_error(rc, err_io.getvalue(), "--resume needs the run directory")


def test_damaged_run_locked_by_another_process_says_so(copy_of):
    """What looks damaged while another process trains the run may be that process's work in
    progress: the message is about the lock, and nothing is touched."""
    from edge_trgl.run import Run
    run = copy_of("killed")
    flip("blocks/block_000.safetensors")(run)
    holder = Run.open(run, clean=False)
    holder.lock()
    try:
        before = snapshot(run)
        rc, err = resume(run)
        assert_one_paragraph_error(rc, err, "Another edge-trgl process is training the run")
        assert snapshot(run) == before
    finally:
        holder._lock_fh.close()


# --- what an accepted resume cleans, and what it keeps -------------------------------------------

def test_resume_of_the_killed_run_removes_only_what_the_manifest_proves_torn(copy_of):
    run = copy_of("killed")
    # files the manifest cannot prove torn: a block beyond the model and a user's note
    foreign = {"blocks/block_099.safetensors": b"someone's weights", "heads/README": b"mine"}
    for rel, data in foreign.items():
        (run / rel).write_bytes(data)
    rc, err = resume(run)
    assert rc == 0, err
    assert_complete_and_intact(run)
    for rel, data in foreign.items():
        assert (run / rel).read_bytes() == data, rel
    assert not list((run / "ckpt").glob("*"))    # the checkpoint was consumed, not left behind
    # a finished run resumed again: nothing to do, nothing changed
    before = snapshot(run)
    rc, err = resume(run)
    assert rc == 0, err
    assert snapshot(run) == before


def test_open_for_resume_can_leave_the_clean_up_to_its_caller(copy_of):
    """clean=False: every check runs, nothing is removed until the caller (after its own checks,
    such as the dataset's fingerprint) calls clean_torn_files, which removes exactly the torn
    files: the temp file of head 1 and module 1's unlisted blocks and head, which the listed
    checkpoint replaces."""
    from edge_trgl.config import TrainConfig
    from edge_trgl.resume import open_for_resume
    run_dir = copy_of("killed")
    before = snapshot(run_dir)
    run, cfg, plan = open_for_resume(run_dir, TrainConfig(), clean=False)
    try:
        assert plan["splits"] == [[0, 2], [2, 4]]
        assert snapshot(run_dir).keys() - {".lock"} == before.keys() - {".lock"}
        run.clean_torn_files(cfg)
        gone = before.keys() - snapshot(run_dir).keys()
        temps = {rel for rel in gone if rel.startswith("heads/.head_01.safetensors.tmp-")}
        assert len(temps) == 1
        assert gone - temps == {*UNLISTED, "heads/head_01.safetensors"}
        listed = read(run_dir, "manifest.json")["files"]
        assert all((run_dir / rel).is_file() for rel in listed)
    finally:
        run._lock_fh.close()


def test_resume_continues_without_a_moved_away_log(copy_of):
    """The refusal for a damaged metrics.jsonl suggests moving it away: then resume continues,
    the manifest's count of committed lines starts again at 0, and the moved file is kept."""
    run = copy_of("killed")
    (run / "metrics.jsonl").rename(run / "metrics.jsonl.damaged")
    moved = (run / "metrics.jsonl.damaged").read_bytes()
    rc, err = resume(run)
    assert rc == 0, err
    assert_complete_and_intact(run)
    # the killed run had finished module 1's last epoch: no epoch is logged again
    assert not (run / "metrics.jsonl").exists()
    assert read(run, "manifest.json")["metrics_lines"] == 0
    assert (run / "metrics.jsonl.damaged").read_bytes() == moved
    before = snapshot(run)
    assert resume(run)[0] == 0 and snapshot(run) == before


def test_read_only_run_directory_is_refused_clearly(runs, tmp_path):
    """A read-only mount (the root user writes through file modes, so a real read-only file
    system is the test): a clear error, exit 2, no traceback."""
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare")
    run = tmp_path / "killed"
    shutil.copytree(runs["killed"], run, symlinks=True)
    q = shlex.quote(str(run))
    probe = subprocess.run(["unshare", "-rm", "sh", "-c",
                            f"mount --bind {q} {q} && mount -o remount,bind,ro {q}"],
                           capture_output=True)
    if probe.returncode != 0:
        pytest.skip("cannot make a read-only bind mount here (no user namespaces)")
    before = snapshot(run)
    cmd = (f"mount --bind {q} {q} && mount -o remount,bind,ro {q} && "
           f"{shlex.quote(sys.executable)} -m edge_trgl.cli.main train --resume {q} --quiet")
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", cmd], capture_output=True, text=True,
                          timeout=300)
    assert_one_paragraph_error(proc.returncode, proc.stderr, f"The run directory {run} cannot be "
                               f"written to", "read-only file system", "cp -a")
    assert snapshot(run) == before


# --- property-based: fuzzed run files -------------------------------------------------------------

# deterministic by default (the same examples on every machine); EDGE_TRGL_FUZZ_EXAMPLES=N
# explores N random examples per test instead
_EXPLORE = os.environ.get("EDGE_TRGL_FUZZ_EXAMPLES")
FUZZ = settings(max_examples=int(_EXPLORE or 25), derandomize=not _EXPLORE, deadline=None,
                database=None, suppress_health_check=[HealthCheck.too_slow])

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True)
    | st.text(max_size=12) | st.sampled_from(["ckpt/x", "../x", "/etc/passwd", "0" * 64, "train",
                                             "complete", "cache/module_00/a.npy"]),
    lambda inner: (st.lists(inner, max_size=3)
                   | st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=6)
JSON_FILES = ["manifest.json", "config.json", "plan.json", "summary.json"]


def _paths(obj, prefix=()):
    """Every (path, value) in a JSON document, the root included."""
    yield prefix, obj
    if isinstance(obj, dict):
        for key, value in obj.items():
            yield from _paths(value, prefix + (key,))
    elif isinstance(obj, list):
        for i, value in enumerate(obj):
            yield from _paths(value, prefix + (i,))


@st.composite
def json_edit(draw, base: str):
    files = [f for f in JSON_FILES if f != "summary.json" or base == "finished"]
    rel = draw(st.sampled_from(files))
    op = draw(st.sampled_from(["replace", "delete", "add", "whole"]))
    seed = draw(st.integers(0, 2**32 - 1))
    value = draw(JSON_VALUES)
    key = draw(st.text(max_size=6) | st.sampled_from(["0", "1", "7", "lo", "hi", "lap", "ckpt"]))
    sign = draw(st.booleans())
    return rel, op, seed, value, key, sign


def apply_json_edit(run: Path, rel: str, op: str, seed: int, value, key: str, sign: bool) -> None:
    import random
    obj = read(run, rel)
    paths = list(_paths(obj))
    path, target = paths[random.Random(seed).randrange(len(paths))]
    if op == "whole" or not path and op != "add":
        obj = value
    elif op == "replace":
        parent = obj
        for k in path[:-1]:
            parent = parent[k]
        parent[path[-1]] = value
    elif op == "delete":
        parent = obj
        for k in path[:-1]:
            parent = parent[k]
        del parent[path[-1]]
    elif isinstance(target, dict):
        target[key] = value
    elif isinstance(target, list):
        target.append(value)
    else:
        obj = value
    write(run, rel, obj, sign=sign)


@st.composite
def byte_damage(draw, files: list[str]):
    rel = draw(st.sampled_from(files))
    op = draw(st.sampled_from(["flip", "truncate", "append", "delete", "empty"]))
    where = draw(st.floats(0, 1, exclude_max=True))
    bit = draw(st.integers(0, 7))
    extra = draw(st.binary(min_size=1, max_size=16))
    return rel, op, where, bit, extra


def apply_byte_damage(run: Path, rel: str, op: str, where: float, bit: int, extra: bytes) -> None:
    path = run / rel
    raw = bytearray(path.read_bytes())
    if op == "delete":
        path.unlink()
    elif op == "empty" or not raw:
        path.write_bytes(b"")
    elif op == "flip":
        raw[int(where * len(raw))] ^= 1 << bit
        path.write_bytes(bytes(raw))
    elif op == "truncate":
        path.write_bytes(bytes(raw[: int(where * len(raw))]))
    else:
        path.write_bytes(bytes(raw) + extra)


def check_outcome(run: Path, base: str, before: dict[str, str], listed_before: set[str],
                  pristine: dict[str, str]) -> None:
    """No traceback; refused (2) leaves every byte as it was; accepted (0) leaves a complete,
    intact run that lost no weight file."""
    rc, err = resume(run)
    assert "Traceback" not in err, err
    assert rc in (0, 2), (rc, err)
    hypothesis.event(f"{base}: exit {rc}")
    after = snapshot(run)
    if rc == 2:
        assert err.startswith("edge-trgl: error: ") and "\n\n" not in err.strip(), err
        assert after == before, "a refused resume changed the run"
        return
    assert_complete_and_intact(run)
    if base == "finished":
        # nothing to train; clean-up may only drop log lines after the committed ones (back to
        # the run's own log) and make a deleted lock file again
        assert after.get("metrics.jsonl") in (pristine["metrics.jsonl"],
                                              before.get("metrics.jsonl"))
        skip = (".lock", "metrics.jsonl")
        assert {k: v for k, v in after.items() if k not in skip} == \
               {k: v for k, v in before.items() if k not in skip}
    else:                    # consumed on the way: the checkpoint, caches, temp and unlisted copies
        kept = {rel for rel in listed_before if not rel.startswith(("ckpt/", "cache/"))}
        assert kept <= set(after), kept - set(after)


def damage_a_copy_and_check(runs: dict[str, Path], base: str, apply, damage: tuple) -> None:
    """`apply(run, *damage)` to a fresh copy of run `base`, then resume it (check_outcome)."""
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / base
        shutil.copytree(runs[base], run, symlinks=True)
        listed = set(read(run, "manifest.json")["files"])
        apply(run, *damage)
        check_outcome(run, base, snapshot(run), listed, snapshot(runs[base]))


@pytest.mark.slow
@FUZZ
@given(base=st.sampled_from(["finished", "killed"]), data=st.data())
def test_fuzzed_json_files_never_crash_resume_or_lose_files(runs, base, data):
    change = data.draw(json_edit(base))
    damage_a_copy_and_check(runs, base, apply_json_edit, change)


@pytest.mark.slow
@FUZZ
@given(base=st.sampled_from(["finished", "killed"]), data=st.data())
def test_damaged_bytes_in_any_run_file_never_crash_resume_or_lose_files(runs, base, data):
    files = sorted(snapshot(runs[base]))
    damage = data.draw(byte_damage(files))
    damage_a_copy_and_check(runs, base, apply_byte_damage, damage)
