"""--distributed's training loop: the parallel scheme with its modules spread over the ranks of a
torch.distributed job (gloo over TCP). The torch-free half (ranks, shares, plan) is
distributed.py's.

Each batch: rank 0 reads and augments it exactly as the one-process parallel scheme does, steps
its modules on it and sends the last one's detached outputs (with the labels) to rank 1, which
steps its modules on them and sends on. Nothing flows back, so a rank goes on with its next batch
at once; a sender runs at most WIRE_QUEUE batches ahead (bounded buffers, counted in the plan).
Every module sees the inputs, in the order, that it sees in one process: with fp32 on the wire a
2-rank run trains bit for bit what `--scheme parallel` trains in one process (same threads).

Each message on a link is one byte buffer of a size both ends know for the phase (train batch, or
evaluation batch): a header (kind, samples), the labels, the features. A phase ends with an END
message, so a receiver pre-posts the next message while it computes on the current one.

Faults: every rank checkpoints every epoch atomically and keeps its last two checkpoints; a
barrier after each checkpoint means the ranks are never more than one epoch apart, so the newest
epoch every rank holds (all_reduce MIN) is a consistent resume point. A dead peer or one silent
for --dist-timeout seconds stops the others with PeerLost (exit 4), never a hang.
"""

from __future__ import annotations

import collections
import datetime
import math
import os

import numpy as np
import torch
import torch.distributed as dist

from .backends.torch_backend import forward_module, make_scaler, to_device
from .distributed import WIRE_QUEUE, identity, rank_env
from .errors import PeerLost, UserError
from .loop import train_epoch
from .memory.measure import release_memory
from .modules import autocast, load_module, make_optimizer, module_parameters, save_module
from .prefetch import prefetched
from .resident import ResidentEngine, checkpoint_state, parallel_weights, restore_state
from .schedule import lr_at
from .sources import epoch_rng
from .store import block_path, head_path, load_tensors, save_tensors

CKPT = "ckpt/rank-epoch{:03d}.safetensors"
TRAIN, END = 0, 1
HEADER_BYTES = 16


class Link:
    """One direction of one link: fixed-size messages of `batch` samples of `shape`."""

    def __init__(self, peer: int, batch: int, shape, wire_dtype: torch.dtype, timeout_s: float):
        self.peer, self.batch, self.shape, self.dtype = peer, batch, tuple(shape), wire_dtype
        self.timeout = datetime.timedelta(seconds=timeout_s)
        itemsize = torch.empty(0, dtype=wire_dtype).element_size()
        self.nbytes = HEADER_BYTES + 8 * batch + batch * math.prod(self.shape) * itemsize
        self.in_flight: collections.deque = collections.deque()
        self.pending = None
        self.sent_bytes = 0

    def _unpack(self, buf):
        kind, n = (int(v) for v in buf[:HEADER_BYTES].view(torch.int64))
        labels = buf[HEADER_BYTES:HEADER_BYTES + 8 * self.batch].view(torch.int64)[:n]
        features = buf[HEADER_BYTES + 8 * self.batch:].view(self.dtype).view(self.batch, *self.shape)
        return kind, features[:n], labels

    # sending
    def send(self, features: torch.Tensor | None, labels: np.ndarray | None) -> None:
        buf = torch.zeros(self.nbytes, dtype=torch.uint8)
        n = 0 if labels is None else len(labels)
        buf[:HEADER_BYTES].view(torch.int64).copy_(torch.tensor([TRAIN if n else END, n]))
        if n:  # (the views _unpack reads are where the sender writes)
            _, feats, labs = self._unpack(buf)
            labs.copy_(torch.from_numpy(np.asarray(labels, dtype=np.int64)))
            feats.copy_(features.detach().to("cpu", self.dtype))
        while len(self.in_flight) >= WIRE_QUEUE:
            wait(self.in_flight.popleft()[0], self.timeout, f"sending to rank {self.peer}")
        self.in_flight.append((dist.isend(buf, self.peer), buf))
        self.sent_bytes += self.nbytes

    def end(self) -> None:
        self.send(None, None)

    # receiving: one message posted ahead
    def _post(self) -> None:
        buf = torch.empty(self.nbytes, dtype=torch.uint8)
        self.pending = (dist.irecv(buf, self.peer), buf)

    def messages(self):
        """(features as float32 numpy, labels) per message until the phase's END."""
        self._post()
        while True:
            work, buf = self.pending
            wait(work, self.timeout, f"receiving from rank {self.peer}")
            kind, feats, labels = self._unpack(buf)
            if kind == END:
                self.pending = None
                return
            self._post()
            yield feats.float().numpy(), labels.numpy()


def with_peers(fn, what: str):
    """fn() (a torch.distributed call), a gloo failure (a closed connection, a reset, a
    timeout) raised as PeerLost, saying `what` this rank was doing."""
    try:
        return fn()
    except RuntimeError as exc:
        raise PeerLost(str(exc).splitlines()[0] if str(exc) else "connection lost",
                       what) from None


def wait(work, timeout, what: str) -> None:
    def done():
        if not work.wait(timeout):
            raise RuntimeError(f"no answer in {timeout.total_seconds():g} s")
    with_peers(done, what)


class ReceivedSource:
    """What rank r > 0 trains on: the batches rank r-1 sends, in its order (already shuffled and
    augmented there), shaped as the data sources the epoch loop reads."""

    def __init__(self, link: Link, count: int):
        self.link, self.count = link, count

    def batches(self, batch_size, order_rng=None, aug_rng=None, min_batch=1, with_index=False):
        return self.link.messages()


class PipelineEngine(ResidentEngine):
    """This rank's modules for the shared epoch loop (loop.train_epoch), stepped as the
    one-process parallel scheme steps them (ResidentEngine.step_modules); the last one's output
    goes down the link to the next rank."""

    def __init__(self, cfg, device, modules, optimizers, scalers, weights, out_link):
        super().__init__(cfg, device, modules, optimizers, scalers, weights, e2e=False)
        self.out_link = out_link

    def train_step(self, x_np, y_np, weight, keep_features: bool = False) -> tuple:
        x, y = to_device(x_np, self.device), to_device(y_np, self.device)
        out, figures = self.step_modules(x, y, len(y_np))
        if self.out_link is not None:
            self.out_link.send(out, y_np)
        return figures


class Ranks:
    """This rank's place in the job: its share, its links, the collectives it takes part in."""

    def __init__(self, ctx, share: dict):
        cfg = ctx.cfg
        self.rank, self.world = share["rank"], share["world_size"]
        self.shares = share["rank_modules"]
        self.mine = self.shares[self.rank]
        self.count = sum(len(s) for s in self.shares)
        self.timeout_s = cfg.dist_timeout_s
        wire = torch.float16 if share["wire_dtype"] == "fp16" else torch.float32
        from .modules import architecture
        arch = architecture(cfg, ctx.in_shape, ctx.num_classes)
        in_shape = arch[ctx.splits[self.mine[0]][0]].in_shape
        out_shape = arch[ctx.splits[self.mine[-1]][1] - 1].out_shape

        def links(batch):
            return (Link(self.rank - 1, batch, in_shape, wire, cfg.dist_timeout_s)
                    if self.rank > 0 else None,
                    Link(self.rank + 1, batch, out_shape, wire, cfg.dist_timeout_s)
                    if self.rank < self.world - 1 else None)
        self.train_in, self.train_out = links(ctx.batch_size)
        self.eval_in, self.eval_out = links(ctx.eval_batch_size)

    def owner(self, k: int) -> int:
        """The rank that trains module k."""
        return next(r for r, share in enumerate(self.shares) if k in share)

    def gather_accuracies(self, accs: dict) -> list[float | None]:
        """Every module's accuracy (each rank knows its own), on every rank."""
        vec = torch.full((self.count,), -1.0, dtype=torch.float64)
        for k, acc in accs.items():
            vec[k] = -1.0 if acc is None else acc
        with_peers(lambda: dist.all_reduce(vec, op=dist.ReduceOp.MAX), "gathering accuracies")
        return [None if v < 0 else float(v) for v in vec.tolist()]

    def min_over_ranks(self, value: int) -> int:
        t = torch.tensor([value], dtype=torch.int64)
        with_peers(lambda: dist.all_reduce(t, op=dist.ReduceOp.MIN), "agreeing on an epoch")
        return int(t.item())

    def barrier(self) -> None:
        with_peers(lambda: dist.monitored_barrier(
            timeout=datetime.timedelta(seconds=self.timeout_s)),
            "waiting for the other ranks' checkpoints")

    def sent_bytes(self) -> int:
        return sum(link.sent_bytes for link in (self.train_out, self.eval_out) if link)


def connect(ctx, share: dict) -> None:
    """Join the job (the torch.distributed environment), then check that every rank runs the
    same training: a rank started with other options would train something else silently."""
    rank, world = rank_env()
    if (rank, world) != (share["rank"], share["world_size"]):
        raise UserError(f"This run directory was planned as rank {share['rank']} of "
                        f"{share['world_size']}, but this process is rank {rank} of {world}. "
                        f"Launch the job with the world size it was planned for, each rank "
                        f"resuming its own directory.")
    timeout = datetime.timedelta(seconds=ctx.cfg.dist_timeout_s)
    try:  # (a bad address is a ValueError)
        dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timeout)
    except (RuntimeError, ValueError) as exc:
        raise PeerLost(str(exc).splitlines()[0], f"joining the job at "
                       f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}") from None
    mine = torch.frombuffer(bytearray(bytes.fromhex(identity(ctx.cfg, ctx.run.read_json("plan.json")))),
                            dtype=torch.uint8)
    everyone = [torch.empty_like(mine) for _ in range(world)]
    with_peers(lambda: dist.all_gather(everyone, mine), "comparing the ranks' options")
    differ = [r for r, other in enumerate(everyone) if not torch.equal(other, mine)]
    if differ:
        raise UserError(f"Rank {rank}'s training options (model, data, scheme, modules, batch "
                        f"size, seed, learning rate, ...) differ from those of rank(s) "
                        f"{', '.join(map(str, differ))}; every rank must run the same training "
                        f"(only --out's machine, --mem-budget, --threads, --device and "
                        f"--dist-timeout may differ). Nothing was trained.")


def train_distributed(ctx) -> None:
    run = ctx.run
    share = run.read_json("plan.json")["distributed"]
    if run.manifest["progress"].get("phase") == "done":  # finished and gathered: nothing left
        return
    connect(ctx, share)
    try:
        _train(ctx, Ranks(ctx, share))
    finally:
        dist.destroy_process_group()


def _train(ctx, ranks: Ranks) -> None:
    cfg, run = ctx.cfg, ctx.run
    device = torch.device(cfg.device)
    start_epoch = ranks.min_over_ranks(_latest_epoch(ctx))
    modules = [load_module(run, cfg, ctx.in_shape, ctx.num_classes, *ctx.splits[k], k, device,
                           from_store=start_epoch == 0) for k in ranks.mine]
    optimizers = [make_optimizer(cfg, module_parameters(b, h)) for b, h in modules]
    weights = [parallel_weights(cfg, ranks.count)[k] for k in ranks.mine]
    scalers = [make_scaler(cfg, device) for _ in optimizers]
    if start_epoch:
        _load(ctx, ranks, start_epoch, modules, optimizers, scalers)
    engine = PipelineEngine(cfg, device, modules, optimizers, scalers, weights, ranks.train_out)
    count = _count(ctx.dataset, "train")
    source = ctx.raw("train") if ranks.rank == 0 else ReceivedSource(ranks.train_in, count)
    steps_per_epoch = -(-count // ctx.batch_size)
    for epoch in range(start_epoch, cfg.epochs):
        order_rng = epoch_rng(cfg.seed, 0, 0, epoch)
        aug_rng = epoch_rng(cfg.seed, 0, 0, epoch, 1) if cfg.augment else None

        def lr_of_step(step, epoch=epoch):
            return lr_at(cfg, module=0, epoch=epoch, step=step, epochs=cfg.epochs,
                         steps_per_epoch=steps_per_epoch)
        meter_stats = train_epoch(ctx, engine, source, order_rng, aug_rng, None, None,
                                  f"rank {ranks.rank} epoch {epoch + 1}/{cfg.epochs}", lr_of_step)
        if ranks.train_out is not None:
            ranks.train_out.end()
        val_accs = ranks.gather_accuracies(_chain_accuracy(ctx, ranks, modules, "val", device))
        ctx.log_epoch({"scheme": cfg.scheme, "rank": ranks.rank, "lap": 0,
                       "modules": f"{ranks.mine[0]}-{ranks.mine[-1]}",
                       "module": ranks.mine[-1], "epoch": epoch + 1, **meter_stats,
                       "rss_bytes": ctx.rss_now(), "val_acc": val_accs[ranks.mine[-1]],
                       "val_accs": val_accs, "sent_bytes": ranks.sent_bytes()})
        _checkpoint(ctx, ranks, epoch + 1, modules, optimizers, scalers)
        ranks.barrier()  # every rank now holds this epoch: the one before may go
        _drop_earlier(run)
        ctx.check_interrupt()
    _finish(ctx, ranks, modules, device)
    del modules, optimizers, engine
    release_memory()


def _finish(ctx, ranks: Ranks, modules, device) -> None:
    """Store the trained modules, score every head on validation and test through the pipeline,
    record every module's accuracies on every rank (so any rank's summary shows the network)."""
    run = ctx.run
    for k, (blocks, head) in zip(ranks.mine, modules):
        lo, hi = ctx.splits[k]
        run.unlist([block_path(i) for i in range(lo, hi)] + [head_path(k)])
        save_module(run, blocks, head, lo, k, None)
    _share_weights(ctx, ranks)
    val = ranks.gather_accuracies(_chain_accuracy(ctx, ranks, modules, "val", device))
    test = ranks.gather_accuracies(_chain_accuracy(ctx, ranks, modules, "test", device))
    for k, (lo, hi) in enumerate(ctx.splits):
        run.manifest["modules"][str(k)] = {
            "lo": lo, "hi": hi, "lap": 0, "val_acc": val[k], "test_acc": test[k],
            "rank": ranks.owner(k)}
    run.manifest["sent_bytes"] = ranks.sent_bytes()
    progress = run.manifest["progress"]
    stale = [rel for rel in (progress.get("ckpt"), progress.get("earlier")) if rel]
    for rel in stale:
        run.forget_files(rel)
    run.manifest["progress"] = {"lap": 0, "module": ranks.count - 1, "phase": "done"}
    run.save()
    for rel in stale:
        (run.root / rel).unlink(missing_ok=True)


def _share_weights(ctx, ranks: Ranks) -> None:
    """Every trained block and head, file by file from the rank that trained it to all the
    others, so that every rank's run directory holds the whole trained network (export, predict
    and evaluate work from any of them). The store files are safetensors: the bytes are written
    as received and read back through their checksum, never unpickled. One file in memory at a
    time (a block's weights)."""
    import hashlib
    from .atomic import atomic_write_bytes
    run = ctx.run
    for k, (lo, hi) in enumerate(ctx.splits):
        owner = ranks.owner(k)
        rels = [block_path(i) for i in range(lo, hi)] + [head_path(k)]
        if owner != ranks.rank:
            run.unlist(rels)
        for rel in rels:
            data = (run.root / rel).read_bytes() if owner == ranks.rank else b""
            size = torch.tensor([len(data)], dtype=torch.int64)
            with_peers(lambda: dist.broadcast(size, owner), "sharing the trained weights")
            buf = (torch.frombuffer(bytearray(data), dtype=torch.uint8) if data
                   else torch.empty(int(size.item()), dtype=torch.uint8))
            with_peers(lambda: dist.broadcast(buf, owner), "sharing the trained weights")
            if owner != ranks.rank:
                received = buf.numpy().tobytes()
                atomic_write_bytes(run.root / rel, received, event="save")
                run.record_file(rel, hashlib.sha256(received).hexdigest())
    run.save()


@torch.no_grad()
def _chain_accuracy(ctx, ranks: Ranks, modules, split: str, device) -> dict:
    """Accuracy of this rank's heads on `split`, the features of the ranks before it coming down
    the evaluation link (None where the run has no such split)."""
    if not _count(ctx.dataset, split):
        return {k: None for k in ranks.mine}
    for blocks, head in modules:
        for m in [*blocks, head]:
            m.eval()
    correct, seen = [0] * len(modules), 0
    if ranks.rank == 0:
        batches = ctx.raw(split).batches(ctx.eval_batch_size)
    else:
        batches = ranks.eval_in.messages()
    with prefetched(batches, device) as stream:
        for x_np, y_np in stream:
            x = to_device(x_np, device)
            for i, (blocks, head) in enumerate(modules):
                with autocast(ctx.cfg, device):
                    x, logits, _ = forward_module(blocks, head, x)
                correct[i] += int((logits.argmax(1).cpu().numpy() == y_np).sum())
            if ranks.eval_out is not None:
                ranks.eval_out.send(x.float(), y_np)
            seen += len(y_np)
    if ranks.eval_out is not None:
        ranks.eval_out.end()
    return {k: c / seen for k, c in zip(ranks.mine, correct)}


def _count(dataset, split: str) -> int:
    part = getattr(dataset, split)
    return 0 if part is None else len(part.labels)


# --- checkpoints: the last two kept, so that the ranks always share one ----------------------

def _checkpoints(run) -> dict:
    """epoch -> checkpoint file, for this rank's listed checkpoints (a resume has checked every
    listed file against its checksum, and load_tensors checks it again)."""
    progress = run.manifest["progress"]
    return {int(rel.split("epoch")[1].split(".")[0]): rel
            for rel in (progress.get("ckpt"), progress.get("earlier"))
            if rel and run.checksum(rel)}


def _latest_epoch(ctx) -> int:
    return max(_checkpoints(ctx.run), default=0)


def _checkpoint(ctx, ranks: Ranks, epoch_done: int, modules, optimizers, scalers) -> None:
    run = ctx.run
    tensors, meta = checkpoint_state(ctx, ranks.mine, modules, optimizers, scalers, epoch_done,
                                     f"rank {ranks.rank}'s modules, epoch {epoch_done}")
    rel = CKPT.format(epoch_done)
    sha = save_tensors(run.root, rel, tensors, meta)
    run.record_file(rel, sha)
    progress = run.manifest["progress"]
    latest = progress.get("ckpt") if progress.get("phase") == "train" else None
    earlier = latest if latest and latest != rel else progress.get("earlier")
    # (module 0, as the one-process resident schemes record: no module is "finished" before)
    run.manifest["progress"] = {"lap": 0, "module": 0, "phase": "train",
                                "ckpt": rel, "epoch_done": epoch_done,
                                **({"earlier": earlier} if earlier and earlier != rel else {})}
    run.save()


def _drop_earlier(run) -> None:
    """Once every rank has saved the newest epoch, the one before it is not needed."""
    progress = run.manifest["progress"]
    earlier = progress.pop("earlier", None)
    if earlier:
        run.forget_files(earlier)
        run.save()
        (run.root / earlier).unlink(missing_ok=True)


def _load(ctx, ranks: Ranks, epoch: int, modules, optimizers, scalers) -> None:
    rel = _checkpoints(ctx.run).get(epoch)
    if rel is None:
        raise UserError(f"Rank {ranks.rank} has no intact checkpoint of epoch {epoch}, the newest "
                        f"epoch every rank holds, so the ranks cannot continue together. Start "
                        f"the job again with new --out directories.")
    tensors, meta = load_tensors(ctx.run.root, rel, ctx.run.checksum(rel))
    restore_state(ctx, ranks.mine, modules, optimizers, scalers, tensors, meta)
