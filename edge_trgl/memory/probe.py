"""A memory probe, run as a fresh child process: build one module (given blocks + head) exactly as
the trainer does, run a few training steps at each requested batch size (ascending), and report
the process's peak RSS (VmHWM) for each. Invoked by estimate.py as
`python -m edge_trgl.memory.probe '<json spec>'`; prints one JSON line.

Why a child process and ascending batches: VmHWM is per process and glibc keeps freed memory, so
the only honest reading of "what does this need" is a process that did nothing else first. The
batch sizes of one probe run in ascending order, so each later reading is dominated by its own
need, not by leftovers of a smaller earlier one; clear_refs resets VmHWM between them.
"""

from __future__ import annotations

import json
import sys


def main(argv: list[str]) -> int:
    spec = json.loads(argv[0])
    import torch

    from ..config import TrainConfig
    from ..models import make_head
    from ..models.blocks import init_weights, make_generator, materialize
    from ..modules import (architecture, autocast, forward_blocks, input_layout, make_optimizer,
                           module_parameters, to_layout)
    from ..segments import checkpoint_segment_count
    from ..trgl import module_loss
    from .measure import peak_rss_bytes, release_memory, reset_peak, rss_bytes

    torch.set_num_threads(int(spec["threads"]))
    cfg = TrainConfig(**spec["config"])
    device = torch.device(cfg.device)
    torch.zeros(1).sum()  # initialise the ATen CPU runtime, part of every process's baseline
    release_memory()
    baseline = rss_bytes()
    arch = architecture(cfg, tuple(spec["in_shape"]), spec["num_classes"])
    # e2e with --checkpoint-segments: the whole network's probe trains as the trainer does
    segments = (checkpoint_segment_count(cfg, len(arch))
                if (spec["lo"], spec["hi"]) == (0, len(arch)) else None)
    # Initialised on the CPU (the seeded generator is a CPU one), then moved to the device.
    blocks = [materialize(arch[i], "cpu") for i in range(spec["lo"], spec["hi"])]
    del arch
    gen = make_generator(0)
    for b in blocks:
        init_weights(b, gen)
    blocks = [to_layout(b.to(device), device) for b in blocks]
    head = to_layout(make_head(cfg.head, tuple(blocks[-1].out_shape), spec["num_classes"]).to(device),
                     device)
    optimizer = make_optimizer(cfg, module_parameters(blocks, head))
    in_shape = tuple(blocks[0].in_shape)
    results = []
    limit = spec.get("limit_bytes")

    def over_limit() -> bool:
        # The planner's share for one child: past it, what is being measured does not fit, and
        # stopping here keeps the kernel from having to OOM-kill this probe.
        now = rss_bytes()
        if limit and now > limit:
            print(json.dumps({"over_limit_bytes": now - baseline, "limit_bytes": limit}))
            return True
        return False
    for batch in sorted(spec["batches"]):
        release_memory()
        reset_peak()
        if device.type == "cuda":  # after release_memory emptied the allocator's cache
            torch.cuda.reset_peak_memory_stats()
        # The trainer's pattern, not just its best case: train steps, an eval pass, a short last
        # batch, more steps. The allocator's reuse across those shapes is part of the real peak.
        steps = int(spec.get("steps", 4))
        sizes = [batch] * (steps // 2) + [0] + [max(1, batch // 2 + 1)] + [batch] * (steps - steps // 2)
        for size in sizes:
            if size == 0:
                with torch.no_grad():
                    for m in [*blocks, head]:
                        m.eval()
                    out = input_layout(torch.randn(batch, *in_shape, device=device), device)
                    with autocast(cfg, device):
                        for block in blocks:
                            out, _ = block(out)
                        head(out)
                    for m in [*blocks, head]:
                        m.train()
                    del out
                continue
            x = input_layout(torch.randn(size, *in_shape, device=device), device)
            y = torch.randint(0, spec["num_classes"], (size,), device=device)
            with autocast(cfg, device):  # --amp: activations in half precision, as in training
                out, energy = forward_blocks(blocks, x, segments)
                loss, _ = module_loss(head(out).float(), y, energy.float(), 0.5, 0.1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            del x, y, out, energy, loss
            if over_limit():
                return 76
        entry = {"batch": batch, "peak_bytes": peak_rss_bytes()}
        if device.type == "cuda":
            entry["cuda_allocated_bytes"] = torch.cuda.max_memory_allocated()
            entry["cuda_reserved_bytes"] = torch.cuda.max_memory_reserved()
            torch.cuda.reset_peak_memory_stats()
        results.append(entry)
    # CUDA: the device, the context once the steps have loaded their kernels, host RSS now.
    cuda_facts = None
    if device.type == "cuda":
        from .cuda import probe_facts
        cuda_facts = probe_facts(torch, device)
    # Saved activations, counted exactly after the peaks were taken (so this cannot affect them).
    from .estimate import saved_activation_bytes_per_sample
    with autocast(cfg, device):  # --amp: the saved activations are half precision too
        saved = sum(saved_activation_bytes_per_sample(b, tuple(b.in_shape)) for b in blocks)
    out = {"baseline_bytes": baseline, "results": results, "saved_bytes_per_sample": saved}
    if cuda_facts is not None:
        out["cuda"] = cuda_facts
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
