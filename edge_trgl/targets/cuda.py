"""`--device cuda`: PyTorch on an NVIDIA GPU (a discrete card, or a Jetson's unified memory).

What a budget covers there and how each part is measured is memory/cuda.py's subject; this file
says what the rest of the toolkit asks of the target: can it run here, which options go with it,
how the planner measures a module (a probe child on the GPU, in the budget's currency), what the
trainer's watchdog samples, and the summary's CUDA figures."""

from __future__ import annotations

from ..envinfo import bf16_supported
from ..memory.model import MemoryModel
from .base import Target


def no_cuda_device(version: str, cuda: str | None) -> str:
    """Why a PyTorch `version` built for `cuda` (None: a CPU-only build) trains on no GPU here:
    the clause --device cuda's refusal and a profile's fallback note (profile_target.py) share."""
    if cuda is None:
        return f"this PyTorch ({version}) is a CPU-only build"
    return (f"this PyTorch ({version}, built for CUDA {cuda}) sees no CUDA device (no NVIDIA GPU, "
            f"no driver, or CUDA_VISIBLE_DEVICES hides it)")


def require_cuda(cfg) -> None:
    """UserError unless `--device cuda` (and `--amp bf16`, if asked) can run here."""
    import torch

    from ..errors import UserError
    if not torch.cuda.is_available():
        why = no_cuda_device(torch.__version__, torch.version.cuda)
        raise UserError(
            f"--device cuda was asked for, but {why}. Train on the CPU with --device cpu (the "
            f"default), or run on a machine with an NVIDIA GPU and a CUDA build of PyTorch (on a "
            f"Jetson: NVIDIA's JetPack wheel); `edge-trgl env` shows what this machine has. "
            f"Nothing was written.")
    if cfg.amp == "bf16" and not bf16_supported(torch):
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        raise UserError(
            f"--amp bf16 needs a GPU with native bfloat16 (compute capability 8.0 or newer, e.g. "
            f"Jetson Orin or an A100); {props.name} has compute capability "
            f"{props.major}.{props.minor}. Use --amp fp16 (trained with a gradient scaler) or "
            f"leave out --amp. Nothing was written.")


class CudaMemoryModel(MemoryModel):
    """Device memory (+ host RSS on unified memory), measured by the torch probe child on the
    GPU (memory/cuda.py); the plan's fixed costs and rows come from its PlanAccounting."""
    name = "cuda"

    def probe_module(self, cfg, in_shape, num_classes, arch, lo, hi, batches, threads):
        from ..memory.cuda import probe_peaks, raw_probe
        return probe_peaks(cfg, raw_probe(cfg, in_shape, num_classes, arch, lo, hi, batches,
                                          threads))

    def saved_bytes(self, cfg, in_shape, num_classes, arch, lo, hi, batches, threads):
        from ..memory.cuda import raw_probe
        return int(raw_probe(cfg, in_shape, num_classes, arch, lo, hi, batches,
                             threads)["saved_bytes_per_sample"])

    def limits_children(self, description) -> bool:
        return False  # the budget is device memory: host RSS is only measured

    def profile_budget(self, cfg):
        from ..memory.cuda import profile_budget
        return profile_budget(cfg)

    def accounting(self, cfg, dataset, arch, threads, framework_bytes):
        from ..memory.cuda import PlanAccounting
        require_cuda(cfg)
        return PlanAccounting.for_plan(cfg, dataset, arch, threads, framework_bytes)


class CudaTarget(Target):
    name = "cuda"

    def check_available(self, cfg, *, setup: bool = False) -> None:
        require_cuda(cfg)
        super().check_available(cfg, setup=setup)

    def validate(self, cfg) -> None:
        return None  # --amp fp16 / bf16 belong here (bf16's hardware check: check_available)

    def memory_model(self):
        return CudaMemoryModel()

    def make_backend(self, cfg):
        require_cuda(cfg)  # a worker is never made where it could not run
        return super().make_backend(cfg)

    def host_limit(self, budget_bytes):
        # The budget is device memory (plus host RSS on a unified-memory board, which the
        # trainer's CudaWatchdog accounts for from inside): the command's cgroup only measures.
        return None

    def make_watchdog(self, cfg, plan: dict, limit_bytes):
        from ..memory.cuda import CudaWatchdog
        rows = plan.get("module_estimates") or [{}]
        accounting = rows[0].get("accounting")  # the planner's probe saw the device
        return CudaWatchdog(cfg, limit_bytes=plan.get("budget_bytes"),
                            unified={"cuda-unified": True, "cuda-discrete": False}.get(accounting))

    def add_summary_fields(self, summary, *, run, plan, watchdog, backend=None,
                           orchestrator_peak_bytes=0) -> None:
        # allocated, reserved, context, host RSS (memory/cuda.py)
        summary.update(watchdog.summary_fields(summary["peak_rss_bytes"], plan.get("budget_bytes")))
        summary["over_budget"] = summary["cuda_over_budget"]
        summary["module_peak_method"] = watchdog.module_peak_method(summary["module_peak_method"])

    def summary_lines(self, summary) -> list[str]:
        if not summary.get("cuda_budget_covers"):
            return []
        from ..memory.cuda import format_cuda_summary
        return [format_cuda_summary(summary)]


TARGET = CudaTarget()
