import torch

from edge_trgl.meter import EpochMeter


def test_tensor_and_float_inputs_give_the_same_sample_weighted_means():
    steps = [(2.5, 2.0, 0.25, 3, 4), (1.5, 1.25, 0.5, 1, 2), (0.75, 0.5, 0.125, 2, 2)]
    plain, tensors = EpochMeter(), EpochMeter()
    for loss, ce, energy, correct, n in steps:
        plain.add(loss, ce, energy, correct, n)
        tensors.add(torch.tensor(loss, dtype=torch.float64), torch.tensor(ce, dtype=torch.float64),
                    torch.tensor(energy, dtype=torch.float64), torch.tensor(correct), n)
    a, b = plain.stats(), tensors.stats()
    assert a["train_loss"] == (2.5 * 4 + 1.5 * 2 + 0.75 * 2) / 8
    assert a["train_acc"] == 6 / 8
    for key in ("train_loss", "train_ce", "energy", "train_acc"):
        assert a[key] == b[key] and isinstance(b[key], float)
    assert a["samples_per_s"] > 0


def test_an_empty_epoch_reports_zeros_not_a_division_error():
    stats = EpochMeter().stats()
    assert stats["train_loss"] == 0 and stats["train_acc"] == 0
