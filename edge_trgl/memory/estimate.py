"""The memory estimator: what one module (blocks lo..hi-1 + head + optimizer) costs to train at a
batch size, in bytes of process RSS, framework included.

Most of a conv block's cost on CPU is the convolution kernels' temporary buffers, which counting
tensors misses, so the estimate is built from measurements:

1. per distinct block signature, a child-process probe (probe.py) trains that block + a head at
   two batch sizes; a line peak(b) = a + c*b is fitted to the peak above the probe's baseline
   (its RSS after `import torch`);
2. for a module of several blocks, the largest block's fitted peak counts once, and every other
   block adds what stays alive across the whole step: parameters, gradients, optimizer state
   (4 x parameter bytes with SGD momentum, 5 x with AdamW) and its saved activations, which are
   counted exactly with saved-tensor hooks on a small real forward pass;
3. the training process's own baseline is added (interpreter and torch, measured in a fresh
   process, plus the dataset's labels: the images are streamed from disk), plus the stream
   buffers of the data path (a batch read with pread and its copies).

The planner then verifies each chosen module by probing it directly (`probe_module`), so the
number it reports is a measurement of that exact module, and the composition's error against
that measurement is reported with the plan.

Probe results are cached in ~/.cache/edge-trgl (keyed by torch version, threads, device and the
module's structure) so re-planning is fast.
"""

from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import asdict

from ..segments import checkpoint_segment_count
from .probe_cache import (PROBE_LIMIT, ProbeOverBudget, load_cache,  # noqa: F401
                          machine_key, run_json_child, store_cache)


# What probe.py's block and module measurements are: bump it when they change, so entries measured
# before are measured again (7: it now reaches the key; 6 was overridden by machine_identity's).
BLOCK_PROBE_FORMAT = 7
PROBE_BATCHES = (8, 32)
# Where a block at PROBE_BATCHES does not fit the budget: the smallest batches BatchNorm allows.
SMALL_PROBE_BATCHES = (2, 4)
# The cost of what cannot be trained within the budget: larger than any budget.
UNFIT_BYTES = 1 << 60
# Peak RSS creeps for a few steps (allocator reuse patterns settle); 4 steps catch most of it.
PROBE_STEPS = 4


def probe_key(cfg, in_shape, num_classes, signatures, batches, threads) -> str:
    # BLOCK_PROBE_FORMAT under its own name: machine_identity's "probe_format" would override it
    ident = {"block_probe_format": BLOCK_PROBE_FORMAT, "device": cfg.device,
             "optimizer": cfg.optimizer, "head": cfg.head, "amp": cfg.amp, "classes": num_classes,
             "blocks": signatures, "batches": sorted(batches), "width": cfg.width, "model": cfg.model,
             "in_shape": list(in_shape)}
    segments = checkpoint_segment_count(cfg, len(signatures))
    if segments:
        # a whole-network probe trains checkpointed (probe.py): keyed by the number of segments
        # it used (auto resolved), so a changed rule never reuses an old measurement
        ident["checkpoint_segments"] = segments
    if cfg.device == "cuda":
        # A CUDA probe's figures (reserved, context, integrated) belong to one GPU: a changed
        # GPU selection must not reuse them.
        ident.update({"visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")})
    return machine_key(ident, threads)


def run_probe_child(cfg, in_shape, num_classes, lo, hi, batches, threads) -> dict:
    """probe.py in a fresh child process for blocks lo..hi-1 (on cfg.device); its JSON result.
    The child stops itself (ProbeOverBudget) if its RSS passes PROBE_LIMIT_BYTES (set by the
    planner to what the budget leaves a child), so a probe that cannot fit never has the kernel
    kill it."""
    spec = {"config": asdict(cfg), "in_shape": list(in_shape), "num_classes": num_classes,
            "lo": lo, "hi": hi, "batches": sorted(batches), "threads": threads, "steps": PROBE_STEPS,
            "limit_bytes": PROBE_LIMIT["bytes"]}
    from ..summary import block_range
    where = "CUDA memory probe" if cfg.device == "cuda" else "memory probe"
    return run_json_child([sys.executable, "-m", "edge_trgl.memory.probe", json.dumps(spec)],
                           threads, f"the {where} of blocks {block_range(lo, hi)} at batch "
                           f"{max(batches)}")


def probe_module(cfg, in_shape, num_classes, arch, lo, hi, batches, threads) -> dict[int, int]:
    """Measured peak RSS bytes of training blocks lo..hi-1 + head with torch on the CPU, per batch
    size, above the framework baseline (a child process that trains a few steps; see probe.py).
    Other targets measure their own way (memory/model.py: the planner asks the target)."""
    signatures = [arch[i].signature() for i in range(lo, hi)]
    key = probe_key(cfg, in_shape, num_classes, signatures, batches, threads)
    cache = load_cache()
    if key in cache:
        return {int(b): v for b, v in cache[key].items() if b.isdigit()}
    # A probe that did not fit a child's share is remembered for that share, so that the same
    # command (plan, then train) refuses with the same figures.
    over_key = f"{key}-over-{PROBE_LIMIT['bytes']}"
    if over_key in cache:
        raise ProbeOverBudget(cache[over_key]["what"], cache[over_key]["bytes_seen"])
    try:
        result = run_probe_child(cfg, in_shape, num_classes, lo, hi, batches, threads)
    except ProbeOverBudget as exc:
        store_cache({over_key: {"what": exc.what, "bytes_seen": exc.bytes_seen}})
        raise
    # Above the probe's own baseline (interpreter + torch after imports): the trainer adds its
    # own measured baseline, which also holds its dataset.
    peaks = {r["batch"]: r["peak_bytes"] - result["baseline_bytes"] for r in result["results"]}
    store_cache({key: {**{str(b): v for b, v in peaks.items()},
                        "saved_bytes_per_sample": result["saved_bytes_per_sample"]}})
    return peaks


def probe_saved_bytes(cfg, in_shape, num_classes, arch, lo, hi, batches, threads) -> int:
    """Saved-activation bytes per sample of blocks lo..hi-1, counted by the probe child."""
    signatures = [arch[i].signature() for i in range(lo, hi)]
    key = probe_key(cfg, in_shape, num_classes, signatures, batches, threads)
    cache = load_cache()
    if key not in cache:
        probe_module(cfg, in_shape, num_classes, arch, lo, hi, batches, threads)
        cache = load_cache()
    return int(cache[key]["saved_bytes_per_sample"])


def saved_activation_bytes_per_sample(block, in_shape) -> int:
    """Bytes of tensors autograd saves for backward, per sample (exact, via saved-tensor hooks)."""
    import torch
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    block = block.train()
    param = next(block.parameters(), None)  # on the block's device (the CUDA probe's is the GPU)
    x = torch.randn(2, *in_shape, requires_grad=True,
                    device=param.device if param is not None else "cpu")
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out, e = block(x)
        (out.float().mean() + e).backward()
    return total // 2


class BlockCosts:
    """Per-block measured line fits and exact static/saved costs for one model."""

    def __init__(self, cfg, in_shape, num_classes, arch, threads, model, progress=None):
        self.cfg, self.in_shape, self.num_classes, self.arch = cfg, in_shape, num_classes, arch
        self.threads = threads
        state_factor = 5 if cfg.optimizer == "adamw" else 4  # param + grad + state(s) + save copy
        self.static_bytes = []
        self.saved_per_sample = []
        self.fits: dict[str, tuple[float, float]] = {}
        by_sig: dict[str, int] = {}
        from .describe import param_bytes
        for i, meta_block in enumerate(arch):
            self.static_bytes.append(state_factor * param_bytes(meta_block))
            by_sig.setdefault(meta_block.signature(), i)
        # All measuring happens in probe children: this process (which trains next) does no
        # torch compute while planning, so its baseline stays what training starts from.
        saved_by_sig = {}
        self.over_budget: dict[str, int | None] = {}
        for n, (sig, i) in enumerate(by_sig.items()):
            if progress is not None:
                progress(n, len(by_sig))
            # A block whose probe at the usual batches does not fit the child's share of the
            # budget is probed again at the smallest batches; if even those do not fit, the
            # block cannot be trained within the budget (its cost is infinite).
            for batches in (PROBE_BATCHES, SMALL_PROBE_BATCHES):
                try:
                    peaks = model.probe_module(cfg, in_shape, num_classes, arch, i, i + 1,
                                               batches, threads)
                    saved_by_sig[sig] = model.saved_bytes(cfg, in_shape, num_classes, arch, i,
                                                          i + 1, batches, threads)
                except ProbeOverBudget as exc:
                    self.over_budget[sig] = exc.bytes_seen
                    continue
                (b1, p1), (b2, p2) = sorted(peaks.items())
                slope = max(0.0, (p2 - p1) / (b2 - b1))
                self.fits[sig] = (p1 - slope * b1, slope)
                break
            else:
                self.fits[sig] = (float(UNFIT_BYTES), 0.0)
                saved_by_sig[sig] = 0
        if progress is not None:
            progress(len(by_sig), len(by_sig))
        self.saved_per_sample = [saved_by_sig[b.signature()] for b in arch]

    def block_peak(self, i: int, batch: int) -> float:
        a, c = self.fits[self.arch[i].signature()]
        return a + c * batch

    def module_estimate(self, lo: int, hi: int, batch: int, segments: int | None = None) -> dict:
        """Composed estimate of training blocks lo..hi-1 (see the module docstring). With
        gradient checkpointing in `segments` segments (e2e): what stays alive across the step is
        each checkpointed segment's input (fp32), the last segment's saved activations, and,
        while one segment is recomputed in backward, that segment's own."""
        peaks = [self.block_peak(i, batch) for i in range(lo, hi)]
        top = lo + max(range(len(peaks)), key=peaks.__getitem__)
        others_static = sum(self.static_bytes[i] for i in range(lo, hi) if i != top)

        def saved(a: int, b: int) -> int:
            return sum(self.saved_per_sample[i] * batch for i in range(a, b) if i != top)
        if segments:
            from ..segments import segment_bounds
            bounds = [(lo + a, lo + b) for a, b in segment_bounds(hi - lo, segments)]
            inputs = sum(4 * math.prod(self.arch[a].in_shape) * batch for a, _ in bounds[:-1])
            others_saved = (inputs + saved(*bounds[-1])
                            + max([saved(a, b) for a, b in bounds[:-1]] or [0]))
        else:
            others_saved = saved(lo, hi)
        out = {"largest_block": top, "largest_block_peak_bytes": int(peaks[top - lo]),
               "other_blocks_static_bytes": int(others_static),
               "other_blocks_saved_activation_bytes": int(others_saved),
               "module_bytes": int(peaks[top - lo] + others_static + others_saved)}
        if segments:
            out["checkpoint_segments"] = int(segments)
        return out


def data_bytes(dataset, batch: int, baseline_bytes: int, allowance_bytes: int, *,
               input_shape=None, output_shape=None, cache_itemsize: int = 2) -> dict:
    """Memory the training process holds besides the module being trained: its own baseline
    (measured: interpreter, torch; plus what it holds of the dataset, `dataset_bytes`: the
    labels, 8 bytes an image, since the images stay in the run's on-disk copy, rundata.py) and the
    stream buffers of the data path, per batch: module 0's input (`input_shape` None) is a batch
    of images as read from disk with pread, its copy, its augmented copy and its float32
    normalised copy; a later module's is a feature-cache batch as read (`cache_itemsize` bytes a
    value) and its float32 copy, at its own shape (at 96 px a ResNet's first feature maps are 5x
    the image); and every module's output batch (`output_shape`, default the image's) as the
    cache writer holds it, fp32 + fp16. Plus what the training loop holds beyond a probe
    (`allowance_bytes`, see loop_allowance_bytes). A dataset held in memory (an in-process
    caller's) counts whole: its images' `nbytes` are real; the streamed ones' are 0
    (data/stream.py: StreamedImages)."""
    held = sum(a.images.nbytes + a.labels.nbytes
               for a in (dataset.train, dataset.val, dataset.test))
    if input_shape is None:
        inputs = math.prod(dataset.in_shape) * (1 + 1 + 1 + 4)
    else:
        inputs = math.prod(input_shape) * (cache_itemsize + 4)
    outputs = math.prod(output_shape or dataset.in_shape) * (4 + 2)
    batch_buffers = batch * (inputs + outputs)
    return {"process_baseline_bytes": int(baseline_bytes), "dataset_bytes": int(held),
            "batch_buffer_bytes": int(batch_buffers),
            "loop_allowance_bytes": int(allowance_bytes)}


# What the real training loop holds beyond a probe of the same module: the RSS watchdog thread
# (its stack and malloc arena), checkpoint serialisation, the per-epoch eval pass, the cache
# reader's buffers and hundreds of steps of allocator reuse instead of a handful. Measured, not
# derived: in a ResNet-20 run with --module-peaks (budget 512 MB, batch 64, 5 modules) every
# module's VmHWM was 12-23 MB above baseline + probe; 24 MB covers that.
LOOP_ALLOWANCE_BYTES = 24 * 1000 * 1000

# For large modules the torch loop's excess over its probe grows with the module (and scatters:
# glibc's heap after hundreds of steps). Two ResNet-56 1 GB runs (batch 128, CIFAR-10 10 %):
# with 4 modules (probes 328-594 MB) training held 32-79 MB above baseline + probe + buffers,
# with 6 modules (probes 283-460 MB) 37-90 MB; i.e. up to ~20 % of the probe. A 24 MB allowance
# left modules up to 6.2 % under their measurement (past the planner's 5 % safety margin), a 10 %
# one still 5.2 %; 15 % brings every one of those ten modules within -3.3 .. +3.9 %. More probe
# steps are not the cure: the 9-block module's probe measured 520 / 558 / 550 / 541 MB after
# 4 / 16 / 32 / 64 steps, a spread of its own. The allowance is the larger of 24 MB and 15 % of
# the module's own measured (or composed) cost; for the ~150 MB modules of the 512 MB plans,
# whose excess was 11-31 MB, it stays 24 MB.
LOOP_ALLOWANCE_FRACTION = 0.15


def data_total(parts: dict) -> int:
    return (parts["process_baseline_bytes"] + parts["batch_buffer_bytes"]
            + parts["loop_allowance_bytes"])

