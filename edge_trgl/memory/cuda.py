"""Memory accounting for `--device cuda`: what a budget covers, how each part is measured, and the
planner's and trainer's CUDA figures.

Four quantities make up a CUDA run's memory:

  allocated  bytes of live tensors (torch.cuda.max_memory_allocated): weights, gradients,
             optimizer state, saved activations, the batch, cuDNN/cuBLAS workspaces;
  reserved   what PyTorch's caching allocator holds from the driver (max_memory_reserved):
             allocated plus cached free blocks and fragmentation; always >= allocated, and what
             the device actually gives up;
  context    the CUDA context: driver state and the loaded kernel images. Neither allocator
             statistic sees it. On a discrete GPU it is measured as
             `total - free` (torch.cuda.mem_get_info) minus reserved, after real training steps
             (kernels load lazily, so a freshly created context is smaller than a working one).
             That reading includes any other process on the same GPU, so it errs high. On a
             unified-memory device `total - free` is the whole system's RAM in use, so the context
             cannot be told apart from everything else: there it is the profile's `cuda_context`
             (a documented default, not measured on a board);
  host RSS   the process's resident set (VmHWM): interpreter, torch and the CUDA libraries'
             host side, the dataset, the batch buffers (pinned or not).

Which of them a budget covers depends on the device:

  unified memory (a Jetson: CPU and GPU share one RAM; profiles with `unified_memory = true`, or a
  device that reports itself integrated): budget >= host RSS + reserved + context;
  discrete GPU: budget >= reserved + context (device memory); host RSS is reported separately and
  not budgeted. A discrete-GPU profile states its GPU memory (`gpu_memory`, `gpu_reserve`).

CUDA device allocations are assumed not to appear in host RSS (cudaMalloc memory is not mapped
into the process's resident set, on Jetson either); if a driver did count them there, the unified
sum would count them twice and err on the safe side.

The planner uses the probe children of estimate.py unchanged in spirit: each probe trains the
module on the GPU and reports host VmHWM, the allocator's peaks and the context (probe.py); here
those are turned into the module cost the planner composes (`probe_peaks`) and into the rows of
the plan (`PlanAccounting`). The trainer samples the same figures (`CudaWatchdog`) and the run
summary reports them (`summary_fields`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from ..budget import format_size, parse_size
from ..errors import UserError
from .estimate import LOOP_ALLOWANCE_BYTES
from .measure import RssWatchdog, rss_bytes

# The context where it cannot be measured (unified memory) and the profile does not say. About
# what PyTorch's CUDA context with cuDNN/cuBLAS kernels occupies on a discrete GPU with lazy
# module loading (several hundred MB); not measured on a Jetson.
DEFAULT_UNIFIED_CONTEXT_BYTES = 500 * 1000**2

BUDGET_COVERS = {
    True: "host RSS + CUDA reserved + CUDA context (unified memory: CPU and GPU share the RAM)",
    False: "CUDA reserved + CUDA context (device memory of a discrete GPU); host RSS is reported "
           "separately and not budgeted",
}


# --- the formulas ----------------------------------------------------------------------------

@dataclass(frozen=True)
class CudaPeaks:
    """Peak figures of one process (or one probe) and the device's budget rule."""
    allocated_bytes: int
    reserved_bytes: int
    context_bytes: int
    host_rss_bytes: int
    unified: bool

    @property
    def device_bytes(self) -> int:
        """What the GPU gives up: the allocator's segments and the context (allocated is inside
        reserved, so it is not added again)."""
        return self.reserved_bytes + self.context_bytes

    @property
    def budgeted_bytes(self) -> int:
        """What the budget is compared with on this device."""
        return self.device_bytes + (self.host_rss_bytes if self.unified else 0)

    def to_json(self) -> dict:
        return {**asdict(self), "device_bytes": self.device_bytes,
                "budgeted_bytes": self.budgeted_bytes, "budget_covers": BUDGET_COVERS[self.unified]}


def _profile(cfg) -> dict | None:
    if cfg.profile is None:
        return None
    from ..profiles import load_profile
    return load_profile(cfg.profile)


def unified_memory(cfg, integrated: bool | None) -> bool:
    """A profile decides (so a Jetson plan can be rehearsed on another GPU); without one, what
    the device says of itself."""
    prof = _profile(cfg)
    if prof is not None:
        return bool(prof["unified_memory"])
    return bool(integrated)


def context_default_bytes(cfg) -> tuple[int, str]:
    """The context size to assume where it cannot be measured, and where that number came from."""
    prof = _profile(cfg)
    if prof is not None and "cuda_context" in prof:
        return (parse_size(prof["cuda_context"], what=f"cuda_context of profile {prof['name']}"),
                f"profile {prof['name']} (cuda_context)")
    return DEFAULT_UNIFIED_CONTEXT_BYTES, "edge-trgl's default (not measured on this device)"


def probe_context_bytes(cfg, raw: dict) -> tuple[int, str]:
    """The context a probe child measured (discrete), or the documented default (unified)."""
    facts = raw["cuda"]
    if unified_memory(cfg, facts.get("integrated")):
        return context_default_bytes(cfg)
    return int(facts["context_bytes"]), ("measured: device total - free - reserved after the "
                                         "probe's training steps (mem_get_info)")


def probe_peaks(cfg, raw: dict) -> dict[int, int]:
    """A CUDA probe's result as the per-batch module cost the planner composes, in the currency
    of the budget: reserved (device), plus on unified memory the host RSS above the probe's
    pre-CUDA baseline (the CUDA libraries' host side, the module's host work). The context and
    the trainer's own host baseline are fixed costs, added once per plan (PlanAccounting)."""
    facts = raw["cuda"]
    unified = unified_memory(cfg, facts.get("integrated"))
    peaks = {}
    for entry in raw["results"]:
        host_above = max(0, int(entry["peak_bytes"]) - int(raw["baseline_bytes"]))
        peaks[int(entry["batch"])] = int(entry["cuda_reserved_bytes"]) + (host_above if unified else 0)
    return peaks


def host_buffer_bytes(sample_elements: int, batch: int) -> int:
    """Host batch buffers of the CUDA data path for a module whose input sample has
    `sample_elements` values (the image for module 0, the previous module's feature map after
    it, several times larger in a ResNet): the CPU path's (a uint8 batch, its augmented copy, the
    float32 normalised batch, the cache writer's output copies) plus the read-ahead: one float32
    batch being prepared and two pinned copies (queued, and in flight to the device), each
    pinned block rounded up to a power of two by the caching host allocator."""
    cpu_path = batch * sample_elements * (1 + 1 + 4 + 4)
    read_ahead = batch * sample_elements * 4 * (1 + 2 * 2)
    return cpu_path + read_ahead


# --- probing ---------------------------------------------------------------------------------

def probe_facts(torch, device) -> dict:
    """Called in a probe child after its training steps: the device and its context."""
    props = torch.cuda.get_device_properties(device)
    torch.cuda.synchronize(device)
    reserved_before = torch.cuda.memory_reserved(device)
    free, total = torch.cuda.mem_get_info(device)
    reserved = max(reserved_before, torch.cuda.memory_reserved(device))
    return {"device_name": props.name, "capability": f"{props.major}.{props.minor}",
            "integrated": bool(getattr(props, "is_integrated", False)),
            "total_bytes": int(total), "used_bytes": int(total - free),
            "reserved_now_bytes": int(reserved), "context_bytes": int(max(0, total - free - reserved)),
            "host_rss_bytes": rss_bytes(), "torch_cuda": torch.version.cuda}


def raw_probe(cfg, in_shape, num_classes, arch, lo, hi, batches, threads) -> dict:
    """Run (or read from the probe cache) the CUDA probe child of blocks lo..hi-1: probe.py's
    JSON with per-batch host VmHWM, allocator peaks, and the device facts. Shares estimate.py's
    cache and key, and stores the saved-activation count where estimate.py looks for it."""
    from . import estimate, probe_cache
    signatures = [arch[i].signature() for i in range(lo, hi)]
    key = estimate.probe_key(cfg, in_shape, num_classes, signatures, batches, threads)
    cache = probe_cache.load_cache()
    if key in cache and "cuda_probe" in cache[key]:
        return cache[key]["cuda_probe"]
    raw = estimate.run_probe_child(cfg, in_shape, num_classes, lo, hi, batches, threads)
    cache = probe_cache.load_cache()
    cache[key] = {"cuda_probe": raw, "saved_bytes_per_sample": raw["saved_bytes_per_sample"]}
    probe_cache.store_cache(cache)
    return raw


# --- planning --------------------------------------------------------------------------------

def profile_budget(cfg) -> tuple[int, list[str]]:
    """The budget a profile sets for a CUDA run: its RAM minus the OS reserve on unified memory;
    its `gpu_memory` minus `gpu_reserve` on a discrete GPU."""
    from ..profiles import load_profile
    prof = load_profile(cfg.profile)
    if prof["unified_memory"]:
        return prof["budget_bytes"], [
            f"budget from profile {prof['name']}: {format_size(prof['budget_bytes'])} "
            f"({format_size(prof['ram_bytes'])} RAM minus {format_size(prof['os_reserve_bytes'])} "
            f"for the OS), covering {BUDGET_COVERS[True]}"]
    if "gpu_memory" not in prof:
        raise UserError(
            f"The device profile {prof['name']} describes host RAM only, but with --device cuda on a "
            f"discrete GPU the budget applies to GPU memory. Give the GPU budget with --mem-budget "
            f"(e.g. --mem-budget 6GB for an 8 GB card), or use a profile that states gpu_memory.")
    gpu = parse_size(prof["gpu_memory"], what=f"gpu_memory of profile {prof['name']}")
    reserve = parse_size(prof.get("gpu_reserve", 0), what=f"gpu_reserve of profile {prof['name']}")
    if reserve >= gpu:
        raise UserError(f"The device profile {prof['path']} reserves {prof.get('gpu_reserve')} of "
                        f"its {prof['gpu_memory']} GPU memory, leaving nothing to train with.")
    return gpu - reserve, [
        f"budget from profile {prof['name']}: {format_size(gpu - reserve)} "
        f"({format_size(gpu)} GPU memory minus {format_size(reserve)} for the display), covering "
        f"{BUDGET_COVERS[False]}"]


class PlanAccounting:
    """The planner's CUDA side: fixed costs per plan, and one row per verified module."""

    def __init__(self, cfg, dataset, arch, first_raw: dict, host_baseline_bytes: int):
        self.cfg = cfg
        facts = first_raw["cuda"]
        self.device_name = facts.get("device_name")
        self.unified = unified_memory(cfg, facts.get("integrated"))
        self.context_bytes, self.context_method = probe_context_bytes(cfg, first_raw)
        self.host_baseline_bytes = int(host_baseline_bytes)
        # per block: the values of one input sample (block 0: the image; later: feature maps)
        self.input_elements = [int(math.prod(block.in_shape)) for block in arch]
        self.dataset_bytes = int(sum(a.images.nbytes + a.labels.nbytes
                                     for a in (dataset.train, dataset.val, dataset.test)))

    @classmethod
    def for_plan(cls, cfg, dataset, arch, threads, host_baseline_bytes: int) -> "PlanAccounting":
        from .estimate import PROBE_BATCHES
        raw = raw_probe(cfg, dataset.in_shape, dataset.num_classes, arch, 0, 1, PROBE_BATCHES,
                        threads)
        return cls(cfg, dataset, arch, raw, host_baseline_bytes)

    def host_buffers(self, batch: int, lo: int = 0) -> int:
        """Host batch buffers of the module starting at block `lo` (its input's size)."""
        return host_buffer_bytes(self.input_elements[lo], batch)

    def fixed_bytes(self, batch: int, lo: int = 0) -> int:
        """Budgeted bytes besides the module's own: the context, and on unified memory the
        trainer's host baseline (interpreter, torch, dataset), the host batch buffers of the
        module starting at block `lo` and the training loop's measured host allowance beyond a
        probe (estimate.LOOP_ALLOWANCE_BYTES)."""
        if self.unified:
            return (self.host_baseline_bytes + self.host_buffers(batch, lo) + LOOP_ALLOWANCE_BYTES
                    + self.context_bytes)
        return self.context_bytes

    def check_fixed(self, usable_bytes: int, budget_bytes: int, safety: float) -> None:
        need = self.fixed_bytes(1)
        if usable_bytes > need:
            return
        what = (f"the trainer's host RSS ({format_size(self.host_baseline_bytes)}: interpreter, "
                f"torch and the dataset) and the CUDA context ({format_size(self.context_bytes)})"
                if self.unified else f"the CUDA context ({format_size(self.context_bytes)}, "
                f"{self.context_method})")
        raise UserError(
            f"The memory budget {format_size(budget_bytes)} is smaller than what a CUDA run holds "
            f"before training anything: {what}, together {format_size(need)}. Give a larger "
            f"--mem-budget (at least {format_size(need / safety)} plus the model). Nothing was "
            f"written.")

    def verify(self, batch: int, splits, costs) -> list[dict]:
        """Probe every chosen module at `batch` on the device; one plan row each. The context is
        the largest any of these probes measured (a working context grows with the kernels it
        has loaded), applied to every row."""
        cfg, arch = self.cfg, costs.arch
        probes = []
        for lo, hi in splits:
            raw = raw_probe(cfg, costs.in_shape, costs.num_classes, arch, lo, hi, [batch],
                            costs.threads)
            measured = probe_peaks(cfg, raw)[batch]
            if not self.unified:
                self.context_bytes = max(self.context_bytes, probe_context_bytes(cfg, raw)[0])
            probes.append((lo, hi, measured, raw))
        rows = []
        for lo, hi, measured, raw in probes:
            entry = next(e for e in raw["results"] if int(e["batch"]) == batch)
            composed = costs.module_estimate(lo, hi, batch)
            host_above = max(0, int(entry["peak_bytes"]) - int(raw["baseline_bytes"]))
            buffers = self.host_buffers(batch, lo)
            host_rss = self.host_baseline_bytes + host_above + buffers + LOOP_ALLOWANCE_BYTES
            fixed = self.fixed_bytes(batch, lo)
            rows.append({
                "blocks": [lo, hi], "batch_size": batch, "measured_probe_bytes": measured,
                "composed": composed,
                "composition_error": (composed["module_bytes"] - measured) / max(measured, 1),
                # the plan table's columns, in the currency of this device's budget
                "process_baseline_bytes": fixed - (buffers if self.unified else 0),
                "dataset_bytes": self.dataset_bytes if self.unified else 0,
                "batch_buffer_bytes": buffers if self.unified else 0,
                "estimated_peak_bytes": measured + fixed,
                "accounting": "cuda-unified" if self.unified else "cuda-discrete",
                "budget_covers": BUDGET_COVERS[self.unified],
                "cuda_allocated_bytes": int(entry["cuda_allocated_bytes"]),
                "cuda_reserved_bytes": int(entry["cuda_reserved_bytes"]),
                "cuda_context_bytes": self.context_bytes,
                "host_rss_estimate_bytes": host_rss})
        return rows

    def note(self, estimates: list[dict]) -> str:
        device = self.device_name or "CUDA device"
        if self.unified:
            return (f"CUDA on {device}, unified memory: the budget covers {BUDGET_COVERS[True]}; "
                    f"'baseline' is the trainer's host RSS before CUDA plus the context "
                    f"({format_size(self.context_bytes)}, {self.context_method}); 'module' is the "
                    f"allocator's reserved peak plus the probe's host RSS above its baseline")
        host = max((e["host_rss_estimate_bytes"] for e in estimates), default=0)
        return (f"CUDA on {device}, a discrete GPU: the budget applies to device memory (CUDA "
                f"reserved + CUDA context); 'baseline' is the context "
                f"({format_size(self.context_bytes)}, {self.context_method}); 'module' is the "
                f"allocator's reserved peak; host RSS is not budgeted, estimated at "
                f"{format_size(host)}")

    def refusal(self, budget_bytes: int, need_bytes: float, safety: float) -> UserError:
        return UserError(
            f"The memory budget {format_size(budget_bytes)} is too small for {self.cfg.model} on "
            f"CUDA ({BUDGET_COVERS[self.unified]}): even the smallest module at batch size 1 needs "
            f"about {format_size(need_bytes / safety)}, of which {format_size(self.fixed_bytes(1))} "
            f"is fixed ({'host baseline and ' if self.unified else ''}CUDA context). Give at least "
            f"{format_size(need_bytes / safety)} with --mem-budget, or use a smaller model "
            f"(--model, --width), --amp fp16, or a smaller --batch-size. Nothing was written.")


# --- training --------------------------------------------------------------------------------

class CudaWatchdog(RssWatchdog):
    """The RSS watchdog plus the CUDA figures, comparing with the budget what it covers on this
    device (see the module docstring): reserved + context (+ host RSS on unified memory). Device
    memory is read only once this process has initialised CUDA, so sampling never creates a
    context of its own. The allocator's peaks are exact (tracked by PyTorch on every
    allocation); the context and host RSS are sampled every `interval_s`."""

    def __init__(self, cfg, limit_bytes: int | None = None, interval_s: float = 0.02,
                 unified: bool | None = None):
        super().__init__(limit_bytes=limit_bytes, interval_s=interval_s)
        import torch
        self._torch = torch
        # A profile decides; else the plan's accounting (its probe saw the device), so the rule
        # is known before this process touches CUDA; else the device, once it is initialised.
        self.unified: bool | None = (unified_memory(cfg, None) if cfg.profile is not None
                                     else unified)
        self.context_default_bytes, self.context_default_method = context_default_bytes(cfg)
        self.device_name: str | None = None
        self.context_max_bytes = 0
        self.budgeted_max_sampled_bytes = 0
        self.allocated_max_bytes = 0
        self.reserved_max_bytes = 0
        self.pinned_host_max_bytes = 0

    @property
    def measured_what(self) -> str:
        return ("host RSS + CUDA reserved + CUDA context" if self.unified
                else "CUDA reserved + CUDA context")

    def _cuda_ready(self) -> bool:
        return self._torch.cuda.is_initialized()

    def _context_exists(self) -> bool:
        """CUDA is initialised *and* the allocator holds memory, so a context certainly exists:
        only then does sampling call mem_get_info, which would otherwise create the context
        from this thread before training has (is_initialized() turns true as soon as anything
        asks for device properties)."""
        return self._cuda_ready() and self._torch.cuda.memory_reserved() > 0

    def __enter__(self):
        # The allocator's peaks are per process: a run that follows another in the same
        # process (a notebook, a test session) must not report the earlier run's peaks.
        if self._cuda_ready():
            self._torch.cuda.empty_cache()
            self._torch.cuda.reset_peak_memory_stats()
        return super().__enter__()

    def _context_now(self) -> int:
        cuda = self._torch.cuda
        if self.unified:
            return self.context_default_bytes
        before = cuda.memory_reserved()
        free, total = cuda.mem_get_info()
        return max(0, total - free - max(before, cuda.memory_reserved()))

    def _learn_device(self) -> None:
        if self.device_name is None:
            props = self._torch.cuda.get_device_properties(self._torch.cuda.current_device())
            self.device_name = props.name
            if self.unified is None:
                self.unified = bool(getattr(props, "is_integrated", False))

    def sample(self) -> int:
        now = rss_bytes()
        self.max_seen_bytes = max(self.max_seen_bytes, now)
        self.phase_max_bytes = max(self.phase_max_bytes, now)
        if not self._context_exists():
            budgeted = now if self.unified else 0  # before CUDA, only host memory exists
        else:
            self._learn_device()
            reserved = self._torch.cuda.memory_reserved()
            context = self._context_now()
            self.context_max_bytes = max(self.context_max_bytes, context)
            budgeted = reserved + context + (now if self.unified else 0)
        self.budgeted_max_sampled_bytes = max(self.budgeted_max_sampled_bytes, budgeted)
        if self.limit_bytes is not None and budgeted > self.limit_bytes and self.exceeded_bytes is None:
            self.exceeded_bytes = budgeted
        return now

    def _fold_peaks(self) -> None:
        if self._cuda_ready():
            cuda = self._torch.cuda
            self.allocated_max_bytes = max(self.allocated_max_bytes, cuda.max_memory_allocated())
            self.reserved_max_bytes = max(self.reserved_max_bytes, cuda.max_memory_reserved())
            stats = cuda.host_memory_stats() if hasattr(cuda, "host_memory_stats") else {}
            self.pinned_host_max_bytes = max(self.pinned_host_max_bytes,
                                             int(stats.get("allocated_bytes.peak", 0) or 0))

    def start_phase(self) -> None:
        """A module starts: keep the process peaks, then give cached blocks back and restart
        the allocator's peak counters so this module's peak is its own."""
        self._fold_peaks()
        if self._cuda_ready():
            self._torch.cuda.empty_cache()
            self._torch.cuda.reset_peak_memory_stats()
        super().start_phase()

    def module_peak_method(self, host_method: str) -> str:
        host = f" + the module's host RSS ({host_method})" if self.unified else ""
        return (f"{self.measured_what}: the allocator's reserved peak during the module (exact; "
                f"its cache is emptied when a module starts) + the largest context sampled{host}")

    def phase_budgeted_bytes(self, host_phase_bytes: int) -> int:
        """This module's peak in the budget's currency (comparable with its plan row)."""
        reserved = 0
        if self._cuda_ready():
            self._learn_device()
            reserved = self._torch.cuda.max_memory_reserved()
        return CudaPeaks(0, reserved, self.context_max_bytes, host_phase_bytes,
                         bool(self.unified)).budgeted_bytes

    def peaks(self, host_peak_bytes: int) -> CudaPeaks:
        if self._cuda_ready():
            self._learn_device()
        self._fold_peaks()
        return CudaPeaks(self.allocated_max_bytes, self.reserved_max_bytes, self.context_max_bytes,
                         int(host_peak_bytes), bool(self.unified))

    def summary_fields(self, host_peak_bytes: int, budget_bytes: int | None) -> dict:
        """The run summary's CUDA figures (every key names cuda: the benchmark harness collects
        them by that)."""
        p = self.peaks(host_peak_bytes)
        return {
            "cuda_device_name": self.device_name,
            "cuda_unified_memory": p.unified,
            "cuda_budget_covers": BUDGET_COVERS[p.unified],
            "cuda_peak_allocated_bytes": p.allocated_bytes,
            "cuda_peak_reserved_bytes": p.reserved_bytes,
            "cuda_context_bytes": p.context_bytes,
            "cuda_context_method": (self.context_default_method if p.unified else
                                    "sampled max of device total - free - reserved "
                                    "(mem_get_info; includes other processes on this GPU)"),
            "cuda_host_peak_rss_bytes": p.host_rss_bytes,
            # page-locked batch buffers (the pinned-host allocator's peak, power-of-two blocks):
            # resident host pages, so already inside host RSS; reported to show their share
            "cuda_pinned_host_peak_bytes": self.pinned_host_max_bytes,
            "cuda_device_peak_bytes": p.device_bytes,
            "cuda_budgeted_peak_bytes": p.budgeted_bytes,
            "cuda_budgeted_peak_sampled_bytes": self.budgeted_max_sampled_bytes,
            "cuda_peak_method": ("allocated/reserved: the caching allocator's exact peaks "
                                 "(max_memory_allocated/reserved) over every module; budgeted: "
                                 "the sum of the separate peaks (an upper bound: they need not "
                                 "coincide); sampled: the largest sum seen at one moment"),
            "cuda_over_budget": bool(budget_bytes and p.budgeted_bytes > budget_bytes),
        }


def format_cuda_summary(summary: dict) -> str:
    """One line of `format_summary` for a CUDA run."""
    budget = summary.get("budget_bytes")
    return (f"CUDA peaks: allocated {format_size(summary['cuda_peak_allocated_bytes'])}, reserved "
            f"{format_size(summary['cuda_peak_reserved_bytes'])}, context "
            f"{format_size(summary['cuda_context_bytes'])}, host RSS "
            f"{format_size(summary['cuda_host_peak_rss_bytes'])}; budgeted "
            f"{format_size(summary['cuda_budgeted_peak_bytes'])}"
            + (f" of {format_size(budget)}" if budget else "")
            + f" ({summary['cuda_budget_covers']})")
