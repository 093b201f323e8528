import math

import pytest
import torch

from edge_trgl.trgl import AdaptiveWeight, energy_weight, module_loss, tau_schedule


def test_varying_tau_halves_first_half_for_even_and_odd_k():
    assert tau_schedule(1.0, 4) == [0.5, 0.5, 1.0, 1.0]
    assert tau_schedule(2.0, 5) == [1.0, 1.0, 1.0, 2.0, 2.0]  # k < K/2 = 2.5
    assert tau_schedule(1.0, 1) == [0.5]
    assert tau_schedule(1.0, 3, varying=False) == [1.0, 1.0, 1.0]


def test_energy_weight_and_greedy():
    assert energy_weight(0.5) == 1.0
    assert energy_weight(100.0) == pytest.approx(0.005)
    assert energy_weight(math.inf) == 0.0
    assert tau_schedule(math.inf, 3) == [math.inf] * 3


def test_module_loss_adds_weighted_energy():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([0, 1])
    energy = torch.tensor(0.3)
    loss, ce = module_loss(logits, y, energy, 1 / (2 * 0.5))
    expected_ce = torch.nn.functional.cross_entropy(logits, y)
    assert torch.allclose(ce, expected_ce)
    assert torch.allclose(loss, expected_ce + 0.3)
    greedy, _ = module_loss(logits, y, energy, 0.0)
    assert torch.allclose(greedy, expected_ce)


def test_energy_of_a_block_matches_hand_computation():
    from edge_trgl.models import build_blocks
    blocks = build_blocks("resnet20", (3, 32, 32), 10, seed=1)
    block = blocks[1]
    x = torch.randn(4, 16, 32, 32)
    _, energy = block(x)
    branch = block.bn2(block.conv2(torch.relu(block.bn1(block.conv1(x)))))
    assert torch.allclose(energy, (branch ** 2).mean(), rtol=1e-5)


def test_adaptive_weight_relaxes_every_interval():
    w = AdaptiveWeight(interval=2, initial=1.0)
    assert w.weight == 1.0
    w.update(3.0)
    assert w.weight == 1.0
    w.update(3.0)
    assert w.weight == pytest.approx(0.25)
    state = w.state()
    w2 = AdaptiveWeight()
    w2.load_state(state)
    assert w2.weight == w.weight
