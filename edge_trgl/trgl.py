"""The TRGL module loss: cross-entropy of the auxiliary head plus 1/(2 tau_k) times the module's
kinetic energy (the sum over its blocks of the mean squared residual-branch output; blocks compute
their own energy in forward, see models/blocks.py).

tau = inf gives weight 0: plain greedy module-wise training.
"""

from __future__ import annotations

import math

# torch is imported inside module_loss only: the tau schedule and the energy weight are also
# used by the torch-free ONNX Runtime orchestrator and worker (backends/ort_*.py).


def tau_schedule(tau: float, num_modules: int, varying: bool = True) -> list[float]:
    """Per-module tau. "Varying tau" (the authors' default) halves tau for the first half of the
    modules, i.e. modules k < K/2, which for odd K puts the middle module in the first half
    (K=5: modules 0,1,2 get tau/2) -- the authors' comparison with K/2 as a float."""
    if num_modules < 1:
        raise ValueError("need at least one module")
    if not tau > 0:
        raise ValueError(f"tau must be positive (or inf), got {tau}")
    return [tau / 2 if (varying and k < num_modules / 2) else tau for k in range(num_modules)]


def energy_weight(tau_k: float) -> float:
    """1/(2 tau_k); 0 for tau_k = inf (greedy)."""
    return 0.0 if math.isinf(tau_k) else 1.0 / (2.0 * tau_k)


class AdaptiveWeight:
    """The authors' adaptive alternative to a fixed tau: weight 1/l where l accumulates the
    current cross-entropy every `interval` iterations, so the regulariser relaxes as training
    accumulates loss history. l starts at `initial` so the first weight is finite."""

    def __init__(self, interval: int = 50, initial: float = 1.0):
        self.interval = interval
        self.accumulated = initial
        self.steps = 0

    @property
    def weight(self) -> float:
        return 1.0 / self.accumulated

    def update(self, ce_value: float) -> None:
        self.steps += 1
        if self.steps % self.interval == 0:
            self.accumulated += float(ce_value)

    def state(self) -> dict:
        return {"accumulated": self.accumulated, "steps": self.steps}

    def load_state(self, state: dict) -> None:
        self.accumulated = float(state["accumulated"])
        self.steps = int(state["steps"])


def module_loss(logits: torch.Tensor, targets: torch.Tensor, energy: torch.Tensor,
                weight: float, label_smoothing: float = 0.0):
    """Return (total loss, cross-entropy) for one module."""
    import torch.nn.functional as F
    ce = F.cross_entropy(logits, targets, label_smoothing=label_smoothing)
    if weight == 0.0:
        return ce, ce
    return ce + weight * energy, ce


def module_weights(cfg, num_modules: int) -> list[float | None]:
    """Each module's energy weight from --tau / --tau-mode (None: the adaptive weight)."""
    if cfg.tau_mode == "adaptive":
        return [None] * num_modules
    taus = tau_schedule(cfg.tau, num_modules, varying=cfg.tau_mode == "varying")
    return [energy_weight(t) for t in taus]
