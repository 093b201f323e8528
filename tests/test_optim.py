"""edge_trgl.optim: torch.optim's SGD and AdamW update rules, bit for bit on the CPU, with
torch's state-dict layout, and without importing torch._dynamo (sympy, ~67 MB)."""

from __future__ import annotations


import pytest
import torch

from edge_trgl.optim import SGD, AdamW

from helpers import assert_imports_no_dynamo


def _model(seed: int):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                               torch.nn.Flatten(), torch.nn.Linear(8 * 6 * 6, 10))


@pytest.mark.parametrize("kind", ["sgd", "sgd-plain", "adamw"])
def test_bit_identical_to_torch_optim(kind):
    ours, theirs = _model(0), _model(0)
    if kind == "sgd":
        a = SGD(ours.parameters(), lr=0.05, momentum=0.9, weight_decay=2e-4)
        b = torch.optim.SGD(theirs.parameters(), lr=0.05, momentum=0.9, weight_decay=2e-4,
                            foreach=False)
    elif kind == "sgd-plain":
        a = SGD(ours.parameters(), lr=0.1)
        b = torch.optim.SGD(theirs.parameters(), lr=0.1, foreach=False)
    else:
        a = AdamW(ours.parameters(), lr=3e-3, weight_decay=0.05)
        b = torch.optim.AdamW(theirs.parameters(), lr=3e-3, weight_decay=0.05, foreach=False)
    gen = torch.Generator().manual_seed(1)
    for step in range(6):
        x = torch.randn(4, 3, 8, 8, generator=gen)
        y = torch.randint(0, 10, (4,), generator=gen)
        for model, opt in ((ours, a), (theirs, b)):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        if step == 2:  # the learning rate changes mid-run, as a schedule would
            for opt in (a, b):
                opt.param_groups[0]["lr"] *= 0.5
    for p, q in zip(ours.parameters(), theirs.parameters()):
        assert torch.equal(p, q)
    sa, sb = a.state_dict()["state"], b.state_dict()["state"]
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].keys() == sb[k].keys()
        for name in sa[k]:
            assert torch.equal(sa[k][name], sb[k][name]), (k, name)
    # a state dict of ours loads into torch's optimizer and back
    b.load_state_dict(a.state_dict())
    a.load_state_dict(b.state_dict())


def test_training_step_does_not_import_dynamo():
    assert_imports_no_dynamo(
        "import torch\n"
        "from edge_trgl.optim import SGD\n"
        "m = torch.nn.Linear(4, 2); o = SGD(m.parameters(), lr=0.1, momentum=0.9)\n"
        "m(torch.randn(3, 4)).sum().backward(); o.step(); o.zero_grad(); o.state_dict()")
