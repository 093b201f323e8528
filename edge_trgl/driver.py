"""The command's processes: one torch-free process that keeps the budget for everything it runs
(every ORT command and every budgeted torch command; `run_command`). Its set-up sequence (checks,
data, plan) is setup.py's; how it trains is the target's (targets/*.py: drive).

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
from dataclasses import dataclass

from .errors import UserError, recorded_error
from .jobdirs import job_dir
from .memory.cgroup import CommandCgroup, enclosing_limit_bytes, watchdog_report
from .memory.measure import peak_rss_bytes, reset_peak, rss_bytes, run_measured
from .setup import check_new, plan_new

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


@dataclass
class Outcome:
    """What a target's drive() hands back to run_command."""
    summary: dict
    run_dir: Path
    orchestrator_peak_bytes: int
    largest_child_peak_bytes: int
    # the per-module peaks already count this process (ORT); else they are the trainer's own
    per_module_combined: bool = False


def run_command(cfg, target, *, resume=None, prepare_only: bool = False) -> dict:
    """`edge-trgl train` / `prepare` on any target, as one torch-free process: the budget, the
    whole command's memory cgroup (CommandBudget), the plan of a new run, then the target's own
    way of training it (Target.drive), then the whole command's figures in the summary."""
    started = time.time()
    budget = _stored_budget(resume) if resume is not None else check_new(cfg, target)
    with CommandBudget(target.host_limit(budget)) as guard:
        plan, fingerprint = plan_new(cfg, target, budget) if resume is None else (None, None)
        outcome = target.drive(cfg, plan=plan, fingerprint=fingerprint, resume=resume,
                               budget_bytes=budget, guard=guard, prepare_only=prepare_only)
        if prepare_only or "whole_command" in outcome.summary:
            return outcome.summary  # a plan only, or a finished run's summary shown again
        return _finish(outcome, guard, time.time() - started)


def drive_trainer_child(cfg, *, plan, fingerprint, resume, host_limit_bytes, guard,
                        prepare_only: bool) -> Outcome:
    """The torch targets' way: stage the planned run (config, plan, identity; not yet visible)
    and start one trainer child (trainer.py) that initialises, publishes and trains all of it."""
    from .run import Run
    staging = None
    if resume is None:
        out = Path(cfg.out)
        staging = run = Run.stage_new(out, cfg, plan, fingerprint)
        try:
            run.save()
        except BaseException:
            run.discard()
            raise
        job = {"mode": "new", "run_dir": str(run.root), "final_root": str(out),
               "prepare_only": prepare_only}
    else:
        job = {"mode": "resume", "run_dir": str(resume)}
    job["config"] = cfg.to_json()
    job["parent_pid"] = os.getpid()
    reset_peak()  # from here on, this process's VmHWM is its peak beside the trainer
    try:
        status, result, child_peak = _run_trainer(job, host_limit_bytes, guard)
    finally:
        if staging is not None and staging.root.exists():
            staging.discard()  # the trainer never published it (refused, killed): remove
    orchestrator_peak = peak_rss_bytes()
    run_dir = Path(job["final_root"] if job["mode"] == "new" else job["run_dir"])
    _check_status(status, result, run_dir, guard)
    return Outcome(result["summary"], run_dir, orchestrator_peak, child_peak)


def _run_trainer(job: dict, host_limit_bytes: int | None,
                 guard: CommandBudget) -> tuple[int, dict, int]:
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
            if host_limit_bytes:  # the trainer's share: what this process does not hold
                job["rss_limit_bytes"] = host_limit_bytes - rss_bytes()
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
    if "error" in result:
        raise recorded_error(result)
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


def _finish(outcome: Outcome, guard: CommandBudget, seconds: float) -> dict:
    """Add the whole command's figures to the summary and save it in the run."""
    from .run import Run
    summary = outcome.summary
    whole = guard.report(outcome.orchestrator_peak_bytes, outcome.largest_child_peak_bytes)
    summary["whole_command"] = whole
    summary["whole_command_peak_bytes"] = whole["whole_command_peak_bytes"]
    summary["memory_enforcement"] = whole["enforcement"]
    budget = summary.get("budget_bytes")
    if not outcome.per_module_combined:
        summary["seconds"] = seconds
        for row in summary["modules"]:
            # the trainer's per-module figure plus this process beside it: what the plan estimates
            if row.get("measured_peak_bytes"):
                row["trainer_peak_bytes"] = row["measured_peak_bytes"]
                row["measured_peak_bytes"] = row["measured_peak_bytes"] + outcome.orchestrator_peak_bytes
                if row.get("estimated_peak_bytes"):
                    row["estimate_error"] = ((row["estimated_peak_bytes"] - row["measured_peak_bytes"])
                                             / row["measured_peak_bytes"])
    over = bool(budget and (whole["whole_command_peak_bytes"] > budget or whole.get("oom_kills")))
    if outcome.per_module_combined:  # the target's own verdict (its processes' peaks) stands too
        over = over or bool(summary.get("over_budget"))
    summary["over_budget"] = over
    run = Run.open(outcome.run_dir, clean=False)
    run.write_json("summary.json", summary)
    run.save()
    return summary
