"""The planner: module splits, batch size, cache precision and augmentation policy.

Without a memory budget it takes the user's grouping (--modules / --module-size / --splits) and
batch size as given. With one, see `plan_budgeted` (estimate.py provides the per-module costs).
"""

from __future__ import annotations

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


def plan_run(cfg, dataset, arch) -> Plan:
    from ..train import resolve_splits
    if cfg.mem_budget is not None or cfg.profile is not None:
        from .budgeted import plan_budgeted
        return plan_budgeted(cfg, dataset, arch)
    splits = resolve_splits(len(arch), cfg)
    if cfg.scheme in ("parallel", "e2e"):
        views = 0
    else:
        views = default_views(cfg)
    return Plan(splits=splits, batch_size=cfg.batch_size, views=views,
                cache_dtype=cfg.cache_dtype,
                aug_policy=cfg.aug_policy if cfg.augment else "none")
