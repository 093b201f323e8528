"""`--backend ort`: ONNX Runtime training on the CPU, with trainers that never import torch.

How a command runs on it (backends/ort_backend.py): two set-up children (torch export, then the
torch-free graph builder), then this torch-free process runs the module-wise scheme and starts
one ONNX Runtime trainer (backends/ort_worker.py) per module and phase. This file holds what the
rest of the toolkit asks of the target: its availability (the training build of onnxruntime),
its options (CPU only, module-wise schemes only), its memory model for the planner (the trainer
itself, probed on each module's real artifacts), and its summary fields (every process's peak).
"""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path

from ..backends.ort_backend import export_and_finish, run_child, worker_env
from ..backends.ort_common import ort_version, require_ort, worker_command
from ..errors import UserError
from ..jobdirs import job_dir
from ..memory.model import MemoryModel
from .base import Target

# The same allowance for the ORT trainer, whose loop holds far less beyond its probe (no autograd
# graph, no Python-side optimizer tensors, MALLOC_MMAP_THRESHOLD_ set). Measured: with the torch
# allowance, ORT plans were +12.8..+16.4 % over the measured per-module peaks (ResNet-20, CIFAR-10
# 10 %, 256 MB, batch 128, 7 modules) and, image arrays aside, about 24 MB over in every module of
# ResNet-56 at 384 MB; the trainers held 0-2 MB above baseline + probe + batch buffers. 8 MB keeps
# a margin over that.
ORT_LOOP_ALLOWANCE_BYTES = 8 * 1000 * 1000



# --- where ONNX Runtime's training API exists at all ---------------------------------------------

# What PyPI holds for onnxruntime-training(-cpu) 1.19.2, its last release (checked with `pip
# download --platform ...`): CPython 3.10-3.12 wheels for Linux x86_64, Windows amd64 and macOS
# (universal2). Nothing for Linux aarch64, and Debian's python3-onnxruntime (arm64 included) is the
# inference-only build. pyproject's `ort` extra carries the same condition as a marker.
ORT_TRAINING_PYTHONS = ((3, 10), (3, 12))
NO_ARM64_BUILD = ("ONNX Runtime's training API (onnxruntime-training 1.19.2, its last release) "
                  "has no Linux arm64 build, neither on PyPI nor in Debian / Raspberry Pi OS, "
                  "whose python3-onnxruntime is the inference-only build")


def no_training_build(machine: str | None = None, system: str | None = None,
                      version: tuple[int, int] | None = None) -> str | None:
    """Why no build of ONNX Runtime's training API can be installed on this machine (a sentence
    without its final full stop), or None where a wheel exists (it may still be missing)."""
    machine = machine if machine is not None else platform.machine()
    system = system if system is not None else sys.platform
    version = version if version is not None else sys.version_info[:2]
    if system == "linux" and machine not in ("x86_64", "AMD64"):
        return f"this is Linux {machine}, and {NO_ARM64_BUILD}"
    lo, hi = ORT_TRAINING_PYTHONS
    if not lo <= tuple(version) <= hi:
        return (f"this is Python {version[0]}.{version[1]}, and ONNX Runtime's training API "
                f"(onnxruntime-training 1.19.2, its last release) has wheels for Python "
                f"{lo[0]}.{lo[1]}-{hi[0]}.{hi[1]} only")
    return None


# --- the planner's view of this target ------------------------------------------------------------

ORT_PROBE_FORMAT = 3


def _probe_cache() -> tuple[dict, callable]:
    from ..memory.probe_cache import load_cache, store_cache
    return load_cache(), store_cache


def ort_plan_note(cfg, dataset) -> str:
    from ..budget import format_size
    parts = _ort_baselines(cfg)
    arrays = sum(a.images.nbytes + a.labels.nbytes for a in (dataset.train, dataset.val, dataset.test))
    return (f"--backend ort: baseline = torch-free orchestrator {format_size(parts['orchestrator_bytes'])} "
            f"+ ONNX Runtime trainer after imports {format_size(parts['worker_baseline_bytes'])} + "
            f"dataset {format_size(arrays)} (all measured; the two processes are alive together; "
            f"the images only for module 0: later trainers read the feature cache); "
            f"module = that trainer's measured peak above its baseline. The set-up (torch export, "
            f"then the torch-free graph builder) runs before training, each step a child of its "
            f"own inside the same budget.")


def ort_framework_bytes(cfg, dataset) -> int:
    """What an ORT run holds before any module: the orchestrator's RSS + a trainer's RSS after its
    imports + the dataset arrays the first trainer loads (all measured in fresh children)."""
    parts = _ort_baselines(cfg)
    arrays = sum(a.images.nbytes + a.labels.nbytes for a in (dataset.train, dataset.val, dataset.test))
    return int(parts["orchestrator_bytes"] + parts["worker_baseline_bytes"] + arrays)


def _ort_baselines(cfg) -> dict:
    cache, store = _probe_cache()
    from ..memory.probe_cache import machine_key
    key = machine_key({"ort_baseline": ORT_PROBE_FORMAT, "ort": ort_version()}, cfg.thread_count())
    if key not in cache:
        from ..memory.describe import orchestrator_bytes
        orchestrator = orchestrator_bytes(cfg.thread_count())
        worker = _probe_worker(cfg, None, [], cfg.thread_count())["baseline_bytes"]
        cache[key] = {"orchestrator_bytes": orchestrator, "worker_baseline_bytes": worker}
        store({key: cache[key]})
    return cache[key]


def _probe_worker(cfg, art_dir, batches, threads) -> dict:
    with job_dir("ort-probe") as tmp:
        tmp = Path(tmp)
        job = {"mode": "probe", "config": cfg.to_json(), "threads": threads,
               "parent_pid": os.getpid(),
               "artifact_dir": str(art_dir) if art_dir else None, "batches": list(batches),
               "steps": 4, "result_path": str(tmp / "result.json")}
        (tmp / "job.json").write_text(json.dumps(job))
        watched, result = run_child(worker_command(tmp / "job.json"), worker_env(cfg),
                                     tmp / "result.json")
    if watched["status"] == -9:  # stopped by the command's memory guard (or the kernel)
        from ..memory.cgroup import killed_by_guard
        from ..memory.probe_cache import ProbeOverBudget
        raise ProbeOverBudget("the ONNX Runtime memory probe", killed_by_guard())
    if watched["status"] != 0 or "baseline_bytes" not in result:
        raise RuntimeError(f"the ONNX Runtime memory probe failed (exit status "
                           f"{watched['status']}); its error is printed above")
    return result


def probe_ort_module(cfg, in_shape, num_classes, arch, lo, hi, batches, threads) -> dict[int, int]:
    """Peak RSS bytes of the ORT trainer for blocks lo..hi-1 (+ head), per batch size, above the
    trainer's own baseline: the trainer itself (same code path as training) runs a few steps and
    an eval batch on the module's real artifacts in a fresh process. Cached like the torch probes."""
    require_ort(need_onnx=True)
    signatures = [arch[i].signature() for i in range(lo, hi)]
    from ..memory.probe_cache import machine_key
    ident = {"ort_probe": ORT_PROBE_FORMAT, "ort": ort_version(),
             "optimizer": cfg.optimizer, "head": cfg.head, "classes": num_classes,
             "blocks": signatures, "batches": sorted(batches), "width": cfg.width,
             "model": cfg.model, "in_shape": list(in_shape),
             "label_smoothing": float(cfg.label_smoothing)}
    key = machine_key(ident, threads)
    cache, store = _probe_cache()
    if key in cache:
        return {int(b): v for b, v in cache[key].items()}
    art = _cached_artifacts_in_child(cfg, in_shape, num_classes, lo, hi, signatures)
    result = _probe_worker(cfg, art, batches, threads)
    peaks = {r["batch"]: r["peak_bytes"] - result["baseline_bytes"] for r in result["results"]}
    store({key: {str(b): v for b, v in peaks.items()}})
    return peaks


def _cached_artifacts_in_child(cfg, in_shape, num_classes, lo, hi, signatures) -> Path:
    """The probe artifacts of a module structure, built (once, cached) by a torch + onnx child:
    the planning process stays torch-free, so the build never sits beside another child."""
    from ..backends.ort_artifacts import cached_artifact_path
    from ..backends.ort_artifacts import publish_cached
    path = cached_artifact_path(cfg, in_shape, num_classes, lo, hi, signatures)
    if path is not None:
        return path
    result, _, _ = export_and_finish("probe-artifacts", {
        "config": cfg.to_json(), "in_shape": list(in_shape), "num_classes": int(num_classes),
        "lo": lo, "hi": hi, "signatures": signatures}, cfg)
    return publish_cached(Path(result["tmp"]), Path(result["path"]))


def ort_saved_bytes(cfg, in_shape, num_classes, arch, lo, hi, batches, threads) -> int:
    """Per-sample bytes that stay alive through a training step of blocks lo..hi-1, for the
    planner's composition rule. ORT has no saved-tensor hooks, so this is the slope of the
    trainer's measured peak between two batch sizes: it includes the block's transient buffers
    too, i.e. it over-counts (the planner then probes each chosen module directly anyway)."""
    peaks = probe_ort_module(cfg, in_shape, num_classes, arch, lo, hi, batches, threads)
    if len(peaks) < 2:
        return 0
    (b1, p1), (b2, p2) = sorted(peaks.items())[:2]
    return max(0, int((p2 - p1) / (b2 - b1)))


# --- summary ------------------------------------------------------------------------------------------

def add_ort_summary(summary: dict, run, plan: dict, backend, orchestrator_peak: int) -> None:
    """The ORT-specific figures: per-module trainer peaks, the orchestrator's, and the
    preparation phase's, each measured in its own process."""
    modules = run.manifest["modules"]
    orchestrator = max(orchestrator_peak, run.manifest.get("peak_rss_bytes_so_far", 0))
    worst = 0
    for row in summary["modules"]:
        peaks = modules.get(str(row["module"]), {}).get("ort_worker_peak_bytes", {})
        row["orchestrator_peak_bytes"] = row.get("measured_peak_bytes")
        row["worker_train_peak_bytes"] = peaks.get("train")
        row["worker_features_peak_bytes"] = peaks.get("features")
        worker = max([v for v in peaks.values() if v] or [0])
        worst = max(worst, worker)
        # the trainer and the orchestrator are alive together: the estimate plans for the sum
        row["measured_peak_bytes"] = worker + orchestrator if worker else None
        if row.get("estimated_peak_bytes") and row["measured_peak_bytes"]:
            row["estimate_error"] = ((row["estimated_peak_bytes"] - row["measured_peak_bytes"])
                                     / row["measured_peak_bytes"])
    total = orchestrator + worst
    summary["peak_rss_bytes"] = total
    summary["peak_rss_method"] = (
        "training phase: peak RSS of the torch-free orchestrator (its VmHWM) + the largest trainer "
        "process peak (the trainer's VmHWM, polled from outside by run_measured); the "
        "two are alive at the same time, so this bounds their sum. The set-up children (torch "
        "export, then the torch-free graph builder) are reported under ort.preparation; the "
        "whole command, set-up included, under whole_command.")
    budget = plan.get("budget_bytes")
    summary["over_budget"] = bool(budget and total > budget)
    summary["ort"] = {
        "orchestrator_peak_rss_bytes": orchestrator,
        "max_worker_peak_rss_bytes": worst,
        "training_phase_peak_rss_bytes": total,
        "preparation": run.manifest.get("ort", {}).get("preparation"),
        "artifact_rebuild_peaks_bytes": run.manifest.get("ort", {}).get("rebuild_peaks_bytes", []),
        "workers": backend.workers,
        "torch_in_orchestrator": "torch" in sys.modules and sys.modules["torch"] is not None,
        "versions": {"onnxruntime": ort_version(), "python": platform.python_version()},
        "optimizer": ("torch's SGD/AdamW update rules in numpy on ORT's gradients (ORT 1.19's "
                      "SGD has no momentum or weight decay)"),
    }
    summary["environment"]["onnxruntime"] = ort_version()


def format_ort_summary(summary: dict) -> str:
    from ..budget import format_size
    ort = summary["ort"]
    prep = ort.get("preparation") or {}
    text = (f"peak RSS = torch-free orchestrator {format_size(ort['orchestrator_peak_rss_bytes'])} + "
            f"largest ONNX Runtime trainer {format_size(ort['max_worker_peak_rss_bytes'])}")
    if prep.get("peak_rss_bytes"):
        text += (f"; set-up before training (torch export, then the torch-free graph builder, "
                 f"each its own child within the budget): "
                 f"{format_size(prep['peak_rss_bytes'])}")
    return text


class OrtMemoryModel(MemoryModel):
    """The orchestrator + one ONNX Runtime trainer, each measured in fresh processes."""
    name = "ort"
    framework_what = "(torch-free ORT processes)"
    smaller_framework_hint = "use "

    def probe_module(self, cfg, in_shape, num_classes, arch, lo, hi, batches, threads):
        return probe_ort_module(cfg, in_shape, num_classes, arch, lo, hi, batches, threads)

    def saved_bytes(self, cfg, in_shape, num_classes, arch, lo, hi, batches, threads):
        # no saved-tensor hooks in ORT: the measured per-sample slope
        return ort_saved_bytes(cfg, in_shape, num_classes, arch, lo, hi, batches, threads)

    def loop_allowance_bytes(self, cfg, module_bytes: float) -> int:
        return ORT_LOOP_ALLOWANCE_BYTES

    def framework_bytes(self, cfg, dataset, description=None) -> int:
        return ort_framework_bytes(cfg, dataset)

    def limits_children(self, description) -> bool:
        return True  # the ORT orchestrator never holds torch: its children always share

    def later_module_image_bytes(self, cfg, dataset) -> int:
        # The ORT trainer of a later module reads module lo-1's feature cache, never the images
        # (ort_worker loads them for module 0 only; the orchestrator holds labels only).
        return int(sum(a.images.nbytes for a in (dataset.train, dataset.val, dataset.test)))

    def check_framework(self, cfg, budget_bytes, usable_bytes, framework_bytes) -> None:
        if usable_bytes > framework_bytes:
            return
        from ..budget import format_size
        from ..errors import UserError
        from ..memory.budgeted import SAFETY
        raise UserError(
            f"The memory budget {format_size(budget_bytes)} is smaller than what the ONNX "
            f"Runtime backend holds before training anything: {format_size(framework_bytes)} (its "
            f"torch-free orchestrator and trainer processes, and the dataset). Give at least "
            f"{format_size(framework_bytes / SAFETY)} plus the model with --mem-budget, or use a "
            f"smaller --train-fraction. Nothing was written.")

    def plan_note(self, cfg, dataset, description) -> str:
        return ort_plan_note(cfg, dataset)


# --- the target -------------------------------------------------------------------------------------

class OrtTarget(Target):
    name = "ort"
    schemes = ("sequential", "multilap")
    always_driven = True

    def check_available(self, cfg, *, setup: bool = False) -> None:
        try:
            require_ort(need_onnx=setup)  # the set-up children also need onnx
        except UserError:
            reason = no_training_build()
            if reason is None:
                raise  # installable here: require_ort's message says how
            # Where no build exists, "install the extra" would send the user in a circle.
            raise UserError(f"--backend ort cannot train on this machine: {reason}. Use "
                            f"--backend torch (the default), which trains the same module-wise "
                            f"schemes here; its run directories are the ones --backend ort writes, "
                            f"and `edge-trgl export` / `evaluate` / `predict` need only the "
                            f"inference build of onnxruntime.") from None

    def validate(self, cfg) -> None:
        from ..errors import UserError
        if cfg.device == "cuda":
            raise UserError("--backend ort runs on the CPU only; use --backend torch with --device cuda.")
        super().validate(cfg)
        if cfg.compile:
            raise UserError("--compile compiles the PyTorch training step; --backend ort trains "
                            "without torch. Leave --compile out with --backend ort.")
        if cfg.scheme not in self.schemes:
            raise UserError(
                f"--backend ort trains one module at a time, so it supports --scheme sequential and "
                f"multilap, not {cfg.scheme}; use --backend torch for {cfg.scheme}.")

    def memory_model(self):
        return OrtMemoryModel()

    def make_backend(self, cfg):
        from ..backends.ort_backend import OrtBackend
        return OrtBackend(cfg)

    def add_summary_fields(self, summary, *, run, plan, watchdog, backend=None,
                           orchestrator_peak_bytes=0) -> None:
        add_ort_summary(summary, run, plan, backend, orchestrator_peak_bytes)

    def summary_lines(self, summary) -> list[str]:
        return [format_ort_summary(summary)] if summary.get("ort") else []

    def drive(self, cfg, *, plan, fingerprint, resume, budget_bytes, guard, prepare_only: bool):
        from ..backends.ort_backend import run_ort
        from ..driver import Outcome
        summary, run, backend, orchestrator_peak = run_ort(cfg, plan=plan, resume=resume,
                                                           prepare_only=prepare_only,
                                                           make_watchdog=self.make_watchdog)
        if backend is None:  # prepared only, or a finished run's summary shown again
            return Outcome(summary, Path(run.root), orchestrator_peak, 0, per_module_combined=True)
        self.add_summary_fields(summary, run=run, plan=plan or run.read_json("plan.json"),
                                watchdog=None, backend=backend,
                                orchestrator_peak_bytes=orchestrator_peak)
        run.write_json("summary.json", summary)
        run.manifest["status"] = "complete"
        run.save()
        ort = summary["ort"]
        worst = max([ort.get("max_worker_peak_rss_bytes") or 0,
                     (ort.get("preparation") or {}).get("peak_rss_bytes") or 0,
                     *ort.get("artifact_rebuild_peaks_bytes", [])])
        return Outcome(summary, Path(run.root), ort["orchestrator_peak_rss_bytes"], worst,
                       per_module_combined=True)


TARGET = OrtTarget()
