"""VGG-style plain conv nets for small images, as a list of blocks.

A config is a list of channel counts and ``"M"`` (2x2 max-pool, stride 2). Each integer makes
one :class:`VGGBlock` (conv3x3 pad 1 - BN - ReLU); an ``"M"`` is folded into the block before
it. Channel counts are scaled by the width multiplier.

The blocks are not residual. A block whose conv keeps the channel count has the Monge energy
``mean((y - x)**2)`` of its conv-BN-ReLU output y, measured before the block's pool if it has
one: the pool is a fixed map, and the displacement the block learns is the conv's (as for a
ResNet downsampling block, where the energy is that of the residual branch). Without that, the
usual VGG configs would have no energy at all (in vgg8/11/13 every same-channel conv is followed
by a pool) and TRGL would reduce to greedy training. A block that changes the channel count has
energy 0: there is no identity to measure a displacement from.

Pooling is floor-mode; a pool that would act on a map already smaller than 2 in height or
width is dropped (so the deeper configs still build on 28x28 MNIST: 28->14->7->3->1).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .blocks import Block, monge_energy, round_channels, zero_energy

__all__ = ["VGG_CONFIGS", "VGGBlock", "build_vgg", "parse_vgg_config"]

VGG_CONFIGS: dict[str, list[int | str]] = {
    # 6 conv layers (+ the heads), the small VGG used for module-wise training on CIFAR.
    "vgg8": [64, 64, "M", 128, 128, "M", 256, 256, "M"],
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
              512, 512, 512, "M"],
}


class VGGBlock(Block):
    """conv3x3(pad 1, no bias) - BN - ReLU [- MaxPool2d(2)]. Non-residual."""

    kind = "vgg"

    def __init__(self, in_shape: tuple[int, int, int], out_ch: int, pool: bool = False):
        c, h, w = in_shape
        ho, wo = (h // 2, w // 2) if pool else (h, w)
        super().__init__(in_shape, (out_ch, ho, wo), residual=False)
        self.pool = bool(pool)
        self.conv = nn.Conv2d(c, out_ch, 3, stride=1, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(out_ch)
        self.has_energy = c == out_ch  # the conv's own displacement, before any pool

    def signature(self) -> str:
        c, h, w = self.in_shape
        return (f"vgg:{c}->{self.out_shape[0]}{':pool' if self.pool else ''}:{h}x{w}"
                f"{':monge' if self.has_energy else ''}")

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        y = F.relu(self.bn(self.conv(x)))
        energy = monge_energy(y, x) if self.has_energy else zero_energy(y)
        if self.pool:
            y = F.max_pool2d(y, 2)
        return y, energy


def parse_vgg_config(text: str) -> list[int | str]:
    """``"64,64,M,128,M"`` -> ``[64, 64, "M", 128, "M"]``; raises ValueError if malformed."""
    out: list[int | str] = []
    for tok in text.split(","):
        tok = tok.strip()
        if tok.upper() == "M":
            out.append("M")
        elif tok.isdigit() and int(tok) > 0:
            out.append(int(tok))
        else:
            raise ValueError(f"bad VGG config entry {tok!r}")
    return out


def check_vgg_config(cfg: list[int | str]) -> None:
    """Raise ValueError unless ``cfg`` starts with a conv and has no pool without a conv."""
    if not cfg or cfg[0] == "M":
        raise ValueError("a VGG config must start with a channel count")
    for a, b in zip(cfg, cfg[1:]):
        if a == "M" and b == "M":
            raise ValueError("two consecutive 'M' in a VGG config")


def build_vgg(cfg: list[int | str], in_shape: tuple[int, int, int], width: float = 1.0) -> list[Block]:
    """One block per conv entry of ``cfg``; each ``"M"`` folds into the preceding block."""
    check_vgg_config(cfg)
    blocks: list[Block] = []
    shape = tuple(in_shape)
    for i, entry in enumerate(cfg):
        if entry == "M":
            continue
        nxt_pool = i + 1 < len(cfg) and cfg[i + 1] == "M"
        pool = nxt_pool and shape[1] >= 2 and shape[2] >= 2
        blk = VGGBlock(shape, round_channels(int(entry), width), pool)  # type: ignore[arg-type]
        blocks.append(blk)
        shape = blk.out_shape
    return blocks
