"""The attacks raise the loss they attack and change predictions, inside the L-inf ball; the noise
and out-of-distribution inputs have the model's shape and pixel range."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from edge_trgl.detect.abnormal import convert, noisy, ood_images, smooth_fields, uniform_images
from edge_trgl.detect.attacks import ATTACKS, attack
from edge_trgl.export import InferenceModel
from edge_trgl.models import build_blocks, make_head



@pytest.fixture(scope="module")
def tiny():
    blocks = build_blocks("resnet8", (3, 12, 12), 10, width=0.25, seed=0)
    head = make_head("linear", tuple(blocks[-1].out_shape), 10, seed=0)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # O(1) weights: the orthogonal gain-0.1 init gives near-uniform logits
        for part in [*blocks, head]:
            for p in part.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    model = InferenceModel(blocks, head, [0.5] * 3, [0.25] * 3).eval()
    images = np.random.default_rng(1).integers(0, 256, (16, 3, 12, 12)).astype(np.float32)
    with torch.no_grad():
        labels = model(torch.from_numpy(images)).argmax(1).numpy()   # all "correct" to start
    return model, images, labels


def _loss(model, images, labels):
    with torch.no_grad():
        logits = model(torch.from_numpy(np.asarray(images, np.float32)))
    return F.cross_entropy(logits, torch.from_numpy(labels), reduction="none").numpy(), \
        logits.argmax(1).numpy()


@pytest.mark.parametrize("kind", ATTACKS)
def test_attacks_raise_the_loss_and_flip_predictions_within_eps(tiny, kind):
    model, images, labels = tiny
    eps = 16 / 255
    before, _ = _loss(model, images, labels)
    adv = attack(model, images, labels, kind, eps, steps=5, seed=0)
    after, predicted = _loss(model, adv, labels)
    assert adv.shape == images.shape and adv.dtype == np.float32
    assert np.abs(adv - images).max() <= eps * 255 + 1e-3          # inside the ball
    assert adv.min() >= 0 and adv.max() <= 255
    assert after.mean() > before.mean() + 0.05                      # the loss went up
    assert (predicted != labels).mean() >= 0.25                     # and predictions changed
    assert all(p.requires_grad for p in model.parameters())          # left as they were


def test_iterative_attacks_are_seeded(tiny):
    model, images, labels = tiny
    a = attack(model, images[:4], labels[:4], "pgd", 8 / 255, steps=2, seed=3)
    b = attack(model, images[:4], labels[:4], "pgd", 8 / 255, steps=2, seed=3)
    c = attack(model, images[:4], labels[:4], "pgd", 8 / 255, steps=2, seed=4)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_noise_and_ood_inputs_have_the_models_shape():
    images = np.full((3, 3, 12, 12), 128, np.uint8)
    n = noisy(images, 0.1, seed=0)
    assert n.shape == images.shape and 0 <= n.min() and n.max() <= 255
    assert 15 < np.abs(n - 128).mean() < 30                           # sigma 0.1 = 25.5 pixels
    assert uniform_images(4, (1, 28, 28), 0).shape == (4, 1, 28, 28)
    s = smooth_fields(2, (3, 12, 12), 0)
    assert s.shape == (2, 3, 12, 12) and np.abs(np.diff(s, axis=-1)).mean() < 40  # smooth
    grey = np.arange(2 * 28 * 28, dtype=np.float32).reshape(2, 1, 28, 28) % 256
    rgb = convert(grey, (3, 32, 32))
    assert rgb.shape == (2, 3, 32, 32) and np.array_equal(rgb[:, 0], rgb[:, 2])
    assert convert(rgb, (1, 28, 28)).shape == (2, 1, 28, 28)
    assert ood_images("smooth", 2, (3, 8, 8), 0, None).shape == (2, 3, 8, 8)
