"""Per-epoch training statistics, shared by the torch backend and the torch-free ORT worker."""

from __future__ import annotations

import time


class EpochMeter:
    """Sample-weighted means of one epoch's losses and accuracy, and its throughput. The values
    may be Python/numpy numbers or 0-d torch tensors: tensors are summed where they live and read
    once in `stats()`, so a CUDA loop does not wait for the GPU at every step to log."""

    def __init__(self):
        self.loss = self.ce = self.energy = 0.0
        self.correct = self.seen = 0
        self.start_s = time.perf_counter()

    def add(self, loss: float, ce: float, energy: float, correct: int, n: int) -> None:
        self.loss += loss * n
        self.ce += ce * n
        self.energy += energy * n
        self.correct += correct
        self.seen += n

    def stats(self) -> dict:
        seconds = time.perf_counter() - self.start_s
        seen = max(1, self.seen)
        return {"train_loss": float(self.loss) / seen, "train_ce": float(self.ce) / seen,
                "energy": float(self.energy) / seen, "train_acc": int(self.correct) / seen,
                "seconds": seconds, "samples_per_s": self.seen / max(seconds, 1e-9)}
