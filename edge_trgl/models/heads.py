"""Auxiliary classifier heads that turn a block output into logits ``(B, num_classes)``.

``HEADS = ("conv", "pooled-conv", "strided-conv", "linear", "mlp")``; "conv" is the default.

For image features ``(C, H, W)``:

* ``"conv"`` (the TRGL authors' "1CNN"): Conv2d(C, C, 3, pad 1, no bias) - ReLU -
  adaptive average pool to 2x2 - flatten - BatchNorm1d(4C) - Linear(4C, classes).
* ``"pooled-conv"``: the conv head on the map average-pooled to 8x8 first (maps of 8x8 or
  smaller are left as they are). Its conv costs 1/16 of the conv head's at 32x32 and 1/4 at
  16x16: with one block per module the conv head's conv costs half the block's two.
* ``"strided-conv"``: the conv head with its conv at stride 2 (maps of 4x4 or more): a quarter of
  the conv head's conv at every map size, and unlike pooled-conv it sees every pixel of a wide map.
  Measured worse than both (recipe suite, ResNet-20, CIFAR-10 10 %: block-wise validation median
  56.0 % against conv 58.2 % and pooled-conv 57.4 %, 3 seeds) and no faster than pooled-conv.
* ``"linear"``: global average pool - Linear(C, classes).
* ``"mlp"``: global average pool - Linear(C, hidden) - ReLU - Linear(hidden, classes), with
  ``hidden = max(C, num_classes)``.

For token features ``(tokens, dim)`` (ViT), where a 3x3 conv has no meaning:

* ``"conv"`` (and ``"pooled-conv"``, ``"strided-conv"``): LayerNorm - Linear(dim, dim) applied per token - ReLU -
  mean over tokens - Linear(dim, classes). The per-token Linear plays the role of the 1CNN's conv (one learned
  mixing layer + non-linearity before pooling).
* ``"linear"``: LayerNorm - mean over tokens - Linear(dim, classes).
* ``"mlp"``: LayerNorm - mean over tokens - Linear(dim, hidden) - ReLU - Linear(hidden,
  classes), ``hidden = max(dim, num_classes)``.

The 2x2 adaptive pool is computed from the static input size with slices and means (same
bins as ``nn.AdaptiveAvgPool2d``) because the TorchScript ONNX exporter refuses adaptive
pooling when the map size is not a multiple of the output size (e.g. 7x7 on MNIST).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import UserError
from .blocks import init_weights, make_generator

__all__ = ["HEADS", "make_head", "StaticAdaptiveAvgPool2d"]

HEADS: tuple[str, ...] = ("conv", "pooled-conv", "strided-conv", "linear", "mlp")
CONV_HEADS = ("conv", "pooled-conv", "strided-conv")

# pooled-conv: maps wider than this are average-pooled to it before the head's conv
POOLED_SIDE = 8
# strided-conv: maps at least this wide get the stride-2 conv (a 4x4 map still gives the 2x2 pool
# one output per bin)
STRIDED_MIN_SIDE = 4


def _bins(size: int, out: int) -> list[tuple[int, int]]:
    """The ``[start, end)`` windows of adaptive pooling (PyTorch's floor/ceil rule)."""
    return [((i * size) // out, -((-(i + 1) * size) // out)) for i in range(out)]


class StaticAdaptiveAvgPool2d(nn.Module):
    """``nn.AdaptiveAvgPool2d(out)`` for a fixed input ``(H, W)``, ONNX-exportable for any size."""

    def __init__(self, in_hw: tuple[int, int], out: int = 2):
        super().__init__()
        self.in_hw = (int(in_hw[0]), int(in_hw[1]))
        self.out = int(out)
        h, w = self.in_hw
        self.uniform = h % out == 0 and w % out == 0
        self.hbins = _bins(h, out)
        self.wbins = _bins(w, out)

    def forward(self, x: Tensor) -> Tensor:
        h, w = self.in_hw
        if self.uniform:
            k = (h // self.out, w // self.out)
            return F.avg_pool2d(x, kernel_size=k, stride=k)
        rows = [x[:, :, a:b, :].mean(dim=2, keepdim=True) for a, b in self.hbins]
        x = torch.cat(rows, dim=2)
        cols = [x[:, :, :, a:b].mean(dim=3, keepdim=True) for a, b in self.wbins]
        return torch.cat(cols, dim=3)


class _GlobalAvgPool(nn.Module):
    """Mean over every axis after the channel axis: ``(B, C, H, W)`` -> ``(B, C)``."""

    def forward(self, x: Tensor) -> Tensor:
        return x.mean(dim=(2, 3))


class _TokenMean(nn.Module):
    """``(B, tokens, dim)`` -> ``(B, dim)``."""

    def forward(self, x: Tensor) -> Tensor:
        return x.mean(dim=1)


def _image_head(name: str, c: int, h: int, w: int, classes: int) -> nn.Module:
    if name in CONV_HEADS:
        pool, stride = [], 1
        if name == "pooled-conv" and min(h, w) > POOLED_SIDE:
            pool = [StaticAdaptiveAvgPool2d((h, w), POOLED_SIDE)]
            h = w = POOLED_SIDE
        if name == "strided-conv" and min(h, w) >= STRIDED_MIN_SIDE:
            stride = 2
            h, w = (h + 1) // 2, (w + 1) // 2
        return nn.Sequential(
            *pool,
            nn.Conv2d(c, c, 3, stride=stride, padding=1, bias=False),
            nn.ReLU(),
            StaticAdaptiveAvgPool2d((h, w), 2),
            nn.Flatten(1),
            nn.BatchNorm1d(4 * c),
            nn.Linear(4 * c, classes),
        )
    if name == "linear":
        return nn.Sequential(_GlobalAvgPool(), nn.Linear(c, classes))
    hidden = max(c, classes)
    return nn.Sequential(
        _GlobalAvgPool(), nn.Linear(c, hidden), nn.ReLU(), nn.Linear(hidden, classes)
    )


def _token_head(name: str, dim: int, classes: int) -> nn.Module:
    if name in CONV_HEADS:
        return nn.Sequential(
            nn.LayerNorm(dim), nn.Linear(dim, dim), nn.ReLU(), _TokenMean(), nn.Linear(dim, classes)
        )
    if name == "linear":
        return nn.Sequential(nn.LayerNorm(dim), _TokenMean(), nn.Linear(dim, classes))
    hidden = max(dim, classes)
    return nn.Sequential(
        nn.LayerNorm(dim), _TokenMean(), nn.Linear(dim, hidden), nn.ReLU(),
        nn.Linear(hidden, classes),
    )


def make_head(
    name: str,
    in_shape: tuple[int, ...],
    num_classes: int,
    seed: int | None = None,
) -> nn.Module:
    """A head mapping ``(B, *in_shape)`` to logits ``(B, num_classes)``.

    ``in_shape`` is ``(C, H, W)`` for conv features or ``(tokens, dim)`` for ViT tokens.
    Weights are initialised like the blocks (orthogonal, gain 0.1) from a local generator
    seeded with ``seed`` (OS entropy when None); the global RNG is not touched.
    """
    key = str(name).strip().lower()
    if key not in HEADS:
        raise UserError(
            f"Unknown auxiliary head {name!r}. Valid heads are: {', '.join(HEADS)} "
            f"(\"conv\", the authors' 1CNN head, is the default)."
        )
    shape = tuple(int(s) for s in in_shape)
    if len(shape) not in (2, 3) or min(shape) < 1:
        raise UserError(
            f"Cannot build a head for feature shape {tuple(in_shape)}: expected (C, H, W) "
            f"for convolutional features or (tokens, dim) for transformer tokens, all positive."
        )
    if int(num_classes) < 1:
        raise UserError(f"num_classes must be a positive integer, got {num_classes!r}.")
    # Keep the global RNG untouched by the layers' default initialisation.
    with torch.random.fork_rng(devices=[]):
        if len(shape) == 3:
            head = _image_head(key, *shape, int(num_classes))
        else:
            head = _token_head(key, shape[1], int(num_classes))
    init_weights(head, make_generator(seed))
    return head
