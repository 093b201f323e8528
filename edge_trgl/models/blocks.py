"""The unit that TRGL trains: a block that returns its output *and* its kinetic energy.

A TRGL module is a run of consecutive blocks plus an auxiliary head; its loss is
``CE + 1/(2*tau) * sum of the blocks' kinetic energies``. Every block computes its own energy
inside ``forward`` so that one traced forward exports to ONNX with two outputs
(``output``, ``energy``) and the same numbers come out of PyTorch and ONNX Runtime.

How the energy is defined, by kind of block:

* Residual block ``y = act(shortcut(x) + g(x))``: ``mean(g(x)**2)`` over batch and all feature
  dimensions, where ``g(x)`` is the residual *branch* output, taken before the skip addition
  and before any activation applied after the addition. The shortcut (identity or a 1x1
  projection) is not part of ``g``.
* Transformer block (two residual branches, ``x + Attn(LN(x))`` then ``+ MLP(LN(.))``):
  ``mean(attn_branch**2) + mean(mlp_branch**2)``.
* Non-residual block that keeps the per-sample shape: the Monge form ``mean((y - x)**2)``.
* Non-residual block that changes the shape (the ResNet stem convolution, a VGG layer that
  changes channels or pools, the ViT patch embedding): energy ``0``. Such a block is not a
  displacement of its input, so there is no identity to measure a displacement from; it is
  trained by the cross-entropy of its module's head alone.

All energies are 0-dim tensors on the input's device and dtype.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

__all__ = [
    "Block",
    "materialize",
    "run_blocks",
    "kinetic_energy",
    "monge_energy",
    "zero_energy",
    "init_weights",
    "make_generator",
    "conv_out",
    "round_channels",
]


class _HalfMeanSquare(torch.autograd.Function):
    """``mean(t * t)`` of a float16 tensor, squared and summed in float32. In float16 any
    |t| > 256 squares to inf (max 65504), and one inf makes the loss inf, so every step would
    be skipped by the gradient scaler. Saves only ``t`` (as ``t * t`` would) and returns the
    gradient in float16, computed in float32 inside the kernel (a 0-dim float32 factor)."""

    @staticmethod
    def forward(ctx, t: Tensor) -> Tensor:
        ctx.save_for_backward(t)
        return torch.linalg.vector_norm(t, dtype=torch.float32).square() / t.numel()

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (t,) = ctx.saved_tensors
        return t * (grad.float() * (2.0 / t.numel()))


def mean_square(t: Tensor) -> Tensor:
    """``mean(t**2)`` as a 0-dim tensor; float16 (CUDA ``--amp fp16``) goes through float32."""
    if t.dtype == torch.float16:
        return _HalfMeanSquare.apply(t)
    return torch.mean(t * t)


def kinetic_energy(g: Tensor) -> Tensor:
    """``mean(g**2)`` over every element (batch and features), as a 0-dim tensor.

    Written as ``g * g`` so that it exports to ONNX as a plain ``Mul`` + ``ReduceMean``.
    """
    return mean_square(g)


def monge_energy(y: Tensor, x: Tensor) -> Tensor:
    """``mean((y - x)**2)`` for a non-residual block that keeps its shape."""
    return mean_square(y - x)


def zero_energy(x: Tensor) -> Tensor:
    """A 0-dim zero on ``x``'s device and dtype (shape-changing non-residual blocks)."""
    return x.new_zeros(())


def conv_out(size: int, kernel: int, stride: int = 1, padding: int = 0) -> int:
    """Output length of a convolution / pooling along one spatial axis (floor mode)."""
    return (size + 2 * padding - kernel) // stride + 1


def round_channels(base: int, width: float) -> int:
    """``base * width`` rounded to the nearest int, at least 1."""
    return max(1, int(round(base * width)))


class Block(nn.Module):
    """One trainable unit of a model split into TRGL modules.

    Attributes:
        residual: True if the block is ``y = x + g(x)`` (possibly with a projection shortcut
            and an activation after the addition).
        in_shape: per-sample input shape, ``(C, H, W)`` or ``(tokens, dim)``.
        out_shape: per-sample output shape.
        kind: a short name of the block type (``"stem"``, ``"basic"``, ``"vgg"``, ...).

    ``forward(x)`` returns ``(output, energy)`` where ``energy`` is a 0-dim tensor; see the
    module docstring for how it is defined.
    """

    kind: str = "block"

    def __init__(self, in_shape: Iterable[int], out_shape: Iterable[int], residual: bool):
        super().__init__()
        self.in_shape: tuple[int, ...] = tuple(int(s) for s in in_shape)
        self.out_shape: tuple[int, ...] = tuple(int(s) for s in out_shape)
        self.residual: bool = bool(residual)

    def signature(self) -> str:
        """A stable string identifying the structure and shapes of the block.

        Two blocks with equal signatures have the same parameters and activation shapes, so
        they cost the same memory; memory probes are cached by it.
        """
        raise NotImplementedError

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"sig={self.signature()!r}, residual={self.residual}"


def run_blocks(blocks: Iterable[nn.Module], x: Tensor) -> tuple[Tensor, Tensor]:
    """Run ``blocks`` in order; return the last output and the sum of their energies."""
    total: Tensor | None = None
    for block in blocks:
        x, e = block(x)
        total = e if total is None else total + e
    if total is None:
        total = zero_energy(x)
    return x, total


def make_generator(seed: int | None) -> torch.Generator:
    """A local CPU generator: seeded with ``seed``, or from OS entropy when ``seed`` is None.

    The global RNG is never touched.
    """
    g = torch.Generator()
    if seed is None:
        g.seed()
    else:
        g.manual_seed(int(seed))
    return g


def materialize(module: nn.Module, device="cpu") -> nn.Module:
    """A meta-device module with real (uninitialised) storage on `device`, like
    ``module.to_empty(device=device)`` but without its cost: from the meta device, ``to_empty``
    goes through torch's symbolic-shape machinery, which imports ~490 modules (sympy, mpmath)
    and holds ~33 MB for the life of the process -- every probe, trainer and export process
    paid that. Plain ``torch.empty`` per parameter and buffer imports nothing."""
    for sub in module.modules():
        for name, p in list(sub._parameters.items()):
            if p is not None:
                sub._parameters[name] = nn.Parameter(
                    torch.empty(p.shape, dtype=p.dtype, device=device), requires_grad=p.requires_grad)
        for name, b in list(sub._buffers.items()):
            if b is not None:
                sub._buffers[name] = torch.empty(b.shape, dtype=b.dtype, device=device)
    return module


@torch.no_grad()
def init_weights(module: nn.Module, generator: torch.Generator, gain: float = 0.1) -> None:
    """Initialise ``module`` in place like the TRGL authors, deterministically from ``generator``.

    Conv / Linear weights: orthogonal with ``gain``; their biases: 0. BatchNorm / LayerNorm:
    weight 1, bias 0 (running stats reset). Parameters named ``pos_embed``: normal(0, 0.02).
    Modules are visited in ``named_modules`` order, so equal structures get equal weights.

    The QR factorisations run with one intra-op thread (restored afterwards): the result is
    then independent of the core count, and small QRs are far faster single-threaded (on a
    loaded 2-core machine a 576x64 QR took 0.14 s with 2 threads vs 0.4 ms with 1).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _init_weights(module, generator, gain)
    finally:
        torch.set_num_threads(threads)


def _init_weights(module: nn.Module, generator: torch.Generator, gain: float) -> None:
    for _, m in module.named_modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)):
            nn.init.orthogonal_(m.weight, gain=gain, generator=generator)
            if m.bias is not None:
                m.bias.zero_()
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            if m.affine:
                m.weight.fill_(1.0)
                m.bias.zero_()
            m.reset_running_stats()
        elif isinstance(m, nn.LayerNorm):
            if m.elementwise_affine:
                m.weight.fill_(1.0)
                if m.bias is not None:
                    m.bias.zero_()
        pos = getattr(m, "pos_embed", None)
        if isinstance(pos, nn.Parameter):
            pos.normal_(0.0, 0.02, generator=generator)
