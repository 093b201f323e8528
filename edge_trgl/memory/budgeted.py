"""Planning under a memory budget: as few modules as fit, balanced by memory, with the largest
batch (up to the requested one) that fits; then every chosen module is measured directly and the
plan is tightened until the measurements fit too. Refuses, before anything is written, when not
even one block at batch 1 fits."""

from __future__ import annotations

from functools import lru_cache

from ..budget import format_size, parse_size
from ..errors import UserError
from .estimate import BlockCosts, UNFIT_BYTES, data_bytes, data_total
from .plan import Plan, fit_disk, resolve_splits
from .probe_cache import ProbeOverBudget
from ..segments import checkpoint_segment_count

SAFETY = 0.95   # plan to 95% of the budget: allocator noise and the sampler's blind spots


MIN_BATCH = 2  # BatchNorm cannot normalise a batch of one sample in training


def batch_candidates(requested: int) -> list[int]:
    out, b = [], max(requested, MIN_BATCH)
    while b >= MIN_BATCH:
        out.append(b)
        b = b // 2 if b > 8 else b - max(1, b // 4)
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


def dataset_array_bytes(dataset) -> int:
    """What a training process holds of the dataset in memory: the labels of every split (the
    planner's dataset, data/stream.py, has images that hold no memory: every trainer streams
    them from the run's on-disk copy, a batch at a time, counted as stream buffers in
    estimate.data_bytes); a dataset held in memory counts whole."""
    return int(sum(a.images.nbytes + a.labels.nbytes
                   for a in (dataset.train, dataset.val, dataset.test)))


def resolve_budget(cfg, model) -> tuple[int, list[str]]:
    """The budget in bytes (--mem-budget, else what the target makes of --profile), and notes
    (where the budget came from; with a profile, which backend / device it chose and why)."""
    from ..profiles import target_note
    if cfg.mem_budget is not None:
        return parse_size(cfg.mem_budget), target_note(cfg)
    budget, notes = model.profile_budget(cfg)
    return budget, [*notes, *target_note(cfg)]


def plan_budgeted(cfg, dataset, arch, model, description=None, progress=None) -> Plan:
    """The plan for cfg's budget on the target whose memory model (memory/model.py) is `model`.
    `description` (memory/describe.py) comes from the lean
    orchestrator, which never imports torch: then `arch` is its list of BlockInfo and the
    baseline is the orchestrator + a torch trainer process + the data, all measured in fresh
    processes. Without it (in-process callers) `arch` is the meta-device model and this process
    is taken to be the trainer. `progress(done, total)` is told how the block probes advance.

    The probes' share of the budget (probe_cache.PROBE_LIMIT) holds for this plan only: a later
    plan or probe in the same process (the Python API, tests) starts from what it was before."""
    from .probe_cache import PROBE_LIMIT
    previous = PROBE_LIMIT["bytes"]
    try:
        return _plan_budgeted(cfg, dataset, arch, model, description, progress)
    finally:
        PROBE_LIMIT["bytes"] = previous


def _plan_budgeted(cfg, dataset, arch, model, description, progress) -> Plan:
    from .probe_cache import PROBE_LIMIT
    budget_bytes, notes = resolve_budget(cfg, model)
    usable = int(budget_bytes * SAFETY)
    threads = cfg.thread_count()
    n = len(arch)
    framework = model.framework_bytes(cfg, dataset, description)
    if model.limits_children(description):
        # what one child (probe, trainer) may hold: the budget less the orchestrator beside it
        from .describe import orchestrator_bytes
        PROBE_LIMIT["bytes"] = budget_bytes - orchestrator_bytes(threads)
    # a target whose budget is not host RSS (CUDA: device memory) plans through its accounting
    cuda_acct = model.accounting(cfg, dataset, arch, threads, framework)
    if cuda_acct is not None:
        cuda_acct.check_fixed(usable, budget_bytes, SAFETY)
    else:
        model.check_framework(cfg, budget_bytes, usable, framework)
    costs = BlockCosts(cfg, dataset.in_shape, dataset.num_classes, arch, threads, model, progress)
    fixed = None
    if cfg.scheme in ("parallel", "e2e"):
        fixed = resolve_splits(n, cfg)
    elif any(getattr(cfg, f) is not None for f in ("module_size", "modules", "splits")):
        fixed = resolve_splits(n, cfg)

    baseline_bytes = framework
    note = model.plan_note(cfg, dataset, description)
    if note:
        notes.append(note)
    # what a later module's trainer does not hold (ORT: the images; see the target's model)
    image_bytes = model.later_module_image_bytes(cfg, dataset)

    def parts_for(lo: int, hi: int, batch: int, module_bytes: float) -> dict:
        # the stream buffers of this module's own input and output (a later module reads
        # feature maps, often larger than the images, and every module writes its outputs)
        parts = data_bytes(dataset, batch, baseline_bytes,
                           model.loop_allowance_bytes(cfg, module_bytes),
                           input_shape=None if lo == 0 else arch[lo].in_shape,
                           output_shape=arch[hi - 1].out_shape,
                           cache_itemsize=2 if cfg.cache_dtype == "fp16" else 4)
        if lo > 0 and image_bytes:
            parts["process_baseline_bytes"] -= image_bytes
            parts["dataset_bytes"] -= image_bytes
        return parts

    def data_cost(lo: int, hi: int, batch: int, module_bytes: float) -> int:
        if cuda_acct is not None:
            return cuda_acct.fixed_bytes(batch, lo)
        return data_total(parts_for(lo, hi, batch, module_bytes))

    calibration = {"factor": 1.0}

    # e2e with gradient checkpointing: the whole network's composition counts what it keeps
    segments = checkpoint_segment_count(cfg, n)

    def composition(lo: int, hi: int, batch: int) -> dict:
        return costs.module_estimate(lo, hi, batch, segments if (lo, hi) == (0, n) else None)

    def total(lo: int, hi: int, batch: int) -> int:
        composed = composition(lo, hi, batch)["module_bytes"] * calibration["factor"]
        return int(composed) + data_cost(lo, hi, batch, composed)

    # The parallel scheme keeps every module resident (weights, gradients, optimizer state) but
    # steps them one at a time on a detached input, so only one module's activations and kernel
    # buffers are alive at once: module k's own cost plus the others' static bytes. (The CUDA
    # accounting keeps the e2e-like bound for it: not measured on a GPU.)
    parallel = cfg.scheme == "parallel" and cuda_acct is None

    # --distributed: this rank holds only its share of the modules (distributed.py), at the
    # batch size every rank was given, plus its links' bounded queues
    share = None
    if cfg.distributed:
        from ..distributed import plan_share
        share = plan_share(cfg, fixed, arch, cfg.batch_size)
    mine = share["rank_modules"][share["rank"]] if share else range(len(fixed or []))
    wire_bytes = share["wire_buffer_bytes"] if share else 0

    def others_static(splits, k: int) -> int:
        return sum(costs.static_bytes[i] for j, (lo, hi) in enumerate(splits)
                   if j != k and j in mine for i in range(lo, hi))

    def choose(batch: int):
        if parallel:
            return max(total(*fixed[k], batch) + others_static(fixed, k) + wire_bytes
                       for k in mine), fixed
        if cfg.scheme in ("parallel", "e2e"):
            # every block resident and (e2e) every activation alive: the whole network is one module
            return total(0, n, batch), fixed
        if fixed is not None:
            return max(total(lo, hi, batch) for lo, hi in fixed), fixed
        for k in range(1, n + 1):
            value, splits = minimax_splits(n, k, lambda lo, hi: total(lo, hi, batch))
            if value <= usable:
                return value, splits
        return value, splits

    def verify(batch: int, splits) -> list[dict]:
        if cuda_acct is not None:
            return cuda_acct.verify(batch, [(0, n)] if cfg.scheme in ("parallel", "e2e") else splits,
                                    costs)
        estimates = []
        # (here cuda_acct is None, so a parallel plan is always the per-module one)
        measured_splits = [(0, n)] if cfg.scheme == "e2e" else splits
        for k, (lo, hi) in enumerate(measured_splits):
            if parallel and k not in mine:
                continue
            if hasattr(progress, "module"):
                progress.module(k, len(measured_splits), lo, hi, batch)
            composed = composition(lo, hi, batch)
            try:
                measured = model.probe_module(cfg, dataset.in_shape, dataset.num_classes, arch,
                                              lo, hi, [batch], threads)[batch]
            except ProbeOverBudget as exc:
                # stopped at the child's share of the budget: it needs at least that much more
                measured = max(int(exc.bytes_seen or 0), int(composed["module_bytes"] * 1.1),
                               PROBE_LIMIT["bytes"] or 0)
            parts = parts_for(lo, hi, batch, measured)
            resident = others_static(splits, k) if parallel else 0
            row = {"blocks": [lo, hi], "batch_size": batch,
                   "measured_probe_bytes": measured, "composed": composed,
                   "composition_error": (composed["module_bytes"] - measured) / measured,
                   **parts,
                   "estimated_peak_bytes": measured + resident + data_total(parts) + wire_bytes}
            if parallel:
                row["other_modules_static_bytes"] = resident
            if share:
                row["module"], row["wire_buffer_bytes"] = k, wire_bytes
            estimates.append(row)
        if hasattr(progress, "module"):
            progress.module(None, len(measured_splits))
        return estimates

    # Largest batch first; at each batch the fewest modules whose composed estimate fits; then
    # every chosen module is measured directly. If a measurement exceeds the budget, the
    # composition is recalibrated by the worst measured/composed ratio and the search repeats.
    plan = None
    # (every rank streams batches of one size to the next: the batch size is the one given)
    candidates = [cfg.batch_size] if share else batch_candidates(cfg.batch_size)
    index, value = 0, None
    while index < len(candidates):
        batch = candidates[index]
        value, splits = choose(batch)
        if value > usable:
            index += 1
            continue
        estimates = verify(batch, splits)
        worst = max(e["estimated_peak_bytes"] for e in estimates)
        if worst <= usable:
            plan = (batch, splits, estimates, worst)
            break
        # composed/measured of the most underestimated module; calibrate so it would have fit
        ratio = min(1 + e["composition_error"] for e in estimates)
        new_factor = max(calibration["factor"] * 1.05, 1.0 / max(ratio, 1e-9))
        calibration["factor"] = new_factor
        notes.append(f"batch {batch} with {len(splits)} modules measured {format_size(worst)}, over "
                     f"the budget; recalibrated the estimator by x{new_factor:.3f} and re-planned")
    if plan is None:
        need = min(total(i, i + 1, MIN_BATCH) for i in range(n)) if fixed is None else value
        if cuda_acct is not None:
            raise cuda_acct.refusal(budget_bytes, need, SAFETY)
        about = "about"
        if need >= UNFIT_BYTES // 2:  # a probe stopped at the child's share of the budget
            about = "more than"
            need = framework + max([b or 0 for b in costs.over_budget.values()] or [0])
            need = max(need, budget_bytes * SAFETY)
        raise UserError(
            f"The memory budget {format_size(budget_bytes)} is too small for {cfg.model}: even "
            f"training {'one block' if fixed is None else 'the requested grouping'} at batch size 2 "
            f"needs {about} {format_size(need / SAFETY)}, of which about "
            f"{format_size(framework)} is the framework itself {model.framework_what}. Give "
            f"{'more than' if about != 'about' else 'at least'} {format_size(need / SAFETY)} with "
            f"--mem-budget, or {model.smaller_framework_hint}a smaller model (--model, --width), "
            f"a smaller --train-fraction "
            f"or --batch-size. Nothing was written.")
    batch, splits, estimates, worst = plan
    if segments:
        notes.append(checkpoint_note(n, segments))
    if cuda_acct is not None:
        notes.append(cuda_acct.note(estimates))
    if share:
        from ..distributed import share_note
        notes.append(share_note(share, splits))
    views, cache_dtype, aug_policy = fit_disk(cfg, dataset, arch, splits, notes)
    return Plan(splits=[tuple(s) for s in splits], batch_size=batch, views=views,
                cache_dtype=cache_dtype, aug_policy=aug_policy, budget_bytes=budget_bytes,
                distributed=share,
                estimated_peak_bytes=int(worst), module_estimates=estimates, notes=notes,
                reason=plan_reason(cfg, batch, len(splits), fixed is not None, int(worst),
                                   budget_bytes))


def plan_reason(cfg, batch: int, modules: int, fixed: bool, worst: int, budget_bytes: int) -> str:
    """Why the planner chose this many modules and this batch size (its search: the largest batch
    size up to the requested one at which training fits at all, then at that batch size the
    fewest modules whose every module's estimate fits SAFETY of the budget)."""
    from .plan import grouping_source
    s = "s" if modules != 1 else ""
    if cfg.scheme == "e2e":
        what = "end to end (--scheme e2e): the whole network is one module"
    elif cfg.scheme == "parallel":
        what = f"{modules} module{s} from {grouping_source(cfg)}, all resident (--scheme parallel)"
    elif fixed:
        what = f"{modules} module{s} from {grouping_source(cfg)}"
    else:
        what = f"{modules} module{s}: the fewest that fit at batch size {batch}"
    if batch >= cfg.batch_size:
        size = f"batch size {batch}: the requested --batch-size"
    elif fixed or cfg.scheme in ("e2e", "parallel"):
        size = (f"batch size {batch}: the largest up to the requested {cfg.batch_size} at which "
                f"this grouping fits")
    else:
        size = (f"batch size {batch}: the largest up to the requested {cfg.batch_size} at which "
                f"training fits at all (at larger ones the estimate is over the budget even with "
                f"one block per module)")
    return (f"{what}; {size}; the largest module estimate, {format_size(worst)}, is within "
            f"{SAFETY:.0%} of the {format_size(budget_bytes)} budget")


def checkpoint_note(num_blocks: int, segments: int) -> str:
    from ..segments import segment_bounds
    from ..summary import block_range
    ranges = ", ".join(block_range(lo, hi) for lo, hi in segment_bounds(num_blocks, segments))
    return (f"end-to-end with gradient checkpointing in {segments} segments (blocks {ranges}; the "
            f"last one is not checkpointed): each segment's activations are recomputed in the "
            f"backward pass; the estimate is a probe of exactly that")
