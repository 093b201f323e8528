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
import sys
import time
from pathlib import Path

from ..errors import UserError
from ..jobdirs import job_dir
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
    except (OSError, ValueError, RecursionError):
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
        with job_dir("ort-trainer") as tmp:
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
    from .ort_artifacts import record_artifacts
    _, peaks, _ = _export_and_finish("rebuild", {"config": cfg.to_json(), "run_dir": str(run.root),
                                                 "modules": bad}, cfg)
    record_artifacts(run, bad)
    prep = run.manifest.setdefault("ort", {}).setdefault("rebuild_peaks_bytes", [])
    prep.append(max(peaks))
    run.save()


def _prepare_child(command: str, spec: dict, cfg) -> tuple[dict, int, float]:
    """A set-up child: the torch half (`ort_artifacts COMMAND`) or, for command "finish", the
    torch-free half (ort_graph) of building artifacts. Returns (result, its peak, seconds)."""
    from .ort_graph import finish_command
    with job_dir("ort-setup") as tmp:
        tmp = Path(tmp)
        (tmp / "spec.json").write_text(json.dumps(spec))
        if command == "finish":
            cmd = finish_command(tmp / "spec.json", tmp / "result.json")
        else:
            cmd = [sys.executable, "-m", "edge_trgl.backends.ort_artifacts", command,
                   str(tmp / "spec.json"), str(tmp / "result.json")]
        watched, result = _run_child(cmd, _worker_env(cfg), tmp / "result.json")
    if command == "prepare" and watched["status"] != 0 and cfg.out:
        from ..run import _remove_dead_staging
        _remove_dead_staging(Path(cfg.out))  # what a killed set-up child staged
    if "error" in result:
        raise UserError(result["error"])
    if watched["status"] == -9:
        from ..budget import format_size
        from ..memory.cgroup import ACTIVE, killed_by_guard
        group = ACTIVE["group"]
        share = format_size(group.limit_bytes) if group is not None else "what the budget leaves it"
        what = ("torch + onnx export" if command != "finish"
                else "onnx + ONNX Runtime's training-graph builder")
        raise UserError(
            f"The ONNX Runtime set-up step ({command}: {what}, needed once per run) does not "
            f"fit in this budget: it was stopped at "
            f"{format_size(killed_by_guard() or watched['peak_rss_bytes'])}, and the budget "
            f"leaves a child process {share}. The trainer itself is torch-free and smaller: "
            f"prepare the run on a bigger machine with `edge-trgl prepare` and the same options "
            f"(it plans for this --mem-budget), copy the run directory here, and train it with "
            f"`edge-trgl train --resume RUN_DIR`. Nothing was written.")
    if watched["status"] != 0:
        raise RuntimeError(f"preparing the ONNX Runtime run failed (exit status "
                           f"{watched['status']}); the error is printed above.")
    return result, watched["peak_rss_bytes"], watched["seconds"]


def _export_and_finish(command: str, spec: dict, cfg) -> tuple[dict, list[int], float]:
    """The torch half in one child, then the torch-free half in another: the two are never
    resident together. Returns (the torch half's result, both peaks, seconds)."""
    result, peak, seconds = _prepare_child(command, spec, cfg)
    modules = result["modules"] if "modules" in result else [
        {"dir": result["tmp"], "lo": spec["lo"], "hi": spec["hi"]}]
    try:
        finished, finish_peak, finish_seconds = _prepare_child(
            "finish", {"modules": modules, "label_smoothing": float(cfg.label_smoothing)}, cfg)
    except BaseException:  # leave nothing half-built behind
        import shutil
        for key in ("staging", "tmp"):
            if key in result:
                shutil.rmtree(result[key], ignore_errors=True)
        raise
    if finished.get("torch_imported"):
        raise RuntimeError("the torch-free artifact step imported torch")
    return result, [peak, finish_peak], seconds + finish_seconds


# --- the orchestrator ------------------------------------------------------------------------------

def train_ort(cfg, *, resume=None, prepare_only: bool = False) -> dict:
    """train.train() for --backend ort: the same run directory, manifest, scheme and summary,
    with torch kept out of this process (see the module docstring). The whole command, this
    process and its one child of the moment, runs inside a memory cgroup of the budget's size
    where one can be created (driver.CommandBudget)."""
    from ..driver import CommandBudget, _stored_budget, prepare_budget
    from ..memory.measure import peak_rss_bytes
    if resume is not None:
        budget = _stored_budget(resume)
    elif cfg.mem_budget is not None or cfg.profile is not None:
        budget = prepare_budget(cfg)
    else:
        budget = None
    with CommandBudget(budget) as guard:
        summary, run = _train_ort(cfg, resume, guard, prepare_only)
        if prepare_only:
            return summary
        if "whole_command" not in summary:  # not a summary reprinted from a finished run
            ort = summary.get("ort", {})
            worst = max([ort.get("max_worker_peak_rss_bytes") or 0,
                         (ort.get("preparation") or {}).get("peak_rss_bytes") or 0,
                         *ort.get("artifact_rebuild_peaks_bytes", [])])
            whole = guard.report(summary.get("ort", {}).get("orchestrator_peak_rss_bytes") or
                                 peak_rss_bytes(), worst)
            summary["whole_command"] = whole
            summary["whole_command_peak_bytes"] = whole["whole_command_peak_bytes"]
            summary["memory_enforcement"] = whole["enforcement"]
            summary["over_budget"] = bool(summary.get("over_budget") or whole.get("oom_kills") or (
                budget and whole["whole_command_peak_bytes"] > budget))
            run.write_json("summary.json", summary)
            run.save()
    return summary


def _train_ort(cfg, resume, guard, prepare_only=False):
    from ..memory.measure import RssWatchdog, peak_rss_bytes
    from ..run import Run
    from ..schemes import Context, run_modulewise
    from ..train import default_out, summarize
    from .ort_common import load_snapshot, snapshot_info

    started = time.time()
    preparation = None
    if resume is not None:
        from ..resume import open_for_resume
        run, cfg, plan = open_for_resume(resume, cfg, clean=False)
        require_ort(need_onnx=False)
        if snapshot_info(run).get("fingerprint") != run.manifest.get("data_fingerprint"):
            raise UserError(f"The data snapshot of the run in {run.root} does not match the data "
                            f"the run started with; the run is damaged. Start a new run.")
        run.clean_torn_files(cfg)  # only now: a resume refused above changed nothing
        if run.manifest.get("status") == "complete":
            return run.read_json("summary.json"), run
    else:
        if cfg.mem_budget is None and cfg.profile is None:
            from ..profiles import apply_profile
            cfg.validate()
            apply_profile(cfg)
        if cfg.scheme not in ("sequential", "multilap"):
            raise UserError(f"--backend ort trains one module at a time, so it supports --scheme "
                            f"sequential and multilap, not {cfg.scheme}; use --backend torch.")
        require_ort(need_onnx=True)
        if cfg.out is not None:
            Run.check_new_root(cfg.out)
        out = Path(cfg.out) if cfg.out else default_out(cfg)
        cfg.out = str(out)
        Run.check_new_root(out)
        plan = _plan_in_orchestrator(cfg)
        result, prep_peaks, prep_seconds = _prepare_run(cfg, plan, out)
        preparation = {"peak_rss_bytes": max(prep_peaks), "seconds": prep_seconds,
                       "export_peak_rss_bytes": prep_peaks[0],
                       "finish_peak_rss_bytes": prep_peaks[1],
                       "in_process_peak_rss_bytes": result.get("peak_rss_bytes"),
                       "what": "two child processes, one after the other: torch + onnx (data "
                               "loading, initial weights, data snapshot, each module's ONNX "
                               "export), then onnx + ONNX Runtime's graph builder without torch "
                               "(generate_artifacts); the plan is made before them, here",
                       "method": "VmHWM of each child, polled from outside (run_measured)"}
        run = Run.open(out)
        run.lock()
        run.manifest.setdefault("ort", {})["preparation"] = preparation
        run.save()
        plan = run.read_json("plan.json")
        if prepare_only:
            return {"run_dir": str(run.root), "plan": plan}, run
    splits = [tuple(s) for s in plan["splits"]]
    dataset = load_snapshot(run, images=False)  # labels only: the trainers read the images
    from ..memory.measure import release_memory, reset_peak
    release_memory()
    # From here this process's VmHWM is its peak beside the trainers (loading and fingerprinting
    # the data for planning peaked higher, with no child beside it: that is in whole_command).
    reset_peak()
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
    return summary, run


def _prepare_run(cfg, plan: dict, out: Path):
    """Set up the planned run: the torch half stages it, the torch-free half finishes the
    artifacts, and this process records them and publishes the run."""
    from ..run import Run
    from .ort_artifacts import record_artifacts
    result, peaks, seconds = _export_and_finish("prepare", {"config": cfg.to_json(), "plan": plan},
                                                cfg)
    staging = Path(result["staging"])
    run = Run(staging, json.loads((staging / "manifest.json").read_text()))
    run.final_root = Path(out)
    try:
        record_artifacts(run, [m["k"] for m in result["modules"]])
        run.manifest["status"] = "running"
        run.publish()
    except BaseException:
        run.discard()
        raise
    return result, peaks, seconds


def _plan_in_orchestrator(cfg) -> dict:
    """Plan here, torch-free: the data is numpy, the model's description and every artifact
    build are short torch children and every probe an ONNX Runtime child, one at a time (the
    preparation child that follows gets the plan and does not plan)."""
    from ..driver import load_for_planning, plan_lean, plan_unbudgeted
    from ..memory.measure import release_memory
    budgeted = cfg.mem_budget is not None or cfg.profile is not None
    if budgeted:
        from ..memory.budgeted import resolve_budget
    dataset = load_for_planning(cfg, resolve_budget(cfg)[0] if budgeted else None)
    if budgeted:
        plan = plan_lean(cfg, dataset)
    else:
        plan = plan_unbudgeted(cfg, dataset)
    if cfg.progress and plan.get("module_estimates"):
        from ..memory.planner import format_plan
        print(format_plan(plan), file=sys.stderr, flush=True)
    del dataset
    release_memory()
    return plan


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
        "two are alive at the same time, so this bounds their sum. The set-up children (torch "
        "export, then the torch-free graph builder) are reported under ort.preparation; the "
        "whole command, set-up included, under whole_command.")
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
        text += (f"; set-up before training (torch export, then the torch-free graph builder, "
                 f"each its own child within the budget): "
                 f"{format_size(prep['peak_rss_bytes'])}")
    return text


# --- the planner's view of this backend ------------------------------------------------------------

ORT_PROBE_FORMAT = 3


def _probe_cache() -> tuple[dict, callable]:
    from ..memory.probe_cache import load_cache, store_cache
    return load_cache(), store_cache


def ort_plan_note(cfg, dataset) -> str:
    from ..budget import format_size
    parts = _ort_baselines(cfg)
    arrays = sum(a.images.nbytes + a.labels.nbytes for a in (dataset.train, dataset.val, dataset.test))
    return (f"--backend ort: baseline = torch-free orchestrator {format_size(parts['orchestrator_bytes'])} "
            f"+ ONNX Runtime trainer after imports {format_size(parts['worker_baseline_bytes'])} + "
            f"dataset {format_size(arrays)} (all measured; the two processes are alive together; "
            f"the images only for module 0: later trainers read the feature cache); "
            f"module = that trainer's measured peak above its baseline. The set-up (torch export, "
            f"then the torch-free graph builder) runs before training, each step a child of its "
            f"own inside the same budget.")


def ort_framework_bytes(cfg, dataset) -> int:
    """What an ORT run holds before any module: the orchestrator's RSS + a trainer's RSS after its
    imports + the dataset arrays the first trainer loads (all measured in fresh children)."""
    parts = _ort_baselines(cfg)
    arrays = sum(a.images.nbytes + a.labels.nbytes for a in (dataset.train, dataset.val, dataset.test))
    return int(parts["orchestrator_bytes"] + parts["worker_baseline_bytes"] + arrays)


def _ort_baselines(cfg) -> dict:
    cache, store = _probe_cache()
    from ..memory.probe_cache import machine_identity
    key = hashlib.sha256(json.dumps({"ort_baseline": ORT_PROBE_FORMAT, "ort": ort_version(),
                                     **machine_identity(_threads(cfg))},
                                    sort_keys=True).encode()).hexdigest()[:24]
    if key not in cache:
        from ..memory.describe import orchestrator_bytes
        orchestrator = orchestrator_bytes(_threads(cfg))
        worker = _probe_worker(cfg, None, [], _threads(cfg))["baseline_bytes"]
        cache[key] = {"orchestrator_bytes": orchestrator, "worker_baseline_bytes": worker}
        store({key: cache[key]})
    return cache[key]


def _probe_worker(cfg, art_dir, batches, threads) -> dict:
    with job_dir("ort-probe") as tmp:
        tmp = Path(tmp)
        job = {"mode": "probe", "config": cfg.to_json(), "threads": threads,
               "parent_pid": os.getpid(),
               "artifact_dir": str(art_dir) if art_dir else None, "batches": list(batches),
               "steps": 4, "result_path": str(tmp / "result.json")}
        (tmp / "job.json").write_text(json.dumps(job))
        watched, result = _run_child(worker_command(tmp / "job.json"), _worker_env(cfg),
                                     tmp / "result.json")
    if watched["status"] == -9:  # stopped by the command's memory guard (or the kernel)
        from ..memory.cgroup import killed_by_guard
        from ..memory.probe_cache import ProbeOverBudget
        raise ProbeOverBudget("the ONNX Runtime memory probe", killed_by_guard())
    if watched["status"] != 0 or "baseline_bytes" not in result:
        raise RuntimeError(f"the ONNX Runtime memory probe failed (exit status "
                           f"{watched['status']}); its error is printed above")
    return result


def probe_ort_module(cfg, in_shape, num_classes, arch, lo, hi, batches, threads) -> dict[int, int]:
    """Peak RSS bytes of the ORT trainer for blocks lo..hi-1 (+ head), per batch size, above the
    trainer's own baseline: the trainer itself (same code path as training) runs a few steps and
    an eval batch on the module's real artifacts in a fresh process. Cached like the torch probes."""
    require_ort(need_onnx=True)
    signatures = [arch[i].signature() for i in range(lo, hi)]
    from ..memory.probe_cache import machine_identity
    ident = {"ort_probe": ORT_PROBE_FORMAT, "ort": ort_version(), **machine_identity(threads),
             "optimizer": cfg.optimizer, "head": cfg.head, "classes": num_classes,
             "blocks": signatures, "batches": sorted(batches), "width": cfg.width,
             "model": cfg.model, "in_shape": list(in_shape),
             "label_smoothing": float(cfg.label_smoothing)}
    key = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:24]
    cache, store = _probe_cache()
    if key in cache:
        return {int(b): v for b, v in cache[key].items()}
    art = _cached_artifacts_in_child(cfg, in_shape, num_classes, lo, hi, signatures)
    result = _probe_worker(cfg, art, batches, threads)
    peaks = {r["batch"]: r["peak_bytes"] - result["baseline_bytes"] for r in result["results"]}
    store({key: {str(b): v for b, v in peaks.items()}})
    return peaks


def _cached_artifacts_in_child(cfg, in_shape, num_classes, lo, hi, signatures) -> Path:
    """The probe artifacts of a module structure, built (once, cached) by a torch + onnx child:
    the planning process stays torch-free, so the build never sits beside another child."""
    from .ort_artifacts import cached_artifact_path
    from .ort_artifacts import publish_cached
    path = cached_artifact_path(cfg, in_shape, num_classes, lo, hi, signatures)
    if path is not None:
        return path
    result, _, _ = _export_and_finish("probe-artifacts", {
        "config": cfg.to_json(), "in_shape": list(in_shape), "num_classes": int(num_classes),
        "lo": lo, "hi": hi, "signatures": signatures}, cfg)
    return publish_cached(Path(result["tmp"]), Path(result["path"]))


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
