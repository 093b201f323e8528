"""The set-up sequence of a new run, the same for every target and every command (`train`,
`prepare`, `plan`, the ORT target's preparation): `check_new` (the options, the target's rules,
whether it can run here, --out; the budget), then `plan_new` (the data, fingerprinted and dropped
to shapes; the plan against the target's memory model; the default --out). Nothing is written;
the run directory is staged next (run.Run.stage_new) by whoever trains it, and
`initialise_and_publish` gives it its initial weights and moves it into place.

All of it runs in the torch-free orchestrator: every measurement is a child process."""

from __future__ import annotations

import sys
from pathlib import Path

from .errors import UserError
from .killpoints import kill_point
from .memory.measure import release_memory, rss_bytes


def plan_lean(cfg, dataset, model, progress=None) -> dict:
    """The plan for a budgeted run on the target whose memory model is `model`, made in this
    torch-free process (probes in children). `progress`: what is told how the probes advance
    (default: memory/progress.py's lines on stderr; none with cfg.progress False, --quiet)."""
    from .budget import format_size
    from .memory.budgeted import plan_budgeted, resolve_budget
    from .memory.describe import describe
    from .memory.probe_cache import ProbeOverBudget
    threads = cfg.thread_count()
    if not cfg.progress:
        progress = None
    elif progress is None:
        from .memory.progress import PlanningProgress
        progress = PlanningProgress()
    ok = False
    try:
        description = describe(cfg, dataset.in_shape, dataset.num_classes, threads)
        plan = plan_budgeted(cfg, dataset, description["blocks"], model,
                             description=description, progress=progress)
        ok = True
    except ProbeOverBudget as exc:
        # a child that is not itself a probe of the model (the description, a baseline, an
        # ONNX Runtime trainer's baseline) could not start within the budget
        budget = resolve_budget(cfg, model)[0]
        seen = f" (it was stopped at {format_size(exc.bytes_seen)})" if exc.bytes_seen else ""
        raise UserError(
            f"The memory budget {format_size(budget)} is too small to even start a "
            f"{'torch' if cfg.backend != 'ort' else 'ONNX Runtime'} process beside this one: "
            f"{exc.what} needed more than the {format_size(budget - rss_bytes())} the budget "
            f"leaves it{seen}. Give a larger --mem-budget"
            + (", or use --backend ort, whose torch-free trainer starts at about 70 MB"
               if cfg.backend != "ort" else "") + ". Nothing was written.") from None
    finally:
        if hasattr(progress, "finish"):
            progress.finish(ok)
    return plan.to_json()


def load_for_planning(cfg, budget: int | None):
    """The dataset as this process needs it: names, shapes and every split's labels, with
    stand-ins for the images that hold no memory (data/stream.py: scan_for). No image is decoded
    here: the process that sets the run up converts the data into the run (rundata.py), so every
    child runs beside a process of ~40 MB whatever the dataset's size. Its `fingerprint()` is a
    digest of what was planned, which the conversion checks."""
    from .data.stream import scan_for
    dataset = scan_for(cfg)
    check_orchestrator_fits(budget)
    release_memory()
    return dataset


def check_orchestrator_fits(budget: int | None) -> None:
    """The dataset's labels are read in this process (numpy) before any child (CIFAR-10 parses
    each batch file for them): if that alone is over the budget, nothing else can fit."""
    now = rss_bytes()
    if budget and now >= budget:
        from .budget import format_size
        raise UserError(f"The memory budget {format_size(budget)} is smaller than what loading the "
                        f"dataset alone takes in this process ({format_size(now)}). Give a larger "
                        f"--mem-budget or a smaller --train-fraction. Nothing was written.")


def plan_unbudgeted(cfg, dataset, model) -> dict:
    from .memory.describe import describe
    from .memory.planner import plan_run
    blocks = describe(cfg, dataset.in_shape, dataset.num_classes,
                      cfg.thread_count())["blocks"]
    return plan_run(cfg, dataset, blocks, model).to_json()


def check_new(cfg, target, *, new_run: bool = True) -> int | None:
    """The checks of a new run (or, new_run=False, of a plan only), before any data is loaded:
    the options (the target's rules included, with a --profile's defaults applied), whether the
    target can run here, and a bad --out. Returns the budget in bytes (None without
    --mem-budget / --profile)."""
    from .memory.budgeted import resolve_budget
    from .profiles import apply_profile
    from .run import Run
    cfg.validate()
    apply_profile(cfg)  # threads; the backend / device profile_target.apply_profile_target chose
    named = "ort" if cfg.backend == "ort" else cfg.device  # (targets.target_name's rule)
    if getattr(target, "name", named) != named:  # a caller that chose the target first
        raise RuntimeError(f"internal error: the {target.name} target was chosen before profile "
                           f"{cfg.profile} chose {named}; call "
                           f"profile_target.apply_profile_target first")
    target.validate(cfg)
    target.check_available(cfg, setup=new_run)
    if new_run and cfg.out is not None:  # a bad --out is refused before the data is loaded
        Run.check_new_root(cfg.out)
    if cfg.mem_budget is None and cfg.profile is None:
        return None
    return resolve_budget(cfg, target.memory_model())[0]


def plan_new(cfg, target, budget: int | None, *, show: bool = True,
             dataset=None) -> tuple[dict, str]:
    """The set-up sequence of every new run, whatever the target: the data (fingerprinted, then
    dropped to shapes), the plan against the target's memory model (or the grouping as given),
    printed; cfg.out gets its default. Nothing is written. Returns (plan, data fingerprint).
    `dataset`: what load_for_planning already returned for these data options (plans of several
    schemes for one dataset load it once)."""
    if dataset is None:
        dataset = load_for_planning(cfg, target.host_limit(budget))
    model = target.memory_model()
    plan = plan_lean(cfg, dataset, model) if budget else plan_unbudgeted(cfg, dataset, model)
    if show and cfg.progress:  # before the data is converted and the first epoch (--quiet: not)
        from .memory.planner import format_plan
        print(format_plan(plan), file=sys.stderr, flush=True)
    fingerprint = dataset.fingerprint()
    del dataset  # the caller's copy, if it passed one, stays its own
    release_memory()
    from .run import default_out
    cfg.out = str(Path(cfg.out) if cfg.out else default_out(cfg))
    return plan, fingerprint


def initialise_and_publish(run, cfg, dataset, plan: dict) -> None:
    """A staged run (config, plan, identity written) gets its initial weights and is moved into
    place; on any failure the staging folder is removed, so nothing half-written remains."""
    from .modules import init_store
    try:
        run.lock()
        init_store(run, cfg, dataset.in_shape, dataset.num_classes,
                   [tuple(s) for s in plan["splits"]])
        run.manifest["status"] = "running"
        kill_point("setup")
        run.publish()
    except BaseException:
        run.discard()
        raise
