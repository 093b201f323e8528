"""The targets a run trains on: `cpu` (PyTorch on the CPU), `cuda` (PyTorch on an NVIDIA GPU,
Jetson-class boards included) and `ort` (ONNX Runtime training on the CPU, torch-free trainers).

One file per target holds everything that differs between them: its availability check, its
configuration rules, the module-wise worker it runs, its memory model for the planner, its
watchdog and its summary fields (base.py says what a target provides). Nothing outside this
package asks which target a run is on; a new target is a new file here plus one line below.
"""

from __future__ import annotations

import json
from pathlib import Path

NAMES = ("cpu", "cuda", "ort")


def target_name(cfg) -> str:
    """The target of a configuration: the backend where it is not torch, else the device."""
    return "ort" if cfg.backend == "ort" else cfg.device


def get_target(cfg_or_name):
    """The Target for a TrainConfig or a target name."""
    name = cfg_or_name if isinstance(cfg_or_name, str) else target_name(cfg_or_name)
    from . import cpu, cuda, ort
    targets = {"cpu": cpu.TARGET, "cuda": cuda.TARGET, "ort": ort.TARGET}
    if name not in targets:
        from ..errors import UserError
        raise UserError(f"Unknown target {name!r}; choose one of {', '.join(NAMES)}.")
    return targets[name]


def stored_target_name(run_dir) -> str | None:
    """The target a run directory was trained on, read from its config.json without touching the
    run (None when it cannot be read: whoever opens the run reports the damage)."""
    try:
        stored = json.loads((Path(run_dir) / "config.json").read_text())
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(stored, dict):
        return None
    if stored.get("backend") == "ort":
        return "ort"
    return "cuda" if stored.get("device") == "cuda" else "cpu"


def validate(cfg):
    """The whole configuration check: the target-independent fields (TrainConfig.validate),
    then the target's own rules. Returns cfg."""
    cfg.validate()
    get_target(cfg).validate(cfg)
    return cfg


def summary_lines(summary: dict) -> list[str]:
    """The summary lines of the target a run summary belongs to (its backend / device fields)."""
    name = "ort" if summary.get("backend") == "ort" else summary.get("device", "cpu")
    return get_target(name if name in NAMES else "cpu").summary_lines(summary)
