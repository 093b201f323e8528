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

import json
import os
import sys
import time
from pathlib import Path

from ..errors import UserError, recorded_error
from ..jobdirs import job_dir
from ..memory.measure import run_measured
from .ort_common import (EXIT_INTERRUPTED, EXIT_OVER_BUDGET, artifact_dir, install_hint,
                         require_ort, worker_command)


def worker_env(cfg) -> dict:
    # A fixed mmap threshold: glibc otherwise raises it each time a large block is freed, after
    # which ORT's per-step activation buffers (arena off) come from the heap and fragment it --
    # measured on module 0 of ResNet-20 at batch 32: RSS crept from 150 MB to 200 MB over 100
    # steps; with the threshold fixed at 64 KiB it stays at 149 MB. Two malloc arenas at most.
    return dict(os.environ, OMP_NUM_THREADS=str(cfg.thread_count()), MALLOC_ARENA_MAX="2",
                MALLOC_MMAP_THRESHOLD_="65536")


def run_child(cmd: list[str], env: dict, result_path: Path, ctx=None) -> tuple[dict, dict]:
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
                "views": ctx.views, "threads": self.cfg.thread_count(),
                # the trainer's share of the budget: what the orchestrator does not hold
                "rss_limit_bytes": (budget - rss_bytes()) if budget else None,
                "result_path": str(tmp / "result.json")}

    def _run_worker(self, ctx, task, mode: str) -> dict:
        from ..context import Interrupted
        run = ctx.run
        ensure_artifacts(run, self.cfg, [task.k])
        run.save()  # the trainer reads the manifest from disk
        with job_dir("ort-trainer") as tmp:
            tmp = Path(tmp)
            job = self._job(ctx, task, mode, tmp)
            (tmp / "job.json").write_text(json.dumps(job))
            watched, result = run_child(worker_command(tmp / "job.json"),
                                         worker_env(self.cfg), tmp / "result.json", ctx)
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
            ctx.interrupted = True
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
        if "error" in result:
            raise recorded_error(result)
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
    _, peaks, _ = export_and_finish("rebuild", {"config": cfg.to_json(), "run_dir": str(run.root),
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
        watched, result = run_child(cmd, worker_env(cfg), tmp / "result.json")
    if command == "prepare" and watched["status"] != 0 and cfg.out:
        from ..run import remove_dead_staging
        remove_dead_staging(Path(cfg.out))  # what a killed set-up child staged
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


def export_and_finish(command: str, spec: dict, cfg) -> tuple[dict, list[int], float]:
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

def run_ort(cfg, *, plan: dict | None, resume, prepare_only: bool = False, make_watchdog=None):
    """The ORT target's part of a command (driver.run_command did the budget and, for a new run,
    the plan): set up a new run in two children (torch export, then the torch-free graph
    builder) or open the run to resume, then train it here, torch-free, one trainer child per
    module and phase; `make_watchdog(cfg, plan, limit_bytes)` is the target's. Returns (summary,
    run, backend, orchestrator peak bytes); `backend` is None when nothing was trained (a
    prepared or an already complete run)."""
    from ..context import Context
    from ..memory.measure import RssWatchdog, peak_rss_bytes, release_memory, reset_peak
    from ..run import Run
    from ..rundata import open_run_data
    from ..schemes import run_modulewise
    from ..summary import summarize

    started = time.time()
    if resume is not None:
        from ..resume import open_for_resume
        run, cfg, plan = open_for_resume(resume, cfg, clean=False)
        require_ort(need_onnx=False)
        if run.manifest.get("status") == "complete":  # nothing to train: the data not needed
            run.clean_torn_files(cfg)
            return run.read_json("summary.json"), run, None, peak_rss_bytes()
        # the run's data copy verified, images too (rebuilt from the source if damaged: the
        # workers only read it), the labels kept here
        dataset = open_run_data(run, cfg, images=False, verify_images=True)
        run.clean_torn_files(cfg)  # only now: a resume refused above changed nothing
    else:
        out = Path(cfg.out)
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
            return {"run_dir": str(run.root), "plan": plan}, run, None, peak_rss_bytes()
    splits = [tuple(s) for s in plan["splits"]]
    if resume is None:  # labels only: the trainers stream the images from RUN/data
        dataset = open_run_data(run, cfg, images=False, rebuild=False)
    release_memory()
    # From here this process's VmHWM is its peak beside the trainers (loading and fingerprinting
    # the data for planning peaked higher, with no child beside it: that is in whole_command).
    reset_peak()
    budget = plan.get("budget_bytes")
    watchdog = (make_watchdog(cfg, plan, budget) if make_watchdog is not None
                else RssWatchdog(limit_bytes=budget))
    ctx = Context(run, cfg, dataset, dataset.in_shape, dataset.num_classes, splits,
                  plan["batch_size"], plan["views"], watchdog)
    backend = OrtBackend(cfg)

    def body():
        ensure_artifacts(run, cfg, range(len(splits)))
        run_modulewise(ctx, backend)

    ctx.run_guarded(body)
    orchestrator_peak = max(ctx.process_peak_bytes(), peak_rss_bytes())
    summary = summarize(run, cfg, plan, watchdog, time.time() - started, orchestrator_peak)
    return summary, run, backend, orchestrator_peak


def _prepare_run(cfg, plan: dict, out: Path):
    """Set up the planned run: the torch half stages it, the torch-free half finishes the
    artifacts, and this process records them and publishes the run."""
    from ..run import Run
    from .ort_artifacts import record_artifacts
    result, peaks, seconds = export_and_finish("prepare", {"config": cfg.to_json(), "plan": plan},
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


__all__ = ["OrtBackend", "run_ort", "install_hint", "artifact_dir", "run_child", "worker_env",
           "export_and_finish"]
