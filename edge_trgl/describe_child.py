"""The model-description child (`python -m edge_trgl.describe_child SPEC`, started by
describe.describe): imports what a torch trainer imports, reports its RSS as the trainer's
baseline and every block as plain data, then exits. In a file of its own because it imports the
trainer's modules, which the planner's side (describe.py) must not."""

from __future__ import annotations

import json
import sys

from .memory.describe import param_bytes


def main(argv: list[str]) -> int:
    spec = json.loads(argv[0])
    from .config import TrainConfig
    from .errors import UserError
    try:
        return _describe(TrainConfig.from_json(spec["config"]), spec)
    except UserError as exc:  # an unknown model, no CUDA, ...: the orchestrator says it
        print(json.dumps({"error": str(exc)}))
        return 2


def _describe(cfg, spec: dict) -> int:
    from .targets import get_target
    get_target(cfg).check_available(cfg)
    import torch

    # what the trainer imports before it trains (train.py's in-process path)
    from . import context, resident, schemes  # noqa: F401
    from .backends import torch_backend  # noqa: F401
    from .memory.measure import release_memory, rss_bytes
    from .modules import architecture
    torch.set_num_threads(int(spec["threads"]))
    torch.zeros(1).sum()  # the ATen CPU runtime, part of every torch process's baseline
    arch = architecture(cfg, tuple(spec["in_shape"]), spec["num_classes"])
    blocks = [{"signature": b.signature(), "param_bytes": param_bytes(b),
               "in_shape": list(b.in_shape), "out_shape": list(b.out_shape)} for b in arch]
    del arch
    release_memory()
    print(json.dumps({"blocks": blocks, "trainer_baseline_bytes": rss_bytes()}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
