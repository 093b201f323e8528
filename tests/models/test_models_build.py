"""build_blocks: names, validation errors, deterministic initialisation."""

import math

import pytest
import torch

from edge_trgl.errors import UserError
from edge_trgl.models import MODELS, Block, build_blocks, describe


@pytest.mark.parametrize("name", MODELS)
def test_all_listed_models_build(name):
    blocks = build_blocks(name, (1, 28, 28), 10, width=0.25, seed=0)
    assert blocks and all(isinstance(b, Block) for b in blocks)
    for a, b in zip(blocks, blocks[1:]):
        assert a.out_shape == b.in_shape


def test_generic_resnet_depths_and_case():
    assert len(build_blocks("resnet8", (3, 8, 8), 10, width=0.25, seed=0)) == 4
    assert len(build_blocks("ResNet26", (3, 8, 8), 10, width=0.25, seed=0)) == 13
    assert len(build_blocks(" VIT2 ", (3, 8, 8), 10, width=0.25, seed=0)) == 3


@pytest.mark.parametrize("name", ["resnet21", "resnet2", "resnet", "resnet-20", "foo", "vit0",
                                  "vgg:0,M", "vgg:M,64", "vgg:64,M,M", "vgg7", ""])
def test_bad_model_names(name):
    with pytest.raises(UserError) as ei:
        build_blocks(name, (3, 32, 32), 10)
    msg = str(ei.value)
    assert repr(name) in msg
    assert "resnet20" in msg and "vit" in msg and "vgg8" in msg and "6n+2" in msg
    assert "\n" not in msg


def test_bad_depth_message_names_the_depth():
    with pytest.raises(UserError, match=r"ResNet depth 21 is not of the form 6n\+2"):
        build_blocks("resnet21", (3, 32, 32), 10)


@pytest.mark.parametrize("kwargs", [
    {"width": 0}, {"width": -1.0}, {"width": math.nan}, {"width": "wide"},
    {"in_shape": (3, 32)}, {"in_shape": (3, 0, 32)}, {"num_classes": 0},
    {"num_classes": 2.5}, {"seed": 1.5},
])
def test_bad_arguments(kwargs):
    args = {"name": "resnet20", "in_shape": (3, 32, 32), "num_classes": 10, **kwargs}
    with pytest.raises(UserError):
        build_blocks(**args)


def _state(blocks):
    return [t.clone() for b in blocks for t in b.state_dict().values()]


@pytest.mark.parametrize("name", ["resnet20", "vit", "vgg8"])
def test_seeded_init_is_deterministic_and_leaves_global_rng(name):
    before = torch.get_rng_state()
    a = _state(build_blocks(name, (3, 32, 32), 10, width=0.5, seed=123))
    b = _state(build_blocks(name, (3, 32, 32), 10, width=0.5, seed=123))
    c = _state(build_blocks(name, (3, 32, 32), 10, width=0.5, seed=124))
    build_blocks(name, (3, 32, 32), 10, width=0.5, seed=None)
    assert torch.equal(torch.get_rng_state(), before)
    assert len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))
    assert any(not torch.equal(x, y) for x, y in zip(a, c))


def test_unseeded_init_differs():
    a = build_blocks("resnet8", (3, 8, 8), 10, seed=None)
    b = build_blocks("resnet8", (3, 8, 8), 10, seed=None)
    assert not torch.equal(a[1].conv1.weight, b[1].conv1.weight)


def test_orthogonal_init_gain():
    blocks = build_blocks("resnet20", (3, 32, 32), 10, seed=0)
    w = blocks[0].conv.weight.flatten(1)  # 16 x 27: orthogonal rows of norm 0.1
    assert torch.allclose(w @ w.T, 0.01 * torch.eye(16), atol=1e-5)
    w = blocks[4].conv1.weight.flatten(1)  # 32 x 144
    assert torch.allclose(w @ w.T, 0.01 * torch.eye(32), atol=1e-5)
    assert torch.all(blocks[4].bn1.weight == 1) and torch.all(blocks[4].bn1.bias == 0)
    vit = build_blocks("vit", (3, 32, 32), 10, seed=0)
    qkv = vit[1].attn.qkv.weight  # 192 x 64: orthogonal columns of norm 0.1
    assert torch.allclose(qkv.T @ qkv, 0.01 * torch.eye(64), atol=1e-5)
    assert torch.all(vit[1].attn.qkv.bias == 0)
    pos = vit[0].pos_embed
    assert 0.01 < pos.std().item() < 0.03


def test_describe_total_matches_parameters():
    blocks = build_blocks("vit", (1, 28, 28), 10, seed=0)
    rows = describe(blocks)
    assert rows[0]["kind"] == "patch" and rows[1]["kind"] == "vit"
    assert sum(r["n_params"] for r in rows) == sum(
        p.numel() for b in blocks for p in b.parameters()
    )
