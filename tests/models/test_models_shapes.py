"""Shapes, block counts, parameter counts and signatures of the model zoo."""

import pytest
import torch

from edge_trgl.models import build_blocks, describe, run_blocks
from edge_trgl.models.resnet import BasicBlock, StemBlock


def _expected_resnet_shapes(n, c_in, h, w, width=1.0):
    chans = [max(1, round(b * width)) for b in (16, 32, 64)]
    out = [((c_in, h, w), (chans[0], h, w))]
    shape = (chans[0], h, w)
    for stage, ch in enumerate(chans):
        for i in range(n):
            if stage > 0 and i == 0:
                nxt = (ch, (shape[1] + 1) // 2, (shape[2] + 1) // 2)
            else:
                nxt = (ch, shape[1], shape[2])
            out.append((shape, nxt))
            shape = nxt
    return out


def _check_chain(blocks, in_shape, batch=2):
    x = torch.randn(batch, *in_shape)
    assert blocks[0].in_shape == tuple(in_shape)
    for i, b in enumerate(blocks):
        if i:
            assert b.in_shape == blocks[i - 1].out_shape
        x, e = b(x)
        assert tuple(x.shape) == (batch, *b.out_shape), (i, b.signature())
        assert e.dim() == 0 and torch.isfinite(e)


@pytest.mark.parametrize("depth", [20, 56])
@pytest.mark.parametrize("in_shape", [(3, 32, 32), (1, 28, 28)])
def test_resnet_shapes_and_count(depth, in_shape):
    n = (depth - 2) // 6
    blocks = build_blocks(f"resnet{depth}", in_shape, 10, seed=0)
    assert len(blocks) == 1 + 3 * n
    exp = _expected_resnet_shapes(n, *in_shape)
    assert [(b.in_shape, b.out_shape) for b in blocks] == exp
    assert isinstance(blocks[0], StemBlock) and not blocks[0].residual
    assert all(isinstance(b, BasicBlock) and b.residual for b in blocks[1:])
    last = (64, 8, 8) if in_shape[1] == 32 else (64, 7, 7)
    assert blocks[-1].out_shape == last
    _check_chain(blocks, in_shape)


def test_resnet_odd_input_and_width():
    blocks = build_blocks("resnet14", (3, 33, 31), 10, width=0.5, seed=0)
    assert [b.out_shape for b in blocks] == [
        (8, 33, 31), (8, 33, 31), (8, 33, 31),
        (16, 17, 16), (16, 17, 16), (32, 9, 8), (32, 9, 8),
    ]
    _check_chain(blocks, (3, 33, 31))
    tiny = build_blocks("resnet8", (1, 5, 5), 2, width=0.01, seed=0)
    assert [b.out_shape for b in tiny] == [(1, 5, 5), (1, 5, 5), (1, 3, 3), (1, 2, 2)]
    _check_chain(tiny, (1, 5, 5))


def test_resnet_parameter_counts():
    counts = {}
    for depth in (20, 56, 110):
        blocks = build_blocks(f"resnet{depth}", (3, 32, 32), 10, seed=0)
        counts[depth] = sum(d["n_params"] for d in describe(blocks))
        assert counts[depth] == sum(p.numel() for b in blocks for p in b.parameters())
    # The standard CIFAR ResNets (1x1 projection shortcuts, classifier excluded).
    assert counts == {20: 271_824, 56: 855_120, 110: 1_730_064}


def test_vgg_shapes():
    blocks = build_blocks("vgg8", (3, 32, 32), 10, seed=0)
    assert [b.out_shape for b in blocks] == [
        (64, 32, 32), (64, 16, 16), (128, 16, 16), (128, 8, 8), (256, 8, 8), (256, 4, 4)
    ]
    assert not any(b.residual for b in blocks)
    _check_chain(blocks, (3, 32, 32))

    # vgg11 on MNIST: the fifth pool would act on a 1x1 map and is dropped.
    blocks = build_blocks("vgg11", (1, 28, 28), 10, width=0.125, seed=0)
    assert [b.out_shape for b in blocks] == [
        (8, 14, 14), (16, 7, 7), (32, 7, 7), (32, 3, 3), (64, 3, 3), (64, 1, 1),
        (64, 1, 1), (64, 1, 1),
    ]
    _check_chain(blocks, (1, 28, 28))

    custom = build_blocks("vgg:8,8,M,16", (3, 9, 9), 10, seed=0)
    assert [b.out_shape for b in custom] == [(8, 9, 9), (8, 4, 4), (16, 4, 4)]


@pytest.mark.parametrize(
    "in_shape,tokens", [((3, 32, 32), 64), ((1, 28, 28), 49), ((3, 30, 30), 64)]
)
def test_vit_shapes(in_shape, tokens):
    blocks = build_blocks("vit", in_shape, 10, seed=0)
    assert len(blocks) == 7
    assert blocks[0].out_shape == (tokens, 64) and not blocks[0].residual
    assert all(b.in_shape == b.out_shape == (tokens, 64) and b.residual for b in blocks[1:])
    _check_chain(blocks, in_shape)


def test_vit_depth_and_width():
    blocks = build_blocks("vit3", (1, 28, 28), 10, width=0.5, seed=0)
    assert len(blocks) == 4
    assert blocks[-1].out_shape == (49, 32)
    y, e = run_blocks(blocks, torch.randn(2, 1, 28, 28))
    assert y.shape == (2, 49, 32) and e.dim() == 0


def test_signatures_and_describe():
    blocks = build_blocks("resnet20", (3, 32, 32), 10, seed=0)
    sigs = [b.signature() for b in blocks]
    assert sigs[0] == "stem:3->16:32x32"
    assert sigs[1] == sigs[2] == sigs[3] == "basic:16->16:s1:32x32"
    assert sigs[4] == "basic:16->32:s2:32x32"
    assert sigs[5] == sigs[6] == "basic:32->32:s1:16x16"
    assert len(set(sigs)) == 6
    # Same structure at another input size must not share a cache key.
    other = build_blocks("resnet20", (3, 28, 28), 10, seed=0)
    assert other[1].signature() != blocks[1].signature()

    vit = build_blocks("vit", (1, 28, 28), 10, seed=0)
    assert len({b.signature() for b in vit[1:]}) == 1
    assert vit[0].signature() != vit[1].signature()

    rows = describe(blocks)
    assert [r["index"] for r in rows] == list(range(len(blocks)))
    assert rows[4] == {
        "index": 4, "kind": "basic", "signature": "basic:16->32:s2:32x32",
        "in_shape": (16, 32, 32), "out_shape": (32, 16, 16), "residual": True,
        "n_params": sum(p.numel() for p in blocks[4].parameters()),
    }
    assert rows[0]["residual"] is False


@pytest.mark.parametrize("size,patch,tokens", [(28, 4, 49), (32, 4, 64), (64, 8, 64),
                                               (96, 12, 64), (128, 16, 64), (100, 12, 81)])
def test_vit_patch_grows_with_the_image_so_tokens_stay_few(size, patch, tokens):
    from edge_trgl.models.vit import patch_size
    assert patch_size((3, size, size)) == patch
    blocks = build_blocks("vit1", (3, size, size), 10, seed=0)
    assert blocks[0].patch == patch
    assert blocks[0].out_shape[0] == tokens
    out = blocks[1](blocks[0](torch.zeros(2, 3, size, size))[0])[0]
    assert tuple(out.shape[1:]) == (tokens, blocks[0].out_shape[1])
