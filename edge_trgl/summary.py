"""A run's summary: what summary.json holds (`summarize`, target-independent; each target adds
its own fields, targets/*.py) and the table printed at the end of a run (`format_summary`)."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import numpy as np

from .envinfo import dist_version
from .memory.measure import rss_bytes


def block_range(lo: int, hi: int) -> str:
    """A module's blocks as every table and message shows them to people: first-last, both
    included ("0-2" is blocks 0, 1 and 2; "3-3" the one block 3). The JSON files keep half-open
    [first, end) lists, the form Python's slices use: summary.json's `blocks` [0, 3] and
    plan.json's `splits` are the same module. One function, so that the plan printout, `edge-trgl
    plan`, the end-of-run table and the planner's messages agree (`edge-trgl export`'s report
    prints the same inclusive form)."""
    return f"{lo}-{hi - 1}"


def blocks_cell(lo: int, hi: int, width: int = 9) -> str:
    """block_range centred on its dash in a table column `width` wide."""
    first, last = block_range(lo, hi).split("-", 1)
    left = (width - 1) // 2
    return f"{first:>{left}}-{last:<{width - 1 - left}}"


def best_module(modules: dict) -> int | None:
    """The module whose head scores best on the validation split (the test split only where a
    run has no validation split); ties go to the earlier module."""
    scored = []
    for k, rec in modules.items():
        score = rec.get("val_acc") if rec.get("val_acc") is not None else rec.get("test_acc")
        if score is not None:
            scored.append((score, -int(k)))
    return -max(scored)[1] if scored else None


def environment() -> dict:
    import sys
    torch = sys.modules.get("torch")  # not imported for this: the ORT orchestrator stays torch-free
    info = {"python": platform.python_version(),
            "torch": torch.__version__ if torch is not None else dist_version("torch"),
            "numpy": np.__version__, "platform": platform.platform(),
            "machine": platform.machine(), "cpu": cpu_model(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads() if torch is not None else None}
    info["edge_trgl"] = dist_version("edge-trgl")
    return info


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def summarize(run, cfg, plan, watchdog, seconds, peak) -> dict:
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
    return summary


def format_summary(summary: dict, target_lines: list[str] = ()) -> str:
    """The table a user reads at the end of a run; `target_lines` are the target's own figures
    (targets/*.py: summary_lines), printed before the run directory."""
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
        line = (f"{row['module']:>6}  {blocks_cell(*row['blocks'])}  "
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
    lines.extend(target_lines)
    lines.append(f"run directory: {summary['run_dir']}")
    return "\n".join(lines)


def dumps(obj) -> str:
    return json.dumps(obj, indent=2, sort_keys=True)
