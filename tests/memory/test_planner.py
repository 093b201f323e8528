"""The planner's search and the memory readings, with fake block costs where a real probe would
take seconds (the real probes are exercised by tests/cli and benchmarks/planner_budgets.py)."""

import sys

import pytest

from edge_trgl.config import TrainConfig
from edge_trgl.data import load_dataset
from edge_trgl.errors import UserError
from edge_trgl.memory import budgeted
from edge_trgl.memory.budgeted import batch_candidates, minimax_splits, plan_budgeted
from edge_trgl.memory.measure import RssWatchdog, run_measured
from edge_trgl.modules import architecture
from edge_trgl.targets import get_target

MB = 1_000_000


def test_minimax_splits_balances_the_largest_module():
    costs = [5, 1, 1, 1, 1, 5]
    value, splits = minimax_splits(6, 3, lambda lo, hi: sum(costs[lo:hi]))
    assert value == 5 and splits == [(0, 1), (1, 5), (5, 6)]
    value, splits = minimax_splits(6, 1, lambda lo, hi: sum(costs[lo:hi]))
    assert value == 14 and splits == [(0, 6)]


def test_batch_candidates_descend_and_stop_at_two():
    assert batch_candidates(128)[:3] == [128, 64, 32]
    assert batch_candidates(128)[-1] == 2 and 1 not in batch_candidates(5)


class FakeCosts:
    """Every block costs 40 MB fixed + 1 MB per sample above a 100 MB framework baseline."""

    def __init__(self, cfg, in_shape, num_classes, arch, threads, model=None, progress=None):
        self.n = len(arch)
        self.over_budget = {}
        self.static_bytes = [10 * MB] * self.n  # weights + gradients + optimizer state

    def block_peak(self, i, batch):
        return 40 * MB + batch * MB

    def module_estimate(self, lo, hi, batch, segments=None):
        module = 40 * MB + batch * MB + (hi - lo - 1) * (10 * MB + batch * MB // 4)
        return {"module_bytes": module}


def fake_model(cfg):
    """The target's own memory model (its allowances, its rules for the images, its refusal),
    with FakeCosts' figures where it would measure in child processes."""
    real = type(get_target(cfg).memory_model())

    class Fake(real):
        def probe_module(self, cfg, in_shape, classes, arch, lo, hi, batches, threads):
            return {b: FakeCosts(cfg, in_shape, classes, arch, threads).module_estimate(lo, hi, b)["module_bytes"]
                    for b in batches}

        def framework_bytes(self, cfg, dataset, description=None):
            return 100 * MB

        def plan_note(self, cfg, dataset, description):
            return None
    return Fake()


@pytest.fixture()
def fake_planner(monkeypatch):
    monkeypatch.setattr(budgeted, "BlockCosts", FakeCosts)
    monkeypatch.setattr("edge_trgl.memory.measure.rss_bytes", lambda pid="self": 100 * MB)
    data = load_dataset("synthetic", seed=0, synthetic_train=200, synthetic_test=50)
    return data


def plan_for(data, budget, **kw):
    cfg = TrainConfig(model="resnet8", mem_budget=budget, batch_size=64, disk_budget="10GB", **kw)
    return plan_budgeted(cfg, data, architecture(cfg, data.in_shape, data.num_classes),
                         fake_model(cfg))


def test_smaller_budgets_give_smaller_modules_or_batches(fake_planner):
    big = plan_for(fake_planner, "1GB")
    mid = plan_for(fake_planner, "260MB")
    small = plan_for(fake_planner, "200MB")
    assert len(big.splits) == 1 and big.batch_size == 64
    assert (len(mid.splits), -mid.batch_size) > (len(big.splits), -big.batch_size)
    assert small.batch_size < mid.batch_size or len(small.splits) > len(mid.splits)
    for plan, budget in ((big, 1000 * MB), (mid, 260 * MB), (small, 200 * MB)):
        assert plan.estimated_peak_bytes <= 0.95 * budget
        assert all(e["estimated_peak_bytes"] <= 0.95 * budget for e in plan.module_estimates)
        covered = [i for lo, hi in plan.splits for i in range(lo, hi)]
        assert covered == list(range(len(covered)))


def test_too_small_budget_refuses_with_the_needed_figure(fake_planner):
    with pytest.raises(UserError, match="too small") as info:
        plan_for(fake_planner, "160MB")
    assert "MB" in str(info.value) and "--backend ort" in str(info.value)
    with pytest.raises(UserError, match="framework alone"):
        plan_for(fake_planner, "90MB")


def test_fixed_grouping_only_chooses_the_batch(fake_planner):
    plan = plan_for(fake_planner, "230MB", modules=2)
    assert len(plan.splits) == 2 and plan.batch_size < 64


def test_ort_plans_the_image_arrays_for_the_first_module_only(fake_planner):
    """An ORT trainer of a later module reads the feature cache, not the images (ort_worker loads
    them for module 0 only), so its estimate leaves them out; the torch trainer holds them all
    run long, so every torch module keeps them."""
    images = sum(a.images.nbytes for a in (fake_planner.train, fake_planner.val, fake_planner.test))
    assert images > 500_000
    ort = plan_for(fake_planner, "1GB", modules=3, backend="ort")
    torch_plan = plan_for(fake_planner, "1GB", modules=3)
    assert ort.splits == torch_plan.splits and len(ort.splits) == 3
    for k, (o, t) in enumerate(zip(ort.module_estimates, torch_plan.module_estimates)):
        assert o["measured_probe_bytes"] == t["measured_probe_bytes"]
        expected = (t["estimated_peak_bytes"] - (images if k > 0 else 0)
                    - t["loop_allowance_bytes"] + o["loop_allowance_bytes"])
        assert o["loop_allowance_bytes"] < t["loop_allowance_bytes"]  # ORT's measured, smaller
        assert o["estimated_peak_bytes"] == expected
        assert o["dataset_bytes"] == t["dataset_bytes"] - (images if k > 0 else 0)


def test_parallel_plans_one_modules_activations_plus_every_modules_weights(fake_planner):
    """The parallel scheme keeps every module resident but steps one at a time on a detached
    input: its estimate is the largest module's own cost plus the other modules' static bytes,
    well below end-to-end's whole-network graph."""
    parallel = plan_for(fake_planner, "2GB", modules=2, scheme="parallel")
    e2e = plan_for(fake_planner, "2GB", modules=2, scheme="e2e")
    assert parallel.batch_size == e2e.batch_size == 64
    assert len(parallel.module_estimates) == 2 and len(e2e.module_estimates) == 1
    for k, row in enumerate(parallel.module_estimates):
        lo, hi = row["blocks"]
        others = sum(10 * MB for j, (a, b) in enumerate(parallel.splits) if j != k
                     for _ in range(a, b))
        assert row["other_modules_static_bytes"] == others
        assert row["estimated_peak_bytes"] == (row["measured_probe_bytes"] + others
                                               + row["process_baseline_bytes"]
                                               + row["batch_buffer_bytes"]
                                               + row["loop_allowance_bytes"])
    assert parallel.estimated_peak_bytes < e2e.estimated_peak_bytes


def _measure_child_of(grandchild: str, then_sleep_s: float) -> tuple[int, int, float, dict]:
    """run_measured on a child that runs python -c `grandchild`, waits for it, then sleeps."""
    detail = {}
    code, self_peak, wall_s = run_measured(
        [sys.executable, "-c", f"import subprocess, sys, time; subprocess.run([sys.executable, '-c', "
                               f"{grandchild!r}]); time.sleep({then_sleep_s})"], detail=detail)
    return code, self_peak, wall_s, detail


def test_child_peak_is_its_own_not_its_descendants():
    code, self_peak, _, detail = _measure_child_of(
        "import numpy as np; a = np.ones(40_000_000); a += 1", 0.3)
    assert code == 0
    assert detail["tree_peak_rss_bytes"] > 300 * MB      # wait4 charges the grandchild's 320 MB
    assert self_peak < 100 * MB                           # the child itself stayed small


def test_cpu_time_counts_the_waited_for_descendants_and_not_sleep():
    code, _, wall_s, detail = _measure_child_of(
        "import time; t = time.process_time(); exec('while time.process_time() - t < 0.4: pass')",
        0.5)
    assert code == 0
    assert 0.4 <= detail["cpu_s"] < wall_s - 0.3   # the grandchild's 0.4 s counted, the sleep not


def test_watchdog_records_exceeding_the_limit():
    import numpy as np
    with RssWatchdog(limit_bytes=1) as dog:
        np.ones(1000)
    assert dog.exceeded_bytes is not None and dog.max_seen_bytes > 0


def test_the_probes_share_of_the_budget_holds_for_one_plan_only(fake_planner, monkeypatch):
    """A budgeted plan gives its probes the budget less the orchestrator, and gives the share
    back when it ends: a later plan or probe in the same process (the Python API, the tests) is
    not limited by a budget it was never given."""
    from edge_trgl.memory import describe, probe_cache
    monkeypatch.setattr(describe, "orchestrator_bytes", lambda threads: 40 * MB)
    monkeypatch.setitem(probe_cache.PROBE_LIMIT, "bytes", None)
    seen = []

    class Watched(FakeCosts):
        def __init__(self, *args, **kwargs):
            seen.append(probe_cache.PROBE_LIMIT["bytes"])
            super().__init__(*args, **kwargs)
    monkeypatch.setattr(budgeted, "BlockCosts", Watched)
    plan_for(fake_planner, "1GB", modules=3, backend="ort")   # ORT: its children always share
    assert seen == [1000 * MB - 40 * MB]
    assert probe_cache.PROBE_LIMIT["bytes"] is None
    with pytest.raises(UserError):
        plan_for(fake_planner, "90MB", backend="ort")             # refused: restored all the same
    assert probe_cache.PROBE_LIMIT["bytes"] is None


# --- what the plan says about itself: why, and its printout --------------------------------------

def test_the_plan_says_why_these_modules_and_this_batch(fake_planner):
    big = plan_for(fake_planner, "1GB")
    assert big.reason.startswith("1 module: the fewest that fit at batch size 64; batch size 64: "
                                 "the requested --batch-size; the largest module estimate, ")
    assert big.reason.endswith("is within 95% of the 1 GB budget")
    small = plan_for(fake_planner, "200MB")
    assert small.batch_size < 64
    assert (f"batch size {small.batch_size}: the largest up to the requested 64 at which training "
            f"fits at all") in small.reason
    fixed = plan_for(fake_planner, "230MB", modules=2)
    assert fixed.reason.startswith("2 modules from --modules 2; batch size ")
    assert "at which this grouping fits" in fixed.reason


def test_the_planner_says_which_module_it_measures(fake_planner):
    class Recorder:
        def __init__(self):
            self.modules = []

        def __call__(self, done, total):
            pass

        def module(self, k, count, lo=0, hi=0, batch=0):
            self.modules.append((k, count, lo, hi, batch) if k is not None else None)

    recorder = Recorder()
    cfg = TrainConfig(model="resnet8", mem_budget="1GB", batch_size=64, disk_budget="10GB",
                      modules=2)
    plan = plan_budgeted(cfg, fake_planner, architecture(cfg, fake_planner.in_shape,
                                                         fake_planner.num_classes),
                         fake_model(cfg), progress=recorder)
    (a, b), (c, d) = plan.splits
    assert recorder.modules == [(0, 2, a, b, 64), (1, 2, c, d, 64), None]


def test_the_printed_plan_heads_with_modules_batch_peak_against_budget_and_why(fake_planner):
    from edge_trgl.memory.planner import format_plan
    plan = plan_for(fake_planner, "260MB").to_json()
    text = format_plan(plan)
    head, why = text.splitlines()[:2]
    count = len(plan["splits"])
    assert head.startswith(f"plan: {count} module{'s' if count > 1 else ''} at batch size "
                           f"{plan['batch_size']}, cache fp16")
    assert "; estimated peak " in head and "of the 260 MB budget (" in head and "to spare)" in head
    assert why == f"why: {plan['reason']}"
    for k, (lo, hi) in enumerate(plan["splits"]):  # blocks first-last, both included
        row = next(line for line in text.splitlines() if line.split()[:1] == [str(k)])
        assert row.split()[1] == f"{lo}-{hi - 1}"
    unbudgeted = format_plan({"splits": [[0, 2], [2, 5]], "batch_size": 128, "views": 0,
                              "cache_dtype": "fp16", "reason": "as given"})
    assert unbudgeted.splitlines() == ["plan: 2 modules at batch size 128, cache fp16",
                                       "why: as given", "module 0: blocks 0-1",
                                       "module 1: blocks 2-4"]
