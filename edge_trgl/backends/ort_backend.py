"""The ONNX Runtime training backend (`--backend ort`): module-wise TRGL training in a process
that never imports torch.

Three kinds of processes, so that torch (~220 MB) is never resident while training:

1. preparation (ort_artifacts.py, a short-lived child; needs torch + onnx): loads the data,
   plans (with this backend's measured footprint), writes the initial weights, a snapshot of the
   data splits, and every module's ONNX training artifacts, then exits. Its peak is reported
   separately ("preparation" in the summary): it is set-up, not training.
2. the orchestrator (this file, the `edge-trgl train` process itself): torch-free; runs the
   sequential / multi-lap scheme (schemes.run_modulewise) and, for each module, starts
3. a trainer (ort_worker.py), a child that trains the module on ONNX Runtime (or writes its
   feature cache) and exits; its peak RSS is measured from outside (memory.measure.run_measured:
   the child's own VmHWM, polled; see _run_child for why not os.wait4's ru_maxrss).

While a module trains, the orchestrator and one trainer are alive, so the training-phase peak
reported is (orchestrator peak + largest trainer peak): an upper bound of what the two hold at
once. The planner (memory/budgeted.py with cfg.backend == "ort") plans against the same sum:
trainer peaks come from probes that run this backend's real trainer on the module's artifacts.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ..errors import UserError
from ..memory.measure import run_measured
from .ort_common import (EXIT_INTERRUPTED, EXIT_OVER_BUDGET, artifact_dir, install_hint,
                         ort_version, require_ort, worker_command)


def is_ort_run(cfg, resume) -> bool:
    """Does this train() call belong to the ORT orchestrator? For --resume the run's own config
    decides (the command line's --backend is not needed to resume)."""
    if resume is None:
        return cfg.backend == "ort"
    try:
        stored = json.loads((Path(resume) / "config.json").read_text())
    except (OSError, ValueError):
        return False  # train()'s resume path reports the damaged or missing run
    return isinstance(stored, dict) and stored.get("backend") == "ort"


def _threads(cfg) -> int:
    return int(cfg.threads or os.cpu_count() or 1)


def _worker_env(cfg) -> dict:
    # A fixed mmap threshold: glibc otherwise raises it each time a large block is freed, after
    # which ORT's per-step activation buffers (arena off) come from the heap and fragment it --
    # measured on module 0 of ResNet-20 at batch 32: RSS crept from 150 MB to 200 MB over 100
    # steps; with the threshold fixed at 64 KiB it stays at 149 MB. Two malloc arenas at most.
    return dict(os.environ, OMP_NUM_THREADS=str(_threads(cfg)), MALLOC_ARENA_MAX="2",
                MALLOC_MMAP_THRESHOLD_="65536")


def _run_child(cmd: list[str], env: dict, result_path: Path, ctx=None) -> tuple[dict, dict]:
    """Run a preparation / trainer / probe child; its peak RSS is measured from outside by
    memory.measure.run_measured (the child's own VmHWM, polled). Not os.wait4's ru_maxrss: that
    also counts the child's waited-for descendants, and exec folds the replaced address space's
    high-water mark into it -- with vfork the *parent's*, so any child of a process that once
    held 300 MB reports >= 300 MB, even /bin/true.

    With a training Context `ctx`, the child runs in its own process group and the context's
    signal handler forwards Ctrl-C / SIGTERM to it, exactly once per signal: the trainer stops at
    the end of its epoch (a second signal: now), whether the signal came from a terminal or was
    sent to this process alone (a service manager's SIGTERM)."""
    detail: dict = {}

    def started(proc):
        ctx.forward_signals_to = proc.pid

    try:
        status, peak, seconds = run_measured(cmd, env=env, detail=detail,
                                             start_new_session=ctx is not None,
                                             on_start=started if ctx is not None else None)
    finally:
        if ctx is not None:
            ctx.forward_signals_to = None
    try:
        result = json.loads(result_path.read_text())
    except (OSError, ValueError):
        result = {}
    # the child's own last reading covers the poll interval at its very end
    peak = max(peak, int(result.get("peak_rss_bytes") or 0))
    return {"status": status, "peak_rss_bytes": peak, "seconds": seconds,
            "ru_maxrss_bytes": detail.get("tree_peak_rss_bytes")}, result


class OrtBackend:
    """Backend protocol (base.py) for the module-wise schemes: each call runs a trainer process."""

    name = "ort"

    def __init__(self, cfg):
        require_ort(need_onnx=False)
        self.cfg = cfg
        self.workers: list[dict] = []

    def _job(self, ctx, task, mode: str, tmp: Path) -> dict:
        budget = ctx.watchdog.limit_bytes if ctx.watchdog is not None else None
        from ..memory.measure import rss_bytes
        return {"mode": mode, "run_dir": str(ctx.run.root), "config": self.cfg.to_json(),
                "parent_pid": os.getpid(),
                "task": task.to_json(), "splits": [list(s) for s in ctx.splits],
                "batch_size": ctx.batch_size, "eval_batch_size": ctx.eval_batch_size,
                "views": ctx.views, "threads": _threads(self.cfg),
                # the trainer's share of the budget: what the orchestrator does not hold
                "rss_limit_bytes": (budget - rss_bytes()) if budget else None,
                "result_path": str(tmp / "result.json")}

    def _run_worker(self, ctx, task, mode: str) -> dict:
        from ..schemes import Interrupted
        run = ctx.run
        ensure_artifacts(run, self.cfg, [task.k])
        run.save()  # the trainer reads the manifest from disk
        with tempfile.TemporaryDirectory(prefix="edge-trgl-ort-") as tmp:
            tmp = Path(tmp)
            job = self._job(ctx, task, mode, tmp)
            (tmp / "job.json").write_text(json.dumps(job))
            watched, result = _run_child(worker_command(tmp / "job.json"),
                                         _worker_env(self.cfg), tmp / "result.json", ctx)
        status, peak = watched["status"], watched["peak_rss_bytes"]
        # the trainer saved the manifest as it went; the orchestrator's copy is stale
        run.manifest = json.loads((Path(run.root) / "manifest.json").read_text())
        record = {"module": task.k, "lap": task.lap, "phase": mode, "peak_rss_bytes": peak,
                  "in_process_peak_rss_bytes": result.get("peak_rss_bytes"),
                  "wait4_ru_maxrss_bytes": watched["ru_maxrss_bytes"],
                  "torch_imported": result.get("torch_imported"),
                  "seconds": watched["seconds"], "exit_status": status}
        self.workers.append(record)
        peaks = run.manifest["modules"].setdefault(str(task.k), {}).setdefault("ort_worker_peak_bytes", {})
        peaks[mode] = max(peaks.get(mode, 0), peak)
        run.save()
        if status == EXIT_INTERRUPTED:
            ctx._interrupted = True
            raise Interrupted()
        if status == EXIT_OVER_BUDGET:
            from ..budget import format_size
            raise UserError(
                f"The ONNX Runtime trainer of module {task.k} reached "
                f"{format_size(result.get('over_budget_bytes', peak))} of RSS, over its share of "
                f"the budget ({format_size(job['rss_limit_bytes'])}) and stopped; everything up "
                f"to its last finished epoch is saved. This is a planner bug, please report it "
                f"with the run's plan.json. Start a new run with a smaller --batch-size or a larger "
                f"--mem-budget, or continue this one as planned with "
                f"`edge-trgl train --resume {run.root}`.")
        if status == 2 and "error" in result:
            raise UserError(result["error"])
        if status != 0:
            how = (f"was killed by signal {-status} (out of memory, or killed from outside)"
                   if status < 0 else f"failed with exit status {status} (its error is printed above)")
            raise RuntimeError(f"The ONNX Runtime trainer of module {task.k} ({mode}) {how}. "
                               f"Everything up to the last finished epoch is saved; resume with "
                               f"`edge-trgl train --resume {run.root}`.")
        return result

    def train_module(self, ctx, task) -> dict:
        result = self._run_worker(ctx, task, "train")
        stats = dict(result.get("stats") or {})
        stats["worker_peak_rss_bytes"] = self.workers[-1]["peak_rss_bytes"]
        return stats

    def write_features(self, ctx, task) -> dict:
        result = self._run_worker(ctx, task, "features")
        return dict(result.get("accuracy") or {})


# --- artifacts of an existing run -----------------------------------------------------------------

def ensure_artifacts(run, cfg, modules) -> None:
    """Rebuild (in a torch child) the artifacts of `modules` that are missing or damaged."""
    from .ort_common import verify_artifacts
    bad = [k for k in modules if not verify_artifacts(run, k)]
    if not bad:
        return
    print(f"rebuilding the ONNX Runtime artifacts of module(s) {bad} (missing or damaged)",
          file=sys.stderr, flush=True)
    run.save()
    result, peak, _ = _prepare_child("rebuild", {"config": cfg.to_json(), "run_dir": str(run.root),
                                                 "modules": bad}, cfg)
    run.manifest = json.loads((Path(run.root) / "manifest.json").read_text())
    prep = run.manifest.setdefault("ort", {}).setdefault("rebuild_peaks_bytes", [])
    prep.append(peak)
    run.save()


def _prepare_child(command: str, spec: dict, cfg) -> tuple[dict, int, float]:
    with tempfile.TemporaryDirectory(prefix="edge-trgl-ort-prep-") as tmp:
        tmp = Path(tmp)
        (tmp / "spec.json").write_text(json.dumps(spec))
        cmd = [sys.executable, "-m", "edge_trgl.backends.ort_artifacts", command,
               str(tmp / "spec.json"), str(tmp / "result.json")]
        watched, result = _run_child(cmd, _worker_env(cfg), tmp / "result.json")
    if "error" in result:
        raise UserError(result["error"])
    if watched["status"] != 0:
        raise RuntimeError(f"preparing the ONNX Runtime run failed (exit status "
                           f"{watched['status']}); the error is printed above.")
    return result, watched["peak_rss_bytes"], watched["seconds"]


# --- the orchestrator ------------------------------------------------------------------------------

def train_ort(cfg, *, resume=None) -> dict:
    """train.train() for --backend ort: the same run directory, manifest, scheme and summary,
    with torch kept out of this process (see the module docstring)."""
    from ..memory.measure import RssWatchdog, peak_rss_bytes
    from ..run import Run
    from ..schemes import Context, run_modulewise
    from ..train import default_out, summarize
    from .ort_common import load_snapshot, snapshot_info

    started = time.time()
    preparation = None
    if resume is not None:
        from ..resume import open_for_resume
        run, cfg, plan = open_for_resume(resume, cfg)
        require_ort(need_onnx=False)
        if snapshot_info(run).get("fingerprint") != run.manifest.get("data_fingerprint"):
            raise UserError(f"The data snapshot of the run in {run.root} does not match the data "
                            f"the run started with; the run is damaged. Start a new run.")
        if run.manifest.get("status") == "complete":
            return run.read_json("summary.json")
    else:
        from ..profiles import apply_profile
        cfg.validate()
        apply_profile(cfg)
        if cfg.scheme not in ("sequential", "multilap"):
            raise UserError(f"--backend ort trains one module at a time, so it supports --scheme "
                            f"sequential and multilap, not {cfg.scheme}; use --backend torch.")
        require_ort(need_onnx=True)
        out = Path(cfg.out) if cfg.out else default_out(cfg)
        cfg.out = str(out)
        Run.check_new_root(out)
        result, prep_peak, prep_seconds = _prepare_child("prepare", {"config": cfg.to_json()}, cfg)
        preparation = {"peak_rss_bytes": prep_peak, "seconds": prep_seconds,
                       "in_process_peak_rss_bytes": result.get("peak_rss_bytes"),
                       "what": "child process with torch + onnx: data loading, planning (incl. its "
                               "probes' artifact builds), initial weights, data snapshot, ONNX "
                               "export and generate_artifacts for every module",
                       "method": "VmHWM of that child, polled from outside (run_measured)"}
        run = Run.open(out)
        run.lock()
        run.manifest.setdefault("ort", {})["preparation"] = preparation
        run.save()
        plan = run.read_json("plan.json")
    splits = [tuple(s) for s in plan["splits"]]
    dataset = load_snapshot(run, images=False)  # labels only: the trainers read the images
    budget = plan.get("budget_bytes")
    watchdog = RssWatchdog(limit_bytes=budget)
    ctx = Context(run, cfg, dataset, dataset.in_shape, dataset.num_classes, splits,
                  plan["batch_size"], plan["views"], watchdog)
    backend = OrtBackend(cfg)

    def body():
        ensure_artifacts(run, cfg, range(len(splits)))
        run_modulewise(ctx, backend)

    ctx.run_guarded(body)
    orchestrator_peak = max(ctx.process_peak_bytes(), peak_rss_bytes())
    summary = summarize(run, cfg, plan, watchdog, time.time() - started, orchestrator_peak)
    add_ort_summary(summary, run, plan, backend, orchestrator_peak)
    run.write_json("summary.json", summary)
    run.manifest["status"] = "complete"
    run.save()
    return summary


def add_ort_summary(summary: dict, run, plan: dict, backend: OrtBackend, orchestrator_peak: int) -> None:
    """The ORT-specific figures: per-module trainer peaks, the orchestrator's, and the
    preparation phase's, each measured in its own process."""
    modules = run.manifest["modules"]
    orchestrator = max(orchestrator_peak, run.manifest.get("peak_rss_bytes_so_far", 0))
    worst = 0
    for row in summary["modules"]:
        peaks = modules.get(str(row["module"]), {}).get("ort_worker_peak_bytes", {})
        row["orchestrator_peak_bytes"] = row.get("measured_peak_bytes")
        row["worker_train_peak_bytes"] = peaks.get("train")
        row["worker_features_peak_bytes"] = peaks.get("features")
        worker = max([v for v in peaks.values() if v] or [0])
        worst = max(worst, worker)
        # the trainer and the orchestrator are alive together: the estimate plans for the sum
        row["measured_peak_bytes"] = worker + orchestrator if worker else None
        if row.get("estimated_peak_bytes") and row["measured_peak_bytes"]:
            row["estimate_error"] = ((row["estimated_peak_bytes"] - row["measured_peak_bytes"])
                                     / row["measured_peak_bytes"])
    total = orchestrator + worst
    summary["peak_rss_bytes"] = total
    summary["peak_rss_method"] = (
        "training phase: peak RSS of the torch-free orchestrator (its VmHWM) + the largest trainer "
        "process peak (the trainer's VmHWM, polled from outside by run_measured); the "
        "two are alive at the same time, so this bounds their sum. Preparation (torch + onnx, "
        "before training) is reported separately under ort.preparation.")
    budget = plan.get("budget_bytes")
    summary["over_budget"] = bool(budget and total > budget)
    summary["ort"] = {
        "orchestrator_peak_rss_bytes": orchestrator,
        "max_worker_peak_rss_bytes": worst,
        "training_phase_peak_rss_bytes": total,
        "preparation": run.manifest.get("ort", {}).get("preparation"),
        "artifact_rebuild_peaks_bytes": run.manifest.get("ort", {}).get("rebuild_peaks_bytes", []),
        "workers": backend.workers,
        "torch_in_orchestrator": "torch" in sys.modules and sys.modules["torch"] is not None,
        "versions": {"onnxruntime": ort_version(), "python": platform.python_version()},
        "optimizer": ("torch's SGD/AdamW update rules in numpy on ORT's gradients (ORT 1.19's "
                      "SGD has no momentum or weight decay)"),
    }
    summary["environment"]["onnxruntime"] = ort_version()


def format_ort_summary(summary: dict) -> str:
    from ..budget import format_size
    ort = summary["ort"]
    prep = ort.get("preparation") or {}
    text = (f"peak RSS = torch-free orchestrator {format_size(ort['orchestrator_peak_rss_bytes'])} + "
            f"largest ONNX Runtime trainer {format_size(ort['max_worker_peak_rss_bytes'])}")
    if prep.get("peak_rss_bytes"):
        text += (f"; preparation before training (torch + onnx export, separate process): "
                 f"{format_size(prep['peak_rss_bytes'])}")
    return text


# --- the planner's view of this backend ------------------------------------------------------------

ORT_PROBE_FORMAT = 3


def _probe_cache() -> tuple[dict, callable]:
    from ..memory.estimate import _load_cache, _store_cache
    return _load_cache(), _store_cache


def _measure_orchestrator_bytes() -> int:
    """RSS of a torch-free process that has imported what `edge-trgl train --backend ort` imports
    (CLI, train, schemes, this module), in a fresh child."""
    code = ("import sys; sys.modules['torch'] = None\n"
            "from edge_trgl.cli.main import build_parser\n"
            "try:\n    build_parser()\nexcept ImportError:\n    pass\n"
            "import edge_trgl.train, edge_trgl.schemes, edge_trgl.resume, edge_trgl.backends.ort_backend\n"
            "from edge_trgl.memory.measure import release_memory, rss_bytes\n"
            "release_memory(); print(rss_bytes())\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    out = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not out or not out[-1].isdigit():
        raise RuntimeError(f"measuring the ORT orchestrator's baseline failed: {proc.stderr[-2000:]}")
    return int(out[-1])


def ort_plan_note(cfg, dataset) -> str:
    from ..budget import format_size
    parts = _ort_baselines(cfg)
    arrays = sum(a.images.nbytes + a.labels.nbytes for a in (dataset.train, dataset.val, dataset.test))
    return (f"--backend ort: baseline = torch-free orchestrator {format_size(parts['orchestrator_bytes'])} "
            f"+ ONNX Runtime trainer after imports {format_size(parts['worker_baseline_bytes'])} + "
            f"dataset {format_size(arrays)} (all measured; the two processes are alive together; "
            f"the images only for module 0: later trainers read the feature cache); "
            f"module = that trainer's measured peak above its baseline. Preparation (torch + onnx "
            f"export, before training) runs in a separate, earlier process and is not in the budget.")


def ort_framework_bytes(cfg, dataset) -> int:
    """What an ORT run holds before any module: the orchestrator's RSS + a trainer's RSS after its
    imports + the dataset arrays the first trainer loads (all measured in fresh children)."""
    parts = _ort_baselines(cfg)
    arrays = sum(a.images.nbytes + a.labels.nbytes for a in (dataset.train, dataset.val, dataset.test))
    return int(parts["orchestrator_bytes"] + parts["worker_baseline_bytes"] + arrays)


def _ort_baselines(cfg) -> dict:
    cache, store = _probe_cache()
    key = hashlib.sha256(json.dumps({"ort_baseline": ORT_PROBE_FORMAT, "ort": ort_version(),
                                     "python": platform.python_version(),
                                     "threads": _threads(cfg)}).encode()).hexdigest()[:24]
    if key not in cache:
        orchestrator = _measure_orchestrator_bytes()
        worker = _probe_worker(cfg, None, [], _threads(cfg))["baseline_bytes"]
        cache[key] = {"orchestrator_bytes": orchestrator, "worker_baseline_bytes": worker}
        store(cache)
    return cache[key]


def _probe_worker(cfg, art_dir, batches, threads) -> dict:
    with tempfile.TemporaryDirectory(prefix="edge-trgl-ort-probe-") as tmp:
        tmp = Path(tmp)
        job = {"mode": "probe", "config": cfg.to_json(), "threads": threads,
               "parent_pid": os.getpid(),
               "artifact_dir": str(art_dir) if art_dir else None, "batches": list(batches),
               "steps": 4, "result_path": str(tmp / "result.json")}
        (tmp / "job.json").write_text(json.dumps(job))
        watched, result = _run_child(worker_command(tmp / "job.json"), _worker_env(cfg),
                                     tmp / "result.json")
    if watched["status"] != 0 or "baseline_bytes" not in result:
        raise RuntimeError(f"the ONNX Runtime memory probe failed (exit status "
                           f"{watched['status']}); its error is printed above")
    return result


def probe_ort_module(cfg, in_shape, num_classes, arch, lo, hi, batches, threads) -> dict[int, int]:
    """Peak RSS bytes of the ORT trainer for blocks lo..hi-1 (+ head), per batch size, above the
    trainer's own baseline: the trainer itself (same code path as training) runs a few steps and
    an eval batch on the module's real artifacts in a fresh process. Cached like the torch probes."""
    require_ort(need_onnx=True)
    from .ort_artifacts import cached_artifacts
    signatures = [arch[i].signature() for i in range(lo, hi)]
    ident = {"ort_probe": ORT_PROBE_FORMAT, "ort": ort_version(), "threads": threads,
             "optimizer": cfg.optimizer, "head": cfg.head, "classes": num_classes,
             "blocks": signatures, "batches": sorted(batches), "width": cfg.width,
             "model": cfg.model, "in_shape": list(in_shape),
             "label_smoothing": float(cfg.label_smoothing)}
    key = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:24]
    cache, store = _probe_cache()
    if key in cache:
        return {int(b): v for b, v in cache[key].items()}
    art = cached_artifacts(cfg, in_shape, num_classes, lo, hi, signatures)
    result = _probe_worker(cfg, art, batches, threads)
    peaks = {r["batch"]: r["peak_bytes"] - result["baseline_bytes"] for r in result["results"]}
    cache[key] = {str(b): v for b, v in peaks.items()}
    store(cache)
    return peaks


def ort_saved_bytes(cfg, in_shape, num_classes, arch, lo, hi, batches, threads) -> int:
    """Per-sample bytes that stay alive through a training step of blocks lo..hi-1, for the
    planner's composition rule. ORT has no saved-tensor hooks, so this is the slope of the
    trainer's measured peak between two batch sizes: it includes the block's transient buffers
    too, i.e. it over-counts (the planner then probes each chosen module directly anyway)."""
    peaks = probe_ort_module(cfg, in_shape, num_classes, arch, lo, hi, batches, threads)
    if len(peaks) < 2:
        return 0
    (b1, p1), (b2, p2) = sorted(peaks.items())[:2]
    return max(0, int((p2 - p1) / (b2 - b1)))


__all__ = ["OrtBackend", "train_ort", "is_ort_run", "probe_ort_module", "ort_framework_bytes",
           "install_hint", "artifact_dir"]
