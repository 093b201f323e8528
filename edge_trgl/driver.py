"""The budgeted command: one torch-free process that keeps the budget for everything it runs.

```
edge-trgl (this process: no torch; numpy, the dataset while planning, the run directory) ~40 MB
   └── one child at a time, inside the command's memory cgroup (memory/cgroup.py):
         describe the model → probe block → probe block → … → probe module …  (planning)
         → trainer (initialises the weights, publishes the run, trains every module)
```
Why this shape: a torch process costs ~220-290 MB before it does anything. The first design
imported torch in the `edge-trgl` process and ran each planner probe (its own torch) beside
it, so planning alone held two torch processes and a 512 MB kernel limit killed the command.
Here the orchestrator never imports torch, every torch process runs alone beside it, and the
planner plans the trainer child against the budget less the orchestrator.

Enforcement: where a memory cgroup can be created the whole command (this process and its
children) runs under a kernel limit of the budget; each child also stops itself at its share
(probes: PROBE_LIMIT; the trainer: its RSS watchdog), so a wrong estimate ends in a clear
message at a safe point, not a kernel kill. If the kernel does kill the trainer all the same,
the run keeps its last checkpoint and the message says how to continue; it does not re-plan by
itself (see `oom_message`).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from types import SimpleNamespace

from .errors import Stopped, UserError
from .jobdirs import job_dir
from .memory.cgroup import CommandCgroup, enclosing_limit_bytes, watchdog_report
from .memory.measure import peak_rss_bytes, release_memory, reset_peak, rss_bytes, run_measured

EXIT_STOPPED = 130


def is_budgeted(cfg, resume) -> bool:
    if resume is None:
        return cfg.mem_budget is not None or cfg.profile is not None
    return _stored_budget(resume) is not None


def _stored_budget(resume) -> int | None:
    """The budget a run was planned for, read without touching the run (the trainer child
    validates everything; a damaged plan.json is its to report)."""
    try:
        plan = json.loads((Path(resume) / "plan.json").read_text())
    except (OSError, ValueError, RecursionError):
        return None
    budget = plan.get("budget_bytes") if isinstance(plan, dict) else None
    return int(budget) if isinstance(budget, int) and budget > 0 else None


def host_limit(cfg, budget: int | None) -> int | None:
    """The host-memory limit a budget sets for the command. With --device cuda the budget is
    device memory (plus host RSS on a unified-memory board, which memory/cuda.py accounts for
    from inside the trainer), so the command's cgroup only measures there."""
    return None if cfg.device == "cuda" else budget


class CommandBudget:
    """The whole command's memory: the children's memory cgroup, its limit kept at the budget
    less this process, and the sampler that measures both together (memory/cgroup.py); where no
    cgroup can be created, the per-process watchdogs alone."""

    def __init__(self, budget_bytes: int | None):
        from .memory import cgroup
        self.budget_bytes = budget_bytes
        self.enclosing_limit_bytes = enclosing_limit_bytes()
        limit = budget_bytes - rss_bytes() if budget_bytes else cgroup.UNLIMITED
        self.group = CommandCgroup.create(limit)
        self.why_not = None
        if self.group is None:
            self.why_not = ("EDGE_TRGL_NO_CGROUP is set" if os.environ.get("EDGE_TRGL_NO_CGROUP")
                            else "not permitted here, or no memory controller")
        else:
            self.group.budget_bytes = budget_bytes
            cgroup.ACTIVE["group"] = self.group
            self.group.start_sampling()
        self.children: list[dict] = []
        self.final: dict | None = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        from .memory import cgroup
        if self.group is not None:
            self.final = self.group.report()
            cgroup.ACTIVE["group"] = None
            self.group.close()
            self.group = None

    def oom_kills(self) -> int:
        if self.group is not None:
            return self.group.new_oom_kills()
        return (self.final or {}).get("oom_kills") or 0

    def guard_killed_bytes(self) -> int | None:
        return self.group.guard_killed_bytes if self.group is not None else None

    def report(self, orchestrator_peak: int, child_peak: int) -> dict:
        if self.group is not None:
            out = self.group.report()
        elif self.final is not None:
            out = dict(self.final)
        else:
            out = watchdog_report(self.budget_bytes, self.why_not)
        out["enclosing_limit_bytes"] = self.enclosing_limit_bytes
        out["orchestrator_peak_rss_bytes"] = orchestrator_peak
        out["largest_child_peak_rss_bytes"] = child_peak
        # the processes that were alive together, each at its own peak: an upper bound that
        # counts the few pages they share (Python, numpy) twice
        out["processes_sum_peak_bytes"] = orchestrator_peak + child_peak
        if out.get("whole_command_peak_bytes") is None:
            out["whole_command_peak_bytes"] = out["processes_sum_peak_bytes"]
        out["children"] = self.children
        return out


def _progress(done: int, total: int) -> None:
    if total and sys.stderr.isatty():
        print(f"\rplanning: probing {total} distinct block(s) in fresh processes: {done}/{total}",
              end="\n" if done == total else "", file=sys.stderr, flush=True)
    elif done == 0 and total:
        print(f"planning: probing {total} distinct block(s) in fresh processes (cached for the "
              f"next run)", file=sys.stderr, flush=True)


def plan_lean(cfg, dataset, progress=_progress) -> dict:
    """The plan for a budgeted run, made in this torch-free process (probes in children)."""
    from .budget import format_size
    from .memory.budgeted import plan_budgeted, resolve_budget
    from .memory.describe import describe
    from .memory.probe_cache import ProbeOverBudget
    threads = int(cfg.threads or os.cpu_count() or 1)
    if not cfg.progress:
        progress = None
    try:
        description = describe(cfg, dataset.in_shape, dataset.num_classes, threads)
        plan = plan_budgeted(cfg, dataset, description["blocks"], description=description,
                             progress=progress)
    except ProbeOverBudget as exc:
        # a child that is not itself a probe of the model (the description, a baseline, an
        # ONNX Runtime trainer's baseline) could not start within the budget
        budget = resolve_budget(cfg)[0]
        seen = f" (it was stopped at {format_size(exc.bytes_seen)})" if exc.bytes_seen else ""
        raise UserError(
            f"The memory budget {format_size(budget)} is too small to even start a "
            f"{'torch' if cfg.backend != 'ort' else 'ONNX Runtime'} process beside this one: "
            f"{exc.what} needed more than the {format_size(budget - rss_bytes())} the budget "
            f"leaves it{seen}. Give a larger --mem-budget"
            + (", or use --backend ort, whose torch-free trainer starts at about 70 MB"
               if cfg.backend != "ort" else "") + ". Nothing was written.") from None
    return plan.to_json()


def load_for_planning(cfg, budget: int | None):
    """The dataset as this process needs it: its fingerprint, shapes and sizes. The images are
    dropped once fingerprinted (zero-stride stand-ins of the same shape and byte count remain,
    holding no memory), so every child runs beside a process of ~40 MB, not ~40 MB + the data;
    the trainer and set-up children load the data themselves."""
    import numpy as np

    from .train import load_data
    dataset = load_data(cfg)
    check_orchestrator_fits(budget)
    fingerprint = dataset.fingerprint()
    splits = {}
    for name in ("train", "val", "test"):
        arrays = getattr(dataset, name)
        shape = arrays.images.shape
        splits[name] = SimpleNamespace(
            images=np.broadcast_to(np.zeros((1, *shape[1:]), np.uint8), shape),
            labels=np.array(arrays.labels))
    hollow = SimpleNamespace(name=dataset.name, num_classes=dataset.num_classes,
                             mean=dataset.mean, std=dataset.std,
                             class_names=list(dataset.class_names), in_shape=dataset.in_shape,
                             fingerprint=lambda: fingerprint, **splits)
    del dataset, arrays
    release_memory()
    return hollow


def check_orchestrator_fits(budget: int | None) -> None:
    """The dataset is loaded in this process (numpy) before any child: if that alone is over
    the budget, nothing else can fit."""
    now = rss_bytes()
    if budget and now >= budget:
        from .budget import format_size
        raise UserError(f"The memory budget {format_size(budget)} is smaller than what loading the "
                        f"dataset alone takes in this process ({format_size(now)}). Give a larger "
                        f"--mem-budget or a smaller --train-fraction. Nothing was written.")


def plan_unbudgeted(cfg, dataset) -> dict:
    from .memory.describe import describe
    from .memory.planner import plan_run
    blocks = describe(cfg, dataset.in_shape, dataset.num_classes,
                      int(cfg.threads or os.cpu_count() or 1))["blocks"]
    return plan_run(cfg, dataset, blocks).to_json()


def prepare_budget(cfg) -> int:
    from .memory.budgeted import resolve_budget
    from .profiles import apply_profile
    cfg.validate()
    apply_profile(cfg)
    return resolve_budget(cfg)[0]


def train_budgeted(cfg, *, resume=None, prepare_only: bool = False) -> dict:
    from .run import Run
    from .train import default_out
    started = time.time()
    if resume is not None:
        budget = _stored_budget(resume)
    elif cfg.mem_budget is not None or cfg.profile is not None:
        budget = prepare_budget(cfg)
    else:  # `edge-trgl prepare` without a budget: the given grouping and batch size
        from .profiles import apply_profile
        cfg.validate()
        apply_profile(cfg)
        budget = None
    device = cfg
    if resume is not None:  # the run's own device decides (the trainer child checks the rest)
        try:
            stored = json.loads((Path(resume) / "config.json").read_text())
            if isinstance(stored, dict) and stored.get("device") == "cuda":
                device = SimpleNamespace(device="cuda")
        except (OSError, ValueError, RecursionError):
            pass
    with CommandBudget(host_limit(device, budget)) as guard:
        staging = None
        if resume is None:
            if cfg.out is not None:  # a bad --out is refused before the data is loaded
                Run.check_new_root(cfg.out)
            dataset = load_for_planning(cfg, host_limit(cfg, budget))
            plan = plan_lean(cfg, dataset) if budget else plan_unbudgeted(cfg, dataset)
            from .memory.planner import format_plan
            if cfg.progress and plan.get("module_estimates"):
                print(format_plan(plan), file=sys.stderr, flush=True)
            out = Path(cfg.out) if cfg.out else default_out(cfg)
            cfg.out = str(out)
            staging = run = Run.stage_new(out, cfg, plan, dataset.fingerprint())
            try:
                run.save()
            except BaseException:
                run.discard()
                raise
            job = {"mode": "new", "run_dir": str(run.root), "final_root": str(out),
                   "prepare_only": prepare_only}
            del dataset
            release_memory()
        else:
            job = {"mode": "resume", "run_dir": str(resume)}
        job["config"] = cfg.to_json()
        job["parent_pid"] = os.getpid()
        reset_peak()  # from here on, this process's VmHWM is its peak beside the trainer
        try:
            status, result, child_peak = _run_trainer(job, budget, guard)
        finally:
            if staging is not None and staging.root.exists():
                staging.discard()  # the trainer never published it (refused, killed): remove
        orchestrator_peak = peak_rss_bytes()
        run_dir = Path(job["final_root"] if job["mode"] == "new" else job["run_dir"])
        _check_status(status, result, run_dir, guard)
        if prepare_only:
            return result["summary"]
        return _finish(run_dir, result["summary"], guard, orchestrator_peak, child_peak,
                       time.time() - started)


def _run_trainer(job: dict, budget: int | None, guard: CommandBudget) -> tuple[int, dict, int]:
    """The trainer child, in its own session: this process forwards Ctrl-C / SIGTERM to it once
    per signal (it stops at its next safe point; a second signal stops it now)."""
    child = {"pid": None}

    def forward(signum, frame):
        if child["pid"] is not None:
            try:
                os.kill(child["pid"], signum)
            except ProcessLookupError:
                pass

    def started(proc):
        child["pid"] = proc.pid
        try:  # if the kernel must kill something, let it be the trainer, not this process
            with open(f"/proc/{proc.pid}/oom_score_adj", "w") as fh:
                fh.write("500")
        except OSError:
            pass

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with job_dir("trainer") as tmp:
            tmp = Path(tmp)
            if budget and job["config"].get("device") != "cuda":
                job["rss_limit_bytes"] = budget - rss_bytes()
            (tmp / "job.json").write_text(json.dumps(job))
            cmd = [sys.executable, "-m", "edge_trgl.trainer", str(tmp / "job.json"),
                   str(tmp / "result.json")]
            env = dict(os.environ, MALLOC_ARENA_MAX=os.environ.get("MALLOC_ARENA_MAX", "2"))
            detail: dict = {}
            status, peak, seconds = run_measured(cmd, env=env, detail=detail,
                                                 start_new_session=True, on_start=started)
            try:
                result = json.loads((tmp / "result.json").read_text())
            except (OSError, ValueError):
                result = {}
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    guard.children.append({"what": "trainer", "peak_rss_bytes": peak, "seconds": seconds,
                           "exit_status": status})
    return status, result, peak


def _check_status(status: int, result: dict, run_dir: Path, guard: CommandBudget) -> None:
    if status == 0 and "summary" in result:
        return
    if status == EXIT_STOPPED and "error" in result:
        raise Stopped(result["error"])
    if "error" in result:
        raise UserError(result["error"])
    if status < 0:
        raise UserError(oom_message(status, run_dir, guard))
    raise RuntimeError(f"the training process failed with exit status {status}; its error is "
                       f"printed above. Everything up to its last finished epoch is saved"
                       + (f"; continue with `edge-trgl train --resume {run_dir}`." if
                          (run_dir / "manifest.json").exists() else "."))


def oom_message(status: int, run_dir: Path, guard: CommandBudget) -> str:
    """Killed from outside. Not re-planned automatically: an OOM kill means the plan's estimate
    was wrong for this machine, and a smaller batch would silently change the training recipe
    (and the result) in the middle of a run; the user decides."""
    kills = guard.oom_kills()
    stopped_at = guard.guard_killed_bytes()
    resumable = (run_dir / "manifest.json").exists()
    where = (f"Everything up to its last finished epoch is saved in {run_dir}; continue with "
             f"`edge-trgl train --resume {run_dir}` (same plan), or start a new run with a larger "
             f"--mem-budget or a smaller --batch-size." if resumable else
             "Nothing was written (the run had not started).")
    if stopped_at is not None and not kills:
        return (f"The training process was stopped by the command's memory guard: its memory "
                f"reached {_size(stopped_at)}, within {_size(16_000_000)} of what the budget "
                f"{_size(guard.budget_bytes)} leaves it, more than the plan measured. {where} "
                f"Please report this with the run's plan.json.")
    if kills:
        return (f"The training process was killed by the kernel's out-of-memory killer: the "
                f"command's processes together reached the memory limit of "
                f"{_size(guard.budget_bytes)} ({kills} OOM kill(s) in the command's memory "
                f"cgroup), above what the plan measured. {where} Please report this with the "
                f"run's plan.json.")
    return f"The training process was killed by signal {-status} from outside. {where}"


def _size(n) -> str:
    from .budget import format_size
    return format_size(n) if n else "the budget"


def _finish(run_dir: Path, summary: dict, guard: CommandBudget, orchestrator_peak: int,
            child_peak: int, seconds: float) -> dict:
    """Add the whole command's figures to the trainer's summary and save it in the run."""
    from .run import Run
    if "whole_command" in summary:  # a finished run's summary, shown again: keep it as it is
        return summary
    whole = guard.report(orchestrator_peak, child_peak)
    summary["whole_command"] = whole
    summary["whole_command_peak_bytes"] = whole["whole_command_peak_bytes"]
    summary["memory_enforcement"] = whole["enforcement"]
    summary["seconds"] = seconds
    budget = summary.get("budget_bytes")
    for row in summary["modules"]:
        # the trainer's per-module figure plus this process beside it: what the plan estimates
        if row.get("measured_peak_bytes"):
            row["trainer_peak_bytes"] = row["measured_peak_bytes"]
            row["measured_peak_bytes"] = row["measured_peak_bytes"] + orchestrator_peak
            if row.get("estimated_peak_bytes"):
                row["estimate_error"] = ((row["estimated_peak_bytes"] - row["measured_peak_bytes"])
                                         / row["measured_peak_bytes"])
    summary["over_budget"] = bool(budget and (whole["whole_command_peak_bytes"] > budget
                                              or whole.get("oom_kills")))
    run = Run.open(run_dir, clean=False)
    run.write_json("summary.json", summary)
    run.save()
    return summary
