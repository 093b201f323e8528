"""Running benchmark rows: each expanded row in a fresh child process
(`python -m edge_trgl.cli.main train ... --out TMP --quiet`), measured from outside by
memory.measure.run_measured, one JSON file per run in <results>/<suite>/<row-id>.json. Rows that
already have a successful result are skipped, so an interrupted suite continues where it stopped.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ..atomic import atomic_write_json, directory_lock
from ..config import TrainConfig
from ..errors import UserError
from ..memory.measure import run_measured
from ..memory.procfs import status_field
from .resumable import (STOP_GRACE_S, add_segment, combine_segments, how_it_ended,
                        previous_segments, resumable_row_dir, resume_command,
                        worth_resuming)
from .matrix import DEFAULT_TIMEOUT_S, BenchRow, Matrix
from .results import (RESULT_FORMAT, host_info, loadavg, measurements_from_run, read_json,
                      result_ok, timestamp)
from .tables import fmt_mb

LOG_TAIL_CHARS = 3000


# ------------------------------------------------------------------------------------------------
# Watching a child
# ------------------------------------------------------------------------------------------------

class _TreeSampler:
    """The `poll` of run_measured for a benchmark child. Descendants (ONNX Runtime trainers,
    planner probes) are looked up every `rescan_s`; on every tick the summed VmRSS of the child
    and its descendants is sampled (a sample, so it can miss spikes shorter than the 20 ms tick)
    and each descendant's VmHWM is kept. Past `timeout_s` it stops the whole tree, once (so
    run_measured gets no timeout of its own)."""

    def __init__(self, timeout_s: float | None, rescan_s: float = 0.5,
                 grace_s: float | None = None):
        import psutil
        self._psutil = psutil
        self.timeout_s, self.rescan_s, self.grace_s = timeout_s, rescan_s, grace_s
        self._asked_at: float | None = None
        self.start = time.perf_counter()
        self.tree_peak = self.descendant_hwm = 0
        self.descendants: list[int] = []
        self.timed_out = self.child_seen = False
        self._last_scan = -1e9

    def __call__(self, proc) -> None:
        now = time.perf_counter()
        if now - self._last_scan >= self.rescan_s:
            try:
                self.descendants = [c.pid for c in
                                    self._psutil.Process(proc.pid).children(recursive=True)]
            except self._psutil.Error:
                self.descendants = []
            self._last_scan = now
        own = status_field("VmRSS", proc.pid)
        self.child_seen |= own > 0
        tree = own
        for d in self.descendants:
            tree += status_field("VmRSS", d)
            self.descendant_hwm = max(self.descendant_hwm, status_field("VmHWM", d))
        self.tree_peak = max(self.tree_peak, tree)
        if self.timeout_s is not None and now - self.start > self.timeout_s and not self.timed_out:
            self.timed_out = True
            if self.grace_s is None:
                self.kill(proc)
            else:  # the trainer stops at the end of its epoch, saved, and forwards it to its children
                with contextlib.suppress(OSError):
                    os.kill(proc.pid, signal.SIGTERM)
                self._asked_at = now
        elif self._asked_at is not None and now - self._asked_at > self.grace_s:
            self._asked_at = None
            self.kill(proc)

    def kill(self, proc) -> None:
        # os.kill, not proc.kill(): Popen polls (and may reap) the child first, and run_measured's
        # os.wait4 must be the one that reaps it
        for pid in (*self.descendants, proc.pid):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


def _run_watched(cmd: list[str], *, env: dict | None = None, stdout=None, stderr=None,
                 timeout_s: float | None = None, grace_s: float | None = None) -> dict:
    """Run `cmd` as a child; measure its peak RSS from outside with run_measured.

    The figure is the child's VmHWM polled from /proc/<pid>/status every 20 ms, not os.wait4's
    ru_maxrss, for two reasons: exec folds the high-water mark of the address space it replaces
    into ru_maxrss (with vfork, the parent's), and a run that resets its VmHWM between modules
    (clear_refs, for per-module peaks) leaves ru_maxrss with only the peak since the last reset.
    VmHWM is a high-water mark, so a poll sees every earlier peak; only growth in the last 20 ms
    before a reset or exit can be missed. ru_maxrss is returned alongside, and the process tree
    as _TreeSampler samples it. Past `timeout_s` the child is killed, or with `grace_s` asked to
    stop (SIGTERM) and killed only if it has not exited `grace_s` seconds later."""
    sampler = _TreeSampler(timeout_s, grace_s=grace_s)
    started: list = []
    detail: dict = {}
    try:
        status, self_peak, wall_s = run_measured(cmd, env=env, stdout=stdout, stderr=stderr,
                                                 detail=detail, on_start=started.append,
                                                 poll=sampler)
    except BaseException:  # Ctrl-C or SIGTERM of the harness: take the run down with it
        for proc in started:
            sampler.kill(proc)
            proc.wait()
        raise
    return {"status": status, "timed_out": sampler.timed_out,
            # run_measured falls back to ru_maxrss when it never read a VmHWM; this figure does not
            "vmhwm_polled_bytes": self_peak if sampler.child_seen else 0,
            "ru_maxrss_bytes": detail["tree_peak_rss_bytes"],
            "tree_rss_peak_bytes": sampler.tree_peak,
            "descendant_peak_rss_bytes": sampler.descendant_hwm or None,
            "wall_s": wall_s, "cpu_s": detail.get("cpu_s")}


# ------------------------------------------------------------------------------------------------
# Baselines
# ------------------------------------------------------------------------------------------------

_BASELINE_CODE = """
import sys
backend, device = sys.argv[1], sys.argv[2]
if backend == "torch" or device == "cuda":
    import torch
else:  # the ONNX Runtime trainers block torch (onnxruntime would import it if it could)
    sys.modules.setdefault("torch", None)
import edge_trgl.cli.main, edge_trgl.train
from edge_trgl.config import TrainConfig
from edge_trgl.targets import get_target
cfg = TrainConfig(backend=backend, device=device)
get_target(cfg).make_backend(cfg)
if backend == "ort":
    import onnxruntime  # what its trainer processes load
if device == "cuda":
    torch.zeros(1, device="cuda")  # the CUDA context is part of what every CUDA run pays
"""


_DATA_CODE = """
import json, sys
from edge_trgl.data import load_dataset
o = json.loads(sys.argv[1])
load_dataset(o["data"], o["data_dir"], seed=o["seed"], train_fraction=o["train_fraction"],
             val_fraction=o["val_fraction"], test_fraction=o["test_fraction"],
             synthetic_train=o["synthetic_train"],
             synthetic_test=o["synthetic_test"])
"""


def _child_env() -> dict:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _measure_snippet(code: str, args: list[str], repeats: int = 3) -> dict:
    peaks, errors = [], []
    for _ in range(repeats):
        proc_log = tempfile.TemporaryFile()
        with proc_log:
            w = _run_watched([sys.executable, "-c", code, *args], env=_child_env(),
                             stdout=proc_log, stderr=subprocess.STDOUT, timeout_s=300)
            if w["status"] == 0:
                peaks.append(w["vmhwm_polled_bytes"])
            else:
                proc_log.seek(0)
                errors.append(proc_log.read()[-600:].decode(errors="replace"))
    if not peaks:
        return {"peak_rss_bytes": None, "error": errors[-1] if errors else "failed"}
    return {"peak_rss_bytes": int(statistics.median(peaks)), "samples_bytes": peaks}


def measure_baseline(backend: str, device: str, repeats: int = 3) -> dict:
    """Peak RSS of a child that only imports the framework, edge-trgl and the backend: the floor
    under every run of that backend, whatever the model (torch for the torch backend,
    onnxruntime without torch for the ORT backend)."""
    out = _measure_snippet(_BASELINE_CODE, [backend, device], repeats)
    out.update({"backend": backend, "device": device, "measured_at": timestamp(),
                "method": f"median of {repeats} fresh children: python -c 'import torch (torch "
                          "backend or CUDA), edge_trgl.cli.main, edge_trgl.train; its target's make_backend(...)' "
                          "(+ onnxruntime for ort, + a CUDA context on cuda); the child's VmHWM "
                          "polled from outside"})
    return out


def measure_data_baseline(options: dict, repeats: int = 3) -> dict:
    """Peak RSS of a child that only loads and splits the dataset (no torch): shows how much of a
    run's peak the data loader alone can reach."""
    d = TrainConfig()
    spec = {k: options.get(k, getattr(d, k)) for k in
            ("data", "data_dir", "seed", "train_fraction", "val_fraction", "test_fraction",
             "synthetic_train", "synthetic_test")}
    out = _measure_snippet(_DATA_CODE, [json.dumps(spec)], repeats)
    out.update({"spec": spec, "measured_at": timestamp()})
    return out


def _data_key(options: dict) -> tuple:
    d = TrainConfig()
    return tuple(options.get(k, getattr(d, k)) for k in
                 ("data", "data_dir", "train_fraction", "val_fraction", "test_fraction",
                  "synthetic_train", "synthetic_test"))


# ------------------------------------------------------------------------------------------------
# Rows and suites
# ------------------------------------------------------------------------------------------------

def run_row(row: BenchRow, *, baseline: dict | None = None, data_baseline: dict | None = None,
            timeout_s: float = DEFAULT_TIMEOUT_S, work_dir: str | None = None,
            keep_runs: bool = False, resumable: bool = False) -> dict | None:
    """Run one row in a fresh child process and return its result record. With `resumable` the
    row trains in WORK_DIR/<row id>/run; a run stopped by `timeout_s` (asked to stop at the end of
    its epoch) or killed by a signal is kept there and None is returned, and the next call
    continues it (resumable.py)."""
    if resumable:
        tmp = resumable_row_dir(work_dir, row)
    else:
        tmp = Path(tempfile.mkdtemp(prefix=f"edge-trgl-bench-{row.row_id}-", dir=work_dir))
    out = tmp / "run"
    first = [sys.executable, "-m", "edge_trgl.cli.main", "train", *row.train_args,
             "--out", str(out), "--quiet"]
    cmd = resume_command(first[:3], out, row) if resumable and out.exists() else first
    load_start, started = loadavg(), timestamp()
    t0, keep = time.perf_counter(), keep_runs
    try:
        with open(tmp / "train.log", "ab" if resumable else "wb") as log:
            watched = _run_watched(cmd, env=_child_env(), stdout=log, stderr=subprocess.STDOUT,
                                   timeout_s=timeout_s,
                                   grace_s=STOP_GRACE_S if resumable else None)
        status = watched["status"]
        load_end, host = loadavg(), host_info()
        segment = {"command_line": shlex.join(cmd), "started_at": started,
                   "finished_at": timestamp(), "finished_unix": time.time(),
                   "loadavg_start": load_start,
                   "loadavg_end": load_end, "returncode": status,
                   "ended": how_it_ended(status, watched["timed_out"]),
                   "wall_s": watched["wall_s"], "cpu_s": watched.get("cpu_s"),
                   "vmhwm_polled_bytes": watched["vmhwm_polled_bytes"],
                   "tree_rss_peak_bytes": watched["tree_rss_peak_bytes"],
                   "cpu_model": host.get("cpu_model")}
        if resumable and worth_resuming(status, watched["timed_out"]) and out.exists():
            add_segment(tmp, row, segment)
            keep = True
            return None
        log_text = (tmp / "train.log").read_bytes().decode(errors="replace")
        record = {"format": RESULT_FORMAT, "suite": row.suite, "group": row.group,
                  "row_id": row.row_id, "method": row.method, "seed": row.seed,
                  "repeat": row.repeat,
                  "status": "ok" if status == 0 else ("timeout" if watched["timed_out"] else "failed"),
                  "returncode": status,
                  "command": first, "command_line": shlex.join(first), "train_args": row.train_args,
                  "options": row.options, "started_at": started, "finished_at": timestamp(),
                  "loadavg_start": load_start, "loadavg_end": load_end,
                  "timeout_s": timeout_s, "host": host,
                  "baseline": baseline, "data_baseline": data_baseline,
                  "log_tail": log_text[-LOG_TAIL_CHARS:]}
        record.update(measurements_from_run(out, watched))
        if resumable:
            segments = [*previous_segments(tmp), segment]
            record["segments"] = segments
            if len(segments) > 1:
                record["started_at"] = segments[0]["started_at"]
                combine_segments(record["measurements"], record["metrics"], segments)
        meas = record["measurements"]
        peak = meas["peak_rss_bytes"]
        base = (baseline or {}).get("peak_rss_bytes")
        meas["baseline_rss_bytes"] = base
        meas["peak_above_baseline_bytes"] = peak - base if base else None
        meas["data_loading_peak_rss_bytes"] = (data_baseline or {}).get("peak_rss_bytes")
        if status == 0 and not record["summary"]:
            record["status"] = "failed"
        return record
    except BaseException:  # the harness itself was stopped: the run it killed can still resume
        if resumable and out.exists():
            add_segment(tmp, row, {
                "command_line": shlex.join(cmd), "started_at": started,
                "finished_at": timestamp(), "finished_unix": time.time(),
                "ended": "the harness was stopped",
                "wall_s": time.perf_counter() - t0, "cpu_s": None})
            keep = True
        raise
    finally:
        if not keep:
            shutil.rmtree(tmp, ignore_errors=True)


def select_rows(matrix: Matrix, only: list[str] | None) -> list:
    """The rows whose id or group matches one of the `only` globs (every row without `only`)."""
    rows = [r for r in matrix.rows
            if not only or any(fnmatch.fnmatchcase(r.row_id, p) or fnmatch.fnmatchcase(r.group, p)
                               for p in only)]
    if only and not rows:
        raise UserError(f"--only {' '.join(only)} matches no row of suite {matrix.name}; the rows "
                        f"are: {', '.join(r.row_id for r in matrix.rows)}.")
    return rows


def run_suite(matrix: Matrix, results_dir: str | os.PathLike, *, only: list[str] | None = None,
              force: bool = False, timeout_s: float | None = None, work_dir: str | None = None,
              keep_runs: bool = False, command: str | None = None, echo=None,
              baseline_repeats: int = 3, resumable: bool = False) -> dict:
    """Run every row of `matrix` not already done (unless `force`); one JSON per run. With
    `resumable`, a row stopped by its time limit is kept in WORK_DIR/<row id> (no JSON) and the
    next invocation continues it (resumable.py)."""
    if echo is None:
        def echo(text):  # flushed: the suite usually runs for an hour under nohup
            print(text, flush=True)
    suite_dir = Path(results_dir) / matrix.name
    rows = select_rows(matrix, only)
    if resumable and not work_dir:
        resumable_row_dir(work_dir, rows[0])  # the one-paragraph error, before any work
    if work_dir is not None:
        Path(work_dir).mkdir(parents=True, exist_ok=True)
    timeout = timeout_s if timeout_s is not None else matrix.timeout_s
    invocation = {"command": command or "(library call)", "matrix": matrix.path,
                  "started_at": timestamp(), "loadavg_start": loadavg(), "rows_run": [],
                  "rows_skipped": [], "rows_failed": [], "rows_stopped": []}
    t0 = time.perf_counter()
    baselines: dict[tuple, dict] = {}
    data_baselines: dict[tuple, dict] = {}
    for i, row in enumerate(rows, 1):
        path = suite_dir / f"{row.row_id}.json"
        if not force and result_ok(path):
            invocation["rows_skipped"].append(row.row_id)
            echo(f"[{matrix.name} {i}/{len(rows)}] {row.row_id}: done before, skipped "
                 f"(--force to re-run)")
            continue
        key = (row.backend, row.device)
        if key not in baselines:
            baselines[key] = measure_baseline(*key, repeats=baseline_repeats)
            atomic_write_json(suite_dir / f"_baseline-{key[0]}-{key[1]}.json", baselines[key])
        dkey = _data_key(row.options)
        if dkey not in data_baselines:
            data_baselines[dkey] = measure_data_baseline(row.options, repeats=baseline_repeats)
        echo(f"[{matrix.name} {i}/{len(rows)}] {row.row_id}: edge-trgl train "
             f"{shlex.join(row.train_args)}")
        record = run_row(row, baseline=baselines[key], data_baseline=data_baselines[dkey],
                         timeout_s=timeout, work_dir=work_dir, keep_runs=keep_runs,
                         resumable=resumable)
        if record is None:
            invocation["rows_stopped"].append(row.row_id)
            last = previous_segments(Path(work_dir) / row.row_id)[-1]
            echo(f"    stopped ({last['ended']}, {last['wall_s']:.0f} s); kept in "
                 f"{Path(work_dir) / row.row_id} for the next --resumable run of this row")
            _write_invocation(suite_dir, matrix, invocation, t0)
            continue
        atomic_write_json(path, record)
        m = record["measurements"]
        invocation["rows_run"].append(row.row_id)
        if record["status"] != "ok":
            invocation["rows_failed"].append(row.row_id)
            tail = record["log_tail"].strip().splitlines()[-3:]
            echo(f"    {record['status']} (exit {record['returncode']}): " + " | ".join(tail))
        else:
            acc = m.get("final_test_acc")
            echo(f"    peak RSS {fmt_mb(m['peak_rss_bytes'])} MB, wall {m['wall_s']:.1f} s"
                 + (f", final test acc {100 * acc:.2f}%" if acc is not None else ""))
        _write_invocation(suite_dir, matrix, invocation, t0)
    _write_invocation(suite_dir, matrix, invocation, t0, done=True)
    return invocation


def _write_invocation(suite_dir: Path, matrix: Matrix, invocation: dict, t0: float,
                      done: bool = False) -> None:
    """_suite.json keeps every invocation of the suite (a suite can be resumed), so the report
    can state how long each command took."""
    invocation = {**invocation, "seconds": time.perf_counter() - t0, "complete": done,
                  "loadavg_end": loadavg(), "finished_at": timestamp()}
    path = suite_dir / "_suite.json"
    # Two runners of one suite (rows run side by side) may finish at the same moment.
    with directory_lock(suite_dir):
        data = read_json(path) or {}
        runs = [r for r in data.get("invocations", [])
                if r.get("started_at") != invocation["started_at"]]
        runs.append(invocation)
        atomic_write_json(path, {"suite": matrix.name, "description": matrix.description,
                                 "notes": matrix.notes, "sections": matrix.sections,
                                 "matrix": matrix.path, "invocations": runs})


def rerun_check(result_path: str | os.PathLike, *, tolerance: float = 0.10,
                work_dir: str | None = None) -> dict:
    """Re-run a stored row in a fresh child and compare its peak RSS with the stored figure."""
    path = Path(result_path)
    stored = read_json(path)
    if not stored or stored.get("format") != RESULT_FORMAT:
        raise UserError(f"{path} is not a benchmark result written by `edge-trgl bench run`; give "
                        f"one of the <results>/<suite>/<row-id>.json files.")
    if stored.get("status") != "ok":
        raise UserError(f"The stored run {path} did not succeed ({stored.get('status')}), so it "
                        f"has no figure to reproduce; re-run its suite first.")
    row = BenchRow(suite=stored["suite"], group=stored["group"], row_id=stored["row_id"],
                   method=stored.get("method"), seed=stored.get("seed", 0),
                   repeat=stored.get("repeat", 0), options=stored.get("options", {}),
                   train_args=[*stored["train_args"], *legacy_args(stored.get("config") or {})])
    fresh = run_row(row, baseline=stored.get("baseline"), data_baseline=stored.get("data_baseline"),
                    timeout_s=stored.get("timeout_s", DEFAULT_TIMEOUT_S), work_dir=work_dir)
    if fresh["status"] != "ok":
        raise UserError(f"The re-run of {stored['row_id']} failed ({fresh['status']}, exit "
                        f"{fresh['returncode']}): {fresh['log_tail'][-400:]}")
    before = stored["measurements"]["peak_rss_bytes"]
    after = fresh["measurements"]["peak_rss_bytes"]
    difference = first_result_difference(stored, fresh)
    check = {"row_id": stored["row_id"], "suite": stored["suite"], "stored_result": path.name,
             "stored_peak_rss_bytes": before, "rerun_peak_rss_bytes": after,
             "relative_difference": (after - before) / before, "tolerance": tolerance,
             "within_tolerance": abs(after - before) <= tolerance * before,
             "results_identical": difference is None, "first_result_difference": difference,
             "stored_git": stored.get("host", {}).get("git"),
             "rerun_git": fresh.get("host", {}).get("git"),
             "stored_wall_s": stored["measurements"]["wall_s"],
             "rerun_wall_s": fresh["measurements"]["wall_s"],
             "rerun_loadavg": [fresh["loadavg_start"], fresh["loadavg_end"]],
             "checked_at": timestamp(), "command_line": fresh["command_line"]}
    atomic_write_json(path.parent / "_checks" / f"{stored['row_id']}.json", check)
    return check


def legacy_args(config: dict) -> list[str]:
    """Options a row recorded before they existed ran at their old value (config.LATER_FIELDS):
    say that value explicitly, so that a changed default does not change the re-run."""
    from ..config import LATER_FIELDS, TrainConfig
    default = TrainConfig()
    args = []
    for key, earlier in LATER_FIELDS.items():
        # (an option whose default is still its old value needs no spelling out)
        if config and key not in config and earlier is not None \
                and earlier != getattr(default, key):
            args += [f"--{key.replace('_', '-')}", str(earlier)]
    return args


# What a run's per-epoch log holds that depends on the machine's speed or memory, not on the
# computation: everything else must match bit for bit when a row is re-run at its seed and threads.
_TIMING_KEYS = {"time", "seconds", "samples_per_s", "rss_bytes", "backend",
                "worker_peak_rss_bytes"}


def first_result_difference(stored: dict, fresh: dict) -> str | None:
    """None when the two runs computed the same thing: every epoch's losses, energy and
    accuracies (metrics.jsonl) and every module's val/test accuracy equal exactly; else the
    first difference, in words."""
    old, new = stored.get("metrics") or [], fresh.get("metrics") or []
    if len(old) != len(new):
        return f"{len(old)} epoch records stored, {len(new)} re-run"
    for i, (a, b) in enumerate(zip(old, new)):
        for key in sorted((set(a) | set(b)) - _TIMING_KEYS):
            if a.get(key) != b.get(key):
                return (f"epoch record {i} (module {a.get('module')}, epoch {a.get('epoch')}): "
                        f"{key} stored {a.get(key)!r}, re-run {b.get(key)!r}")
    rows_old = (stored.get("summary") or {}).get("modules") or []
    rows_new = (fresh.get("summary") or {}).get("modules") or []
    if len(rows_old) != len(rows_new):
        return f"{len(rows_old)} modules stored, {len(rows_new)} re-run"
    for a, b in zip(rows_old, rows_new):
        for key in ("blocks", "val_acc", "test_acc"):
            if a.get(key) != b.get(key):
                return f"module {a.get('module')}: {key} stored {a.get(key)!r}, re-run {b.get(key)!r}"
    return None
