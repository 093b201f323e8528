"""Kinetic energies against hand computations, and gradient flow."""

import math

import pytest
import torch
import torch.nn.functional as F

from edge_trgl.models import build_blocks, make_head, run_blocks
from edge_trgl.models.resnet import BasicBlock
from edge_trgl.models.vgg import VGGBlock
from edge_trgl.models.vit import PatchEmbed, TransformerBlock


def _randomize(module, seed=0):
    """Give every parameter O(1) random values so energies are far from trivial."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)


@pytest.mark.parametrize("train", [True, False])
def test_basic_block_energy_projection(train):
    blk = BasicBlock((8, 9, 9), 16, stride=2)
    _randomize(blk)
    blk.train(train)
    x = torch.randn(4, 8, 9, 9)
    y, e = blk(x)
    with torch.no_grad():
        g = blk.bn2(blk.conv2(F.relu(blk.bn1(blk.conv1(x)))))
        sc = blk.shortcut[1](blk.shortcut[0](x))
    assert e.dim() == 0
    assert torch.allclose(e, (g ** 2).mean(), rtol=1e-5)
    assert torch.allclose(y, F.relu(sc + g), atol=1e-5)
    # The energy is not the displacement of the output (the shortcut is excluded).
    assert e.item() > 1e-3
    assert tuple(y.shape) == (4, *blk.out_shape) == (4, 16, 5, 5)


def test_basic_block_energy_identity():
    blk = BasicBlock((8, 6, 6), 8, stride=1).train()
    _randomize(blk, 1)
    assert isinstance(blk.shortcut, torch.nn.Identity)
    x = torch.randn(3, 8, 6, 6)
    y, e = blk(x)
    with torch.no_grad():
        g = blk.bn2(blk.conv2(F.relu(blk.bn1(blk.conv1(x)))))
    manual = sum(float(v) ** 2 for v in g.flatten()) / g.numel()
    assert math.isclose(e.item(), manual, rel_tol=1e-4)
    assert torch.allclose(y, F.relu(x + g), atol=1e-5)


def test_vgg_energy_monge_and_zero():
    blocks = build_blocks("vgg:8,8,8,M,16", (3, 6, 6), 10, seed=0)
    keep, pool, widen = blocks[1], blocks[2], blocks[3]
    assert isinstance(keep, VGGBlock) and keep.in_shape == keep.out_shape == (8, 6, 6)
    assert pool.in_shape == (8, 6, 6) and pool.out_shape == (8, 3, 3)
    x = torch.randn(4, 8, 6, 6)
    for blk in (keep, pool):
        _randomize(blk)
        y, e = blk(x)
        with torch.no_grad():
            ref = F.relu(blk.bn(blk.conv(x)))  # the conv's output, before any pool
        assert torch.allclose(y, F.max_pool2d(ref, 2) if blk.pool else ref, atol=1e-6)
        assert torch.allclose(e, ((ref - x) ** 2).mean(), rtol=1e-5)
        assert e.item() > 0.1
    # Blocks that change the channel count (3->8, 8->16) have energy exactly 0.
    for blk, inp in ((blocks[0], torch.randn(4, 3, 6, 6)), (widen, torch.randn(4, 8, 3, 3))):
        out, e0 = blk(inp)
        assert e0.dim() == 0 and e0.item() == 0.0
        assert tuple(out.shape) == (4, *blk.out_shape)


def test_every_named_vgg_has_energy_bearing_blocks():
    """TRGL needs a displacement to regularise; with the energy taken before the pool every
    named config has some (before, vgg8/11/13 had none and TRGL was greedy training)."""
    for name in ("vgg8", "vgg11", "vgg13", "vgg16"):
        blocks = build_blocks(name, (3, 32, 32), 10, seed=0)
        assert sum(b.has_energy for b in blocks) >= 3, name


def test_stem_and_patch_energy_zero():
    stem = build_blocks("resnet8", (3, 8, 8), 10, seed=0)[0]
    patch = build_blocks("vit1", (3, 8, 8), 10, seed=0)[0]
    assert isinstance(patch, PatchEmbed)
    x = torch.randn(2, 3, 8, 8)
    for blk in (stem, patch):
        _, e = blk(x)
        assert e.dim() == 0 and e.item() == 0.0 and e.dtype == x.dtype


def test_vit_block_energy_and_attention():
    blk = TransformerBlock(tokens=5, dim=8, heads=2, mlp_ratio=2.0)
    _randomize(blk, 2)
    x = torch.randn(3, 5, 8)
    y, e = blk(x)
    with torch.no_grad():
        # Reference attention: split heads by hand, use PyTorch's SDPA.
        h = blk.norm1(x)
        q, k, v = blk.attn.qkv(h).split(8, dim=-1)
        sh = lambda t: t.reshape(3, 5, 2, 4).transpose(1, 2)  # noqa: E731
        o = F.scaled_dot_product_attention(sh(q), sh(k), sh(v))
        a = blk.attn.proj(o.transpose(1, 2).reshape(3, 5, 8))
        x1 = x + a
        m = blk.mlp.fc2(F.gelu(blk.mlp.fc1(blk.norm2(x1))))
        ref_y = x1 + m
    assert torch.allclose(y, ref_y, atol=1e-5)
    assert torch.allclose(e, (a ** 2).mean() + (m ** 2).mean(), rtol=1e-5)
    assert not torch.allclose(e, (a ** 2).mean(), rtol=1e-3)  # both branches count


def test_run_blocks_sums_energies():
    blocks = build_blocks("resnet14", (3, 16, 16), 10, seed=3)
    for b in blocks:
        _randomize(b, 4)
        b.eval()
    x = torch.randn(2, 3, 16, 16)
    y, total = run_blocks(blocks, x)
    parts, h = [], x
    for b in blocks:
        h, e = b(h)
        parts.append(e)
    assert torch.allclose(y, h)
    assert torch.allclose(total, torch.stack(parts).sum(), rtol=1e-6)
    y0, e0 = run_blocks([], x)
    assert y0 is x and e0.item() == 0.0


@pytest.mark.parametrize("name,shape,head", [
    ("resnet20", (3, 16, 16), "conv"),
    ("vit2", (1, 12, 12), "linear"),
    ("vgg:8,8,M", (3, 8, 8), "mlp"),
])
def test_gradients_flow(name, shape, head):
    blocks = build_blocks(name, shape, 10, seed=0)
    module = torch.nn.ModuleList(blocks[:4])
    h = make_head(head, module[-1].out_shape, 10, seed=0)
    x = torch.randn(4, *shape)
    y, energy = run_blocks(module, x)
    loss = F.cross_entropy(h(y), torch.tensor([0, 1, 2, 3])) + 0.5 * energy
    loss.backward()
    for n, p in list(module.named_parameters()) + list(h.named_parameters()):
        assert p.grad is not None, n
        assert torch.isfinite(p.grad).all(), n
    assert any(p.grad.abs().sum() > 0 for p in module.parameters())


def test_energy_gradient_reaches_branch_not_shortcut():
    blk = BasicBlock((4, 6, 6), 8, stride=2)
    _randomize(blk)
    _, e = blk(torch.randn(3, 4, 6, 6))
    e.backward()
    assert blk.conv1.weight.grad.abs().sum() > 0
    assert blk.conv2.weight.grad.abs().sum() > 0
    assert blk.shortcut[0].weight.grad is None


def test_half_precision_energy_does_not_overflow_and_has_the_exact_gradient():
    """Under --amp fp16 a branch value above 256 squares past float16's 65504; the energy is
    squared and summed in float32 instead, its gradient 2 g / N comes back in float16."""
    from edge_trgl.models.blocks import kinetic_energy, monge_energy
    g = (torch.randn(8, 4, 6, 6) * 300).half().requires_grad_()
    assert not torch.isfinite(torch.mean(g * g))  # what plain float16 arithmetic gives
    e = kinetic_energy(g)
    ref = (g.detach().double() ** 2).mean()
    assert e.dtype == torch.float32 and math.isclose(e.item(), ref.item(), rel_tol=1e-5)
    e.backward(torch.tensor(512.0))  # a loss-scaled upstream gradient
    expected = 2 * g.detach().double() / g.numel() * 512
    assert g.grad.dtype == torch.float16
    assert torch.allclose(g.grad.double(), expected, rtol=1e-3, atol=1e-6)
    x = torch.zeros(2, 3, 4, 4, dtype=torch.float16)
    y = torch.full_like(x, 400.0)
    assert monge_energy(y, x).item() == 160000.0
    # float32 keeps the plain Mul + ReduceMean (what ONNX export and the ORT artifacts use)
    g32 = torch.randn(3, 5)
    assert torch.equal(kinetic_energy(g32), torch.mean(g32 * g32))
