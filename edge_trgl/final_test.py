"""The test set, once, after module-wise training (--test-modules best, the default).

Why: a module-wise run used to push the whole test set through every module as it finished,
writing, hashing and reading back its features and scoring every head on it, although nothing
but the report reads a non-chosen module's test accuracy; the module to keep is chosen on
validation. Measured (ResNet-20, 10 % of CIFAR-10, batch 128, 2 epochs, K=4, one thread, whole
command's CPU time): the per-module test passes cost a K=4 run 19.0 s, the single test pass of
end-to-end training 14.6 s: the difference, the cache I/O and the extra heads, is what deferring
saves (about 5 % of that run; the network's forward pass over the test set is needed either way).

How: module k's cache pass writes train views and validation only (cache.write_module_cache);
once every module is trained (schemes.run_modulewise -> resident.score_test_at_end), the raw test
images go through modules 0..last with all their weights loaded (a few MB for the model zoo; the
planner's headroom must hold them, else the per-module passes are kept), scoring only the heads
of the module chosen on validation and of the last module. A crash during this pass redoes it on resume: it runs whenever those modules lack a
test accuracy. --test-modules all keeps the per-module passes (the benchmarks' per-module
curves); so do --backend ort (its trainers are per module) and runs without a validation split
(the module is then chosen on test)."""

from __future__ import annotations

from .store import block_path, head_path
from .summary import best_module


def deferred(ctx) -> bool:
    """Whether this run scores the test set once at the end instead of after every module.
    Torch-free (the ORT worker's cache pass asks too); the same answer on every resume."""
    cfg = ctx.cfg
    if cfg.test_modules != "best" or cfg.backend == "ort":
        return False
    if len(ctx.dataset.val.labels) == 0 or len(ctx.dataset.test.labels) == 0:
        return False
    return _fits(ctx)


def _fits(ctx) -> bool:
    """The planner's headroom holds every module's weights at once (the pass's only extra)."""
    import json
    try:
        plan = json.loads((ctx.run.root / "plan.json").read_text())
    except (OSError, ValueError):  # the run's checks have read it already; be safe, not clever
        return False
    budget, estimate = plan.get("budget_bytes"), plan.get("estimated_peak_bytes")
    if not budget or not estimate:
        return True
    run = ctx.run
    paths = [block_path(i) for i in range(ctx.splits[-1][1])] + [head_path(k) for k in
                                                                  range(len(ctx.splits))]
    weights = sum((run.root / p).stat().st_size for p in paths if (run.root / p).exists())
    return estimate + weights <= budget


def scored_modules(run, num_modules: int) -> list[int]:
    """The modules the final pass scores: the one chosen on validation and the last."""
    best = best_module({k: v for k, v in run.manifest["modules"].items() if "lap" in v})
    return sorted({num_modules - 1} | ({best} if best is not None else set()))


def needed(ctx) -> bool:
    modules = ctx.run.manifest["modules"]
    return any(modules.get(str(k), {}).get("test_acc") is None
               for k in scored_modules(ctx.run, len(ctx.splits)))
