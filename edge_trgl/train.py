"""`train(config)`: the whole run, from data to summary. The CLI's `train` is a thin layer over
this; tests and benchmarks call it directly.

Which process does what: a run with a memory budget (and every ORT run) is driven by the
torch-free orchestrator (driver.run_command), which plans and starts the target's children; the
torch targets' trainer child (trainer.py) and a run without a budget train here, in
`train_in_process`, with torch imported in this process."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from .config import TrainConfig
from .memory.measure import release_memory
from .setup import initialise_and_publish


def train(cfg: TrainConfig, *, resume: str | os.PathLike | None = None,
          prepare_only: bool = False) -> dict:
    """Run (or resume) a training run; return its summary (also written to summary.json).

    With a memory budget (--mem-budget, --profile, or a resumed run that was planned with one)
    the whole command keeps it: this process stays torch-free and runs every torch process
    (the planner's probes, the trainer) as its one child of the moment, inside a memory cgroup
    of the budget's size where one can be created (driver.py). Without a budget there is no
    promise to divide between processes, and a torch run trains in this process.

    `prepare_only`: plan and write the new run directory, train nothing, and return
    {"run_dir", "plan"}; `train(cfg, resume=run_dir)` (here or on another machine) trains it."""
    from .driver import is_budgeted, run_command
    from .targets import get_target, stored_target_name
    if cfg.distributed or (resume is not None and (Path(resume) / "rank0").is_dir()
                           and not (Path(resume) / "manifest.json").exists()):
        resume = rank_directory(cfg, resume)
    if resume is not None:
        name = stored_target_name(resume)
        if name is None:  # train_in_process's resume path reports the damaged or missing run
            return train_in_process(cfg, resume=resume)
        target = get_target(name)
    else:
        from .profile_target import apply_profile_target
        apply_profile_target(cfg)  # a --profile's backend / device choose the target
        target = get_target(cfg)
    if target.always_driven or is_budgeted(cfg, resume) or prepare_only:
        return run_command(cfg, target, resume=resume, prepare_only=prepare_only)
    return train_in_process(cfg, resume=resume)


def rank_directory(cfg: TrainConfig, resume):
    """--distributed: rank r's run directory is <--out>/rank<r> (and <--resume>/rank<r>); every
    rank runs the same command line. Returns the resume directory (None for a new run)."""
    from .distributed import rank_env, rank_root
    from .errors import UserError
    rank, _ = rank_env()
    if resume is not None:
        return rank_root(resume, rank)
    if not cfg.out:
        raise UserError("--distributed needs --out DIR: every rank writes its run directory to "
                        "DIR/rank<r> (on its own machine), and all ranks are given the same DIR.")
    cfg.out = str(rank_root(cfg.out, rank))
    return None


def train_in_process(cfg: TrainConfig, *, resume: str | os.PathLike | None = None,
                     staged: dict | None = None, rss_limit_bytes: int | None = None) -> dict:
    """The whole run in this process (torch imported here). `staged` is a run directory the
    driver already staged (config, plan, data fingerprint) for this process to initialise,
    publish and train; `rss_limit_bytes` is this process's share of the budget."""
    from .context import Context
    from .data.stream import scan_for
    from .run import Run
    from .rundata import materialize_run_data, open_run_data
    from .schemes import run_modulewise, run_resident
    from .summary import summarize
    from .targets import get_target

    started = time.time()
    if staged is not None:
        run = Run(Path(staged["run_dir"]), json.loads((Path(staged["run_dir"]) / "manifest.json").read_text()))
        run.final_root = Path(staged["final_root"])
        cfg = TrainConfig.from_json(run.read_json("config.json"))
        target = get_target(cfg)
        plan = run.read_json("plan.json")
        try:
            target.check_available(cfg)
            dataset = materialize_run_data(run, cfg)  # streamed into the run, before torch
            release_memory()
            set_threads(cfg)  # imports torch: only after the data
        except BaseException:
            run.discard()
            raise
        initialise_and_publish(run, cfg, dataset, plan)
        if staged.get("prepare_only"):
            return {"run_dir": str(run.root), "plan": plan}
    elif resume is not None:
        from .resume import open_for_resume
        run, cfg, plan = open_for_resume(resume, cfg, clean=False)
        target = get_target(cfg)
        target.check_available(cfg)
        if run.manifest.get("status") == "complete":  # nothing to train: the data not needed
            run.clean_torn_files(cfg)
            return run.read_json("summary.json")
        dataset = open_run_data(run, cfg)  # verified; rebuilt from the source if damaged
        set_threads(cfg)  # imports torch: only after the data
        run.clean_torn_files(cfg)  # only now: a resume refused above changed nothing
    else:
        from .memory.planner import plan_run
        from .run import default_out
        from .setup import check_new
        target = get_target(cfg)
        check_new(cfg, target)  # the options, the target, --out: before the (slow) data loading
        # Data first, torch second: reading the labels parses CIFAR's batch files one by one,
        # and that transient should not stack on top of torch's ~220 MB.
        dataset = scan_for(cfg)  # labels and shapes; the images are converted once staged
        release_memory()
        set_threads(cfg)  # imports torch: only after the data
        from .modules import architecture
        arch = architecture(cfg, dataset.in_shape, dataset.num_classes)
        plan = plan_run(cfg, dataset, arch, target.memory_model()).to_json()
        out = Path(cfg.out) if cfg.out else default_out(cfg)
        cfg.out = str(out)
        run = Run.stage_new(out, cfg, plan, dataset.fingerprint())
        try:
            dataset = materialize_run_data(run, cfg)
        except BaseException:
            run.discard()
            raise
        initialise_and_publish(run, cfg, dataset, plan)
        if cfg.progress:  # the plan, before the first epoch (a budgeted run's: setup.plan_new)
            import sys
            from .memory.planner import format_plan
            print(format_plan(plan), file=sys.stderr, flush=True)
    splits = [tuple(s) for s in plan["splits"]]
    budget = plan.get("budget_bytes")
    if rss_limit_bytes is not None:  # the budget less the orchestrator
        budget = rss_limit_bytes
    watchdog = target.make_watchdog(cfg, plan, budget)
    ctx = Context(run, cfg, dataset, dataset.in_shape, dataset.num_classes, splits,
                  plan["batch_size"], plan["views"], watchdog)

    def body():
        if cfg.scheme in ("sequential", "multilap"):
            run_modulewise(ctx, target.make_backend(cfg))
        else:
            run_resident(ctx)

    ctx.run_guarded(body)
    summary = summarize(run, cfg, plan, watchdog, time.time() - started, ctx.process_peak_bytes())
    target.add_summary_fields(summary, run=run, plan=plan, watchdog=watchdog)
    if plan.get("distributed"):
        summary["distributed"] = {**plan["distributed"],
                                  "sent_bytes": run.manifest.get("sent_bytes")}
    run.write_json("summary.json", summary)
    run.manifest["status"] = "complete"
    run.save()
    return summary


def set_threads(cfg) -> None:
    """modules.set_threads, whose module imports torch: called only once the data is loaded
    (loading CIFAR briefly holds every batch file; that transient must not stack on torch's)."""
    from .modules import set_threads as set_torch_threads
    set_torch_threads(cfg)
