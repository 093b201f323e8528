"""Several processes (or boards), one network: the torch-free half of `--distributed` (the parallel
scheme on torch.distributed; the training loop is pipeline.py's).

Launch: the standard torch.distributed environment, as `torchrun` sets it (RANK, WORLD_SIZE,
MASTER_ADDR, MASTER_PORT), or by hand on each machine. Every rank runs the same command; rank r
keeps its own run directory `<--out>/rank<r>` on its own disk, holds a contiguous share of the
modules (`assign_modules`: compute balanced) and plans it against its own `--mem-budget`.
Module k needs module k-1's outputs, never gradients from later modules, so rank r trains its
modules on the features rank r-1 streams to it and streams its own outputs on.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

from .errors import UserError

ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
# Config fields that may differ between ranks: where files go, each board's own resources.
PER_RANK_FIELDS = ("out", "progress", "keep_cache", "threads", "module_peaks", "mem_budget",
                   "disk_budget", "profile", "device", "amp", "dist_timeout_s", "backend")
WIRE_QUEUE = 2  # sends in flight per link: the sender runs at most this many batches ahead


def rank_env() -> tuple[int, int]:
    """(rank, world size) from the torch.distributed environment, or a clear refusal."""
    missing = [name for name in ENV if not os.environ.get(name)]
    if missing:
        raise UserError(
            f"--distributed needs the torch.distributed environment, and {', '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} not set. Launch every rank with torchrun "
            f"(torchrun --nnodes N --node-rank R --master-addr HOST --master-port PORT "
            f"--nproc-per-node 1 -m edge_trgl.cli.main train ...), or set RANK, WORLD_SIZE, "
            f"MASTER_ADDR and MASTER_PORT yourself on each machine (README: 'Several boards').")
    try:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        int(os.environ["MASTER_PORT"])
    except ValueError:
        raise UserError(f"RANK, WORLD_SIZE and MASTER_PORT must be whole numbers (got "
                        f"{os.environ['RANK']!r}, {os.environ['WORLD_SIZE']!r}, "
                        f"{os.environ['MASTER_PORT']!r}).") from None
    if world < 1 or not 0 <= rank < world:
        raise UserError(f"RANK must be from 0 to WORLD_SIZE-1 (got RANK={rank}, "
                        f"WORLD_SIZE={world}).")
    return rank, world


def check_options(cfg) -> None:
    """What --distributed supports, before anything is read or written."""
    if not cfg.distributed:
        return
    if cfg.scheme != "parallel":
        raise UserError(f"--distributed trains the parallel scheme (--scheme parallel: every "
                        f"module steps on each batch, so the ranks work at once); --scheme "
                        f"{cfg.scheme} keeps one module busy at a time and gains nothing from "
                        f"several ranks.")
    if cfg.backend != "torch":
        raise UserError("--distributed runs on the torch backend (torch.distributed, gloo); "
                        "leave out --backend ort.")
    if cfg.wire_dtype not in ("fp32", "fp16"):
        raise UserError(f"--wire-dtype must be fp32 or fp16, not {cfg.wire_dtype!r}.")
    if not cfg.dist_timeout_s > 0:
        raise UserError(f"--dist-timeout must be a positive number of seconds, not "
                        f"{cfg.dist_timeout_s}.")


def rank_root(path, rank: int) -> Path:
    return Path(path) / f"rank{rank}"


def block_work(block) -> float:
    """Multiply-adds per sample, estimated as parameters x output positions (a conv's weights
    act at every output pixel; a transformer block's at every token): what balances the ranks."""
    from .memory.describe import param_bytes
    shape = [int(s) for s in block.out_shape]
    positions = math.prod(shape[1:]) if len(shape) == 3 else shape[0]
    return param_bytes(block) / 4 * max(1, positions)


def assign_modules(splits, arch, world: int) -> list[list[int]]:
    """Contiguous shares of the modules, one per rank, minimising the largest share's work
    (the pipeline runs at its slowest rank's pace)."""
    count = len(splits)
    if count < world:
        raise UserError(f"--distributed with {world} ranks needs at least {world} modules, and "
                        f"the grouping gives {count}. Use --modules {world} (or more).")
    work = [sum(block_work(arch[i]) for i in range(lo, hi)) for lo, hi in splits]
    best = {}

    def solve(start: int, ranks: int):  # (largest share, cut points) for modules start..
        if ranks == 1:
            return sum(work[start:]), ()
        key = (start, ranks)
        if key not in best:
            options = []
            for end in range(start + 1, count - ranks + 2):
                rest, cuts = solve(end, ranks - 1)
                options.append((max(sum(work[start:end]), rest), (end, *cuts)))
            best[key] = min(options)
        return best[key]
    _, cuts = solve(0, world)
    bounds = [0, *cuts, count]
    return [list(range(bounds[r], bounds[r + 1])) for r in range(world)]


def identity(cfg, plan: dict) -> str:
    """What every rank must agree on: the training config less each board's own resources,
    the modules, the batch size and the shares."""
    d = cfg.to_json()
    for name in PER_RANK_FIELDS:
        d.pop(name, None)
    shared = {"config": d, "splits": plan["splits"], "batch_size": plan["batch_size"],
              "rank_modules": plan["distributed"]["rank_modules"]}
    return hashlib.sha256(json.dumps(shared, sort_keys=True).encode()).hexdigest()


def plan_share(cfg, splits, arch, batch_size: int) -> dict:
    """plan.json's "distributed": this rank, every rank's modules, and the bytes of its links'
    bounded queues (WIRE_QUEUE batches of features, each way it has a neighbour)."""
    rank, world = rank_env()
    shares = assign_modules(splits, arch, world)
    itemsize = 2 if cfg.wire_dtype == "fp16" else 4
    mine = shares[rank]
    links = 0
    if rank > 0:  # features in: the received batch and its fp32 copy
        links += math.prod(arch[splits[mine[0]][0]].in_shape) * (itemsize + 4)
    if rank < world - 1:  # features out: the queue of sends in flight
        links += math.prod(arch[splits[mine[-1]][1] - 1].out_shape) * itemsize * WIRE_QUEUE
    return {"rank": rank, "world_size": world, "rank_modules": shares,
            "wire_dtype": cfg.wire_dtype, "wire_queue": WIRE_QUEUE,
            "wire_buffer_bytes": int(links * batch_size)}


def share_note(share: dict, splits) -> str:
    from .budget import format_size
    from .summary import block_range
    mine = share["rank_modules"][share["rank"]]
    lo, hi = splits[mine[0]][0], splits[mine[-1]][1]
    return (f"rank {share['rank']} of {share['world_size']} trains module"
            f"{'s' if len(mine) > 1 else ''} {', '.join(map(str, mine))} (blocks "
            f"{block_range(lo, hi)}); its links' buffers ({share['wire_queue']} batches in flight, "
            f"{share['wire_dtype']} on the wire) take {format_size(share['wire_buffer_bytes'])}")
