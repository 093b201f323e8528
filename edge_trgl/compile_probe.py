"""The child that checks torch.compile's generated code runs on this machine (compiled.py's
require_compiled_code_runs starts it: `python -m edge_trgl.compile_probe DEVICE`). Its own file
because it steps the trainer's forward (backends/torch_backend.py), which imports compiled.py."""

from __future__ import annotations

import sys


def probe_step(device: str) -> None:
    """The child: one training step of a tiny ResNet (stride-2 shortcut included) whose forward
    goes through torch.compile as a module's does in training (compiled.compiled), backward too."""
    from functools import partial

    import torch

    from .backends.torch_backend import forward_module
    from .models import build_blocks
    from .models.heads import make_head
    torch.set_num_threads(1)
    blocks = torch.nn.ModuleList(build_blocks("resnet8", (3, 32, 32), 10, width=0.25, seed=0))
    head = make_head("conv", tuple(blocks[-1].out_shape), 10, seed=0)
    blocks.to(device)
    head.to(device)
    step = torch.compile(partial(forward_module, blocks, head), dynamic=False)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(8, 3, 32, 32, generator=gen).to(device)
    y = torch.randint(0, 10, (8,), generator=gen).to(device)
    _, logits, energy = step(x)
    (torch.nn.functional.cross_entropy(logits, y) + energy).backward()
    if device.startswith("cuda"):
        torch.cuda.synchronize()


if __name__ == "__main__":
    probe_step(sys.argv[1] if len(sys.argv) > 1 else "cpu")
