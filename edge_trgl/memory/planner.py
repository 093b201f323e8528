"""The planner: module splits, batch size, cache precision and augmentation policy.

Without a memory budget it takes the user's grouping (--modules / --module-size / --splits) and
batch size as given (plan.py holds the Plan and those rules). With one, see `plan_budgeted`
(budgeted.py; estimate.py provides the per-module costs, the target's memory model the
measurements).
"""

from __future__ import annotations

from .plan import Plan, fit_disk, grouping_source, resolve_splits


def plan_run(cfg, dataset, arch, model) -> Plan:
    """The plan: with a budget, planned against the target's memory model `model`
    (memory/model.py); without one, the user's grouping and batch size as given."""
    if cfg.mem_budget is not None or cfg.profile is not None:
        from .budgeted import plan_budgeted
        return plan_budgeted(cfg, dataset, arch, model)
    splits = resolve_splits(len(arch), cfg)
    notes: list[str] = []
    from ..segments import checkpoint_segment_count
    segments = checkpoint_segment_count(cfg, len(arch))
    if segments:
        from .budgeted import checkpoint_note
        notes.append(checkpoint_note(len(arch), segments))
    views, cache_dtype, aug_policy = fit_disk(cfg, dataset, arch, splits, notes)
    reason = (f"no memory budget: {len(splits)} module{'s' if len(splits) != 1 else ''} from "
              f"{grouping_source(cfg)} and the requested batch size {cfg.batch_size}, as given; "
              f"nothing was measured (--mem-budget SIZE plans the modules and batch size for a "
              f"budget)")
    share = None
    if cfg.distributed:
        from ..distributed import plan_share, share_note
        share = plan_share(cfg, splits, arch, cfg.batch_size)
        notes.append(share_note(share, splits))
    return Plan(splits=splits, batch_size=cfg.batch_size, views=views, cache_dtype=cache_dtype,
                aug_policy=aug_policy, notes=notes, reason=reason, distributed=share)


def format_plan(plan: dict) -> str:
    """The plan as `edge-trgl plan` and `train` (before its first epoch) print it: a head line
    (modules, batch size, estimated peak against the budget), why, the per-module table (or
    each module's blocks), the notes. Blocks are shown first-last inclusive (summary.block_range;
    plan.json's splits are half-open [first, end))."""
    from ..budget import format_size
    from ..summary import block_range, blocks_cell
    lines = []
    budget = plan.get("budget_bytes")
    count = len(plan["splits"])
    head = (f"plan: {count} module{'s' if count != 1 else ''} at batch size {plan['batch_size']}, "
            f"cache {plan['cache_dtype']}")
    head += f", {plan['views']} augmented view(s)" if plan["views"] else ""
    peak = plan.get("estimated_peak_bytes")
    if budget and peak:
        head += (f"; estimated peak {format_size(peak)} of the {format_size(budget)} budget "
                 f"({format_size(budget - peak)} to spare)")
    elif budget:
        head += f", budget {format_size(budget)}"
    lines.append(head)
    if plan.get("reason"):
        lines.append(f"why: {plan['reason']}")
    if plan.get("module_estimates"):
        lines.append(f"{'module':>6} {'blocks':>9} {'baseline':>9} {'(data)':>8} {'module':>9} "
                     f"{'buffers':>9} {'estimate':>10} {'headroom':>10} {'composed':>9}")
        for k, est in enumerate(plan["module_estimates"]):
            k = est.get("module", k)  # (a --distributed rank estimates only its own modules)
            lo, hi = est["blocks"]
            lines.append(
                f"{k:>6} {blocks_cell(lo, hi)} {format_size(est['process_baseline_bytes']):>9} "
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
                         "framework, the dataset's labels (data: the images are streamed from disk); "
                         "module: a few training steps of that module (+ head, optimizer) measured in "
                         "a fresh process, above its own baseline; buffers: the data path's stream buffers; "
                         f"estimate: baseline + module + buffers + a loop allowance ({allowance}; "
                         "measured: what a real training loop holds beyond a probe); "
                         "composed: the per-block composition's error against the module "
                         "measurement; blocks: first-last, both included")
    else:
        for k, (lo, hi) in enumerate(plan["splits"]):
            lines.append(f"module {k}: blocks {block_range(lo, hi)}")
    for note in plan.get("notes", []):
        lines.append(f"note: {note}")
    whole = plan.get("whole_command")
    if whole:
        lines.append(f"planning itself (this command, every process together): peak "
                     f"{format_size(whole['whole_command_peak_bytes'])}, measured by "
                     f"{whole['enforcement']}"
                     + (f", {whole['oom_kills']} OOM kill(s)" if whole.get("oom_kills") is not None else ""))
    return "\n".join(lines)
