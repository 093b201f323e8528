"""CIFAR-style ResNet of depth ``6n + 2`` (He et al. 2016, section 4.2), as a list of blocks.

Block 0 is the stem (conv3x3 ``in_ch -> 16w``, BN, ReLU; non-residual and shape-changing, so
its energy is 0). Then three stages of ``n`` :class:`BasicBlock` with ``16w``, ``32w``, ``64w``
channels; the first block of stages 2 and 3 has stride 2 and a 1x1 conv + BN projection
shortcut. In total ``1 + 3n`` blocks. The kinetic energy of a BasicBlock is ``mean(g**2)``
with ``g = BN(conv(ReLU(BN(conv(x)))))``, the branch before the addition and the final ReLU.

Any input ``(C, H, W)`` works: the spatial sizes follow the convolution arithmetic
``(H + 2*pad - k) // stride + 1`` (e.g. 28 -> 28 -> 14 -> 7, 33 -> 33 -> 17 -> 9).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .blocks import Block, conv_out, kinetic_energy, round_channels, zero_energy

__all__ = ["StemBlock", "BasicBlock", "build_resnet", "resnet_n"]


class StemBlock(Block):
    """conv3x3(in_ch -> out_ch, stride 1, pad 1, no bias) - BN - ReLU. Energy 0."""

    kind = "stem"

    def __init__(self, in_shape: tuple[int, int, int], out_ch: int):
        c, h, w = in_shape
        super().__init__(in_shape, (out_ch, h, w), residual=False)
        self.conv = nn.Conv2d(c, out_ch, 3, stride=1, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(out_ch)

    def signature(self) -> str:
        c, h, w = self.in_shape
        return f"stem:{c}->{self.out_shape[0]}:{h}x{w}"

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        y = F.relu(self.bn(self.conv(x)))
        return y, zero_energy(y)


class BasicBlock(Block):
    """``y = ReLU(shortcut(x) + g(x))``, ``g = BN(conv3x3(ReLU(BN(conv3x3_s(x)))))``.

    The shortcut is the identity, or a 1x1 conv (stride ``s``) + BN when the stride is not 1
    or the channel count changes. Energy: ``mean(g(x)**2)``.
    """

    kind = "basic"

    def __init__(self, in_shape: tuple[int, int, int], out_ch: int, stride: int = 1):
        c, h, w = in_shape
        ho, wo = conv_out(h, 3, stride, 1), conv_out(w, 3, stride, 1)
        super().__init__(in_shape, (out_ch, ho, wo), residual=True)
        self.stride = int(stride)
        self.conv1 = nn.Conv2d(c, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        if stride != 1 or c != out_ch:
            # 1x1 conv with no padding gives the same (h - 1) // s + 1 as the 3x3 pad-1 conv.
            self.shortcut: nn.Module = nn.Sequential(
                nn.Conv2d(c, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch)
            )
        else:
            self.shortcut = nn.Identity()

    def branch(self, x: Tensor) -> Tensor:
        """The residual branch ``g(x)`` (before the addition and the final ReLU)."""
        return self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))

    def signature(self) -> str:
        c, h, w = self.in_shape
        return f"basic:{c}->{self.out_shape[0]}:s{self.stride}:{h}x{w}"

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        g = self.branch(x)
        y = F.relu(self.shortcut(x) + g)
        return y, kinetic_energy(g)


def resnet_n(depth: int) -> int | None:
    """``n`` for a depth ``6n + 2`` with ``n >= 1``, else None."""
    if depth >= 8 and (depth - 2) % 6 == 0:
        return (depth - 2) // 6
    return None


def build_resnet(depth: int, in_shape: tuple[int, int, int], width: float = 1.0) -> list[Block]:
    """The ``1 + 3n`` blocks of a CIFAR ResNet of ``depth = 6n + 2`` (caller validates depth)."""
    n = resnet_n(depth)
    if n is None:
        raise ValueError(f"depth {depth} is not 6n+2 with n >= 1")
    chans = [round_channels(b, width) for b in (16, 32, 64)]
    blocks: list[Block] = [StemBlock(in_shape, chans[0])]
    shape = blocks[0].out_shape
    for stage, ch in enumerate(chans):
        for i in range(n):
            stride = 2 if (stage > 0 and i == 0) else 1
            blk = BasicBlock(shape, ch, stride)  # type: ignore[arg-type]
            blocks.append(blk)
            shape = blk.out_shape
    return blocks
