"""Auxiliary heads: output shapes, structure, pooling, errors."""

import pytest
import torch
from torch import nn

from edge_trgl.errors import UserError
from edge_trgl.models import HEADS, make_head
from edge_trgl.models.heads import StaticAdaptiveAvgPool2d

SHAPES = [(16, 8, 8), (64, 7, 7), (8, 1, 1), (4, 5, 3), (49, 64), (1, 8)]


@pytest.mark.parametrize("name", HEADS)
@pytest.mark.parametrize("shape", SHAPES)
def test_head_output_shape(name, shape):
    head = make_head(name, shape, 10, seed=0).train()
    x = torch.randn(3, *shape)
    out = head(x)
    assert out.shape == (3, 10)
    out.sum().backward()
    assert all(p.grad is not None for p in head.parameters())
    head.eval()
    assert head(x[:1]).shape == (1, 10)


def test_head_names():
    assert HEADS == ("conv", "pooled-conv", "strided-conv", "linear", "mlp")


def test_strided_conv_head_is_the_conv_head_at_stride_2():
    strided, conv = make_head("strided-conv", (16, 32, 32), 10, seed=5), make_head("conv", (16, 32, 32), 10, seed=5)
    a, b = strided.state_dict(), conv.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert strided[0].stride == (2, 2) and conv[0].stride == (1, 1)
    x = torch.randn(2, 16, 32, 32)
    expect = torch.relu(torch.nn.functional.conv2d(x, conv[0].weight, padding=1))[:, :, ::2, ::2]
    assert torch.allclose(strided[:2](x), expect, atol=1e-6)
    assert strided.eval()(x).shape == (2, 10)
    # odd and small maps: 7x7 -> 4x4 at stride 2; a 3x3 map keeps stride 1
    assert make_head("strided-conv", (8, 7, 7), 10, seed=0).eval()(torch.randn(2, 8, 7, 7)).shape == (2, 10)
    assert make_head("strided-conv", (8, 3, 3), 10, seed=0)[0].stride == (1, 1)


def test_pooled_conv_head_pools_wide_maps_to_8x8_first():
    wide = make_head("pooled-conv", (16, 32, 32), 10, seed=0)
    assert isinstance(wide[0], StaticAdaptiveAvgPool2d) and wide[0].out == 8
    x = torch.randn(2, 16, 32, 32)
    assert wide[1:](torch.nn.functional.avg_pool2d(x, 4)).shape == (2, 10)
    assert torch.allclose(wide.eval()(x), wide[1:](torch.nn.functional.avg_pool2d(x, 4)))
    # an 8x8 map is the conv head's own input: the same layers, the same weights
    narrow, conv = make_head("pooled-conv", (16, 8, 8), 10, seed=3), make_head("conv", (16, 8, 8), 10, seed=3)
    a, b = narrow.state_dict(), conv.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_conv_head_structure():
    head = make_head("conv", (32, 8, 8), 7, seed=0)
    conv = [m for m in head.modules() if isinstance(m, nn.Conv2d)]
    assert len(conv) == 1 and conv[0].bias is None
    assert conv[0].in_channels == conv[0].out_channels == 32 and conv[0].kernel_size == (3, 3)
    bn = [m for m in head.modules() if isinstance(m, nn.BatchNorm1d)]
    assert len(bn) == 1 and bn[0].num_features == 128
    lin = [m for m in head.modules() if isinstance(m, nn.Linear)]
    assert [(l.in_features, l.out_features) for l in lin] == [(128, 7)]
    assert torch.all(bn[0].weight == 1) and torch.all(bn[0].bias == 0)


def test_linear_head_is_gap_linear():
    head = make_head("linear", (6, 4, 4), 3, seed=0)
    x = torch.randn(2, 6, 4, 4)
    lin = head[-1]
    assert torch.allclose(head(x), lin(x.mean(dim=(2, 3))), atol=1e-6)
    tok = make_head("linear", (5, 6), 3, seed=0)
    t = torch.randn(2, 5, 6)
    assert torch.allclose(tok(t), tok[-1](tok[0](t).mean(dim=1)), atol=1e-6)


@pytest.mark.parametrize("hw", [(8, 8), (7, 7), (1, 1), (5, 3), (2, 9)])
def test_static_adaptive_pool_matches_torch(hw):
    x = torch.randn(2, 3, *hw)
    ours = StaticAdaptiveAvgPool2d(hw, 2)(x)
    ref = nn.AdaptiveAvgPool2d(2)(x)
    assert ours.shape == ref.shape == (2, 3, 2, 2)
    assert torch.allclose(ours, ref, atol=1e-6)


def test_head_seed_deterministic():
    a = make_head("mlp", (16, 4, 4), 10, seed=5).state_dict()
    b = make_head("mlp", (16, 4, 4), 10, seed=5).state_dict()
    c = make_head("mlp", (16, 4, 4), 10, seed=6).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_head_errors():
    with pytest.raises(UserError) as ei:
        make_head("1cnn", (16, 8, 8), 10)
    msg = str(ei.value)
    assert "1cnn" in msg and all(h in msg for h in HEADS)
    with pytest.raises(UserError):
        make_head("conv", (16, 8, 8, 2), 10)
    with pytest.raises(UserError):
        make_head("linear", (16, 0, 8), 10)
    with pytest.raises(UserError):
        make_head("linear", (16, 8, 8), 0)


def test_make_head_leaves_global_rng():
    before = torch.get_rng_state()
    make_head("conv", (16, 8, 8), 10, seed=0)
    make_head("mlp", (49, 64), 10)
    assert torch.equal(torch.get_rng_state(), before)
