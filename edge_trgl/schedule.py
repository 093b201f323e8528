"""The learning rate at each step: `lr_at(cfg, module, epoch, step, ...)`, asked by the one
training loop (loop.py) before every step, on every target.

Today the rate is --lr, constant (the recipe every committed result used). A schedule (warm-up,
cosine, step decay, per-module rates) is a function of these arguments and goes here; every
engine applies what this returns (Engine.set_lr), so nothing else changes for it."""

from __future__ import annotations


def lr_at(cfg, *, module: int, epoch: int, step: int, epochs: int, steps_per_epoch: int) -> float:
    """The learning rate of optimizer step `step` (0-based) of epoch `epoch` (0-based, of
    `epochs`) while module `module` trains (0 for the resident schemes)."""
    return float(cfg.lr)
