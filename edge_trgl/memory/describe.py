"""The network's blocks as plain data, for a planner that never imports torch.

The lean `edge-trgl` process plans a budgeted run without torch (~220 MB it would hold beside
every probe child). What the planner needs of the model — each block's signature, parameter
bytes and shapes — and what a torch trainer process holds before training (its baseline) are
measured once in a short-lived child (`python -m edge_trgl.describe_child SPEC`), which exits
before the next child starts, and kept in the probe cache (estimate.py) under the same key rules
as the probes.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass

DESCRIBE_FORMAT = 1


@dataclass(frozen=True)
class BlockInfo:
    """One block of the architecture: what the planner reads of a (meta-device) torch block."""
    sig: str
    param_bytes: int
    in_shape: tuple
    out_shape: tuple

    def signature(self) -> str:
        return self.sig

    @classmethod
    def from_json(cls, d: dict) -> "BlockInfo":
        return cls(sig=str(d["signature"]), param_bytes=int(d["param_bytes"]),
                   in_shape=tuple(d["in_shape"]), out_shape=tuple(d["out_shape"]))


def param_bytes(block) -> int:
    """Parameter bytes of a BlockInfo or of a (meta-device) torch block."""
    if isinstance(block, BlockInfo):
        return block.param_bytes
    return sum(p.numel() * p.element_size() for p in block.parameters())


def describe(cfg, in_shape, num_classes, threads: int) -> dict:
    """{"blocks": [BlockInfo...], "trainer_baseline_bytes": int} from the cache or a child."""
    from .probe_cache import cached_child_result
    ident = {"describe": DESCRIBE_FORMAT, "model": cfg.model, "width": cfg.width,
             "in_shape": list(in_shape), "classes": int(num_classes), "device": cfg.device,
             "head": cfg.head}
    spec = {"config": cfg.to_json(), "in_shape": list(in_shape), "num_classes": int(num_classes),
            "threads": threads}
    result = cached_child_result(ident, threads, [sys.executable, "-m", "edge_trgl.describe_child",
                                                  json.dumps(spec)], what="describing the model")
    return {"blocks": [BlockInfo.from_json(b) for b in result["blocks"]],
            "trainer_baseline_bytes": int(result["trainer_baseline_bytes"])}


# What the orchestrator imports: a fresh torch-blocked child imports the same and reports its RSS.
_ORCHESTRATOR_PROBE = (
    "import sys; sys.modules['torch'] = None\n"
    "from edge_trgl.cli.main import build_parser\n"
    "try:\n    build_parser()\nexcept ImportError:\n    pass\n"
    "import edge_trgl.driver, edge_trgl.train, edge_trgl.schemes, edge_trgl.resume, edge_trgl.data\n"
    "import edge_trgl.backends.ort_backend, edge_trgl.memory.budgeted, edge_trgl.memory.cgroup\n"
    "import edge_trgl.targets.cpu, edge_trgl.targets.cuda, edge_trgl.targets.ort, edge_trgl.loop\n"
    "from edge_trgl.memory.measure import release_memory, rss_bytes\n"
    "import json; release_memory(); print(json.dumps({'rss_bytes': rss_bytes()}))\n")


def orchestrator_bytes(threads: int) -> int:
    """RSS of the torch-free `edge-trgl` process once it has imported what it runs, measured in
    a fresh child (so that the same command on the same machine plans the same) and cached."""
    from .probe_cache import cached_child_result
    result = cached_child_result({"orchestrator": DESCRIBE_FORMAT}, threads,
                                 [sys.executable, "-c", _ORCHESTRATOR_PROBE],
                                 what="measuring the orchestrator's baseline")
    return int(result["rss_bytes"])
