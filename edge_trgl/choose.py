"""Which way of training fits a memory budget best: module-wise (the options as given, or
sequential TRGL), end-to-end with gradient checkpointing, or plain end-to-end. Each is planned
exactly as `edge-trgl train` would plan it (setup.plan_new: the target's memory model, probes of
the real modules), and one is recommended with the reason (`edge-trgl plan --compare`).

The rule: a network trained end to end on one loss is what the module-wise methods are measured
against, so where end-to-end fits at the requested batch size it is the pick (plain if it fits,
else checkpointed: the same training, ~1/3 more compute); where it fits only at a smaller batch,
or not at all, module-wise training at the largest batch that fits is the pick, since it keeps the
requested recipe. One exception, from measurement: with at most SMALL_TRAIN_IMAGES training
images, TRGL module-wise training (finite tau; planned in 4 modules unless the options give a
layout) that fits at the requested batch in two or more modules is the pick. On
CIFAR-10 with 800 training images (small-data suite, ResNet-20, K=4, 5 seeds, trained to
convergence, tau chosen on validation) it reached 45.6 % test accuracy with 16 cached views
(the default gives 15 at 120 epochs; 45.4 % with 2) against end-to-end's 40.1 % (its learning
rate chosen on validation too); with 4,000 images, trained to convergence (120 epochs, seed 0),
end-to-end was ahead (72.5 vs 64.3 %), so the exception stops at the smaller size."""

from __future__ import annotations

import dataclasses
import math

from .errors import UserError

# the largest train set (images) where TRGL module-wise was measured clearly more accurate than
# end-to-end: the small-data suite's 2 % CIFAR-10 set has 800 (see the module docstring)
SMALL_TRAIN_IMAGES = 1000
SMALL_DATA_EVIDENCE = ("on CIFAR-10 with 800 training images TRGL module-wise reached 45.6 % test "
                       "accuracy against end-to-end's 40.1 % (small-data suite, ResNet-20, 5 "
                       "seeds, 16 cached views)")


def small_data(train_images: int | None, trgl: bool) -> bool:
    """Whether the small-data exception can apply: TRGL (finite tau) on at most
    SMALL_TRAIN_IMAGES training images."""
    return trgl and train_images is not None and train_images <= SMALL_TRAIN_IMAGES


CANDIDATES = (
    ("module-wise", {}),
    ("end-to-end, checkpointed", {"scheme": "e2e", "checkpoint_segments": 0}),
    ("end-to-end", {"scheme": "e2e", "checkpoint_segments": None}),
)


def compare(cfg, target, budget_bytes: int) -> dict:
    """Plan every candidate for `budget_bytes`; return {"candidates": [...], "pick", "why"}."""
    from .setup import load_for_planning, plan_new
    # the candidates differ in scheme only: one load of the data serves every plan
    dataset = load_for_planning(cfg, target.host_limit(budget_bytes))
    train_images, trgl = len(dataset.train.labels), math.isfinite(cfg.tau)
    small = small_data(train_images, trgl)
    rows = []
    for name, change in CANDIDATES:
        if name == "module-wise" and cfg.scheme not in ("sequential", "multilap"):
            change = {"scheme": "sequential", "checkpoint_segments": None}
        if (name == "module-wise" and small and cfg.modules is None and cfg.module_size is None
                and cfg.splits is None):
            # the measured configuration, where the plan alone could pick a single module
            change = {**change, "modules": 4}
        variant = dataclasses.replace(cfg, **change)
        if variant.scheme not in target.schemes:
            rows.append({"name": name, "fits": False,
                         "why": f"--backend {cfg.backend} does not train --scheme {variant.scheme}"})
            continue
        try:
            variant.validate()
            target.validate(variant)
            plan, _ = plan_new(variant, target, budget_bytes, show=False, dataset=dataset)
        except UserError as exc:
            rows.append({"name": name, "fits": False, "why": str(exc)})
            continue
        rows.append({"name": name, "fits": True, "batch_size": plan["batch_size"],
                     "modules": len(plan["splits"]) if variant.scheme != "e2e" else 1,
                     "estimated_peak_bytes": plan.get("estimated_peak_bytes"),
                     "scheme": variant.scheme,
                     "checkpoint_segments": variant.checkpoint_segments, "plan": plan})
    pick, why = choose(rows, cfg.batch_size, train_images=train_images, trgl=trgl)
    return {"budget_bytes": budget_bytes, "requested_batch_size": cfg.batch_size,
            "candidates": rows, "pick": pick, "why": why}


def choose(rows: list[dict], requested_batch: int, train_images: int | None = None,
           trgl: bool = True) -> tuple[str | None, str]:
    """(pick, why) among the planned candidates (see the module docstring for the rule)."""
    fits = {r["name"]: r for r in rows if r["fits"]}
    modulewise = fits.get("module-wise")
    if (small_data(train_images, trgl) and modulewise and modulewise["modules"] >= 2
            and modulewise["batch_size"] >= requested_batch):
        return "module-wise", (f"with {train_images} training images (at most "
                               f"{SMALL_TRAIN_IMAGES}) TRGL module-wise training is the more "
                               f"accurate where measured: {SMALL_DATA_EVIDENCE}; it fits at the "
                               f"requested batch size {requested_batch} in "
                               f"{modulewise['modules']} module(s)")
    for name in ("end-to-end", "end-to-end, checkpointed"):
        row = fits.get(name)
        if row and row["batch_size"] >= requested_batch:
            return name, (f"{name} fits at the requested batch size {requested_batch}: the whole "
                          f"network trained on one loss, no feature cache"
                          + (", recomputing activations in backward (~1/3 more compute)"
                             if "checkpointed" in name else ""))
    best = max(fits.values(), key=lambda r: (r["batch_size"], r["name"] == "module-wise"),
               default=None)
    if best is None:
        return None, "none of them fits this budget (each one's reason is listed)"
    if best["name"] == "module-wise":
        return best["name"], (f"end-to-end does not fit at batch {requested_batch} even with "
                              f"checkpointing; module-wise training fits at batch "
                              f"{best['batch_size']} in {best['modules']} module(s)")
    return best["name"], (f"it fits at the largest batch size of the three ({best['batch_size']})")


def format_comparison(result: dict) -> str:
    from .budget import format_size
    lines = [f"budget {format_size(result['budget_bytes'])}, requested batch size "
             f"{result['requested_batch_size']}",
             f"{'':2}{'training':<26} {'fits':>5} {'batch':>6} {'modules':>8} {'estimate':>10}"]
    for r in result["candidates"]:
        mark = "->" if r["name"] == result["pick"] else ""
        if r["fits"]:
            lines.append(f"{mark:2}{r['name']:<26} {'yes':>5} {r['batch_size']:>6} {r['modules']:>8} "
                         f"{format_size(r['estimated_peak_bytes'] or 0):>10}")
        else:
            lines.append(f"{mark:2}{r['name']:<26} {'no':>5}   ({r['why'].split('. ')[0]})")
    lines.append(f"pick: {result['pick'] or 'none'}: {result['why']}")
    return "\n".join(lines)
