"""The learning rate at each step: `lr_at(cfg, module, lap, epoch, step, ...)`, asked by the one
training loop (loop.py) before every step, on every target (torch CPU/CUDA, the ORT worker's numpy
optimizers: Engine.set_lr).

It is a pure function of where training is, so a resumed run continues with exactly the rate it
would have had (a checkpoint needs no schedule state). What a schedule spans:
- sequential: each module's own epochs (module k restarts the schedule);
- multilap: a module's epochs across all its laps (lap l continues where lap l-1 stopped);
- e2e / parallel: the whole run (module 0, lap 0).
--warmup-epochs ramps the rate linearly over the first steps of that span (lr/W, 2 lr/W, ..., lr
for W warm-up steps), then the schedule runs over the rest; by default one epoch where the span
has more than one. The defaults (cosine, that warm-up, --lr 0.05) were chosen on validation
accuracy: benchmarks/results/recipe/.
"""

from __future__ import annotations

import math


def lr_at(cfg, *, module: int, epoch: int, step: int, epochs: int, steps_per_epoch: int,
          lap: int = 0) -> float:
    """The learning rate of optimizer step `step` (0-based) of epoch `epoch` (0-based, of the
    `epochs` of this lap) of lap `lap` while module `module` trains."""
    laps = cfg.laps if cfg.scheme == "multilap" else 1
    total = max(1, laps * epochs * steps_per_epoch)
    done = (lap * epochs + epoch) * steps_per_epoch + step
    warmup_epochs = cfg.warmup_epochs
    if warmup_epochs is None:  # the default: one epoch, where the span has more than one
        warmup_epochs = 1.0 if laps * epochs > 1 else 0.0
    warmup = int(round(warmup_epochs * steps_per_epoch))
    if done < warmup:
        return cfg.lr * (done + 1) / warmup
    if cfg.lr_schedule == "constant":
        return float(cfg.lr)
    progress = (done - warmup) / max(1, total - warmup)   # 0 at the first step after warm-up
    if cfg.lr_schedule == "cosine":
        return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * progress))
    if cfg.lr_schedule == "step":
        return cfg.lr * 0.1 ** ((progress >= 0.5) + (progress >= 0.75))
    raise ValueError(f"unknown learning-rate schedule {cfg.lr_schedule!r}")
