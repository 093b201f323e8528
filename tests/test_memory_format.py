"""The CPU layout switch (modules.CPU_MEMORY_FORMAT): off (contiguous) while torch 2.13's CPU
backward segfaults in channels_last for some blocks; when it is on, the same network, a faster
layout. The tests turn it on to check what it does."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from edge_trgl import modules
from edge_trgl.models import build_blocks
from edge_trgl.modules import input_layout, memory_format, to_layout, to_numpy_state


@pytest.fixture
def channels_last(monkeypatch):
    monkeypatch.setattr(modules, "CPU_MEMORY_FORMAT", torch.channels_last)


def test_the_cpu_layout_is_contiguous_by_default():
    cpu = torch.device("cpu")
    block = to_layout(_net()[1], cpu)
    assert all(p.is_contiguous() for p in block.parameters())
    x = torch.randn(2, 3, 16, 16)
    assert input_layout(x, cpu) is x


def _net():
    return build_blocks("resnet8", (3, 16, 16), 10, width=0.5, seed=0)


def test_cpu_modules_and_batches_are_channels_last_and_cuda_is_left_alone(channels_last):
    cpu = torch.device("cpu")
    blocks = [to_layout(b, cpu) for b in _net()]
    # (a 1x1 kernel is laid out the same either way)
    convs = [p for b in blocks for p in b.parameters() if p.dim() == 4 and p.shape[-1] > 1]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
                         for p in convs)
    x = input_layout(torch.randn(2, 3, 16, 16), cpu)
    assert x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    flat = torch.randn(2, 5)
    assert input_layout(flat, cpu) is flat
    assert memory_format(torch.device("cuda")) is torch.preserve_format


def test_the_layout_changes_neither_the_outputs_nor_the_stored_weights(channels_last):
    cpu = torch.device("cpu")
    plain, fast = _net(), [to_layout(b, cpu) for b in _net()]
    for b in plain + fast:
        b.eval()
    x = torch.randn(4, 3, 16, 16)
    a, c = x, input_layout(x, cpu)
    with torch.no_grad():
        for p_block, f_block in zip(plain, fast):
            a, c = p_block(a)[0], f_block(c)[0]
    assert torch.allclose(a, c, rtol=1e-4, atol=1e-5)
    for p_block, f_block in zip(plain, fast):
        ps, fs = to_numpy_state(p_block), to_numpy_state(f_block)
        assert ps.keys() == fs.keys()
        for key in ps:  # stored C-contiguous, value for value
            assert fs[key].flags["C_CONTIGUOUS"] and np.array_equal(ps[key], fs[key])
