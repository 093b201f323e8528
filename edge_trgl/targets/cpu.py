"""`--device cpu` (the default): PyTorch on the CPU. Everything is the base target's: the torch
module-wise worker (backends/torch_backend.py), the RSS watchdog, and the planner's base memory
model (memory/model.py: torch probe children, host RSS)."""

from __future__ import annotations

from .base import Target


class CpuTarget(Target):
    name = "cpu"


TARGET = CpuTarget()
