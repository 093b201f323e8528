"""A plan and its parts: the Plan itself, the module boundaries a user's options give
(--module-size / --modules / --splits), and what fits the disk (views, cache precision). Used by
the planner (planner.py) with and without a memory budget (budgeted.py)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np


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
    reason: str | None = None   # why these modules and this batch size (one sentence, printed)
    distributed: dict | None = None  # --distributed: this rank's share (distributed.plan_share)

    def to_json(self) -> dict:
        d = asdict(self)
        d["splits"] = [list(s) for s in self.splits]
        return d


# Later modules of a sequential run train on cached outputs of the ones before, over `views`
# augmented copies of the train set, read in turn (epoch e reads view e mod views), while module 0
# sees a fresh crop and flip every epoch. Reused for many epochs, a few fixed views are learned by
# heart: at 120 epochs on 800 images (ResNet-20, K=4, TRGL tau 10, 5 seeds; suite small-data) the
# later modules' median test accuracy fell from 45.8 % (module 0) to 41.4-43.0 % with 2 views and
# stayed at 45.3-46.3 % with 16 (7.5 epochs a view). So by default a view serves at most
# EPOCHS_PER_VIEW epochs: the views' eval passes stay a small, fixed share of the training (one
# forward pass per 8 training epochs), and runs of up to 16 epochs keep 2 views, as before.
EPOCHS_PER_VIEW = 8
MAX_DEFAULT_VIEWS = 16


def default_views(cfg) -> int:
    if not cfg.augment or cfg.aug_policy == "none":
        return 1
    if cfg.aug_views is not None:
        return cfg.aug_views
    # the epochs that read one module's cache: a module's, or one lap's (multilap rewrites it)
    epochs = cfg.lap_epochs(0)
    return max(1, min(2, cfg.epochs), min(MAX_DEFAULT_VIEWS, math.ceil(epochs / EPOCHS_PER_VIEW)))


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
    wanted_views = views
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
    # + the run's own copy of its dataset (rundata.py): uint8 images and int64 labels
    store = store_disk_bytes(cfg, arch) + sum(
        math.prod(a.images.shape) + 8 * len(a.labels)
        for a in (dataset.train, dataset.val, dataset.test))
    biggest = 0
    if views and len(splits) > 1:
        biggest = max(int(math.prod(arch[hi - 1].out_shape)) for lo, hi in splits[:-1])

    def disk(v, dtype):  # two modules' caches exist at once while the second is written
        return store + 2 * cache_disk_bytes(dataset, biggest * (2 if dtype == "fp16" else 4), v)
    if cfg.aug_views is None and not given:
        # views beyond the old default of 2 are a refinement: they never take more than half
        # the free disk unasked (--aug-views or --disk-budget say otherwise)
        floor = min(views, 2)
        while views > floor and disk(views, cache_dtype) > disk_budget // 2:
            views -= 1
    while views > 1 and disk(views, cache_dtype) > disk_budget:
        views -= 1
    if views < wanted_views:
        notes.append(f"{views} cached view(s), not {wanted_views}, to fit the "
                     + ("disk budget" if given else "free disk"))
    if disk(views, cache_dtype) > disk_budget and cache_dtype == "fp32":
        cache_dtype = "fp16"
        notes.append("fp16 feature cache to fit the disk budget")
    if disk(views, cache_dtype) > disk_budget:
        raise UserError(
            f"The run needs about {format_size(disk(views, cache_dtype))} of disk (weights, "
            f"optimizer state, checkpoints and its copy of the data {format_size(store)}"
            + (", and two modules' feature caches at once" if biggest else "")
            + f") but the {'disk budget (--disk-budget)' if given else 'free disk space'} is "
            f"{format_size(disk_budget)}. {'Raise --disk-budget' if given else 'Free space'}, "
            f"or use a smaller --train-fraction. Nothing was written.")
    if views:
        if aug_policy == "training":
            notes.append(f"later modules see up to {views} augmented view(s) of the train set, "
                         f"each module's outputs during its last epochs of training")
        elif aug_policy == "views":
            notes.append(f"later modules see {views} cached augmented view(s) of the train set")
        else:
            notes.append("later modules see no augmentation (aug policy none)")
    return views, cache_dtype, aug_policy


def grouping_source(cfg, default_modules: int = 4) -> str:
    """Where a fixed grouping comes from, in the words of the option that gave it."""
    if cfg.splits is not None:
        return f"--splits {','.join(map(str, cfg.splits))}"
    if cfg.module_size is not None:
        return f"--module-size {cfg.module_size}"
    if cfg.modules is not None:
        return f"--modules {cfg.modules}"
    return f"the default of {default_modules} modules"


def resolve_splits(num_blocks: int, cfg, default_modules: int = 4) -> list[tuple[int, int]]:
    """Module boundaries (lo, hi) from --module-size, --modules or --splits."""
    from ..errors import UserError
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
