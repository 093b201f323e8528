"""The training schemes, as plain loops.

- sequential / multilap: module k is loaded from the block store, trained to completion on the
  previous module's cached features (module 0 on the raw images), written back, its outputs
  cached, and freed (backend.train_module + backend.write_features). Multi-lap repeats the pass
  `laps` times with the module's epochs split across laps, keeping weights and optimizer state.
- parallel: every module is resident; each batch goes through module 0 which steps, its detached
  output feeds module 1 which steps, and so on.
- e2e: the usual backprop through the whole network, the last module's head as classifier,
  optionally with the kinetic energy of every block added (--e2e-energy).
"""

from __future__ import annotations

import sys

from .atomic import sha256_file
from .backends.base import ModuleTask
from .context import Context
from .harvest import harvested_views
from .trgl import module_weights

PHASES = {"train": 0, "cache": 1, "done": 2}


def _position(progress: dict) -> tuple[int, int, int]:
    if not progress:
        return (-1, -1, -1)
    return (progress["lap"], progress["module"], PHASES[progress["phase"]])


def run_modulewise(ctx: Context, backend) -> None:
    cfg, run = ctx.cfg, ctx.run
    num_modules = len(ctx.splits)
    weights = module_weights(cfg, num_modules)
    laps = cfg.laps if cfg.scheme == "multilap" else 1

    def harvested(k: int) -> int:
        if not getattr(backend, "harvests", False) or k == num_modules - 1:
            return 0
        return harvested_views(cfg, cfg.lap_epochs(k), ctx.views)

    def views(k: int) -> int:  # train views in module k's cache
        return 0 if k == num_modules - 1 else (harvested(k) or ctx.views)

    def make_task(lap: int, k: int) -> ModuleTask:
        lo, hi = ctx.splits[k]
        return ModuleTask(k=k, lap=lap, lo=lo, hi=hi, num_modules=num_modules,
                          epochs=cfg.lap_epochs(k), energy_weight=weights[k],
                          batch_size=ctx.batch_size, views=views(k),
                          input_views=views(k - 1) if k > 0 else ctx.views,
                          harvested=harvested(k))

    first = True
    for lap in range(laps):
        for k, (lo, hi) in enumerate(ctx.splits):
            where = _position(run.manifest["progress"])
            # "done" counts only once the module's accuracies are saved with it: a crash between
            # the backend's last save and the record below redoes the cache phase.
            recorded = run.manifest["modules"].get(str(k), {}).get("lap") == lap
            if where > (lap, k, PHASES["done"]) or (where == (lap, k, PHASES["done"]) and recorded):
                continue
            task = make_task(lap, k)
            if first and k > 0:
                restore_input_cache(ctx, backend, lap, k, make_task)
            first = False
            ctx.start_phase()
            if where < (lap, k, PHASES["cache"]):
                train_stats = backend.train_module(ctx, task)
                run.manifest["modules"].setdefault(str(k), {})["train"] = train_stats
            ctx.close_readers(k)
            acc = backend.write_features(ctx, task)
            record = run.manifest["modules"].setdefault(str(k), {})
            record.update({"lo": lo, "hi": hi, "lap": lap, **acc})
            record["measured_peak_bytes"] = max(record.get("measured_peak_bytes", 0), ctx.end_phase())
            ctx.close_readers(k - 1)
            if k > 0 and not cfg.keep_cache:
                run.drop_cache(k - 1)
            run.save()
            ctx.check_interrupt()
    ctx.close_readers()
    from .final_test import deferred, needed, scored_modules
    if deferred(ctx) and needed(ctx):
        from .resident import score_test_at_end
        score_test_at_end(ctx, scored_modules(run, num_modules))


def cache_intact(run, k: int, lap: int) -> bool:
    """Module k's cache is listed as complete for this lap and every shard matches its sha256."""
    entry = run.manifest["caches"].get(str(k))
    if not entry or not entry.get("complete") or entry.get("lap") != lap:
        return False
    for shards in entry["splits"].values():
        for shard in shards:
            path = run.root / shard["file"]
            if not path.is_file() or sha256_file(path) != shard["sha256"]:
                return False
    return True


def restore_input_cache(ctx: Context, backend, lap: int, k: int, make_task) -> None:
    """On resume, module k reads cache k-1. If a crash, a full disk or damage left it missing or
    corrupt, rebuild it from the saved weights of the finished modules before it (going back as far
    as the nearest intact cache, or the raw images); the rebuilt cache is bit-identical, since the
    forward passes are deterministic. The resume point (progress) is kept."""
    run = ctx.run
    j = k - 1
    while j >= 0 and not cache_intact(run, j, lap):
        j -= 1
    if j == k - 1:
        return
    print(f"the feature cache of module {k - 1} is missing or damaged; rebuilding it from the saved "
          f"weights of modules {j + 1}..{k - 1}", file=sys.stderr, flush=True)
    saved = dict(run.manifest["progress"])
    for m in range(j + 1, k):
        ctx.close_readers()
        backend.write_features(ctx, make_task(lap, m))
        if m > 0 and not ctx.cfg.keep_cache:
            ctx.close_readers()
            run.drop_cache(m - 1)
    ctx.close_readers()
    run.manifest["progress"] = saved
    run.save()


def run_resident(ctx: Context) -> None:
    """The parallel and end-to-end schemes: every block resident, raw images in (--distributed:
    this rank's modules, pipeline.py)."""
    if ctx.cfg.distributed:
        from .pipeline import train_distributed
        return train_distributed(ctx)
    from .resident import train_resident
    train_resident(ctx)
