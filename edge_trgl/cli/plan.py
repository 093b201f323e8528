"""`edge-trgl plan`: show what the planner would choose for a budget, without training."""

from __future__ import annotations

import argparse
import json

from ..budget import format_size
from .common import add_run_options, config_from_args

HELP = "show the module split, batch size and estimated peak memory for a budget"


def add_parser(sub) -> None:
    p = sub.add_parser("plan", help=HELP, description=HELP + " (nothing is trained or written).",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter, allow_abbrev=False)
    add_run_options(p)
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.add_argument("--quiet", dest="progress", action="store_false",
                   help="no progress lines while the planner probes")
    p.set_defaults(func=run)


def format_plan(plan: dict) -> str:
    lines = []
    budget = plan.get("budget_bytes")
    head = f"batch size {plan['batch_size']}, {len(plan['splits'])} modules, cache {plan['cache_dtype']}"
    head += f", {plan['views']} augmented view(s)" if plan["views"] else ""
    if budget:
        head += f", budget {format_size(budget)}"
    lines.append(head)
    if plan.get("module_estimates"):
        lines.append(f"{'module':>6} {'blocks':>9} {'baseline':>9} {'(data)':>8} {'module':>9} "
                     f"{'buffers':>9} {'estimate':>10} {'headroom':>10} {'composed':>9}")
        for k, est in enumerate(plan["module_estimates"]):
            lo, hi = est["blocks"]
            lines.append(
                f"{k:>6} {lo:>4}-{hi - 1:<4} {format_size(est['process_baseline_bytes']):>9} "
                f"{format_size(est['dataset_bytes']):>8} {format_size(est['measured_probe_bytes']):>9} "
                f"{format_size(est['batch_buffer_bytes']):>9} "
                f"{format_size(est['estimated_peak_bytes']):>10} "
                f"{format_size(budget - est['estimated_peak_bytes']):>10} "
                f"{100 * est['composition_error']:>+8.1f}%")
        if not str(plan["module_estimates"][0].get("accounting", "")).startswith("cuda"):
            # (a CUDA plan explains its columns in its note: they count device memory)
            allowances = [e.get("loop_allowance_bytes", 0) for e in plan["module_estimates"]]
            low, high = min(allowances), max(allowances)
            allowance = format_size(low) if low == high else f"{format_size(low)}-{format_size(high)}"
            lines.append("baseline: what the training process(es) hold before any module (interpreter, "
                         "framework, the dataset's arrays (data); for --backend ort see the note); "
                         "module: a few training steps of that module (+ head, optimizer) measured in "
                         "a fresh process, above its own baseline; buffers: data-path batches; "
                         f"estimate: baseline + module + buffers + a loop allowance ({allowance}; "
                         "measured: what a real training loop holds beyond a probe); "
                         "composed: the per-block composition's error against the module measurement")
    else:
        for k, (lo, hi) in enumerate(plan["splits"]):
            lines.append(f"module {k}: blocks {lo}-{hi - 1}")
    for note in plan.get("notes", []):
        lines.append(f"note: {note}")
    whole = plan.get("whole_command")
    if whole:
        lines.append(f"planning itself (this command, every process together): peak "
                     f"{format_size(whole['whole_command_peak_bytes'])}, measured by "
                     f"{whole['enforcement']}"
                     + (f", {whole['oom_kills']} OOM kill(s)" if whole.get("oom_kills") is not None else ""))
    return "\n".join(lines)


def run(args) -> int:
    """Planned exactly as `edge-trgl train` plans (driver.plan_lean): in this torch-free process,
    each probe a child, inside the command's memory cgroup where one can be created."""
    from ..driver import CommandBudget, load_for_planning, plan_lean, plan_unbudgeted, prepare_budget
    cfg = config_from_args(args)
    budgeted = cfg.mem_budget is not None or cfg.profile is not None
    if budgeted:
        budget = prepare_budget(cfg)
    else:
        from ..profiles import apply_profile
        cfg.validate()
        apply_profile(cfg)
        budget = None
    from ..driver import host_limit
    with CommandBudget(host_limit(cfg, budget)) as guard:
        dataset = load_for_planning(cfg, host_limit(cfg, budget))
        plan = plan_lean(cfg, dataset) if budgeted else plan_unbudgeted(cfg, dataset)
        from ..memory.measure import peak_rss_bytes
        plan["whole_command"] = guard.report(peak_rss_bytes(), 0)
    print(json.dumps(plan, indent=2) if args.json else format_plan(plan))
    return 0
