"""A small Vision Transformer for small images, as a list of blocks.

Block 0 is :class:`PatchEmbed`: a conv with ``kernel = stride = patch`` plus a learned
position embedding, turning ``(C, H, W)`` into ``(tokens, dim)``. There is no class token;
the heads mean-pool the tokens. If the patch size does not divide ``H`` or ``W`` the image is
zero-padded at the bottom/right up to the next multiple. The patch embedding changes the
shape, so its energy is 0.

Then ``depth`` pre-norm :class:`TransformerBlock` (``x = x + Attn(LN(x))``,
``x = x + MLP(LN(x))``); the energy is ``mean(attn_branch**2) + mean(mlp_branch**2)``.

Attention is written by hand (Linear qkv, matmul, softmax, matmul, Linear) instead of
``nn.MultiheadAttention`` so that the graph is the same in eval and training mode and exports
to ONNX (opset 17, TorchScript exporter) as plain MatMul / Softmax / Reshape / Transpose ops.
The batch dimension is kept dynamic (reshapes use ``-1`` for it); the token count is fixed by
the block's ``in_shape``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .blocks import Block, kinetic_energy, zero_energy

__all__ = ["PatchEmbed", "Attention", "Mlp", "TransformerBlock", "build_vit", "patch_size",
           "vit_dim"]


class PatchEmbed(Block):
    """Conv(kernel=stride=patch) + learned position embedding -> ``(tokens, dim)``. Energy 0."""

    kind = "patch"

    def __init__(self, in_shape: tuple[int, int, int], dim: int, patch: int):
        c, h, w = in_shape
        self.pad_h, self.pad_w = (-h) % patch, (-w) % patch
        gh, gw = (h + self.pad_h) // patch, (w + self.pad_w) // patch
        super().__init__(in_shape, (gh * gw, dim), residual=False)
        self.patch = int(patch)
        self.proj = nn.Conv2d(c, dim, patch, stride=patch)
        self.pos_embed = nn.Parameter(torch.zeros(1, gh * gw, dim))

    def signature(self) -> str:
        c, h, w = self.in_shape
        t, d = self.out_shape
        return f"patch:{c}x{h}x{w}->{t}x{d}:p{self.patch}"

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.pad_h or self.pad_w:
            x = F.pad(x, (0, self.pad_w, 0, self.pad_h))
        y = self.proj(x).flatten(2).transpose(1, 2) + self.pos_embed
        return y, zero_energy(y)


class Attention(nn.Module):
    """Multi-head self-attention over ``(B, tokens, dim)``, hand-written for ONNX export."""

    def __init__(self, tokens: int, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.tokens, self.dim, self.heads = tokens, dim, heads
        self.head_dim = dim // heads
        self.scale = 1.0 / math.sqrt(self.head_dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        n, h, hd = self.tokens, self.heads, self.head_dim
        qkv = self.qkv(x).reshape(-1, n, 3, h, hd).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # (B, h, n, hd)
        attn = torch.softmax(torch.matmul(q * self.scale, k.transpose(-2, -1)), dim=-1)
        out = torch.matmul(attn, v).transpose(1, 2).reshape(-1, n, self.dim)
        return self.proj(out)


class Mlp(nn.Module):
    """Linear(dim, hidden) - GELU - Linear(hidden, dim)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class TransformerBlock(Block):
    """Pre-norm transformer block; energy = mean(attn_branch**2) + mean(mlp_branch**2)."""

    kind = "vit"

    def __init__(self, tokens: int, dim: int, heads: int, mlp_ratio: float):
        super().__init__((tokens, dim), (tokens, dim), residual=True)
        self.heads = int(heads)
        self.hidden = max(1, int(round(dim * mlp_ratio)))
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(tokens, dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, self.hidden)

    def attn_branch(self, x: Tensor) -> Tensor:
        return self.attn(self.norm1(x))

    def mlp_branch(self, x: Tensor) -> Tensor:
        return self.mlp(self.norm2(x))

    def signature(self) -> str:
        t, d = self.in_shape
        return f"vit:{t}x{d}:h{self.heads}:m{self.hidden}"

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        a = self.attn_branch(x)
        x = x + a
        m = self.mlp_branch(x)
        x = x + m
        return x, kinetic_energy(a) + kinetic_energy(m)


def vit_dim(width: float, heads: int, base: int = 64) -> int:
    """``base * width`` rounded to a positive multiple of ``heads``."""
    return max(heads, heads * int(round(base * width / heads)))


def patch_size(in_shape: tuple[int, int, int]) -> int:
    """4 pixels up to 39-pixel images (CIFAR-10: 8 x 8 = 64 tokens; MNIST: 7 x 7), then about an
    eighth of the longer side (64 px: 8, 96 px: 12, 128 px: 16), so a larger image keeps about 64
    tokens. With a fixed 4-pixel patch a 128-pixel image made 1,024 tokens and attention
    matrices of 1,024 x 1,024 per head and sample: 16x the compute of 32 px per block, and at
    batch 64 about 1 GB for one block's attention probabilities alone."""
    return max(4, round(max(in_shape[1], in_shape[2]) / 8))


def build_vit(
    in_shape: tuple[int, int, int],
    width: float = 1.0,
    depth: int = 6,
    patch: int | None = None,
    heads: int = 4,
    mlp_ratio: float = 2.0,
) -> list[Block]:
    """Patch embedding followed by ``depth`` transformer blocks (``1 + depth`` blocks); the patch
    size grows with the image (:func:`patch_size`) unless given."""
    dim = vit_dim(width, heads)
    patch = patch_size(in_shape) if patch is None else int(patch)
    stem = PatchEmbed(in_shape, dim, patch)
    tokens = stem.out_shape[0]
    blocks: list[Block] = [stem]
    blocks += [TransformerBlock(tokens, dim, heads, mlp_ratio) for _ in range(depth)]
    return blocks
