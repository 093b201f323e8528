"""Planning under a memory budget: as few modules as fit, balanced by memory, with the largest
batch (up to the requested one) that fits; then every chosen module is measured directly and the
plan is tightened until the measurements fit too. Refuses, before anything is written, when not
even one block at batch 1 fits."""

from __future__ import annotations

import os
import shutil
from functools import lru_cache

from ..budget import format_size, parse_size
from ..errors import UserError
from .estimate import BlockCosts, data_bytes, probe_module
from .planner import Plan, default_views

SAFETY = 0.95   # plan to 95% of the budget: allocator noise and the sampler's blind spots


def batch_candidates(requested: int) -> list[int]:
    out, b = [], requested
    while b >= 1:
        out.append(b)
        b = b // 2 if b > 8 else b - max(1, b // 4) if b > 1 else 0
    return sorted(set(out), reverse=True)


def minimax_splits(n: int, k: int, cost) -> tuple[float, list[tuple[int, int]]]:
    """Contiguous partition of n blocks into k modules minimising the largest cost(lo, hi)."""
    @lru_cache(maxsize=None)
    def best(start: int, parts: int) -> tuple[float, tuple]:
        if parts == 1:
            return cost(start, n), ((start, n),)
        result = (float("inf"), ())
        for mid in range(start + 1, n - parts + 2):
            first = cost(start, mid)
            if first >= result[0]:
                continue
            rest, splits = best(mid, parts - 1)
            value = max(first, rest)
            if value < result[0]:
                result = (value, ((start, mid), *splits))
        return result
    value, splits = best(0, k)
    return value, list(splits)


def resolve_budget(cfg) -> tuple[int, list[str]]:
    notes = []
    if cfg.mem_budget is not None:
        return parse_size(cfg.mem_budget), notes
    from ..profiles import load_profile
    profile = load_profile(cfg.profile)
    notes.append(f"budget from profile {profile['name']}: {format_size(profile['budget_bytes'])} "
                 f"({format_size(profile['ram_bytes'])} RAM minus {format_size(profile['os_reserve_bytes'])} for the OS)")
    return profile["budget_bytes"], notes


def cache_disk_bytes(dataset, sample_bytes: int, views: int) -> int:
    n_train, n_val, n_test = (len(dataset.train.labels), len(dataset.val.labels),
                              len(dataset.test.labels))
    return (views * n_train + n_val + n_test) * sample_bytes


def plan_budgeted(cfg, dataset, arch) -> Plan:
    from ..train import resolve_splits
    budget_bytes, notes = resolve_budget(cfg)
    usable = int(budget_bytes * SAFETY)
    threads = cfg.threads or os.cpu_count() or 1
    n = len(arch)
    costs = BlockCosts(cfg, dataset.in_shape, dataset.num_classes, arch, threads)
    fixed = None
    if cfg.scheme in ("parallel", "e2e"):
        fixed = resolve_splits(n, cfg) if cfg.scheme == "parallel" else resolve_splits(n, cfg)
    elif any(getattr(cfg, f) is not None for f in ("module_size", "modules", "splits")):
        fixed = resolve_splits(n, cfg)

    def data_cost(batch: int) -> int:
        return sum(data_bytes(dataset, batch).values())

    def total(lo: int, hi: int, batch: int) -> int:
        return costs.module_estimate(lo, hi, batch)["module_bytes"] + data_cost(batch)

    def choose(batch: int):
        if cfg.scheme in ("parallel", "e2e"):
            # every block resident and (e2e) every activation alive: the whole network is one module
            return total(0, n, batch), fixed
        if fixed is not None:
            return max(total(lo, hi, batch) for lo, hi in fixed), fixed
        for k in range(1, n + 1):
            value, splits = minimax_splits(n, k, lambda lo, hi: total(lo, hi, batch))
            if value <= usable:
                return value, splits
        value, splits = minimax_splits(n, n, lambda lo, hi: total(lo, hi, batch))
        return value, splits

    chosen = None
    for batch in batch_candidates(cfg.batch_size):
        value, splits = choose(batch)
        if value <= usable:
            chosen = (batch, splits)
            break
    if chosen is None:
        smallest = min(total(i, i + 1, 1) for i in range(n)) if fixed is None else value
        need = max(total(i, i + 1, 1) for i in range(n)) if fixed is None else value
        raise UserError(
            f"The memory budget {format_size(budget_bytes)} is too small for {cfg.model}: even "
            f"training {'one block' if fixed is None else 'the requested grouping'} at batch size 1 "
            f"needs about {format_size(need / SAFETY)} (of which {format_size(costs.block_peak(0, 0))} is "
            f"the framework itself after `import torch`). Give at least "
            f"{format_size(need / SAFETY)} with --mem-budget, use --backend ort (a torch-free "
            f"trainer), a smaller model (--model, --width), a smaller --train-fraction, or fewer "
            f"blocks per module. Nothing was written.")
    batch, splits = chosen
    # Verify: measure each chosen module directly; tighten the batch until the measurements fit.
    while True:
        estimates = []
        for lo, hi in ([(0, n)] if cfg.scheme in ("parallel", "e2e") else splits):
            measured = probe_module(cfg, dataset.in_shape, dataset.num_classes, arch, lo, hi,
                                    [batch], threads)[batch]
            composed = costs.module_estimate(lo, hi, batch)
            parts = data_bytes(dataset, batch)
            estimates.append({"blocks": [lo, hi], "batch_size": batch,
                              "measured_probe_bytes": measured, "composed": composed,
                              "composition_error": (composed["module_bytes"] - measured) / measured,
                              **parts, "estimated_peak_bytes": measured + sum(parts.values())})
        worst = max(e["estimated_peak_bytes"] for e in estimates)
        if worst <= usable or batch == 1:
            break
        smaller = [b for b in batch_candidates(cfg.batch_size) if b < batch]
        batch = smaller[0]
        notes.append(f"direct measurement did not fit at the composed batch; tightened to {batch}")
    if worst > usable:
        raise UserError(
            f"The memory budget {format_size(budget_bytes)} is too small: the smallest plan "
            f"measures {format_size(worst)} at batch size 1. Raise --mem-budget to at least "
            f"{format_size(worst / SAFETY)} or use a smaller model. Nothing was written.")
    # Cache precision and augmentation views against the disk budget.
    views = default_views(cfg) if cfg.scheme in ("sequential", "multilap") else 0
    cache_dtype = cfg.cache_dtype
    aug_policy = cfg.aug_policy if cfg.augment else "none"
    if views:
        disk_budget = (parse_size(cfg.disk_budget, what="disk budget") if cfg.disk_budget
                       else shutil.disk_usage(os.path.dirname(os.path.abspath(cfg.out or ".")) or ".").free)
        import numpy as np
        biggest = max(int(np.prod(arch[hi - 1].out_shape)) for lo, hi in splits[:-1]) if len(splits) > 1 else 0

        def disk(v, dtype):
            return 2 * cache_disk_bytes(dataset, biggest * (2 if dtype == "fp16" else 4), v)
        while views > 1 and disk(views, cache_dtype) > disk_budget:
            views -= 1
        if disk(views, cache_dtype) > disk_budget and cache_dtype == "fp32":
            cache_dtype = "fp16"
            notes.append("fp16 feature cache to fit the disk budget")
        if disk(views, cache_dtype) > disk_budget:
            raise UserError(
                f"The feature cache needs about {format_size(disk(views, cache_dtype))} of disk "
                f"(two modules' caches at once) but the disk budget is {format_size(disk_budget)}. "
                f"Free space, raise --disk-budget, or use a smaller --train-fraction.")
        if aug_policy == "views":
            notes.append(f"later modules see {views} cached augmented view(s) of the train set")
        else:
            notes.append("later modules see no augmentation (aug policy none)")
    return Plan(splits=[tuple(s) for s in splits], batch_size=batch, views=views,
                cache_dtype=cache_dtype, aug_policy=aug_policy, budget_bytes=budget_bytes,
                estimated_peak_bytes=int(worst), module_estimates=estimates, notes=notes)
