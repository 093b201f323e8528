"""Transport features: one column family per displacement, equal to the norms computed
independently from each block's own residual branch (and to its kinetic energy)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edge_trgl.detect.features import TransportModel, extract, recording
from edge_trgl.export import InferenceModel
from edge_trgl.models import blocks as block_module
from edge_trgl.models import build_blocks, make_head



def _model(name: str, shape=(3, 16, 16), seed=0) -> InferenceModel:
    blocks = build_blocks(name, shape, 10, width=0.25, seed=seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # O(1) weights: displacements far from zero and from each other
        for b in blocks:
            for p in b.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    head = make_head("conv", tuple(blocks[-1].out_shape), 10, seed=seed)
    return InferenceModel(blocks, head, [0.5] * shape[0], [0.25] * shape[0]).eval()


def _images(n=5, shape=(3, 16, 16)):
    return np.random.default_rng(0).integers(0, 256, (n, *shape)).astype(np.float32)


def test_resnet_features_are_the_residual_branch_norms():
    model = _model("resnet14")                # two blocks a stage: successive same-shape moves
    images = _images()
    logits, raw, embedding, columns = extract(model, images)
    blocks = model.blocks
    residual = [i for i, b in enumerate(blocks) if b.residual]          # the stem has no energy
    assert [c for c in columns if c.startswith("norm:")] == [f"norm:{i}.0" for i in residual]
    assert raw.shape[0] == 5 and raw.shape[1] == len(columns)
    assert embedding.shape == (5, blocks[-1].out_shape[0])
    # independently: run the blocks, take each BasicBlock's branch output g
    with torch.no_grad():
        x = model.normalize(torch.from_numpy(images))
        for i, b in enumerate(blocks):
            if b.residual:
                g = b.branch(x)
                want = g.flatten(1).norm(dim=1).numpy()
                got = raw[:, columns.index(f"norm:{i}.0")]
                np.testing.assert_allclose(got, want, rtol=1e-4)
                np.testing.assert_allclose(raw[:, columns.index(f"input:{i}.0")],
                                           x.flatten(1).norm(dim=1).numpy(), rtol=1e-4)
                # and the field columns are g averaged over space
                pooled = g.mean(dim=(2, 3)).numpy()
                got = raw[:, [columns.index(f"field:{i}.0.{c}") for c in range(g.shape[1])]]
                np.testing.assert_allclose(got, pooled, rtol=1e-4, atol=1e-6)
            x, _ = b(x)
        np.testing.assert_allclose(logits, model.head(x).numpy(), rtol=1e-5, atol=1e-6)
    assert (raw[:, :len(residual)] > 1e-3).all()   # real displacements, not zeros
    cos = raw[:, [i for i, c in enumerate(columns) if c.startswith("cos:")]]
    assert cos.shape[1] > 0 and (np.abs(cos) <= 1 + 1e-6).all()


def test_norms_match_the_blocks_own_kinetic_energy_per_sample():
    """For one image, energy = mean(g**2) = |g|^2 / numel: the features are what TRGL penalises."""
    model = _model("resnet8")
    images = _images(3)
    _, raw, _, columns = extract(model, images)
    for n in range(3):
        with torch.no_grad():
            x = model.normalize(torch.from_numpy(images[n:n + 1]))
            for i, b in enumerate(model.blocks):
                y, energy = b(x)
                if b.residual:
                    numel = int(np.prod(b.out_shape))
                    want = float(np.sqrt(energy.item() * numel))
                    assert raw[n, columns.index(f"norm:{i}.0")] == pytest.approx(want, rel=1e-4)
                x = y


def test_vit_has_two_terms_per_block_and_vgg_the_monge_displacement():
    vit = _model("vit2")
    _, raw, _, columns = extract(vit, _images(2))
    assert [c for c in columns if c.startswith("norm:")] == ["norm:1.0", "norm:1.1", "norm:2.0",
                                                             "norm:2.1"]
    vgg = _model("vgg:16,16,M,32")            # layer 1 keeps 4 channels (width 0.25): Monge term
    images = _images(2)
    _, raw, _, columns = extract(vgg, images)
    assert [c for c in columns if c.startswith("norm:")] == ["norm:1.0"]
    with torch.no_grad():
        x0, _ = vgg.blocks[0](vgg.normalize(torch.from_numpy(images)))
        b = vgg.blocks[1]
        y = torch.relu(b.bn(b.conv(x0)))
        want = (y - x0).flatten(1).norm(dim=1).numpy()
    np.testing.assert_allclose(raw[:, columns.index("norm:1.0")], want, rtol=1e-4)


def test_a_network_without_displacements_is_refused_and_recording_restores_the_energy():
    from edge_trgl.errors import UserError
    plain = _model("vgg:8,M,16")              # every layer changes the channel count
    with pytest.raises(UserError, match="no transport features"):
        extract(plain, _images(1))
    original = block_module.mean_square
    model = _model("resnet8")
    with recording(model.blocks):
        assert block_module.mean_square is not original
        with pytest.raises(RuntimeError):     # one recording at a time
            with recording(model.blocks):
                pass
    assert block_module.mean_square is original
    assert not any(b._forward_pre_hooks for b in model.blocks)  # hooks removed
    logits, raw, _ = TransportModel(model)(torch.from_numpy(_images(2)))
    assert logits.shape == (2, 10) and raw.shape[0] == 2
