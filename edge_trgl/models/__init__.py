"""Model zoo for TRGL: every model is a list of :class:`Block` (output + kinetic energy).

Names (case-insensitive):

* ``resnetN`` with ``N = 6n + 2``, ``n >= 1`` (``resnet20/32/44/56/110`` listed in
  :data:`MODELS`; any valid depth such as ``resnet8`` or ``resnet1202`` works): CIFAR ResNet,
  ``1 + 3n`` blocks (stem + BasicBlocks).
* ``vgg8``, ``vgg11``, ``vgg13``, ``vgg16``, or a custom config ``vgg:64,64,M,128,M``: one
  block per conv layer, pools folded into the preceding block.
* ``vit`` (depth 6) or ``vitN`` (depth ``N >= 1``): patch embedding + ``N`` transformer
  blocks, patch 4, dim ``64*width``, 4 heads, MLP ratio 2.

See :mod:`edge_trgl.models.blocks` for the definition of each block's energy (shape-changing
non-residual blocks, i.e. the ResNet stem, channel-changing/pooling VGG layers and the ViT
patch embedding, have energy 0).
"""

from __future__ import annotations

import math
import re
from typing import Any

import torch

from ..errors import UserError
from .blocks import Block, init_weights, make_generator, run_blocks
from .heads import HEADS, make_head
from .resnet import build_resnet, resnet_n
from .vgg import VGG_CONFIGS, build_vgg, check_vgg_config, parse_vgg_config
from .vit import build_vit

__all__ = [
    "MODELS",
    "HEADS",
    "Block",
    "build_blocks",
    "describe",
    "make_head",
    "run_blocks",
]

MODELS: list[str] = [
    "resnet20",
    "resnet32",
    "resnet44",
    "resnet56",
    "resnet110",
    *VGG_CONFIGS.keys(),
    "vit",
]

_VALID_TEXT = (
    "Valid models are: " + ", ".join(MODELS) + "; also any 'resnetN' with N = 6n+2 "
    "(8, 14, 20, 26, 32, ...), 'vitN' for a ViT of depth N >= 1, and 'vgg:' followed by a "
    "comma-separated VGG config such as 'vgg:64,64,M,128,M'."
)


def _bad_model(name: str, why: str) -> UserError:
    return UserError(f"Unknown or invalid model {name!r}: {why}. {_VALID_TEXT}")


def _check_inputs(in_shape: Any, num_classes: Any, width: Any, seed: Any) -> tuple[int, int, int]:
    try:
        shape = tuple(int(s) for s in in_shape)
    except (TypeError, ValueError):
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise UserError(
            f"Input shape {in_shape!r} is not valid: expected three positive integers "
            f"(channels, height, width), e.g. (3, 32, 32) for CIFAR or (1, 28, 28) for MNIST."
        )
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise UserError(f"num_classes must be a positive integer, got {num_classes!r}.")
    try:
        w = float(width)
    except (TypeError, ValueError):
        w = float("nan")
    if not math.isfinite(w) or w <= 0:
        raise UserError(
            f"Width multiplier {width!r} is not valid: it must be a positive finite number "
            f"(1.0 is the standard width, 0.5 halves every channel count)."
        )
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise UserError(f"seed must be an integer or None, got {seed!r}.")
    return shape  # type: ignore[return-value]


def build_blocks(
    name: str,
    in_shape: tuple[int, int, int],
    num_classes: int,
    width: float = 1.0,
    seed: int | None = None,
) -> list[Block]:
    """Build the blocks of model ``name`` for per-sample input ``in_shape``.

    Weights are initialised deterministically from ``seed`` (orthogonal, gain 0.1, for conv
    and linear weights; norm layers weight 1 bias 0) with a local ``torch.Generator``; the
    global RNG is not touched. ``num_classes`` is validated here and used by the heads
    (:func:`make_head`). Raises :class:`UserError` for an unknown name or bad depth/config.
    """
    shape = _check_inputs(in_shape, num_classes, width, seed)
    key = str(name).strip().lower()
    # nn.Conv2d / nn.Linear constructors draw their default init from the global RNG; keep
    # it untouched (those values are overwritten by init_weights anyway).
    with torch.random.fork_rng(devices=[]):
        blocks = _construct(name, key, shape, float(width))
    gen = make_generator(seed)
    for b in blocks:
        init_weights(b, gen)
    return blocks


def _construct(name: str, key: str, shape: tuple[int, int, int], w: float) -> list[Block]:
    if m := re.fullmatch(r"resnet(\d+)", key):
        depth = int(m.group(1))
        if resnet_n(depth) is None:
            raise _bad_model(
                name, f"ResNet depth {depth} is not of the form 6n+2 with n >= 1"
            )
        blocks = build_resnet(depth, shape, w)
    elif key in VGG_CONFIGS:
        blocks = build_vgg(VGG_CONFIGS[key], shape, w)
    elif key.startswith("vgg:"):
        try:
            cfg = parse_vgg_config(key[4:])
            check_vgg_config(cfg)
        except ValueError as e:
            raise _bad_model(
                name, f"bad VGG config ({e}); use positive channel counts and 'M'"
            ) from None
        blocks = build_vgg(cfg, shape, w)
    elif m := re.fullmatch(r"vit(\d*)", key):
        depth = int(m.group(1)) if m.group(1) else 6
        if depth < 1:
            raise _bad_model(name, "ViT depth must be at least 1")
        blocks = build_vit(shape, w, depth=depth)
    else:
        raise _bad_model(name, "this name is not recognised")
    return blocks


def describe(blocks: list[Block]) -> list[dict[str, Any]]:
    """One dict per block: index, kind, signature, in_shape, out_shape, residual, n_params."""
    return [
        {
            "index": i,
            "kind": b.kind,
            "signature": b.signature(),
            "in_shape": tuple(b.in_shape),
            "out_shape": tuple(b.out_shape),
            "residual": bool(b.residual),
            "n_params": sum(p.numel() for p in b.parameters()),
        }
        for i, b in enumerate(blocks)
    ]
