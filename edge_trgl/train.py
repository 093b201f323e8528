"""`train(config)`: the whole run, from data to summary. The CLI's `train` is a thin layer over
this; tests and benchmarks call it directly."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from .config import TrainConfig
from .errors import UserError
from .killpoints import kill_point
from .envinfo import dist_version
from .memory.measure import RssWatchdog, release_memory, rss_bytes


def resolve_splits(num_blocks: int, cfg: TrainConfig, default_modules: int = 4) -> list[tuple[int, int]]:
    """Module boundaries (lo, hi) from --module-size, --modules or --splits."""
    if cfg.splits is not None:
        points = list(cfg.splits)
        if points != sorted(set(points)) or any(p <= 0 or p >= num_blocks for p in points):
            raise UserError(
                f"--splits {','.join(map(str, cfg.splits))} is not valid for {cfg.model}, which has "
                f"{num_blocks} blocks: give strictly increasing block indices between 1 and "
                f"{num_blocks - 1} where modules 1, 2, ... start (e.g. --splits 3,6).")
        bounds = [0, *points, num_blocks]
        return list(zip(bounds[:-1], bounds[1:]))
    if cfg.module_size is not None:
        size = min(cfg.module_size, num_blocks)
        return [(lo, min(lo + size, num_blocks)) for lo in range(0, num_blocks, size)]
    k = cfg.modules if cfg.modules is not None else min(default_modules, num_blocks)
    if k > num_blocks:
        raise UserError(f"--modules {k} is more than the {num_blocks} blocks of {cfg.model}; "
                        f"use at most {num_blocks} (block-wise training).")
    sizes = [len(a) for a in np.array_split(np.arange(num_blocks), k)]
    bounds = np.cumsum([0, *sizes]).tolist()
    return list(zip(bounds[:-1], bounds[1:]))


def load_data(cfg: TrainConfig):
    from .data import load_dataset
    return load_dataset(cfg.data, cfg.data_dir, seed=cfg.seed, train_fraction=cfg.train_fraction,
                        val_fraction=cfg.val_fraction, test_fraction=cfg.test_fraction,
                        synthetic_train=cfg.synthetic_train,
                        synthetic_test=cfg.synthetic_test)


def environment() -> dict:
    import sys
    torch = sys.modules.get("torch")  # not imported for this: the ORT orchestrator stays torch-free
    info = {"python": platform.python_version(),
            "torch": torch.__version__ if torch is not None else dist_version("torch"),
            "numpy": np.__version__, "platform": platform.platform(),
            "machine": platform.machine(), "cpu": _cpu_model(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads() if torch is not None else None}
    info["edge_trgl"] = dist_version("edge-trgl")
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _require_device(cfg: TrainConfig) -> None:
    """A clear refusal before any data loading or planning when CUDA cannot run here."""
    if cfg.device == "cuda":
        from .memory.cuda import require_cuda
        require_cuda(cfg)


def default_out(cfg: TrainConfig) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{stamp}-{cfg.model}-{cfg.scheme}"


def set_threads(cfg: TrainConfig) -> None:
    import gc

    import torch
    threads = cfg.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    # The ~280k objects that importing torch creates are never garbage, yet every gc.collect()
    # (release_memory, at each phase boundary) walked them: 0.16 s a call on x86, ~1.2 s of a
    # small run. Freezing them moves them out of the collector's sight; they are still freed
    # normally by reference counting.
    gc.collect()
    gc.freeze()


def make_plan(cfg: TrainConfig, dataset, arch):
    from .memory.planner import plan_run
    return plan_run(cfg, dataset, arch)


def train(cfg: TrainConfig, *, resume: str | os.PathLike | None = None,
          prepare_only: bool = False) -> dict:
    """Run (or resume) a training run; return its summary (also written to summary.json).

    With a memory budget (--mem-budget, --profile, or a resumed run that was planned with one)
    the whole command keeps it: this process stays torch-free and runs every torch process
    (the planner's probes, the trainer) as its one child of the moment, inside a memory cgroup
    of the budget's size where one can be created (driver.py). Without a budget there is no
    promise to divide between processes, and the run trains in this process.

    `prepare_only`: plan and write the new run directory, train nothing, and return
    {"run_dir", "plan"}; `train(cfg, resume=run_dir)` (here or on another machine) trains it."""
    from .backends.ort_backend import is_ort_run
    if is_ort_run(cfg, resume):  # torch-free orchestrator; torch only in set-up children
        from .backends.ort_backend import train_ort
        return train_ort(cfg, resume=resume, prepare_only=prepare_only)
    from .driver import is_budgeted, train_budgeted
    if is_budgeted(cfg, resume) or prepare_only:
        return train_budgeted(cfg, resume=resume, prepare_only=prepare_only)
    return train_in_process(cfg, resume=resume)


def train_in_process(cfg: TrainConfig, *, resume: str | os.PathLike | None = None,
                     staged: dict | None = None, rss_limit_bytes: int | None = None) -> dict:
    """The whole run in this process (torch imported here). `staged` is a run directory the
    driver already staged (config, plan, data fingerprint) for this process to initialise,
    publish and train; `rss_limit_bytes` is this process's share of the budget."""
    from .backends import get_backend
    from .run import Run
    from .schemes import Context, run_modulewise, run_resident

    started = time.time()
    if staged is not None:
        run = Run(Path(staged["run_dir"]), json.loads((Path(staged["run_dir"]) / "manifest.json").read_text()))
        run.final_root = Path(staged["final_root"])
        cfg = TrainConfig.from_json(run.read_json("config.json"))
        plan = run.read_json("plan.json")
        try:
            _require_device(cfg)
            dataset = load_data(cfg)
            if dataset.fingerprint() != run.manifest.get("data_fingerprint"):
                raise UserError("The dataset changed while the run was being planned; start again.")
            release_memory()
            set_threads(cfg)
        except BaseException:
            run.discard()
            raise
        _initialise_and_publish(run, cfg, dataset, plan)
        if staged.get("prepare_only"):
            return {"run_dir": str(run.root), "plan": plan}
    elif resume is not None:
        from .resume import check_data, open_for_resume
        run, cfg, plan = open_for_resume(resume, cfg, clean=False)
        _require_device(cfg)
        dataset = load_data(cfg)
        set_threads(cfg)
        check_data(run, dataset)
        run.clean_torn_files(cfg)  # only now: a resume refused above changed nothing
        if run.manifest.get("status") == "complete":
            return run.read_json("summary.json")
    else:
        from .profiles import apply_profile
        cfg.validate()
        apply_profile(cfg)
        _require_device(cfg)
        if cfg.out is not None:  # refuse a bad --out before the (slow) data loading and planning
            Run.check_new_root(cfg.out)
        # Data first, torch second: loading CIFAR briefly holds every batch file, and that
        # transient should not stack on top of torch's ~220 MB.
        dataset = load_data(cfg)
        release_memory()
        set_threads(cfg)
        from .modules import architecture  # imports torch: only after the data
        arch = architecture(cfg, dataset.in_shape, dataset.num_classes)
        plan = make_plan(cfg, dataset, arch).to_json()
        out = Path(cfg.out) if cfg.out else default_out(cfg)
        cfg.out = str(out)
        run = Run.stage_new(out, cfg, plan, dataset.fingerprint())
        _initialise_and_publish(run, cfg, dataset, plan)
    splits = [tuple(s) for s in plan["splits"]]
    budget = plan.get("budget_bytes")
    if rss_limit_bytes is not None and cfg.device != "cuda":  # the budget less the orchestrator
        budget = rss_limit_bytes
    if cfg.device == "cuda":  # the budget covers device memory (+ host RSS on unified memory)
        from .memory.cuda import CudaWatchdog
        rows = plan.get("module_estimates") or [{}]
        accounting = rows[0].get("accounting")  # the planner's probe saw the device
        watchdog = CudaWatchdog(cfg, limit_bytes=budget,
                                unified={"cuda-unified": True, "cuda-discrete": False}.get(accounting))
    else:
        watchdog = RssWatchdog(limit_bytes=budget)
    ctx = Context(run, cfg, dataset, dataset.in_shape, dataset.num_classes, splits,
                  plan["batch_size"], plan["views"], watchdog)

    def body():
        if cfg.scheme in ("sequential", "multilap"):
            run_modulewise(ctx, get_backend(cfg))
        else:
            run_resident(ctx)

    ctx.run_guarded(body)
    summary = summarize(run, cfg, plan, watchdog, time.time() - started, ctx.process_peak_bytes())
    run.write_json("summary.json", summary)
    run.manifest["status"] = "complete"
    run.save()
    return summary


def _initialise_and_publish(run, cfg, dataset, plan: dict) -> None:
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


def summarize(run, cfg, plan, watchdog, seconds, peak) -> dict:
    from .schemes import best_module
    modules = run.manifest["modules"]
    best = best_module(modules)
    rows = []
    for k in sorted(modules, key=int):
        rec = modules[k]
        rows.append({"module": int(k), "blocks": [rec["lo"], rec["hi"]],
                     "val_acc": rec.get("val_acc"), "test_acc": rec.get("test_acc"),
                     "measured_peak_bytes": rec.get("measured_peak_bytes")})
    estimates = plan.get("module_estimates") or []
    if len(estimates) == len(rows) and cfg.scheme in ("sequential", "multilap"):
        for row, est in zip(rows, estimates):
            row["estimated_peak_bytes"] = est["estimated_peak_bytes"]
            if row["measured_peak_bytes"]:
                row["estimate_error"] = (est["estimated_peak_bytes"] - row["measured_peak_bytes"]) / row["measured_peak_bytes"]
    prior = run.manifest.get("peak_rss_bytes_so_far", 0)
    summary = {
        "run_dir": str(run.root), "model": cfg.model, "data": cfg.data, "scheme": cfg.scheme,
        "backend": cfg.backend, "device": cfg.device, "tau": cfg.tau, "tau_mode": cfg.tau_mode,
        "modules": rows, "best_module": best,
        "best_val_acc": modules[str(best)].get("val_acc") if best is not None else None,
        "best_test_acc": modules[str(best)].get("test_acc") if best is not None else None,
        "seconds": seconds,
        "batch_size": plan["batch_size"],
        "peak_rss_bytes": max(peak, prior),
        "peak_rss_method": "VmHWM of the training process (/proc/self/status); with "
                           "--module-peaks the max over per-module VmHWM readings",
        "watchdog_max_rss_bytes": watchdog.max_seen_bytes,
        "module_peak_method": ("VmHWM per module (reset with clear_refs at module start)"
                               if cfg.module_peaks else
                               "RSS sampled every 20 ms during the module (a lower bound)"),
        "budget_bytes": plan.get("budget_bytes"),
        "estimated_peak_bytes": plan.get("estimated_peak_bytes"),
        "over_budget": bool(plan.get("budget_bytes") and peak > plan["budget_bytes"]),
        "final_rss_bytes": rss_bytes(),
        "environment": environment(),
    }
    if cfg.device == "cuda":  # allocated, reserved, context, host RSS (memory/cuda.py)
        summary.update(watchdog.summary_fields(summary["peak_rss_bytes"], plan.get("budget_bytes")))
        summary["over_budget"] = summary["cuda_over_budget"]
        summary["module_peak_method"] = watchdog.module_peak_method(summary["module_peak_method"])
    return summary


def format_summary(summary: dict) -> str:
    from .budget import format_size
    # per-module memory columns where the run measured them (module-wise schemes), next to the
    # plan's estimate where there was a budget
    peaks = any(row.get("measured_peak_bytes") for row in summary["modules"])
    estimates = any(row.get("estimated_peak_bytes") for row in summary["modules"])
    header = f"{'module':>6}  {'blocks':>9}  {'val acc':>8}  {'test acc':>8}"
    header += f"  {'peak':>9}" if peaks else ""
    header += f"  {'estimate':>9}" if estimates else ""
    lines = [header]
    size = lambda v: "-" if not v else format_size(v)  # noqa: E731
    for row in summary["modules"]:
        mark = " <- best" if row["module"] == summary["best_module"] else ""
        fmt = lambda v: "-" if v is None else f"{100 * v:.2f}%"  # noqa: E731
        line = (f"{row['module']:>6}  {row['blocks'][0]:>4}-{row['blocks'][1] - 1:<4}  "
                f"{fmt(row['val_acc']):>8}  {fmt(row['test_acc']):>8}")
        line += f"  {size(row.get('measured_peak_bytes')):>9}" if peaks else ""
        line += f"  {size(row.get('estimated_peak_bytes')):>9}" if estimates else ""
        lines.append(line + mark)
    lines.append(f"best module: {summary['best_module']}   time: {summary['seconds']:.1f} s   "
                 f"peak RSS: {format_size(summary['peak_rss_bytes'])}"
                 + (f" (budget {format_size(summary['budget_bytes'])}, estimate "
                    f"{format_size(summary['estimated_peak_bytes'])})" if summary.get("budget_bytes") else ""))
    whole = summary.get("whole_command")
    if whole:  # every process of the command together (driver.py, memory/cgroup.py)
        kernel = whole.get("enforcement", "").startswith("cgroup")
        lines.append(
            f"whole command: peak {format_size(whole['whole_command_peak_bytes'])} "
            + (f"as its memory cgroup counted it (shared pages once), "
               f"{whole.get('oom_kills', 0)} OOM kill(s); " if kernel else "(sum of its processes' "
               "peaks; no memory cgroup could be created) ; ")
            + f"each process's own peak RSS: this one {format_size(whole['orchestrator_peak_rss_bytes'])}"
            f", its largest child {format_size(whole['largest_child_peak_rss_bytes'])} (RSS counts "
            f"shared library pages in every process that maps them); enforced by "
            + ("a kernel memory limit" if kernel else "per-process RSS watchdogs"))
    if summary.get("ort"):  # the ORT backend's processes, measured one by one
        from .backends.ort_backend import format_ort_summary
        lines.append(format_ort_summary(summary))
    if summary.get("cuda_budget_covers"):  # allocated, reserved, context, host RSS
        from .memory.cuda import format_cuda_summary
        lines.append(format_cuda_summary(summary))
    lines.append(f"run directory: {summary['run_dir']}")
    return "\n".join(lines)


def dumps(obj) -> str:
    return json.dumps(obj, indent=2, sort_keys=True)
