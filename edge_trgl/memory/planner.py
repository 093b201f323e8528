"""The planner: module splits, batch size, cache precision and augmentation policy.

Without a memory budget it takes the user's grouping (--modules / --module-size / --splits) and
batch size as given. With one, see `plan_budgeted` (estimate.py provides the per-module costs).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field


@dataclass
class Plan:
    splits: list[tuple[int, int]]
    batch_size: int
    views: int
    cache_dtype: str
    aug_policy: str
    budget_bytes: int | None = None
    estimated_peak_bytes: int | None = None
    module_estimates: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        d = asdict(self)
        d["splits"] = [list(s) for s in self.splits]
        return d


def default_views(cfg) -> int:
    if not cfg.augment or cfg.aug_policy == "none":
        return 1
    if cfg.aug_views is not None:
        return cfg.aug_views
    return max(1, min(2, cfg.epochs))


def cache_disk_bytes(dataset, sample_bytes: int, views: int) -> int:
    n_train, n_val, n_test = (len(dataset.train.labels), len(dataset.val.labels),
                              len(dataset.test.labels))
    return (views * n_train + n_val + n_test) * sample_bytes


def store_disk_bytes(cfg, arch) -> int:
    """The run's own files besides the feature cache: every block's weights, their optimizer
    state (1 or 2 tensors per weight), a module checkpoint of the same, and the heads (small);
    --backend ort adds its copy of the data splits and the modules' ONNX graphs (~3x weights)."""
    from .describe import param_bytes
    weights = sum(param_bytes(b) for b in arch)
    copies = 1 + (2 if cfg.optimizer == "adamw" else 1)
    total = weights * copies * 2  # + an epoch checkpoint holding the same
    if cfg.backend == "ort":
        total += 3 * weights
    return int(total)


def fit_disk(cfg, dataset, arch, splits, notes: list[str]) -> tuple[int, str, str]:
    """(views, cache dtype, augmentation policy) that fit the disk budget (--disk-budget, else
    the free space where the run goes), with or without a memory budget; refuses, before
    anything is written, when not even one un-augmented fp16 view fits."""
    from ..budget import format_size, parse_size
    from ..errors import UserError
    views = default_views(cfg) if cfg.scheme in ("sequential", "multilap") else 0
    cache_dtype = cfg.cache_dtype
    aug_policy = cfg.aug_policy if cfg.augment else "none"
    given = cfg.disk_budget is not None
    if given:
        disk_budget = parse_size(cfg.disk_budget, what="disk budget")
    else:
        import os
        import shutil
        where = os.path.dirname(os.path.abspath(cfg.out or ".")) or "."
        while not os.path.exists(where):  # --out's parents may not exist yet
            where = os.path.dirname(where)
        disk_budget = shutil.disk_usage(where).free
    store = store_disk_bytes(cfg, arch)
    biggest = 0
    if views and len(splits) > 1:
        biggest = max(int(math.prod(arch[hi - 1].out_shape)) for lo, hi in splits[:-1])

    def disk(v, dtype):  # two modules' caches exist at once while the second is written
        return store + 2 * cache_disk_bytes(dataset, biggest * (2 if dtype == "fp16" else 4), v)
    while views > 1 and disk(views, cache_dtype) > disk_budget:
        views -= 1
    if disk(views, cache_dtype) > disk_budget and cache_dtype == "fp32":
        cache_dtype = "fp16"
        notes.append("fp16 feature cache to fit the disk budget")
    if disk(views, cache_dtype) > disk_budget:
        raise UserError(
            f"The run needs about {format_size(disk(views, cache_dtype))} of disk (weights, "
            f"optimizer state and checkpoints {format_size(store)}"
            + (", and two modules' feature caches at once" if biggest else "")
            + f") but the {'disk budget (--disk-budget)' if given else 'free disk space'} is "
            f"{format_size(disk_budget)}. {'Raise --disk-budget' if given else 'Free space'}, "
            f"or use a smaller --train-fraction. Nothing was written.")
    if views:
        if aug_policy == "views":
            notes.append(f"later modules see {views} cached augmented view(s) of the train set")
        else:
            notes.append("later modules see no augmentation (aug policy none)")
    return views, cache_dtype, aug_policy


def plan_run(cfg, dataset, arch) -> Plan:
    from ..train import resolve_splits
    if cfg.mem_budget is not None or cfg.profile is not None:
        from .budgeted import plan_budgeted
        return plan_budgeted(cfg, dataset, arch)
    splits = resolve_splits(len(arch), cfg)
    notes: list[str] = []
    views, cache_dtype, aug_policy = fit_disk(cfg, dataset, arch, splits, notes)
    return Plan(splits=splits, batch_size=cfg.batch_size, views=views, cache_dtype=cache_dtype,
                aug_policy=aug_policy, notes=notes)


def format_plan(plan: dict) -> str:
    """The plan as the table `edge-trgl plan` and `train` print."""
    from ..budget import format_size
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
