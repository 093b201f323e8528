"""Abnormal inputs that are not attacks: noise, and images from another distribution.

  gauss     each clean image plus Gaussian pixel noise of std `sigma` (pixel units of [0, 1]),
            clipped: a degraded camera frame of the right content
  uniform   images of uniform random pixels: no content at all
  ood       images of another dataset, resized (bilinear) and converted to the model's channels
            (grey -> replicated to RGB, RGB -> luminance): MNIST digits for a CIFAR-10 or
            synthetic model, CIFAR-10 for an MNIST one, read from --ood-dir; without a directory,
            `smooth` fields (below) stand in, and the report says so
  smooth    random smooth colour fields (4 x 4 uniform colours upsampled bilinearly), generated
            by our own code: natural-image-like low frequencies, no objects
"""

from __future__ import annotations

import numpy as np

from ..errors import UserError

from .names import OOD_SOURCES


def noisy(images: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = np.asarray(images, np.float32) + rng.normal(0.0, 255.0 * sigma, np.shape(images))
    return np.clip(x, 0, 255).astype(np.float32)


def uniform_images(n: int, in_shape, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, (n, *in_shape)).astype(np.float32)


def _resize(images: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    import torch
    import torch.nn.functional as F
    x = torch.from_numpy(np.asarray(images, np.float32))
    if tuple(x.shape[2:]) != tuple(hw):
        x = F.interpolate(x, size=tuple(hw), mode="bilinear", align_corners=False)
    return x.clamp(0, 255).numpy()


def smooth_fields(n: int, in_shape, seed: int) -> np.ndarray:
    c, h, w = in_shape
    coarse = np.random.default_rng(seed).uniform(0, 255, (n, c, 4, 4)).astype(np.float32)
    return _resize(coarse, (h, w))


def convert(images: np.ndarray, in_shape) -> np.ndarray:
    """uint8/float (N, C', H', W') -> float32 (N, C, H, W) pixels of the model's shape."""
    c, h, w = in_shape
    x = _resize(images, (h, w))
    if x.shape[1] == c:
        return x
    if x.shape[1] == 1:
        return np.repeat(x, c, axis=1)
    if c == 1 and x.shape[1] == 3:  # ITU-R 601 luminance
        return (0.299 * x[:, :1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]).astype(np.float32)
    raise UserError(f"Cannot convert {x.shape[1]}-channel images to the model's {c} channels.")


def ood_images(source: str, n: int, in_shape, seed: int, data_dir: str | None) -> np.ndarray:
    """`n` images of `source`, as the model's input shape (float32 pixels 0..255)."""
    if source == "smooth":
        return smooth_fields(n, in_shape, seed)
    if source not in OOD_SOURCES:
        raise UserError(f"--ood {source!r} is not one of {', '.join(OOD_SOURCES)}.")
    if not data_dir:
        raise UserError(f"--ood {source} needs --ood-dir, the folder of the {source} files (e.g. "
                        f"../shared/data/{'mnist' if source == 'mnist' else 'cifar-10-batches-py'}"
                        f"); or use --ood smooth, which needs no files.")
    from ..data import load_dataset
    test = load_dataset(source, data_dir, seed=seed, val_fraction=0.0).test
    pick = np.random.default_rng(seed).permutation(len(test.labels))[:n]
    return convert(test.images[np.sort(pick)], in_shape)
