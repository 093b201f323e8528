"""What a backend must do for the module-wise (sequential / multi-lap) schemes. numpy-only."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Protocol


@dataclass
class ModuleTask:
    """One module's work in one lap: train it, then write its outputs to the feature cache."""
    k: int
    lap: int
    lo: int                        # first block index
    hi: int                        # one past the last block index
    num_modules: int
    epochs: int
    energy_weight: float | None    # None: the adaptive weight (trgl.AdaptiveWeight)
    batch_size: int
    views: int                     # augmented train views cached for the next module (0 if last)
    input_views: int               # views available in the previous module's cache (k > 0)
    harvested: int = 0             # of `views`, how many its last epochs of training write

    @property
    def is_last(self) -> bool:
        return self.k == self.num_modules - 1

    def to_json(self) -> dict:
        return asdict(self)


class Backend(Protocol):
    name: str

    def train_module(self, ctx, task: ModuleTask) -> dict:
        """Train module task.k from its stored weights (resuming from the manifest's checkpoint
        if there is one), checkpoint every epoch, write the trained blocks/head/optimizer state
        back to the store. Returns per-module training figures."""

    def write_features(self, ctx, task: ModuleTask) -> dict:
        """Pass the train views (unless last), val and test sets through the trained module,
        write them to the feature cache, return {"val_acc", "test_acc"}."""
