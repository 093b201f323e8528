"""Gradient checkpointing's segments for `--scheme e2e --checkpoint-segments N|auto`: how many,
and which blocks each holds. torch-free: the planner needs them too (modules.forward_blocks runs
them)."""

from __future__ import annotations

import numpy as np


def checkpoint_segment_count(cfg, num_blocks: int) -> int | None:
    """How many segments --checkpoint-segments asks for with this many blocks (None: no
    checkpointing; 'auto' (0): ceil(sqrt(blocks)), the classic square-root rule)."""
    import math
    if cfg.scheme != "e2e" or cfg.checkpoint_segments is None or num_blocks < 2:
        return None
    wanted = cfg.checkpoint_segments or math.ceil(math.sqrt(num_blocks))
    return max(1, min(int(wanted), num_blocks))


def segment_bounds(num_blocks: int, segments: int) -> list[tuple[int, int]]:
    """Contiguous, balanced block ranges of the segments."""
    sizes = [len(a) for a in np.array_split(np.arange(num_blocks), segments)]
    bounds = np.cumsum([0, *sizes]).tolist()
    return [(lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:]) if hi > lo]
