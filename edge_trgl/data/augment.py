"""Vectorised numpy data augmentation and normalisation."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

__all__ = ["augment_batch", "normalize"]


def augment_batch(
    images: np.ndarray, rng: np.random.Generator, pad: int = 4, flip: bool = True
) -> np.ndarray:
    """Random crop with zero padding plus random horizontal flip, per image.

    ``images`` is (B, C, H, W) (normally uint8). Each image is zero-padded by ``pad`` pixels on
    every side and an H x W window is cropped at a uniformly random offset in ``[0, 2*pad]`` along
    each axis (so the content shifts by -pad..pad pixels); then, when ``flip``, it is mirrored
    left-right with probability 1/2. Returns a new C-contiguous array of the same shape and dtype;
    the input is not modified. The random draws come only from ``rng``.
    """
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"augment_batch expects (B, C, H, W) images, got shape {images.shape}")
    pad = int(pad)
    if pad < 0:
        raise ValueError(f"augment_batch pad must be >= 0, got {pad}")
    b, c, h, w = images.shape
    if pad > 0:
        padded = np.zeros((b, c, h + 2 * pad, w + 2 * pad), dtype=images.dtype)
        padded[:, :, pad : pad + h, pad : pad + w] = images
        offsets = rng.integers(0, 2 * pad + 1, size=(b, 2))
        windows = sliding_window_view(padded, (h, w), axis=(2, 3))  # (B, C, 2p+1, 2p+1, H, W)
        # Advanced indices on axes 0, 2, 3 separated by a slice: result is (B, C, H, W).
        out = windows[np.arange(b), :, offsets[:, 0], offsets[:, 1]]
    else:
        out = images.copy()
    if flip:
        mirror = rng.random(b) < 0.5
        out[mirror] = out[mirror, :, :, ::-1]
    return np.ascontiguousarray(out)


def normalize(
    images: np.ndarray, mean: Sequence[float] | float, std: Sequence[float] | float
) -> np.ndarray:
    """``(images / 255 - mean) / std`` per channel, as float32 (B, C, H, W) or (C, H, W)."""
    images = np.asarray(images)
    if images.ndim not in (3, 4):
        raise ValueError(f"normalize expects (B, C, H, W) or (C, H, W) images, got {images.shape}")
    c = images.shape[-3]
    mean_a, std_a = np.asarray(mean, dtype=np.float64).reshape(-1), np.asarray(std, dtype=np.float64).reshape(-1)
    if mean_a.size not in (1, c) or std_a.size not in (1, c):
        raise ValueError(
            f"normalize needs one mean/std per channel ({c}), got mean={mean!r}, std={std!r}"
        )
    mean_a, std_a = np.broadcast_to(mean_a, (c,)), np.broadcast_to(std_a, (c,))
    if np.any(std_a <= 0):
        raise ValueError(f"normalize std must be positive, got {std!r}")
    scale = (1.0 / (255.0 * std_a)).astype(np.float32)[:, None, None]
    shift = (mean_a / std_a).astype(np.float32)[:, None, None]
    out = images.astype(np.float32)
    out *= scale
    out -= shift
    return out
